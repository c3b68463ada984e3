"""What every training source provides, and the bookkeeping of bad data.

A source turns a `DataSourceConfig` into
- `reader(reader_id, num_readers, seed)`: an endless, sequential iterator of *records* (small, plain
  values: a synthetic index, a webdataset sample's member bytes) over this reader's disjoint share of the
  data, with a `state_dict()` / `load_state_dict()` that restores its position in constant time;
- `text_sample(record)`: the sample with images left as None (enough to count tokens, nothing decoded);
- `full_sample(record)`: the sample with decoded images.

Records are what the packer holds between reading and emitting a row, so they travel inside the stream's
checkpointed state: they must be made of str / int / float / bytes / lists / dicts (loadable with
`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmlab.config import DataSourceConfig
from vlmlab.errors import ConfigError

log = logging.getLogger("vlmlab.data")
Record = dict[str, Any]
MIN_BAD_FOR_ERROR = 10  # a handful of bad samples never stops a run, whatever the fraction
LOGGED_PER_SOURCE = 20  # bad samples logged one by one per reader and source; then every 1000th


class BadSample(Exception):
    """This record cannot be used (undecodable image, broken schema, ...): skip it and count it."""


def source_name(config: DataSourceConfig) -> str:
    """The name shown in logs and metrics: `name`, else a description of the source."""
    if config.name:
        return config.name
    if config.kind == "synthetic":
        return f"{config.task}-{config.mode}-{config.split}"
    return Path(str(config.path)).name.split(".")[0] if config.path else config.kind


class Source:
    """Base class of a source kind (see the module docstring)."""

    name: str
    text_only: bool = False  # holds text-only samples (LoMo rewrites these; Table 5's groups)

    def num_samples(self) -> int | None:
        """Samples per epoch when known (fixed split, manifest), else None (endless or uncounted)."""
        return None

    def reader(self, reader_id: int, num_readers: int, seed: int, health: DataHealth) -> SourceReader:
        raise NotImplementedError

    def key(self, record: Record) -> str:
        """A stable identity of the record within the source (LoMo seeds, logs)."""
        raise NotImplementedError

    def where(self, record: Record) -> str:
        """Where the record came from, for bad-data reports (shard URL or split)."""
        return self.name

    def text_sample(self, record: Record) -> dict[str, Any]:
        raise NotImplementedError

    def full_sample(self, record: Record) -> dict[str, Any]:
        raise NotImplementedError


class SourceReader(Iterator[Record]):
    """One reader's endless, resumable walk over its share of a source."""

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class DataHealth:
    """Counts of samples read and skipped, per source, reason and place (shard), in one reader.

    `check()` turns too many bad samples into a ConfigError naming the worst place: more than
    `max_bad_fraction` of a source's samples and at least MIN_BAD_FOR_ERROR of them.
    """

    def __init__(self, max_bad_fraction: float, reader_id: int = 0) -> None:
        if not 0 <= max_bad_fraction <= 1:
            raise ConfigError(f"data.max_bad_fraction must be in [0, 1], got {max_bad_fraction}.")
        self.max_bad_fraction = max_bad_fraction
        self.reader_id = reader_id
        self.seen: dict[str, int] = {}
        self.bad: dict[str, dict[str, int]] = {}  # source -> reason -> count
        self.places: dict[str, dict[str, int]] = {}  # source -> shard / split -> bad count
        self.dropped: dict[str, int] = {}  # source -> samples longer than max_length (not bad data)

    def read(self, source: str, count: int = 1) -> None:
        self.seen[source] = self.seen.get(source, 0) + count

    def drop(self, source: str) -> None:
        """A sample too long for max_length even after truncating its prompt text: left out, counted."""
        self.dropped[source] = self.dropped.get(source, 0) + 1
        if self.dropped[source] in (1, 10, 100) or self.dropped[source] % 10000 == 0:
            log.warning(
                "source %r (reader %d): %d sample(s) left out as longer than max_length so far",
                source,
                self.reader_id,
                self.dropped[source],
            )

    def skip(self, source: str, where: str, key: str, reason: str, detail: str = "") -> None:
        reasons = self.bad.setdefault(source, {})
        reasons[reason] = reasons.get(reason, 0) + 1
        places = self.places.setdefault(source, {})
        places[where] = places.get(where, 0) + 1
        total = sum(reasons.values())
        if total <= LOGGED_PER_SOURCE or total % 1000 == 0:
            log.warning(
                "source %r (reader %d): skipped %s sample %r in %s%s [%d skipped so far]",
                source,
                self.reader_id,
                reason,
                key,
                where,
                f": {detail}" if detail else "",
                total,
            )
        self.check(source)

    def num_bad(self, source: str) -> int:
        return sum(self.bad.get(source, {}).values())

    def check(self, source: str) -> None:
        bad, seen = self.num_bad(source), max(self.seen.get(source, 0), 1)
        if bad >= MIN_BAD_FOR_ERROR and bad > self.max_bad_fraction * seen:
            worst, count = max(self.places[source].items(), key=lambda item: item[1])
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.bad[source].items()))
            raise ConfigError(
                f"source {source!r}: {bad} of {seen} samples read are bad ({reasons}), more than "
                f"data.max_bad_fraction={self.max_bad_fraction}; worst: {worst} ({count} bad). Fix or remove "
                "that data, or raise data.max_bad_fraction."
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "seen": dict(self.seen),
            "bad": {s: dict(r) for s, r in self.bad.items()},
            "places": {s: dict(p) for s, p in self.places.items()},
            "dropped": dict(self.dropped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = dict(state.get("seen", {}))
        self.bad = {s: dict(r) for s, r in state.get("bad", {}).items()}
        self.places = {s: dict(p) for s, p in state.get("places", {}).items()}
        self.dropped = dict(state.get("dropped", {}))


def merge_health(states: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the health counters of several readers (workers, ranks) into one report."""
    merged: dict[str, Any] = {"seen": {}, "bad": {}, "places": {}, "dropped": {}}
    for state in states:
        for key in ("seen", "dropped"):
            for source, count in state.get(key, {}).items():
                merged[key][source] = merged[key].get(source, 0) + count
        for key in ("bad", "places"):
            for source, counts in state.get(key, {}).items():
                target = merged[key].setdefault(source, {})
                for name, count in counts.items():
                    target[name] = target.get(name, 0) + count
    return merged


__all__ = [
    "BadSample",
    "DataHealth",
    "Record",
    "Source",
    "SourceReader",
    "merge_health",
    "source_name",
]
