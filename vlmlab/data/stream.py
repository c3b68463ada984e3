"""The training stream: each reader's weighted source mixture -> encoded, packed (or padded) micro-batches.

Readers
-------
Every data-loader worker of every rank is one *reader*: reader g = rank + world_size x worker of
G = world_size x max(num_workers, 1). Each source gives reader g its own disjoint share (webdataset: its
own shards, read front to back; synthetic: its own indices; see `vlmlab.data.sources`), and the reader
mixes, packs and batches only what it read: nothing plans another reader's batches. A rank's loader takes
one batch from each of its workers in turn (torch's in-order round robin).

Per reader, mixture slot i picks its source by a weighted draw seeded by (seed, g, i // 1024); the
record's token length is counted from its text alone (images are neither decoded nor rendered), the
record joins `RowPacker` (online best-fit-decreasing; or its own row without packing), and each
`micro_batch_size` finished rows are built into a batch: images decoded, samples encoded, rows collated.

State and resume
----------------
A reader's position is small and complete: per source its reader position (synthetic: a counter;
webdataset: epoch, shard, offset in shard), the mixture slot, the packer's queued items and open rows,
the finished rows not yet emitted (as records: a webdataset record is its member bytes, so nothing needs
re-reading), and the bad-data counters. `state_dict()` / `load_state_dict()` expose it to torchdata's
`StatefulDataLoader`, which snapshots it in each worker with every batch; `ResumableLoader` keeps the
loader state after each of the last few batches so a checkpoint can take exactly the state after the
batches the optimizer consumed (Lightning fetches one batch ahead). Restoring costs the same at any step:
reopen one shard per webdataset source and skip at most one shard's records, undecoded.

Rule: the same seed, sources, world size and `data.num_workers` give the same batches, and a checkpoint
resumes only with the world size and worker count it was written with (anything else would re-partition
the shards mid-epoch); a mismatch is a ConfigError naming both layouts.
"""

from __future__ import annotations

import bisect
import itertools
import random
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from vlmlab.config import DataConfig, DataSourceConfig
from vlmlab.data.collate import (
    DEFAULT_MAX_OPEN_ROWS,
    DEFAULT_PACK_BUFFER,
    RowPacker,
    collate_packed,
    collate_padded,
)
from vlmlab.data.encode import SampleEncoder
from vlmlab.data.shards import write_shard
from vlmlab.data.sources import (
    BadSample,
    DataHealth,
    LomoSource,
    Source,
    WebDatasetSource,
    merge_health,
    open_source,
    source_name,
)
from vlmlab.data.sources.base import log
from vlmlab.errors import ConfigError
from vlmlab.lifetime import worker_init_fn

STATE_FORMAT = 1
# torchdata 0.11 calls a deprecated torch API on every iterator start; nothing for a user to act on
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
_CHOICE_BLOCK = 1024
_MAX_CONSECUTIVE_DROPS = 1000
DEFAULT_MAX_BAD_FRACTION = 1e-3
Item = tuple  # (source index, record, token length): what the packer holds


class TrainStream(torch.utils.data.IterableDataset):
    """Endless, exactly resumable micro-batches of a source mixture (see the module docstring).

    Use through `train_loader(stream, num_workers=W)` (a `ResumableLoader`): reading, decoding, encoding
    and packing then run in the workers. `data_config`, when given, supplies `micro_batch_size`,
    `packing`, `lomo` and `max_bad_fraction` and must agree on `max_length`.
    """

    def __init__(
        self,
        sources: Sequence[DataSourceConfig],
        encoder: SampleEncoder,
        *,
        seed: int = 0,
        micro_batch_size: int = 8,
        packing: bool = True,
        image_size: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        max_open_rows: int = DEFAULT_MAX_OPEN_ROWS,
        pack_buffer: int = DEFAULT_PACK_BUFFER,
        data_config: DataConfig | None = None,
        lomo: dict[str, Any] | None = None,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    ) -> None:
        super().__init__()
        self.lomo = dict(lomo or {})
        if data_config is not None:
            # the config's settings win, so a run cannot disagree with it
            self.lomo = dict(data_config.lomo or {}) or self.lomo
            if encoder.max_length != data_config.max_length:
                raise ConfigError(
                    f"encoder.max_length={encoder.max_length} differs from data.max_length="
                    f"{data_config.max_length}."
                )
            micro_batch_size, packing = data_config.micro_batch_size, data_config.packing
            max_bad_fraction = data_config.max_bad_fraction
        if not sources:
            raise ConfigError("The training stream needs at least one data source (data.train is empty).")
        weights = [float(s.weight) for s in sources]
        if any(not w >= 0 for w in weights) or sum(weights) <= 0 or sum(weights) == float("inf"):
            raise ConfigError(f"Source weights must be finite and >= 0 with a positive sum, got {weights}.")
        if micro_batch_size < 1:
            raise ConfigError(f"micro_batch_size must be >= 1, got {micro_batch_size}.")
        if not 0 <= rank < world_size:
            raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}.")
        DataHealth(max_bad_fraction)  # validates the fraction here, in the main process
        self.configs = list(sources)
        self.encoder = encoder
        self.seed = seed
        self.micro_batch_size = micro_batch_size
        self.packing = packing
        self.image_size = image_size
        self.rank, self.world_size = rank, world_size
        self.max_open_rows = max_open_rows
        self.pack_buffer = pack_buffer
        self.max_bad_fraction = max_bad_fraction
        total = sum(weights)
        self.weights = [w / total for w in weights]
        self._cumulative = list(itertools.accumulate(self.weights))
        # fail on bad configs now, in the main process, not in a worker
        # opened once here (a JSON corpus or a dataset is loaded on opening); each worker opens its own
        opened = self.open_sources()
        self.names = [source.name for source in opened]
        self._text_only = [source.text_only for source in opened]
        self._epoch_sizes = [source.num_samples() for source in opened]
        self._manifest_hint = [isinstance(source, WebDatasetSource) for source in opened]
        self._acceptance = self._matched_ratio_acceptance()
        self._restore: dict[str, Any] | None = None
        self._reader: _Reader | None = None

    @classmethod
    def from_config(
        cls,
        data: DataConfig,
        encoder: SampleEncoder,
        *,
        seed: int,
        image_size: int | None = None,
        **kwargs: Any,
    ) -> TrainStream:
        """The stream `data` describes (train sources, packing, micro-batch size)."""
        return cls(data.train, encoder, seed=seed, image_size=image_size, data_config=data, **kwargs)

    def open_sources(self) -> list[Source]:
        """Fresh source objects (in each worker: nothing is shared across processes)."""
        return [
            open_source(c, seed=self.seed, image_size=self.image_size, lomo=self.lomo) for c in self.configs
        ]

    def describe(self) -> list[str]:
        """One line per source: its weight and what is known of its epoch."""
        lines = []
        for name, weight, size, shards in zip(
            self.names, self.weights, self._epoch_sizes, self._manifest_hint
        ):
            known = f"{size} samples per epoch" if size is not None else "epoch size unknown"
            if size is None and shards:
                known += " (no shard manifest: run `vlmlab data index` to count the shards once)"
            lines.append(f"{name}: weight {weight:.3f}, {known}")
        return lines

    def _matched_ratio_acceptance(self) -> dict[str, float] | None:
        """LoMo's matched image:text ratio (Table 5): per-group acceptance probabilities that resample the
        mixture so image-bearing : text-only samples equal `lomo.image_text_ratio`."""
        if not self.lomo or self.lomo.get("image_text_ratio") is None:
            return None
        from vlmlab.data.lomo.transform import LomoConfig, mixture_weights

        text_share = sum(w for w, text_only in zip(self.weights, self._text_only) if text_only)
        weights = mixture_weights(1.0 - text_share, text_share, LomoConfig.from_mapping(self.lomo))
        top = max(weights.values())
        return {group: weight / top for group, weight in weights.items()}

    def planned_items(self, count: int, worker: int = 0, num_workers: int = 1) -> list[Item]:
        """The first `count` (source index, record, token length) items one reader accepts, in reading
        order, before packing; nothing is decoded (mixture statistics, tests)."""
        reader = _Reader(self, worker, num_workers)
        items: list[Item] = []
        while len(items) < count:
            item = reader.read_one()
            if item is not None:
                items.append(item)
        return items

    # -- resumable state (torchdata's StatefulDataLoader calls these, in each worker)
    def state_dict(self) -> dict[str, Any]:
        if self._reader is not None:
            return self._reader.state_dict()
        return dict(self._restore or {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (checked now: in a worker, a mismatch fails the loader's start)."""
        if state:
            info = torch.utils.data.get_worker_info()
            worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
            check_state(state, self, worker, num_workers)
        self._restore = dict(state) if state else None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = _Reader(self, worker, num_workers)
        if self._restore:
            reader.load_state_dict(self._restore)
        self._reader = reader
        while True:
            yield reader.next_batch()


class _Reader:
    """One reader's mixture, packer and batches (the module docstring's "reader")."""

    def __init__(self, stream: TrainStream, worker: int, num_workers: int) -> None:
        self.stream = stream
        self.worker, self.num_workers = worker, num_workers
        self.reader_id = stream.rank + stream.world_size * worker
        self.num_readers = stream.world_size * num_workers
        self.sources = stream.open_sources()
        self.health = DataHealth(stream.max_bad_fraction, self.reader_id)
        self.readers = [
            s.reader(self.reader_id, self.num_readers, stream.seed, self.health) for s in self.sources
        ]
        self.packer: RowPacker[Item] = RowPacker(
            stream.encoder.max_length, stream.max_open_rows, stream.pack_buffer
        )
        self.rows: list[list[Item]] = []  # finished rows not yet emitted
        self.slot = 0
        self.batches = 0
        self.drops = [0] * len(self.sources)
        self._block: tuple[int, list[float]] = (-1, [])

    # -- the mixture
    def choice(self, slot: int) -> int:
        block = slot // _CHOICE_BLOCK
        if self._block[0] != block:
            rng = random.Random(f"vlmlab.stream:{self.stream.seed}:{self.reader_id}:{block}")
            self._block = (block, [rng.random() for _ in range(_CHOICE_BLOCK)])
        draw = self._block[1][slot % _CHOICE_BLOCK]
        return min(bisect.bisect_right(self.stream._cumulative, draw), len(self.sources) - 1)

    def _accepted(self, source: Source, record: dict[str, Any], slot: int) -> bool:
        acceptance = self.stream._acceptance
        if acceptance is None or not isinstance(source, LomoSource):
            return True
        probability = acceptance[source.group(record)]
        rng = random.Random(f"vlmlab.accept:{self.stream.seed}:{self.reader_id}:{slot}")
        return probability >= 1.0 or rng.random() < probability

    def read_one(self) -> Item | None:
        """Read the next mixture slot's record; the packer's item, or None when it is skipped (counted)."""
        slot = self.slot
        self.slot += 1
        choice = self.choice(slot)
        source = self.sources[choice]
        record = next(self.readers[choice])
        if not self._accepted(source, record, slot):
            return None
        try:
            length = self.stream.encoder.length(source.text_sample(record))
        except BadSample as error:
            self.health.skip(
                source.name, source.place(record, error), source.key(record), "bad sample", str(error)
            )
            return None
        if length is None:
            self.health.drop(source.name)
            self.drops[choice] += 1
            if self.drops[choice] >= _MAX_CONSECUTIVE_DROPS:
                raise ConfigError(
                    f"Source {source.name!r}: {self.drops[choice]} samples in a row are longer than "
                    f"max_length={self.stream.encoder.max_length} even after truncating their prompt text"
                    + (
                        ""
                        if self.stream.encoder.exact_length
                        else ", or hold more images than the tiling "
                        "budget (model.max_image_tokens) fits as thumbnails"
                    )
                    + "."
                )
            return None
        self.drops[choice] = 0
        return (choice, record, length)

    # -- batches
    def next_batch(self) -> dict[str, Any]:
        while True:
            while len(self.rows) < self.stream.micro_batch_size:
                item = self.read_one()
                if item is not None:
                    self.rows.extend(self.packer.add(item, item[2]) if self.stream.packing else [[item]])
            rows = self.rows[: self.stream.micro_batch_size]
            self.rows = self.rows[self.stream.micro_batch_size :]
            self.batches += 1
            batch = self.materialize(rows)
            if batch is not None:
                return batch

    def materialize(self, rows: list[list[Item]]) -> dict[str, Any] | None:
        """Decode, encode and collate one batch of rows; a sample whose image fails to decode is left out
        (and counted); None when nothing of the batch is left."""
        encoder = self.stream.encoder
        encoded_rows = []
        for row in rows:
            encoded_row = []
            for choice, record, length in row:
                source = self.sources[choice]
                try:
                    sample = source.full_sample(record)
                except BadSample as error:
                    self.health.skip(
                        source.name, source.place(record, error), source.key(record), "bad image", str(error)
                    )
                    continue
                tokens = encoder.tokenize(sample)
                if not self.stream.packing and (tokens is None or len(tokens["input_ids"]) != length):
                    # padded rows: the plan only chose the row; an open-weight processor gives each image as
                    # many tokens as its size asks for, known once it is decoded (vlmlab/data/chat_encode.py)
                    if tokens is None:
                        self.health.drop(source.name)
                        continue
                elif tokens is None or (
                    len(tokens["input_ids"]) != length
                    if encoder.exact_length
                    else len(tokens["input_ids"]) > length  # tiled images: planned at their costliest grid
                ):
                    raise RuntimeError(
                        f"source {source.name!r} sample {source.key(record)!r} encodes differently with and "
                        "without its images; the stream would not be reproducible."
                    )
                encoded_row.append(encoder.finish(tokens))
            if encoded_row:
                encoded_rows.append(encoded_row)
        if not encoded_rows:
            return None
        if hasattr(
            encoder, "collate"
        ):  # an open-weight model's processor layout (vlmlab/data/chat_encode.py)
            return encoder.collate(encoded_rows, self.stream.packing)
        if self.stream.packing:
            return collate_packed(encoded_rows, encoder.max_length, encoder.pad_id)
        return collate_padded([row[0] for row in encoded_rows], encoder.pad_id)

    # -- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "vlmlab_stream": STATE_FORMAT,
            "reader_id": self.reader_id,
            "num_readers": self.num_readers,
            "world_size": self.stream.world_size,
            "num_workers": self.num_workers,
            "sources": list(self.stream.names),
            "slot": self.slot,
            "batches": self.batches,
            "readers": [reader.state_dict() for reader in self.readers],
            "packer": self._packer_state(self.packer.state_dict(), self._compact),
            "rows": [[self._compact(item) for item in row] for row in self.rows],
            "drops": list(self.drops),
            "health": self.health.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state(state, self.stream, self.worker, self.num_workers)
        self.slot, self.batches = int(state["slot"]), int(state["batches"])
        for reader, reader_state in zip(self.readers, state["readers"]):
            reader.load_state_dict(reader_state)
        self.packer.load_state_dict(self._packer_state(state["packer"], self._expand))
        self.rows = [[self._expand(item) for item in row] for row in state["rows"]]
        self.drops = [int(d) for d in state["drops"]]
        self.health.load_state_dict(state["health"])

    # records read but not trained on travel in the state as their sources keep them (Source.compact)
    def _compact(self, item: Item) -> Item:
        choice, record, length = item
        return (choice, self.sources[choice].compact(record), length)

    def _expand(self, item: Any) -> Item:
        choice, kept, length = item
        return (int(choice), self.sources[int(choice)].expand(kept), int(length))

    @staticmethod
    def _packer_state(state: dict[str, Any], convert: Any) -> dict[str, Any]:
        return {
            **state,
            "buffer": [[length, convert(item)] for length, item in state["buffer"]],
            "open": [[used, [convert(item) for item in items]] for used, items in state["open"]],
        }


def check_state(state: dict[str, Any], stream: TrainStream, worker: int | None, num_workers: int) -> None:
    """Raise a ConfigError when `state` was not written by this reader (any, when `worker` is None) of
    this stream's layout and sources."""
    if state.get("vlmlab_stream") != STATE_FORMAT:
        raise ConfigError("The checkpoint's data state is not a vlmlab stream state of this version.")
    num_readers = stream.world_size * max(num_workers, 1)
    reader_id = state["reader_id"] if worker is None else stream.rank + stream.world_size * worker
    if (state["reader_id"], state["num_readers"]) != (reader_id, num_readers):
        raise ConfigError(layout_mismatch(state, stream.world_size, num_workers))
    if list(state["sources"]) != list(stream.names):
        raise ConfigError(
            f"The checkpoint's data stream mixed sources {state['sources']}, this run has "
            f"{stream.names}; change sources in a new run (train.init_from), not on resume."
        )


def layout_mismatch(state: dict[str, Any], world_size: int, num_workers: int) -> str:
    return (
        f"The checkpoint's data stream was read by world_size={state['world_size']} x "
        f"data.num_workers={max(state['num_workers'], 1)} readers; this run has world_size={world_size} x "
        f"data.num_workers={max(num_workers, 1)}. Exact resume needs the same layout: resume with "
        f"{state['world_size']} device(s) in all and data.num_workers={state['num_workers']}, or start a "
        "new run from this one's weights (train.init_from)."
    )


class ResumableLoader:
    """torchdata's `StatefulDataLoader` over a TrainStream, keeping the loader state after each of the last
    `keep` batches: `state_after(n)` is the state with exactly n batches consumed, whatever was prefetched.

    It has no `state_dict` method on purpose: Lightning would save rank 0's state for every rank; the
    training module saves each rank's `state_after(...)` itself.
    """

    def __init__(self, stream: TrainStream, num_workers: int = 0, keep: int = 4, **kwargs: Any) -> None:
        from torchdata.stateful_dataloader import StatefulDataLoader

        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}.")
        self.stream = stream
        self.num_workers = num_workers
        if num_workers:  # workers die with this process, even when it is killed (vlmlab/lifetime.py)
            kwargs["worker_init_fn"] = worker_init_fn(kwargs.get("worker_init_fn"))
        self.loader = StatefulDataLoader(stream, batch_size=None, num_workers=num_workers, **kwargs)
        self.batches = 0  # batches yielded, counting those before a resume
        self._states: deque[tuple[int, dict[str, Any]]] = deque(maxlen=max(keep, 2))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        iterator = iter(self.loader)
        self._states.append((self.batches, self.loader.state_dict()))
        for batch in iterator:
            self.batches += 1
            self._states.append((self.batches, self.loader.state_dict()))
            yield batch

    def close(self) -> None:
        """Stop the worker processes now. Left to the garbage collector, the loader's iterator sits in a
        reference cycle with its queues, whose finalizers stop the queue threads before the iterator's own
        shutdown can tell the workers to exit: each worker then idles for torchdata's five-second join
        timeout and is terminated. (Lightning does the same for torch's DataLoader at the end of fit.)"""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None

    def state_after(self, batches: int) -> dict[str, Any]:
        """The resumable state after exactly `batches` batches (one of the last `keep` yielded)."""
        for count, state in self._states:
            if count == batches:
                return {
                    "vlmlab_loader": STATE_FORMAT,
                    "batches": count,
                    "rank": self.stream.rank,
                    "world_size": self.stream.world_size,
                    "num_workers": self.num_workers,
                    "loader": state,
                }
        kept = [count for count, _ in self._states]
        raise RuntimeError(f"no loader state after {batches} batches is kept (kept: {kept}).")

    def restore(self, state: dict[str, Any]) -> None:
        """Continue exactly after the batches `state` had consumed (from `state_after`)."""
        if state.get("vlmlab_loader") != STATE_FORMAT:
            raise ConfigError("The checkpoint's data state is not a vlmlab loader state of this version.")
        if (state["world_size"], state["num_workers"]) != (self.stream.world_size, self.num_workers):
            raise ConfigError(layout_mismatch(state, self.stream.world_size, self.num_workers))
        if state["rank"] != self.stream.rank:
            raise ConfigError(f"data state of rank {state['rank']} given to rank {self.stream.rank}.")
        for reader_state in stream_states(state["loader"]):  # here, before any worker starts
            check_state(reader_state, self.stream, None, self.num_workers)
        self.loader.load_state_dict(state["loader"])
        self.batches = int(state["batches"])
        self._states.clear()


def stream_states(state: Any) -> list[dict[str, Any]]:
    """Every reader state inside a (loader) state, wherever torchdata nests the workers' snapshots."""
    if isinstance(state, dict):
        if state.get("vlmlab_stream") == STATE_FORMAT:
            return [state]
        return [found for value in state.values() for found in stream_states(value)]
    if isinstance(state, (list, tuple)):
        return [found for value in state for found in stream_states(value)]
    return []


def data_health(state: dict[str, Any]) -> dict[str, Any]:
    """Samples read, skipped (by reason and place) and dropped as too long, summed over the readers."""
    return merge_health([reader["health"] for reader in stream_states(state)])


def train_loader(stream: TrainStream, num_workers: int = 0, **kwargs: Any) -> ResumableLoader:
    """The stream's resumable loader (`batch_size=None`: the stream yields whole batches)."""
    return ResumableLoader(stream, num_workers=num_workers, **kwargs)


__all__ = [
    "ResumableLoader",
    "TrainStream",
    "data_health",
    "log",
    "source_name",
    "stream_states",
    "train_loader",
    "write_shard",
]
