"""AnyRes tiling (LLaVA-NeXT, Liu et al. 2024): the plan of how one image becomes a thumbnail and a grid of tiles.

Pure functions, torch-free, so the config (on load), the data encoder and `vlmlab describe` share one rule;
the pixels are cut by vlmlab/data/tiling.py.

- **Grid choice** (LLaVA-NeXT's best-resolution rule): among the grids `[rows, cols]` (canvas `rows * tile`
  by `cols * tile` pixels), fit the image into each canvas keeping its aspect ratio and take the canvas that
  keeps the most of the image's own pixels (`min(fitted area, original area)`: upscaling adds none); ties go
  to the canvas that wastes the least area, then to the first listed.
- **Token layout** of one tiled image in the sequence (Idefics3 / LLaVA-NeXT's "image newline" idea: the
  language model needs to know where a row of tiles ends)::

      [thumbnail: t] SEP [tile 1,1: t] ... [tile 1,cols: t] SEP ... [tile rows,1: t] ... [tile rows,cols: t] SEP

  so an image on a `rows x cols` grid costs `(1 + rows * cols) * t + rows + 1` positions, `t` being the
  connector's tokens per tile (one marker per tile in Cross-Attention). A thumbnail-only image (the budget
  leaves no grid) costs `t + 1`. SEP is the text tokenizer's newline token, so the vocabulary is unchanged.
- **Budget** (`model.max_image_tokens`, positions per sample): the budget is split evenly among the
  sample's images; each image chooses its grid among the grids whose cost fits its share (the rule above on
  that shorter list), and becomes a thumbnail only if none fits. A sample whose images cannot fit even as
  thumbnails is dropped and counted (the encoder's `num_dropped`). The split is even, not greedy, so an
  image's tiles never depend on its neighbours' sizes and the cost is known from the image count alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from vlmlab.errors import ConfigError

TILING_MODES = ("none", "anyres")
# LLaVA-NeXT's grid pinpoints in tiles (336 px tiles: 336x672, 672x336, 672x672, 1008x336, 336x1008)
DEFAULT_TILE_GRIDS: tuple[tuple[int, int], ...] = ((1, 2), (2, 1), (2, 2), (1, 3), (3, 1))
THUMBNAIL_ONLY = (0, 0)  # the grid of an image that keeps no tiles


def check_grids(grids: Sequence[Sequence[int]]) -> tuple[tuple[int, int], ...]:
    """`model.tile_grids` as a tuple of (rows, cols); one line naming the bad entry otherwise."""
    if not grids:
        raise ConfigError("model.tile_grids is empty: AnyRes tiling needs at least one [rows, cols] grid.")
    checked: list[tuple[int, int]] = []
    for grid in grids:
        pair = tuple(grid) if isinstance(grid, Sequence) and not isinstance(grid, str) else (grid,)
        if len(pair) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in pair):
            raise ConfigError(
                f"model.tile_grids entry {list(pair)!r} is not a grid (valid: [rows, cols], both integers >= 1, "
                "e.g. [[1, 2], [2, 1], [2, 2]])."
            )
        if pair in checked:
            raise ConfigError(f"model.tile_grids lists the grid {list(pair)} twice.")
        checked.append((int(pair[0]), int(pair[1])))
    return tuple(checked)


def best_resolution(width: int, height: int, resolutions: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """LLaVA-NeXT's best-resolution rule over canvases given as (height, width); -> the chosen canvas."""
    best: tuple[int, int] | None = None
    best_kept, best_wasted = 0, float("inf")
    original = width * height
    for canvas_height, canvas_width in resolutions:
        scale = min(canvas_width / width, canvas_height / height)
        # the fitted image's size, truncated as the rule defines it (pixels kept, never more than the original)
        kept = min(int(width * scale) * int(height * scale), original)
        wasted = canvas_width * canvas_height - kept
        if kept > best_kept or (kept == best_kept and wasted < best_wasted):
            best, best_kept, best_wasted = (canvas_height, canvas_width), kept, wasted
    if best is None:
        raise ConfigError(f"no canvas to fit a {width}x{height} image into (an empty grid list).")
    return best


def best_grid(width: int, height: int, grids: Sequence[tuple[int, int]], tile_size: int) -> tuple[int, int]:
    """The (rows, cols) grid LLaVA-NeXT's rule picks for a `width` x `height` image with square tiles."""
    canvas = best_resolution(width, height, [(rows * tile_size, cols * tile_size) for rows, cols in grids])
    return canvas[0] // tile_size, canvas[1] // tile_size


def image_positions(rows: int, cols: int, tokens_per_tile: int) -> int:
    """Sequence positions of one image on a rows x cols grid: thumbnail + tiles, one separator after the
    thumbnail and after each row of tiles (rows = cols = 0: the thumbnail and its separator)."""
    return (1 + rows * cols) * tokens_per_tile + rows + 1


def fit_size(width: int, height: int, canvas_width: int, canvas_height: int) -> tuple[int, int]:
    """(width, height) of the image fitted into the canvas keeping its aspect ratio: the constrained side
    fills the canvas, the other is rounded up (never past the canvas), as LLaVA-NeXT's processor does."""
    scale_w, scale_h = canvas_width / width, canvas_height / height
    # the float products (not exact integer ceilings) are the processor's definition: keep its pixels
    if scale_w < scale_h:
        return canvas_width, min(math.ceil(height * scale_w), canvas_height)
    return min(math.ceil(width * scale_h), canvas_width), canvas_height


@dataclass(frozen=True)
class TilingPlan:
    """The tiling of one model: grids, tile side (the tokenizer's input size), the connector's tokens per
    tile (or 1: a Cross-Attention marker) and the per-sample budget in sequence positions (None: no budget)."""

    grids: tuple[tuple[int, int], ...]
    tile_size: int
    tokens_per_tile: int
    max_image_tokens: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "grids", check_grids(self.grids))
        if self.max_image_tokens is not None and self.max_image_tokens < self.thumbnail_positions:
            raise ConfigError(
                f"model.max_image_tokens={self.max_image_tokens} cannot hold even one image's thumbnail "
                f"({self.tokens_per_tile} tokens + 1 separator = {self.thumbnail_positions}); valid: "
                f"{self.thumbnail_positions} or more, or null for no budget."
            )

    @property
    def thumbnail_positions(self) -> int:
        return image_positions(0, 0, self.tokens_per_tile)

    def cost(self, grid: tuple[int, int]) -> int:
        return image_positions(grid[0], grid[1], self.tokens_per_tile)

    def allowed_grids(self, num_images: int) -> tuple[tuple[int, int], ...]:
        """The grids an image may use when its sample holds `num_images` images (its even budget share)."""
        if self.max_image_tokens is None:
            return self.grids
        share = self.max_image_tokens // max(num_images, 1)
        return tuple(grid for grid in self.grids if self.cost(grid) <= share)

    def fits(self, num_images: int) -> bool:
        """Whether `num_images` images fit the budget at all (as thumbnails)."""
        return self.max_image_tokens is None or num_images * self.thumbnail_positions <= self.max_image_tokens

    def grid_for(self, width: int, height: int, num_images: int = 1) -> tuple[int, int]:
        """The grid of a `width` x `height` image in a sample of `num_images` images (THUMBNAIL_ONLY when no
        grid fits the budget share)."""
        allowed = self.allowed_grids(num_images)
        return best_grid(width, height, allowed, self.tile_size) if allowed else THUMBNAIL_ONLY

    def max_positions(self, num_images: int = 1) -> int:
        """The most positions one image can take in a sample of `num_images` images, whatever its size: what
        a sample's length is planned with before its pixels are read."""
        return max(
            (self.cost(grid) for grid in self.allowed_grids(num_images)), default=self.thumbnail_positions
        )

    def describe(self) -> list[str]:
        """One line per grid: its canvas and its cost (for `vlmlab describe`)."""
        lines = [
            f"{rows}x{cols} tiles (canvas {cols * self.tile_size} wide x {rows * self.tile_size} high): "
            f"{self.cost((rows, cols))} positions per image"
            for rows, cols in self.grids
        ]
        budget = "none" if self.max_image_tokens is None else f"{self.max_image_tokens} positions per sample"
        lines.append(f"thumbnail only: {self.thumbnail_positions} positions; budget: {budget}")
        return lines


__all__ = [
    "DEFAULT_TILE_GRIDS",
    "THUMBNAIL_ONLY",
    "TILING_MODES",
    "TilingPlan",
    "best_grid",
    "best_resolution",
    "check_grids",
    "fit_size",
    "image_positions",
]
