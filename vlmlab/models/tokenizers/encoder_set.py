"""Several image encoders at once: `model.tokenizer` as a list of continuous towers, seen by the rest of vlmlab
as one tokenizer (Prismatic VLMs' fused DINOv2 + SigLIP, Karamcheti et al. 2024, section 4.2; Cambrian-1's
several towers; Eagle's channel concatenation).

Pixels (the data side, `build_set_transform`): each tower gets exactly the input it would get alone — its own
size, interpolation, framing and normalisation — and the views are stacked on the channel axis:
`pixel_values` [N, 3 * towers, S, S], S the largest tower input, tower i's view in channels 3i..3i+2 at the
top-left S_i x S_i, zeros elsewhere. One tensor per image keeps the batch contract (collation, packing,
generation) as it is.

Features (model.encoder_fusion), from each tower's patch features [N, P_i, D_i] on a square grid:
- channel: the grids must be equal; widths concatenated patch by patch -> [N, P, sum D_i] (Prismatic, Eagle);
- tokens: each tower's tokens in turn -> [N, sum P_i, D]; the widths must be equal (the adapter projects one
  width);
- resample: every grid resampled to the first tower's (area averaging onto a coarser grid, bilinear onto a
  finer one), then channel -> [N, P_0, sum D_i]. Order the list so the grid you want comes first.

Parameters are `image_tokenizer.towers.<i>.<the tower's own names>`: each tower keeps the names it has alone
below its index, so per-tower freezing, learning rates and FSDP units address `towers.<i>`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from vlmlab.config import ENCODER_FUSIONS
from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.models.tokenizers.base import ImageTokenizer, TokenizerSpec
from vlmlab.models.tokenizers.preprocess import ENCODER_SET, build_set_transform

TOWER_PREFIX = "image_tokenizer.towers."  # parameter names of tower i start with TOWER_PREFIX + f"{i}."


def grid_side(tower: ImageTokenizer) -> int:
    """The side of a tower's square patch grid (every continuous backend gives a square input's patches)."""
    side = math.isqrt(tower.num_tokens)
    if side * side != tower.num_tokens:
        raise ConfigError(
            f"Tokenizer {tower.spec.name!r} gives {tower.num_tokens} tokens, not a square grid."
        )
    return side


def resample_grid(features: torch.Tensor, side: int) -> torch.Tensor:
    """[N, s*s, D] patch features -> [N, side*side, D] on a side x side grid (row-major, as patches are).

    Onto a coarser grid each new patch is the mean of the fine patches it covers (area: exact block means
    for an integer ratio); onto a finer grid bilinear interpolation."""
    count, tokens, width = features.shape
    old = math.isqrt(tokens)
    if old == side:
        return features
    grid = features.transpose(1, 2).reshape(count, width, old, old)  # [N, D, s, s]
    if side < old:
        grid = F.interpolate(grid, size=(side, side), mode="area")
    else:
        grid = F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)  # [N, side*side, D]


def _combined_record(towers: list[ImageTokenizer]) -> dict | None:
    """One base-weights record for the set (vlmlab/models/provenance.py): the towers' sources and files, and
    one digest over their digests in order (None where a tower's loader could not tell what it read)."""
    records = [tower.base_weight_record for tower in towers]
    if all(record is None for record in records):
        return None
    digests = [(record or {}).get("sha256") or "random" for record in records]
    known = all(record is None or record.get("sha256") for record in records)
    files = [entry for record in records for entry in ((record or {}).get("files") or [])]
    return {
        "source": " + ".join((record or {}).get("source") or "random" for record in records),
        "revision": None,
        "sha256": hashlib.sha256("\n".join(digests).encode()).hexdigest() if known else None,
        "files": files or None,
    }


class EncoderSet(ImageTokenizer):
    """Two or more continuous towers whose patch features become one sequence per image (module docstring)."""

    def __init__(self, towers: list[ImageTokenizer], rule: str) -> None:
        super().__init__()
        if rule not in ENCODER_FUSIONS:
            raise unknown_choice("encoder fusion rule (model.encoder_fusion)", rule, ENCODER_FUSIONS)
        for tower in towers:
            if tower.is_discrete:
                raise ConfigError(
                    f"Tokenizer {tower.spec.name!r} is discrete: an encoder set fuses patch features."
                )
        self.towers = nn.ModuleList(towers)
        self.rule = rule
        self.sides = [grid_side(tower) for tower in towers]
        widths = [tower.embed_dim for tower in towers]
        names = [tower.spec.name for tower in towers]
        if rule == "channel" and len(set(self.sides)) > 1:
            found = ", ".join(f"{name} {side}x{side}" for name, side in zip(names, self.sides, strict=True))
            raise ConfigError(
                f"model.encoder_fusion=channel concatenates features patch by patch, but the towers' patch "
                f"grids differ ({found}); valid here: tokens or resample."
            )
        if rule == "tokens" and len(set(widths)) > 1:
            found = ", ".join(f"{name} {width}" for name, width in zip(names, widths, strict=True))
            raise ConfigError(
                f"model.encoder_fusion=tokens puts the towers' tokens in one sequence of one width, but their "
                f"widths differ ({found}); valid here: channel (same grid) or resample."
            )
        self.embed_dim = widths[0] if rule == "tokens" else sum(widths)
        self.num_tokens = sum(t.num_tokens for t in towers) if rule == "tokens" else towers[0].num_tokens
        specs = [tower.spec for tower in towers]
        self.spec = TokenizerSpec(
            name="+".join(names),
            family="+".join(spec.family for spec in specs),
            text_aware=any(spec.text_aware for spec in specs),
            kind="continuous",
            library=ENCODER_SET,
            arch=rule,
            # the side of the stacked pixel views; the set itself normalises nothing (each view arrives
            # normalised by its tower's own statistics), hence mean 0 and std 1
            image_size=max(spec.image_size for spec in specs),
            mean=[0.0, 0.0, 0.0],
            std=[1.0, 1.0, 1.0],
            interpolation=specs[0].interpolation,
            resize=specs[0].resize,
            description=f"{' + '.join(names)}, {rule} fusion",
        )
        self.base_weight_record = _combined_record(towers)

    @property
    def tower_specs(self) -> list[TokenizerSpec]:
        return [tower.spec for tower in self.towers]

    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        return build_set_transform(self.tower_specs)

    def views(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """[N, 3 * towers, S, S] -> each tower's own [N, 3, S_i, S_i] (module docstring)."""
        expected = 3 * len(self.towers)
        if pixel_values.shape[1] != expected:
            raise ConfigError(
                f"The encoder set {self.spec.name} takes pixel_values with {expected} channels (3 per tower, its "
                f"own preprocessing: vlmlab.models.tokenizers.preprocess.build_set_transform), got "
                f"{tuple(pixel_values.shape)}."
            )
        return [
            pixel_values[:, 3 * i : 3 * i + 3, : spec.image_size, : spec.image_size]
            for i, spec in enumerate(self.tower_specs)
        ]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = [tower(view) for tower, view in zip(self.towers, self.views(pixel_values), strict=True)]
        if self.rule == "tokens":
            return torch.cat(features, dim=1)  # [N, sum P_i, D]
        if self.rule == "resample":
            features = [resample_grid(f, self.sides[0]) for f in features]
        return torch.cat(features, dim=-1)  # [N, P, sum D_i]


def tower_index(name: str) -> int | None:
    """Which tower a VLM parameter name belongs to (`image_tokenizer.towers.1.model...` -> 1), else None."""
    if not name.startswith(TOWER_PREFIX):
        return None
    return int(name[len(TOWER_PREFIX) :].split(".", 1)[0])


__all__ = ["ENCODER_SET", "EncoderSet", "grid_side", "resample_grid", "tower_index"]
