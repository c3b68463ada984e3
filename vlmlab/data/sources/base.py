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

import hashlib
import logging
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlmlab.config import DataSourceConfig
from vlmlab.errors import ConfigError

log = logging.getLogger("vlmlab.data")
Record = dict[str, Any]
MIN_BAD_FOR_ERROR = 10  # a handful of bad samples never stops a run, whatever the fraction
LOGGED_PER_SOURCE = 20  # bad samples logged one by one per reader and source; then every 1000th


class BadSample(Exception):
    """This record cannot be used (undecodable image, broken schema, ...): skip it and count it.

    `place`, when given, is where the fault lies if that is wider than the record (a missing image folder):
    bad-data reports count it there instead of at the record's `where`, so the worst place is the folder."""

    def __init__(self, message: str, place: str | None = None) -> None:
        super().__init__(message)
        self.place = place


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

    def place(self, record: Record, error: BadSample) -> str:
        """Where a bad record is counted: the error's own place (a missing folder), else `where`."""
        return error.place or self.where(record)

    def text_sample(self, record: Record) -> dict[str, Any]:
        raise NotImplementedError

    def compact(self, record: Record) -> Record:
        """What a checkpointed stream state keeps of a record read but not yet trained on (the packer's
        queue): the record itself, or a small reference that `expand` reads back (the same record)."""
        return record

    def expand(self, kept: Record) -> Record:
        """The record `compact` kept."""
        return kept

    def full_sample(self, record: Record) -> dict[str, Any]:
        raise NotImplementedError

    def samples_in_order(self, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Full samples in the source's own order (validation sets); bad ones are skipped and logged."""
        health = DataHealth(1.0)
        size = self.num_samples()
        if size is None:
            raise ConfigError(f"source {self.name!r} has no fixed order to validate on (an endless stream).")
        produced = 0
        for index in range(size):
            if limit is not None and produced >= limit:
                return
            record = {"index": index}
            try:
                yield self.full_sample(record)
                produced += 1
            except BadSample as error:
                health.skip(self.name, self.place(record, error), self.key(record), "bad sample", str(error))


class SourceReader(Iterator[Record]):
    """One reader's endless, resumable walk over its share of a source."""

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


NUMPY_ORDER_FROM = 1 << 16  # sources at least this large are permuted by numpy (see epoch_order)


def epoch_order(size: int, key: str) -> Sequence[int]:
    """A seeded permutation of range(size). Small sources keep Python's shuffle (the order runs were made
    with); from NUMPY_ORDER_FROM samples a numpy permutation (int32), because every reader process builds
    its own: for a 1.4 M-entry JSON Python's takes 0.65 s and ~50 MB per process, numpy's ~30 ms and 5.6 MB
    (benchmarks/bench_json_index.py), which keeps start-up independent of the source's size."""
    if size < NUMPY_ORDER_FROM:
        order = list(range(size))
        random.Random(key).shuffle(order)
        return order
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).permutation(size).astype(np.int32)


class IndexedReader(SourceReader):
    """Reader g of G over a source whose records are indices 0 .. size-1 (random access: a synthetic
    split, a JSON list, a map-style dataset) or 0, 1, ... (size None: endless).

    A sized source is walked epoch after epoch, each epoch a seeded permutation of its indices; reader g
    takes positions g, g+G, g+2G, ... of that endless walk, so shares are disjoint, every epoch is covered
    exactly once (even with fewer samples than readers), and the position is one counter.
    """

    def __init__(
        self, name: str, size: int | None, reader_id: int, num_readers: int, seed: int, health: DataHealth
    ) -> None:
        if size is not None and size < 1:
            raise ConfigError(f"source {name!r} holds no samples.")
        self.name, self.size = name, size
        self.reader_id, self.num_readers = reader_id, num_readers
        self.seed, self.health = seed, health
        self.step = 0  # records this reader has produced
        self._order: tuple[int, Sequence[int]] | None = None  # (epoch, permutation)

    def __next__(self) -> Record:
        position = self.reader_id + self.num_readers * self.step
        self.step += 1
        self.health.read(self.name)
        if self.size is None:
            return {"index": position}
        epoch = position // self.size
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.size, f"vlmlab.synthetic:{self.seed}:{self.name}:{epoch}"))
        return {"index": int(self._order[1][position % self.size])}

    @property
    def epoch(self) -> int:
        """The epoch of the last record produced."""
        if self.size is None or self.step == 0:
            return 0
        return (self.reader_id + self.num_readers * (self.step - 1)) // self.size

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("size", self.size) != self.size:
            raise ConfigError(
                f"source {self.name!r}: the checkpoint's stream saw {state['size']} samples, the source now "
                f"holds {self.size}; a resumed run must see the same data (or start a new run)."
            )
        self.step = int(state["step"])


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
        # (source, place, key) already logged: a bad sample met again on the next pass over a source (a
        # one-shard source loops) is counted again but not logged again
        self._logged: set[tuple[str, str, str]] = set()

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
        seen_before = (source, where, str(key)) in self._logged
        self._logged.add((source, where, str(key)))
        if not seen_before and (total <= LOGGED_PER_SOURCE or total % 1000 == 0):
            log.warning(
                "source %r (reader %d): skipped sample %r in %s (%s%s) [%d skipped so far]",
                source,
                self.reader_id,
                key,
                where,
                reason,
                f": {readable(detail)}" if detail else "",
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


# a Python object's default repr (`<_io.BytesIO object at 0x7f...>`), which libraries put in their messages
_OBJECT_REPR = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")


def readable(detail: object) -> str:
    """A reason as a person reads it: no memory addresses (PIL: "cannot identify image file <_io.BytesIO
    object at 0x...>" becomes "... image file (in memory)")."""
    text = _OBJECT_REPR.sub(lambda m: "(in memory)" if "BytesIO" in m.group(1) else m.group(1), str(detail))
    return " ".join(text.split())


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
    "IndexedReader",
    "Record",
    "Source",
    "SourceReader",
    "merge_health",
    "readable",
    "source_name",
]
