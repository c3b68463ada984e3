"""Writing a split as webdataset shards plus a JSONL index, and reading it back.

Layout of an output directory, per (task, split):
    {task}-{split}-00000.tar ...   webdataset shards; each sample is `<key>.json` + `<key>.png`
    {task}-{split}.jsonl           one line per sample: every field but the image, plus `shard` and `key`

Reproducibility: tar headers get a fixed mtime/owner/mode and PNGs carry no timestamps, so the same
arguments give byte-identical files. Crash safety: every file is written through `vlmlab.files.atomic_open`
(a temporary name, renamed when complete), the old index is removed before any shard is touched and the new
index is renamed into place last, so an index only exists next to a complete, matching set of shards.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import multiprocessing
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from vlmlab.data.synthetic.generate import (
    DEFAULT_IMAGE_SIZE,
    PAPER_SIZES,
    build_sample,
    check_image_size,
    get_task,
    resolve_params,
)
from vlmlab.data.synthetic.objects import encode_png
from vlmlab.errors import ConfigError
from vlmlab.files import atomic_open

DEFAULT_SHARD_SIZE = 1000
_FIXED_MTIME = 0  # webdataset stamps entries with time.time() unless told otherwise


@dataclass(frozen=True)
class SplitFiles:
    shards: list[Path]
    index: Path
    count: int


def shard_name(task: str, split: str, shard: int) -> str:
    return f"{task}-{split}-{shard:05d}.tar"


def index_path(out_dir: str | os.PathLike, task: str, split: str) -> Path:
    return Path(out_dir) / f"{task}-{split}.jsonl"


def dumps(record: dict[str, Any]) -> str:
    """Canonical JSON (sorted keys, fixed separators) so equal records give equal bytes."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _encode(
    index: int, task: str, split: str, seed: int, image_size: int, params: dict
) -> tuple[dict, bytes]:
    sample = build_sample(task, split, index, seed, image_size, params)
    return sample, encode_png(sample.pop("image"))


def _tar_writer(fileobj: Any) -> wds.TarWriter:
    return wds.TarWriter(
        fileobj, encoder=False, mtime=_FIXED_MTIME, user="vlmlab", group="vlmlab", mode=0o444
    )


def write_split(
    task: str,
    split: str,
    out_dir: str | os.PathLike,
    *,
    num: int | None = None,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
    progress: bool = False,
    **difficulty: Any,
) -> SplitFiles:
    """Generate a split and write it; `workers` > 1 renders in parallel without changing a single byte."""
    get_task(task)
    params = resolve_params(task, split, **difficulty)
    image_size = check_image_size(image_size)
    num = PAPER_SIZES[split] if num is None else num
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}.")
    for name, value in (("num", num), ("shard_size", shard_size), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = index_path(out, task, split)
    index.unlink(missing_ok=True)

    encode = functools.partial(
        _encode, task=task, split=split, seed=seed, image_size=image_size, params=params
    )
    pool = multiprocessing.get_context().Pool(workers) if workers > 1 else None
    results: Iterable[tuple[dict, bytes]] = (
        pool.imap(encode, range(num), chunksize=16) if pool else map(encode, range(num))
    )
    samples = iter(results)
    shards: list[Path] = []
    try:
        with (
            atomic_open(index, "w") as lines,
            tqdm(total=num, desc=f"{task}/{split}", unit="sample", disable=not progress) as bar,
        ):
            for first in samples:  # one shard per pass: this sample and the next shard_size - 1
                shards.append(out / shard_name(task, split, len(shards)))
                with atomic_open(shards[-1]) as handle, _tar_writer(handle) as writer:
                    for record, png in itertools.chain([first], itertools.islice(samples, shard_size - 1)):
                        key = record["id"]
                        writer.write({"__key__": key, "json": dumps(record).encode("utf-8"), "png": png})
                        lines.write(dumps({**record, "shard": shards[-1].name, "key": key}) + "\n")
                        bar.update(1)
            _remove_stale_shards(out, task, split, keep=len(shards))  # before the index is renamed in
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return SplitFiles(shards=shards, index=index, count=num)


def _remove_stale_shards(out: Path, task: str, split: str, keep: int) -> None:
    """Drop shards a previous, larger run left behind, so the directory holds exactly this split."""
    pattern = re.compile(rf"{re.escape(task)}-{re.escape(split)}-(\d+)\.tar")
    for path in out.iterdir():
        match = pattern.fullmatch(path.name)
        if match and int(match.group(1)) >= keep:
            path.unlink()


def iter_shard(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Samples of one shard, in order, with `image` decoded to an RGB PIL image."""
    with tarfile.open(path, "r") as tar:
        pending: dict[str, dict[str, bytes]] = {}
        for member in tar:
            key, _, ext = member.name.partition(".")
            data = tar.extractfile(member).read()
            pending.setdefault(key, {})[ext] = data
            if {"json", "png"} <= pending[key].keys():
                parts = pending.pop(key)
                sample = json.loads(parts["json"])
                sample["image"] = Image.open(io.BytesIO(parts["png"])).convert("RGB")
                yield sample


def read_index(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def shard_paths(out_dir: str | os.PathLike, task: str, split: str) -> list[Path]:
    """The shards of a finished split, in order (e.g. as URLs for `webdataset.WebDataset`)."""
    index = index_path(out_dir, task, split)
    if not index.exists():
        raise ConfigError(f"{index} does not exist: split {task}/{split} was not written (or not finished).")
    return [Path(out_dir) / shard for shard in dict.fromkeys(r["shard"] for r in read_index(index))]


def read_split(out_dir: str | os.PathLike, task: str, split: str) -> Iterator[dict[str, Any]]:
    """All samples of a written split; a missing index means the split was never finished."""
    for shard in shard_paths(out_dir, task, split):
        yield from iter_shard(shard)
