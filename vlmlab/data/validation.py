"""Validation sets for answer accuracy: prompts to generate from, with the gold answers and options.

Accuracy is measured the way the paper measures it: the model generates after the prompt and
`vlmlab.data.synthetic.extract_final_answer(response, options)` picks the option it committed to. A
validation set is therefore a list of encoded *prompts* (ending with the assistant header) plus answers;
`collate_prompts` left-pads them so every prompt ends at the last column and generation appends to all
rows at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlmlab.config import DataSourceConfig
from vlmlab.data.collate import image_tiles
from vlmlab.data.encode import SampleEncoder
from vlmlab.data.samples import synthetic_to_sample
from vlmlab.data.sources import open_source, source_name
from vlmlab.data.synthetic.generate import DEFAULT_IMAGE_SIZE, generate_split
from vlmlab.errors import ConfigError


def _val_samples(source: DataSourceConfig, num_samples: int, seed: int, image_size: int | None):
    name = source_name(source)
    if source.kind == "synthetic":
        size = source.image_size or image_size or DEFAULT_IMAGE_SIZE
        raws = generate_split(
            source.task,
            source.split,
            num_samples,
            seed=seed,
            image_size=size,
            image=source.mode != "tqa",
            **dict(source.difficulty or {}),
        )
        for raw in raws:
            yield synthetic_to_sample(raw, source.mode, source=name)
    else:
        yield from open_source(source, seed=seed, image_size=image_size).samples_in_order(num_samples)


def build_val_set(
    source: DataSourceConfig,
    encoder: SampleEncoder,
    num_samples: int,
    seed: int = 0,
    *,
    image_size: int | None = None,
    max_prompt_length: int | None = None,
) -> list[dict[str, Any]]:
    """The first `num_samples` samples of `source` as `{"id", "input_ids", "pixel_values", "answer",
    "options", "source"}` items (prompt only).

    Synthetic sources generate `split` with generator seed `seed` (train/test/OOD never share a layout,
    whatever the seeds); webdataset sources take their first samples in shard order, which must carry
    an `answer`. Prompts longer than `max_prompt_length` (default: the encoder's max_length) after
    left-truncation of their text are skipped, since the model could not see the question.
    """
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}.")
    items = []
    name = source_name(source)
    for sample in _val_samples(source, num_samples, seed, image_size):
        if not isinstance(sample.get("answer"), str):
            raise ConfigError(
                f"validation source {name!r}: sample {sample.get('id')!r} has no 'answer' to score against."
            )
        encoded = encoder.encode_prompt(sample, max_prompt_length)
        if encoded is None:
            continue
        items.append(
            {
                **encoded,  # input_ids, pixel_values (and an open-weight processor's other tensors)
                "id": sample["id"],
                "answer": sample["answer"],
                "options": sample.get("options"),
                "answers": sample.get("answers"),  # every reference answer (official metrics)
                "benchmark": sample.get("benchmark"),  # whose official metric scores it
                "source": name,
            }
        )
    return items


def collate_prompts(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts for batched generation.

    Returns `input_ids` [B, T], `segment_ids` [B, T] (0 on the prompt, -1 on the left padding: the
    model's attention mask), `position_ids` [B, T] (0 at each prompt's first real token, so a padded
    prompt is positioned exactly like an unpadded one) and `pixel_values` [N, 3, H, W] in row order.
    """
    if not items:
        raise ConfigError("collate_prompts needs at least one prompt.")
    length = max(len(item["input_ids"]) for item in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    segment_ids = torch.full((len(items), length), -1, dtype=torch.long)
    position_ids = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        input_ids[row, length - n :] = item["input_ids"]
        segment_ids[row, length - n :] = 0
        position_ids[row, length - n :] = torch.arange(n)
    pixels = [item["pixel_values"] for item in items if item["pixel_values"].shape[0] > 0]
    pixel_values = torch.cat(pixels) if pixels else items[0]["pixel_values"]
    return {
        "input_ids": input_ids,
        "segment_ids": segment_ids,
        "position_ids": position_ids,
        "pixel_values": pixel_values,
        **image_tiles(items),  # tiled prompts: each image's thumbnail + tiles
    }


__all__ = ["build_val_set", "collate_prompts"]
