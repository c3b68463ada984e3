"""Shared values and helpers of the data tests (the `tok` / `encoder` fixtures live in conftest.py)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vlmlab.config import DataSourceConfig

IMAGE_ID, VOCAB, TPI, SIZE = 511, 512, 4, 32
TENSOR_KEYS = ("input_ids", "labels", "segment_ids", "position_ids", "pixel_values")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A picklable, deterministic transform: [3, SIZE, SIZE] in [0, 1]."""
    array = np.asarray(image.convert("RGB").resize((SIZE, SIZE)), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def mix(weights=(2.0, 1.0, 1.0), **extra) -> list[DataSourceConfig]:
    return [
        DataSourceConfig(
            name="vqa", task="spatialmap", mode="vqa", weight=weights[0], image_size=SIZE, **extra
        ),
        DataSourceConfig(name="tqa", task="grid", mode="tqa", weight=weights[1], num_samples=40),
        DataSourceConfig(name="cap", task="ring", mode="caption", weight=weights[2], image_size=SIZE),
    ]


def assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in TENSOR_KEYS:
        assert torch.equal(a[key], b[key]), key
    assert a["num_real_tokens"] == b["num_real_tokens"]
