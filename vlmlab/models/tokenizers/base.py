"""What the rest of vlmlab may rely on from an image tokenizer.

A tokenizer turns preprocessed pixels `[batch, 3, H, W]` into a sequence per image:
- continuous tokenizers return patch features `[batch, num_tokens, embed_dim]` (float);
- discrete tokenizers return token ids `[batch, num_tokens]` (long) in `[0, codebook_size)`.

Every tokenizer is described by a `TokenizerSpec`, loaded from one YAML file in `vlmlab/presets/tokenizer/`, so a
new tokenizer or size is a data change, not a code change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from vlmlab.config import IMAGE_RESIZE_RULES
from vlmlab.errors import ConfigError, unknown_choice

TokenizerKind = Literal["continuous", "discrete"]
KINDS = ("continuous", "discrete")


@dataclass
class TokenizerSpec:
    """One image tokenizer variant (a registry entry). Field docs live in vlmlab/presets/tokenizer/README.md."""

    name: str
    family: str  # clip | siglip2 | aimv2 | dinov3 | titok | var
    text_aware: bool  # trained with some form of text supervision (the paper's main split)
    kind: str  # continuous | discrete
    library: str  # which backend builds it: open_clip | timm | transformers | titok | var
    arch: str  # the library's architecture name
    image_size: int
    mean: list[float]
    std: list[float]
    interpolation: str = "bicubic"
    # Where the real weights come from: a library tag / hub id, or a local checkpoint file or folder.
    # None means random initialisation (tests, quickstart).
    pretrained: str | None = None
    # Keyword overrides of the architecture (tiny test variants shrink width/depth here).
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    # Which block's output is used as tokens: -1 is the last block (after the final norm), -2 the penultimate.
    feature_layer: int = -1
    description: str = ""
    # how an image becomes the square input (vlmlab.config.IMAGE_RESIZE_RULES): set from model.image_resize
    # when the model is built, so the data transform and the export processor read it from the one spec
    resize: str = "crop"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise unknown_choice(f"tokenizer kind (in tokenizer {self.name!r})", self.kind, KINDS)
        if self.image_size <= 0:
            raise ConfigError(f"tokenizer {self.name!r}: image_size must be positive, got {self.image_size}.")
        if self.resize not in IMAGE_RESIZE_RULES:
            raise unknown_choice(
                f"image resize rule (tokenizer {self.name!r})", self.resize, IMAGE_RESIZE_RULES
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"tokenizer {self.name!r}: mean and std need 3 values (RGB).")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> TokenizerSpec:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise unknown_choice(f"tokenizer field (in {source})", unknown[0], names)
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in data
        ]
        if missing:
            raise ConfigError(f"Tokenizer spec {source} lacks required field(s): {', '.join(missing)}.")
        return cls(**data)

    def replace(self, **changes: Any) -> TokenizerSpec:
        return dataclasses.replace(self, **changes)


class ImageTokenizer(nn.Module):
    """Base class: subclasses set the attributes below in `__init__` and implement `forward`."""

    spec: TokenizerSpec
    num_tokens: int  # tokens per image at spec.image_size (the model's effective size)
    embed_dim: int  # feature width (continuous); embedding width hint for discrete tokenizers
    codebook_size: int = 0  # discrete only
    # what the pretrained weights were loaded from (vlmlab/models/provenance.py); None: random init
    base_weight_record: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def is_discrete(self) -> bool:
        return self.spec.kind == "discrete"

    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> this tokenizer's `pixel_values` row: the data side's transform (an encoder set stacks
        each tower's own view, vlmlab/models/tokenizers/encoder_set.py)."""
        from vlmlab.models.tokenizers.preprocess import build_image_transform

        return build_image_transform(self.spec)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
