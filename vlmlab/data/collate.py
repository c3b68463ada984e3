"""Encoded samples -> batches in the model's batch contract (vlmlab/models/vlm.py), padded or packed.

Batch dict (both modes; every value a tensor except `num_real_tokens`):
- `input_ids` [B, T] long, `labels` [B, T] long (-100 where not scored),
- `segment_ids` [B, T] long: 0, 1, 2, ... for the samples of a row, -1 on padding,
- `position_ids` [B, T] long: restart at 0 at each sample's first token (padding: 0, 1, ... per run, as
  `vlmlab.models.fusion.context.positions_from_segments` computes),
- `pixel_values` [N, 3, H, W] float: every image in placeholder order (row by row, sample by sample),
- `num_real_tokens` int: non-padding positions, for throughput and real-token-fraction logging;
- `shape` dict of ints, counted here on the CPU so that the training step never waits on the device for
  them: `tokens` (= num_real_tokens), `square_lengths` (the sum of every sample's length squared: what
  attention within samples costs), `images_per_row` (images, or tiles, per row) and `scored` (positions whose
  next token is scored) — the model's FLOPs per step (vlmlab/models/flops.py).

Packing several samples into one row wastes no compute on padding. The attention mask built from
`segment_ids` keeps samples apart, and each sample's first label is set to -100 so the last token of one
sample is never trained to predict the first token of the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import torch

from vlmlab.errors import ConfigError

IGNORE_INDEX = -100
DEFAULT_MAX_OPEN_ROWS = 128
DEFAULT_PACK_BUFFER = 64
T = TypeVar("T")


def _pixels(encoded: Sequence[dict[str, Any]]) -> torch.Tensor:
    tensors = [e["pixel_values"] for e in encoded if e["pixel_values"].shape[0] > 0]
    if tensors:
        return torch.cat(tensors)
    return encoded[0]["pixel_values"] if encoded else torch.zeros((0, 3, 0, 0))


def _positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """Per-row positions restarting at 0 wherever the segment id changes (mirrors the model's default)."""
    batch, length = segment_ids.shape
    index = torch.arange(length).expand(batch, length)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - start_index


def image_tiles(encoded: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """`{"image_tiles": [N images]}` (each image's thumbnail + tiles, in pixel order) when the samples are
    tiled, else nothing."""
    if not encoded or "image_tiles" not in encoded[0]:
        return {}
    return {"image_tiles": torch.cat([e["image_tiles"] for e in encoded])}


def _batch(
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    segment_ids: torch.Tensor,
    pixels: torch.Tensor,
    images_per_row: list[int],
    tiles: dict[str, torch.Tensor] | None = None,
) -> dict:
    real = int((segment_ids >= 0).sum())
    square_lengths = sum(int((torch.bincount(row[row >= 0]) ** 2).sum()) for row in segment_ids)
    return {
        **(tiles or {}),
        "input_ids": input_ids,
        "labels": labels,
        "segment_ids": segment_ids,
        "position_ids": _positions(segment_ids),
        "pixel_values": pixels,
        "num_real_tokens": real,
        "shape": {
            "tokens": real,
            "square_lengths": square_lengths,
            "images_per_row": images_per_row,
            "scored": int((labels[:, 1:] != IGNORE_INDEX).sum()),
        },
    }


def _images(sample: dict[str, Any]) -> int:
    return int(sample["pixel_values"].shape[0])


def collate_padded(encoded: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """One sample per row, right-padded to the longest sample of the batch."""
    if not encoded:
        raise ConfigError("collate_padded needs at least one encoded sample.")
    length = max(len(e["input_ids"]) for e in encoded)
    input_ids = torch.full((len(encoded), length), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long)
    segment_ids = torch.full((len(encoded), length), -1, dtype=torch.long)
    for row, sample in enumerate(encoded):
        n = len(sample["input_ids"])
        input_ids[row, :n] = sample["input_ids"]
        labels[row, :n] = sample["labels"]
        labels[row, 0] = IGNORE_INDEX
        segment_ids[row, :n] = 0
    images = [_images(sample) for sample in encoded]
    return _batch(input_ids, labels, segment_ids, _pixels(encoded), images, image_tiles(encoded))


class RowPacker(Generic[T]):
    """Best-fit-decreasing packing over a buffer, online: items of known length -> rows of `max_length`.

    Items are collected `buffer_size` at a time; each full buffer is sorted longest first (ties keep
    arrival order) and every item goes to the fullest open row it fits in, or opens a new row. A row is
    emitted as soon as its free space is smaller than the shortest item seen so far (nothing can fill it
    any more) or, when more than `max_open_rows` rows are open, the fullest one is. Sorting is what lifts
    the fill from ~93% (plain best fit) to ~95-96% on a varied synthetic stage-2 mix, about what offline
    best-fit-decreasing reaches. Memory and delay stay bounded on an endless stream, and the output
    depends only on the input sequence, which exact resumption needs.
    """

    def __init__(
        self,
        max_length: int,
        max_open_rows: int = DEFAULT_MAX_OPEN_ROWS,
        buffer_size: int = DEFAULT_PACK_BUFFER,
    ) -> None:
        if max_open_rows < 1 or buffer_size < 1:
            raise ConfigError(
                f"max_open_rows and buffer_size must be >= 1, got {max_open_rows}, {buffer_size}."
            )
        self.max_length = max_length
        self.max_open_rows = max_open_rows
        self.buffer_size = buffer_size
        self._buffer: list[tuple[int, T]] = []
        self._open: list[tuple[int, list[T]]] = []  # (tokens used, items), in opening order
        self._shortest = max_length  # the shortest item so far: rows with less room are done

    def add(self, item: T, length: int) -> list[list[T]]:
        """Queue one item; return the rows this completed (usually none)."""
        if not 0 < length <= self.max_length:
            raise ConfigError(f"cannot pack a sample of {length} tokens into rows of {self.max_length}.")
        self._buffer.append((length, item))
        return self._drain() if len(self._buffer) >= self.buffer_size else []

    def flush(self) -> list[list[T]]:
        """Every remaining item, in rows (the end of a finite input)."""
        closed = self._drain()
        closed.extend(items for _, items in self._open)
        self._open = []
        return closed

    def state_dict(self) -> dict[str, Any]:
        """The queued items and open rows (plain lists: checkpointable when the items are)."""
        return {
            "buffer": [[length, item] for length, item in self._buffer],
            "open": [[used, list(items)] for used, items in self._open],
            "shortest": self._shortest,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._buffer = [(int(length), item) for length, item in state["buffer"]]
        self._open = [(int(used), list(items)) for used, items in state["open"]]
        self._shortest = int(state["shortest"])

    def _drain(self) -> list[list[T]]:
        ordered = sorted(range(len(self._buffer)), key=lambda i: (-self._buffer[i][0], i))
        items, self._buffer = [self._buffer[i] for i in ordered], []
        closed: list[list[T]] = []
        for length, item in items:
            self._shortest = min(self._shortest, length)
            best = -1
            for index, (used, _) in enumerate(self._open):
                if used + length <= self.max_length and (best < 0 or used > self._open[best][0]):
                    best = index
            if best < 0:
                self._open.append((0, []))
                best = len(self._open) - 1
            used, row = self._open[best]
            row.append(item)
            self._open[best] = (used + length, row)
            if self.max_length - (used + length) < self._shortest:
                closed.append(self._open.pop(best)[1])
            elif len(self._open) > self.max_open_rows:
                fullest = max(range(len(self._open)), key=lambda i: (self._open[i][0], -i))
                closed.append(self._open.pop(fullest)[1])
        return closed


def pack_rows(
    encoded: Sequence[dict[str, Any]],
    max_length: int,
    max_open_rows: int = DEFAULT_MAX_OPEN_ROWS,
    buffer_size: int = DEFAULT_PACK_BUFFER,
) -> list[list[dict[str, Any]]]:
    """Group encoded samples into rows of at most `max_length` tokens; each sample lands in exactly one row."""
    packer: RowPacker[dict[str, Any]] = RowPacker(max_length, max_open_rows, buffer_size)
    rows: list[list[dict[str, Any]]] = []
    for sample in encoded:
        rows.extend(packer.add(sample, len(sample["input_ids"])))
    return rows + packer.flush()


def collate_packed(rows: Sequence[Sequence[dict[str, Any]]], max_length: int, pad_id: int) -> dict[str, Any]:
    """Rows of samples -> one batch of `len(rows)` rows of exactly `max_length` tokens."""
    if not rows:
        raise ConfigError("collate_packed needs at least one row.")
    input_ids = torch.full((len(rows), max_length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), max_length), IGNORE_INDEX, dtype=torch.long)
    segment_ids = torch.full((len(rows), max_length), -1, dtype=torch.long)
    for row, samples in enumerate(rows):
        start = 0
        for segment, sample in enumerate(samples):
            n = len(sample["input_ids"])
            if start + n > max_length:
                raise ConfigError(f"row {row} holds {start + n} tokens, more than max_length={max_length}.")
            input_ids[row, start : start + n] = sample["input_ids"]
            labels[row, start : start + n] = sample["labels"]
            labels[row, start] = IGNORE_INDEX  # nothing is predicted across a sample boundary
            segment_ids[row, start : start + n] = segment
            start += n
    flat = [s for samples in rows for s in samples]
    images = [sum(_images(sample) for sample in samples) for samples in rows]
    return _batch(input_ids, labels, segment_ids, _pixels(flat), images, image_tiles(flat))


def real_token_fraction(batch: dict[str, Any]) -> float:
    """Share of the batch's positions that hold real tokens (not padding)."""
    segment_ids = batch["segment_ids"]
    return float((segment_ids >= 0).sum()) / max(segment_ids.numel(), 1)


__all__ = [
    "DEFAULT_MAX_OPEN_ROWS",
    "DEFAULT_PACK_BUFFER",
    "IGNORE_INDEX",
    "RowPacker",
    "collate_packed",
    "collate_padded",
    "pack_rows",
    "real_token_fraction",
]
