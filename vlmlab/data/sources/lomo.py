"""A source whose text-only samples LoMo rewrites on the fly (in the data-loader workers).

Which samples are rewritten and how they are split depends only on (LoMo seed, source, record key), so
counting tokens from text (images left unrendered) and building the batch (rendered) always agree.
"""

from __future__ import annotations

from typing import Any

from vlmlab.data.sources.base import DataHealth, Record, Source, SourceReader


class LomoSource(Source):
    def __init__(self, inner: Source, lomo: dict[str, Any]) -> None:
        from vlmlab.data.lomo.transform import LomoConfig, LomoTransform

        self.inner = inner
        self.name = inner.name
        self.text_only = inner.text_only
        self.transform = LomoTransform(LomoConfig.from_mapping(lomo))

    def _seed(self, record: Record) -> str:
        return f"{self.name}:{self.inner.key(record)}"

    def num_samples(self) -> int | None:
        return self.inner.num_samples()

    def reader(self, reader_id: int, num_readers: int, seed: int, health: DataHealth) -> SourceReader:
        return self.inner.reader(reader_id, num_readers, seed, health)

    def key(self, record: Record) -> str:
        return self.inner.key(record)

    def where(self, record: Record) -> str:
        return self.inner.where(record)

    def group(self, record: Record) -> str:
        """LoMo's Table 5 groups: multimodal, rendered (text-only rewritten) or text_only."""
        if not self.text_only:
            return "multimodal"
        return "rendered" if self.transform.selects(self._seed(record)) else "text_only"

    def text_sample(self, record: Record) -> dict[str, Any]:
        return self.transform(self.inner.text_sample(record), self._seed(record), render_images=False)

    def full_sample(self, record: Record) -> dict[str, Any]:
        return self.transform(self.inner.full_sample(record), self._seed(record))
