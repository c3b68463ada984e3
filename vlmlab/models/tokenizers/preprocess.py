"""Each tokenizer's own image preprocessing, built from its spec (runs inside data-loader workers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torchvision.transforms import v2 as T

from vlmlab.errors import ConfigError, unknown_choice

if (
    TYPE_CHECKING
):  # specs are only read here; the tokenizers (base.py) build their transforms from this module
    from vlmlab.models.tokenizers.base import TokenizerSpec

# the `library` of an encoder set's spec (vlmlab/models/tokenizers/encoder_set.py): its views, not one image
ENCODER_SET = "encoder_set"

_INTERPOLATIONS = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
    "lanczos": T.InterpolationMode.LANCZOS,
}

# Libraries whose release evaluates at a short side of `ratio * image_size` before the centre crop, resizing
# the PIL image. VAR (FoundationVision/VAR utils/data.py, `build_dataset`): `Resize(round(1.125 * 256))` with
# Lanczos on the PIL image, `CenterCrop(256)`, `ToTensor`, x * 2 - 1. Resizing a tensor instead is not the same
# filter (torchvision's tensor Lanczos is up to 43/255 off PIL's on noise images), so these resize before
# `ToImage`.
_RELEASE_SHORT_SIDE_RATIO = {"var": 1.125}


def _to_unit_range(image: Image.Image) -> torch.Tensor:
    """PIL image -> float `[3, H, W]` in [0, 1] by dividing by 255, as torchvision's `ToTensor` does.

    `ToDtype(scale=True)` multiplies by 1/255 instead, which rounds some values one ulp differently.
    """
    return T.functional.pil_to_tensor(image).to(torch.float32).div(255)


def release_short_side(spec: TokenizerSpec) -> int:
    """The short side (px) the spec's release resizes an image to before its `image_size` centre crop."""
    return round(_RELEASE_SHORT_SIDE_RATIO.get(spec.library, 1.0) * spec.image_size)


def letterbox_fill(spec: TokenizerSpec) -> tuple[int, int, int]:
    """The padding colour of `letterbox`: the normalisation mean in 8-bit RGB (Prismatic's
    `LetterboxPad(tuple(int(x * 255) for x in mean))`, rounded here), so padding normalises to about 0."""
    return tuple(round(255 * m) for m in spec.mean)


class LetterboxPad:
    """Pad a PIL image to a square with `fill`, the content centred (the extra pixel of an odd margin goes to
    the right / bottom, as Prismatic's `(max_wh - w) // 2` left / top padding does)."""

    def __init__(self, fill: tuple[int, int, int]) -> None:
        self.fill = fill

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        side = max(width, height)
        left, top = (side - width) // 2, (side - height) // 2
        return T.functional.pad(image, [left, top, side - width - left, side - height - top], fill=self.fill)


def build_image_transform(spec: TokenizerSpec) -> Callable[[Image.Image], torch.Tensor]:
    """Frame the image as the spec's square `image_size`, scale to [0, 1] and normalise with the spec's stats.

    The framing is `spec.resize` (model.image_resize): `crop` resizes the short side and centre-crops (below);
    `resize` squashes the image to `image_size` x `image_size` ignoring its aspect ratio; `letterbox` first pads
    it to a square with the mean colour (`LetterboxPad`), then resizes. Prismatic VLMs (Karamcheti et al.
    2024, section 4.3) compares the three.

    This is the evaluation transform the released tokenizers were trained to expect (no augmentation). For
    the libraries in `_RELEASE_SHORT_SIDE_RATIO` (VAR) the short side goes to the release's larger size and the
    resize and crop run on the PIL image, as the release does; the others keep resizing the uint8 tensor
    straight to `image_size` (changing their filter would change the pixels of every existing run).
    """
    _refuse_set(spec)
    if spec.interpolation not in _INTERPOLATIONS:
        raise unknown_choice(f"interpolation (tokenizer {spec.name!r})", spec.interpolation, _INTERPOLATIONS)
    interpolation = _INTERPOLATIONS[spec.interpolation]
    if spec.resize != "crop":
        square = T.Resize((spec.image_size, spec.image_size), interpolation=interpolation, antialias=True)
        pad = [T.RGB(), LetterboxPad(letterbox_fill(spec))] if spec.resize == "letterbox" else [T.RGB()]
        framing = [*pad, T.ToImage(), square, T.ToDtype(torch.float32, scale=True)]
        return T.Compose([*framing, T.Normalize(mean=list(spec.mean), std=list(spec.std))])
    resize = T.Resize(release_short_side(spec), interpolation=interpolation, antialias=True)
    crop = T.CenterCrop(spec.image_size)
    # RGB before the resize: a palette or grey image is filtered in RGB, as the release's `convert("RGB")` does
    framing = (
        [T.RGB(), resize, crop, _to_unit_range]
        if spec.library in _RELEASE_SHORT_SIDE_RATIO
        else [T.ToImage(), T.RGB(), resize, crop, T.ToDtype(torch.float32, scale=True)]
    )
    # for mean = std = 0.5 this is bit-for-bit VAR's x * 2 - 1: both round the same exact value 2x - 1
    return T.Compose([*framing, T.Normalize(mean=list(spec.mean), std=list(spec.std))])


def build_tile_transform(spec: TokenizerSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    """AnyRes tiles (uint8 `[n, 3, image_size, image_size]`, already cut to size by vlmlab/data/tiling.py)
    -> [0, 1] -> the spec's normalisation; no resize or crop, a tile is the tokenizer's input as it is."""
    _refuse_set(spec)
    return T.Compose(
        [T.ToDtype(torch.float32, scale=True), T.Normalize(mean=list(spec.mean), std=list(spec.std))]
    )


def _refuse_set(spec: TokenizerSpec) -> None:
    # an encoder set's spec describes the stacked views, not one tower's input: its transform is StackedViews
    if spec.library == ENCODER_SET:
        raise ConfigError(
            f"{spec.name} is an encoder set: its images go through each tower's own preprocessing "
            "(build_set_transform), not one transform."
        )


class StackedViews:
    """An encoder set's image transform (vlmlab/models/tokenizers/encoder_set.py): each tower's own transform
    (`build_image_transform` of its spec) on the same image, the views stacked on the channel axis of one
    zero canvas [3 * towers, S, S], S the largest tower input, tower i's view at the top-left of channels
    3i..3i+2. A class, not a closure, so data-loader workers can pickle it."""

    def __init__(self, specs: list[TokenizerSpec]) -> None:
        self.sizes = [spec.image_size for spec in specs]
        self.transforms = [build_image_transform(spec) for spec in specs]

    def __call__(self, image: Image.Image) -> torch.Tensor:
        side = max(self.sizes)
        canvas = torch.zeros((3 * len(self.sizes), side, side))
        for i, (size, transform) in enumerate(zip(self.sizes, self.transforms, strict=True)):
            canvas[3 * i : 3 * i + 3, :size, :size] = transform(image)
        return canvas


def build_set_transform(specs: list[TokenizerSpec]) -> Callable[[Image.Image], torch.Tensor]:
    """The data transform of an encoder set: every tower sees exactly its own preprocessing (`StackedViews`)."""
    return StackedViews(specs)
