"""AnyRes pixels: one image -> its thumbnail and the tiles of its grid (the plan: vlmlab/tiling.py).

As LLaVA-NeXT's image processor: the thumbnail is the whole image resized to one tile (aspect not kept);
the tiles come from the image fitted into the grid's canvas keeping its aspect ratio, centred on black
padding, cut row by row. Resizing runs on the uint8 tensor with antialiasing (as the tokenizers' own
transforms do, vlmlab/models/tokenizers/preprocess.py); the models side hands in the normalisation, so this
layer never imports vlmlab.models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from vlmlab.errors import unknown_choice
from vlmlab.tiling import TilingPlan, fit_size

_INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")


def tile_pixels(
    image: Image.Image, grid: tuple[int, int], tile_size: int, interpolation: str = "bicubic"
) -> torch.Tensor:
    """uint8 `[1 + rows * cols, 3, tile, tile]`: the thumbnail, then the tiles row-major (grid (0, 0): the
    thumbnail alone)."""
    if interpolation not in _INTERPOLATIONS:
        raise unknown_choice("interpolation", interpolation, _INTERPOLATIONS)
    mode = InterpolationMode(interpolation)
    pixels = F.pil_to_tensor(image.convert("RGB") if image.mode != "RGB" else image)  # [3, H, W]
    height, width = pixels.shape[-2:]
    thumbnail = F.resize(pixels, [tile_size, tile_size], interpolation=mode, antialias=True)
    rows, cols = grid
    if rows * cols == 0:
        return thumbnail[None]
    canvas_h, canvas_w = rows * tile_size, cols * tile_size
    fit_w, fit_h = fit_size(width, height, canvas_w, canvas_h)
    fitted = F.resize(pixels, [fit_h, fit_w], interpolation=mode, antialias=True)
    left, top = (canvas_w - fit_w) // 2, (canvas_h - fit_h) // 2
    canvas = F.pad(fitted, [left, top, canvas_w - fit_w - left, canvas_h - fit_h - top], fill=0)
    # [3, rows*T, cols*T] -> [rows, cols, 3, T, T] -> row-major tiles
    tiles = canvas.reshape(3, rows, tile_size, cols, tile_size).permute(1, 3, 0, 2, 4)
    return torch.cat([thumbnail[None], tiles.reshape(rows * cols, 3, tile_size, tile_size)])


@dataclass(frozen=True)
class ImageTiler:
    """What the encoder needs to tile: the plan, the resize filter, and the tokenizer's normalisation of a
    uint8 `[n, 3, T, T]` batch of tiles (picklable: it travels into data-loader workers)."""

    plan: TilingPlan
    normalize: Callable[[torch.Tensor], torch.Tensor]
    interpolation: str = "bicubic"

    def pixels(self, image: Image.Image, grid: tuple[int, int]) -> torch.Tensor:
        """float `[1 + rows * cols, 3, T, T]`, normalised for the tokenizer."""
        return self.normalize(tile_pixels(image, grid, self.plan.tile_size, self.interpolation)).float()


__all__ = ["ImageTiler", "tile_pixels"]
