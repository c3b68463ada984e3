"""Synthetic SpatialMap / Grid / Ring samples (Appendix C), generated on the fly from their index.

A fixed split (`num_samples`) is the same dataset whatever the training seed (generator seed
`config.seed`, 0 by default like the shards `vlmlab data synth` writes): the seed changes the order only.
An endless source (`num_samples: null`) draws fresh samples from a generator seeded with the training
seed. Both are read by `IndexedReader` (base.py): a counter per reader, so resuming costs one permutation
at most.
"""

from __future__ import annotations

from typing import Any

from vlmlab.config import DataSourceConfig
from vlmlab.data.samples import SYNTHETIC_MODES, synthetic_to_sample
from vlmlab.data.sources.base import DataHealth, IndexedReader, Record, Source, source_name
from vlmlab.data.synthetic.generate import (
    DEFAULT_IMAGE_SIZE,
    build_sample,
    check_image_size,
    get_task,
    resolve_params,
)
from vlmlab.errors import ConfigError, unknown_choice


class SyntheticSource(Source):
    def __init__(self, config: DataSourceConfig, seed: int, image_size: int | None) -> None:
        self.config = config
        self.name = source_name(config)
        self.mode = config.mode
        get_task(config.task)
        if config.mode not in SYNTHETIC_MODES:
            raise unknown_choice(f"synthetic mode (source {self.name!r})", config.mode, SYNTHETIC_MODES)
        self.text_only = config.mode == "tqa"
        self.params = resolve_params(config.task, config.split, **dict(config.difficulty or {}))
        self.image_size = check_image_size(config.image_size or image_size or DEFAULT_IMAGE_SIZE)
        if config.num_samples is not None and config.num_samples < 1:
            raise ConfigError(
                f"source {self.name!r}: num_samples must be >= 1 or null, got {config.num_samples}."
            )
        self.size: int | None = config.num_samples
        self.generator_seed = config.seed if self.size is not None else seed
        if config.response not in ("answer", "solution"):
            raise unknown_choice(f"response (source {self.name!r})", config.response, ("answer", "solution"))

    def num_samples(self) -> int | None:
        return self.size

    def reader(self, reader_id: int, num_readers: int, seed: int, health: DataHealth) -> IndexedReader:
        return IndexedReader(self.name, self.size, reader_id, num_readers, seed, health)

    def key(self, record: Record) -> str:
        return str(record["index"])

    def where(self, record: Record) -> str:
        return f"{self.config.task}/{self.config.split}"

    def _raw(self, index: int) -> dict[str, Any]:
        c = self.config
        return build_sample(
            c.task, c.split, index, self.generator_seed, self.image_size, self.params, image=False
        )

    def text_sample(self, record: Record) -> dict[str, Any]:
        """The sample with its image left as None (enough to count tokens)."""
        raw = self._raw(record["index"])
        return synthetic_to_sample(raw, self.mode, source=self.name, response=self.config.response)

    def full_sample(self, record: Record) -> dict[str, Any]:
        """The sample with its image rendered."""
        raw = self._raw(record["index"])
        if self.mode != "tqa":
            raw["image"] = get_task(self.config.task).render(raw["meta"], self.image_size)
        return synthetic_to_sample(raw, self.mode, source=self.name, response=self.config.response)
