"""The image processor `vlmlab export` writes for a tokenizer whose transform resizes the PIL image (VAR).

vlmlab reproduces VAR's release transform (FoundationVision/VAR utils/data.py): the short side to
`short_side` = round(1.125 x the crop) with Pillow's Lanczos, torchvision's centre crop, x / 255, then
(x - mean) / std. No stock transformers processor computes these pixels:

- transformers 5's `CLIPImageProcessor` (the torchvision backend `AutoImageProcessor` picks by default)
  resizes a uint8 tensor with torch's antialiased kernel, whose int16 fixed-point weights (at most 15
  bits) round differently from Pillow's 22-bit ones: each pass is one level off at some pixels, two after
  both;
- every stock backend (the PIL one too, `CLIPImageProcessorPil`) puts the crop at floor((size - crop) / 2),
  where torchvision rounds half to even: one pixel apart (a different crop) when size - crop = 3 (mod 4).

This class does exactly what vlmlab's `build_image_transform` does for such a tokenizer, with Pillow and
NumPy only, so the folder processes images without vlmlab (its model still needs vlmlab):

    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)  # a LlavaProcessor with this
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import make_flat_list_of_images


def _resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at `short_side`, the long one truncated as torchvision's Resize."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def _as_pil(image: Any) -> Image.Image:
    """A PIL image from a PIL image or a uint8 array / tensor (H x W x C or C x H x W, C in 1, 3, 4)."""
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image.numpy() if hasattr(image, "numpy") else image)
    if array.dtype != np.uint8:
        raise ValueError(
            f"image dtype {array.dtype} is not supported; pass a PIL image or a uint8 array (0-255)."
        )
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels first -> last
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"image shape {array.shape} is not supported; pass H x W x C or C x H x W with C in 1, 3, 4."
        )
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


class VlmlabImageProcessor(BaseImageProcessor):
    """Short side to `short_side` (Pillow, `resample`), `crop_size` centre crop, x / 255, (x - mean) / std."""

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        short_side: int = 288,
        crop_size: int = 256,
        resample: int = int(Image.Resampling.LANCZOS),
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if int(crop_size) > int(short_side):
            # the crop would need padding, which vlmlab's transform never does (its short side >= the crop)
            raise ValueError(f"crop_size {crop_size} must not exceed short_side {short_side}.")
        self.short_side = int(short_side)
        self.crop_size = int(crop_size)
        self.resample = int(resample)
        self.image_mean = [float(value) for value in (image_mean or [0.5, 0.5, 0.5])]
        self.image_std = [float(value) for value in (image_std or [0.5, 0.5, 0.5])]

    def _pixels(self, image: Any) -> np.ndarray:
        """One image as float32 [3, crop, crop], bit for bit vlmlab's transform."""
        # vlmlab's encoder converts to RGB first (an alpha channel is dropped, not composited)
        image = _as_pil(image).convert("RGB")
        size = _resized_size(image.width, image.height, self.short_side)
        if size != image.size:  # torchvision skips a resize to the same size
            image = image.resize(size, resample=self.resample)
        # torchvision's centre crop: Python's round (half to even), not floor as transformers' crops
        top = int(round((image.height - self.crop_size) / 2.0))
        left = int(round((image.width - self.crop_size) / 2.0))
        image = image.crop((left, top, left + self.crop_size, top + self.crop_size))
        # float32 x / 255 (correctly rounded, as torchvision's ToTensor), then float32 (x - mean) / std
        array = np.asarray(image, dtype=np.float32) / np.float32(255)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        return np.ascontiguousarray(((array - mean) / std).transpose(2, 0, 1))

    def preprocess(self, images: Any, return_tensors: str | None = None, **kwargs: Any) -> BatchFeature:
        """`pixel_values` [N, 3, crop, crop] of an image or a (nested) list of images."""
        # the transform is fixed: an option it would silently ignore (a size, a device) is refused instead;
        # LlavaProcessor passes none (the options it forwards are None unless its caller set them)
        unknown = sorted(key for key, value in kwargs.items() if value is not None)
        if unknown:
            raise ValueError(
                f"VlmlabImageProcessor takes no option(s) {', '.join(unknown)}: its transform is fixed by the "
                "exported model (short_side, crop_size, resample, image_mean, image_std)."
            )
        pixels = [self._pixels(image) for image in make_flat_list_of_images(images)]
        return BatchFeature(data={"pixel_values": np.stack(pixels)}, tensor_type=return_tensors)


__all__ = ["VlmlabImageProcessor"]
