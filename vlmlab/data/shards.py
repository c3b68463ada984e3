"""Webdataset shards: shard lists, the shard manifest, sequential reading through webdataset, writing.

Reading goes through the webdataset library: `webdataset.shardlists.expand_urls` (brace patterns,
`::`-joined lists), `webdataset.gopen.gopen` (local files, `pipe:CMD`, `http(s)://`, `s3://` through a pipe,
...), `webdataset.tariterators.tar_file_iterator` (`.tar`, `.tar.gz`: tarfile's `r|*` streaming mode) and
`group_by_keys` (members sharing a key form a sample). Shards are only ever read front to back.

The manifest (`vlmlab data index PATTERN`) is webdataset's shard-index JSON (the layout of its `wids`
indexes)::

    {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "...",
     "shardlist": [{"url": "coyo-00000.tar", "nsamples": 10000, "filesize": 123456789}, ...]}

Relative URLs are resolved against the manifest's folder. It gives epoch sizes without opening a shard.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmlab.errors import ConfigError
from vlmlab.files import atomic_open, atomic_write_text

MANIFEST_KIND = "wids-shard-index-v1"
MANIFEST_NAME = "shards.json"  # looked for in a shard directory
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
READ_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, zlib.error)


@dataclass(frozen=True)
class ShardList:
    """The shards of one source, with their sample counts when a manifest gave them."""

    urls: tuple[str, ...]
    counts: tuple[int, ...] | None = None  # None: no manifest, epoch size unknown
    manifest: str | None = None

    @property
    def num_samples(self) -> int | None:
        return sum(self.counts) if self.counts is not None else None


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def read_manifest(path: str | os.PathLike) -> ShardList:
    """A shard-index JSON file -> ShardList (relative URLs resolved against the file's folder)."""
    path = Path(path)
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"shard manifest {str(path)!r} cannot be read: {error}") from error
    if not isinstance(index, dict) or not isinstance(index.get("shardlist"), list):
        raise ConfigError(
            f"shard manifest {str(path)!r} is not a shard index (expected a 'shardlist' of url/nsamples "
            f"entries, as `vlmlab data index` writes)."
        )
    urls, counts = [], []
    for entry in index["shardlist"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ConfigError(f"shard manifest {str(path)!r}: every entry needs a 'url', got {entry!r}.")
        url = entry["url"]
        if _is_local(url) and not os.path.isabs(url):
            url = str(path.parent / url)
        count = entry.get("nsamples")
        if not isinstance(count, int) or count < 0:
            raise ConfigError(f"shard manifest {str(path)!r}: shard {url!r} has no valid 'nsamples'.")
        urls.append(url)
        counts.append(count)
    if not urls:
        raise ConfigError(f"shard manifest {str(path)!r} lists no shards.")
    return ShardList(tuple(urls), tuple(counts), str(path))


def expand_shards(path: str) -> ShardList:
    """The shards of a source `path`: a manifest (`*.json`), a directory (its `shards.json` if present,
    else every `*.tar` / `*.tar.gz` in it, sorted), or a URL / brace pattern of files or URLs."""
    from webdataset.shardlists import expand_urls

    if path.endswith(".json"):
        return read_manifest(path)
    if os.path.isdir(path):
        if (Path(path) / MANIFEST_NAME).is_file():
            return read_manifest(Path(path) / MANIFEST_NAME)
        shards = sorted(str(p) for p in Path(path).iterdir() if p.name.endswith(SHARD_SUFFIXES))
        if not shards:
            raise ConfigError(f"webdataset directory {path!r} contains no .tar / .tar.gz shards.")
        return ShardList(tuple(shards))
    urls = expand_urls(path)
    if not urls:
        raise ConfigError(f"webdataset path {path!r} names no shards.")
    # the first and last catch a wrong folder or range; stat-ing 70k shards in every process would not pay
    # on a network file system (a missing shard in between is skipped and counted when it is reached)
    for url in dict.fromkeys((urls[0], urls[-1])):
        if _is_local(url) and not os.path.isfile(_local_path(url)):
            raise ConfigError(f"webdataset shard {url!r} does not exist (path {path!r}).")
    return ShardList(tuple(urls))


class ShardReadError(Exception):
    """A shard stopped before its end (truncated, corrupt or unreachable): what was read stays valid."""


COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz: they detect truncation


class _TailWatch:
    """A read-only stream that remembers its first and last bytes.

    tarfile ends quietly when an uncompressed tar is cut at a member boundary; a complete tar ends with
    zero blocks, so the last block read tells the two apart.
    """

    def __init__(self, stream: Any, head: bytes = b"") -> None:
        self.stream, self.head, self.tail = stream, head, b""

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if len(self.head) < 8:
            self.head = (self.head + data)[:8]
        self.tail = (self.tail + data)[-1024:]
        return data

    def truncated(self, resumed: bool = False) -> bool:
        if self.head.startswith(COMPRESSED_MAGIC) or (resumed and not self.tail):
            return False
        return len(self.tail) < 512 or self.tail[-512:] != bytes(512)


class _Members:
    """The regular members of a tar stream as webdataset's file dicts (`fname`, `data`, `__url__`),
    remembering the byte offsets webdataset's own iterator does not expose: where the last member handed
    out starts and ends. Meta members (`__name__`) are skipped, as webdataset does."""

    def __init__(self, fileobj: Any, url: str, start: int) -> None:
        self.tar = tarfile.open(fileobj=fileobj, mode="r|*")
        self.url, self.start = url, start
        self.last_start = start  # header offset of the last member handed out
        self.last_end = start  # end (block-aligned) of the last member handed out
        self.done = False  # every member was handed out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for info in self.tar:
            if not info.isreg() or re.match(r"__[^/]*__($|/)", info.name):
                continue
            data = self.tar.extractfile(info).read()
            self.tar.members = []  # streaming: keep no member list
            self.last_start = self.start + info.offset
            self.last_end = self.start + info.offset_data + -(-info.size // 512) * 512
            yield {"fname": info.name, "data": data, "__url__": self.url}
        self.done = True


def iter_shard(url: str, start: int = 0) -> Iterator[tuple[dict[str, Any], int | None]]:
    """The samples of one shard in order, as webdataset groups them (`{"__key__", "__url__", suffix:
    bytes}`), each with the byte offset where the next sample starts: a local, uncompressed shard resumes
    there by seeking (`start`); None where the stream cannot seek (compressed, pipe:, http).

    Raises ShardReadError (after the samples read so far) when the shard cannot be read to its end.
    """
    from webdataset.gopen import gopen
    from webdataset.tariterators import group_by_keys

    try:
        stream = gopen(_local_path(url), "rb")
        head = b""
        seekable = _is_local(url) and hasattr(stream, "seek")
        if seekable:
            head = stream.read(8)
            seekable = not head.startswith(COMPRESSED_MAGIC)
            stream.seek(start if seekable else 0)
        elif start:
            raise ShardReadError(f"cannot seek in {url!r}")
    except READ_ERRORS as error:
        raise ShardReadError(f"cannot open: {error}") from error
    watch = _TailWatch(stream, head if not seekable else b"")
    try:
        members = _Members(watch, url, start if seekable else 0)
        for sample in group_by_keys(iter(members)):
            # group_by_keys hands out a sample once it has read the next one's first member (which starts
            # where this one's successor does), or once the members ran out (then: after the last member)
            following = members.last_end if members.done else members.last_start
            yield sample, following if seekable else None
        if watch.truncated(resumed=start > 0):
            raise ShardReadError("the shard ends without the tar end-of-archive blocks: it is truncated")
    except READ_ERRORS as error:
        raise ShardReadError(str(error)) from error
    finally:
        try:
            stream.close()
        except READ_ERRORS:  # a pipe closed early may report its exit status; nothing was lost
            pass


def _is_tar(path: Path) -> bool:
    """A (possibly compressed) tar archive by its content, not its name; an empty file is an empty tar."""
    try:
        return path.stat().st_size == 0 or tarfile.is_tarfile(path)
    except OSError:
        return False


def count_samples(url: str) -> tuple[int, str | None]:
    """Samples in one shard (one sequential pass), and the read error that ended it early, if any."""
    count = 0
    try:
        for _ in iter_shard(url):
            count += 1
    except ShardReadError as error:
        return count, str(error)
    return count, None


def write_manifest(urls: Sequence[str], out: str | os.PathLike, name: str = "") -> dict[str, Any]:
    """Count every shard once and write the manifest atomically; returns the index written."""
    out = Path(out)
    for url in urls:  # every file first: nothing is counted or written for a list holding a non-tar
        if _is_local(url) and not _is_tar(Path(_local_path(url))):
            raise ConfigError(
                f"{_local_path(url)!r} is not a tar shard (valid: .tar / .tar.gz / .tgz files in the "
                "webdataset layout, e.g. written by img2dataset or `vlmlab data synth`)."
            )
    entries, problems = [], []
    for url in urls:
        count, error = count_samples(url)
        if error:
            problems.append(f"{url}: {error} (after {count} samples)")
        entry: dict[str, Any] = {"url": url, "nsamples": count}
        if _is_local(url):
            local = Path(_local_path(url)).resolve()
            entry["filesize"] = local.stat().st_size
            try:
                entry["url"] = str(local.relative_to(out.parent.resolve()))
            except ValueError:
                entry["url"] = str(local)
        entries.append(entry)
    index = {
        "__kind__": MANIFEST_KIND,
        "wids_version": 1,
        "name": name or out.stem,
        "shardlist": entries,
        "problems": problems,
    }
    atomic_write_text(out, json.dumps(index, indent=1))
    return index


# ------------------------------------------------------------------ writing
IMAGE_SUFFIXES = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
ENCODED_KEY = "vlmlab.encoded"  # PIL `info` entry holding the bytes an image was decoded from


def encoded_image(image: Any) -> tuple[bytes, str]:
    """(bytes, suffix) to store an image segment: its original encoding when known, else lossless PNG.

    An image segment may hold the encoded bytes themselves, or a PIL image; images decoded by vlmlab's
    readers carry their original bytes in `image.info["vlmlab.encoded"]`, so a JPEG stays that JPEG.
    """
    from PIL import Image

    data = image if isinstance(image, bytes) else getattr(image, "info", {}).get(ENCODED_KEY)
    if isinstance(data, bytes):
        try:
            with Image.open(io.BytesIO(data)) as probe:
                return data, IMAGE_SUFFIXES.get(probe.format or "", "png")
        except (OSError, ValueError) as error:
            raise ConfigError(f"an image segment holds bytes that are not an image: {error}") from error
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), "png"


def write_shard(samples: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write samples (vlmlab/data/samples.py schema) as one shard that the webdataset source reads back.

    Image i of a sample is stored as `<key>.<i>.<ext>` in its original encoding (see `encoded_image`);
    keys are the sample ids. Written through `atomic_open`, so readers never see a partial shard.
    """
    path = Path(path)

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        tar.addfile(info, io.BytesIO(data))

    with (
        atomic_open(path) as handle,
        tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for sample in samples:
            key = str(sample["id"])
            if "." in key or "/" in key:
                raise ConfigError(f"sample id {key!r} cannot be a shard key (no '.' or '/').")
            record, members, count = dict(sample), [], 0
            if "segments" in sample:
                segments = []
                for segment in sample["segments"]:
                    if segment["type"] == "image":
                        data, suffix = encoded_image(segment["image"])
                        members.append((f"{key}.{count}.{suffix}", data))
                        segment = {**segment, "image": f"{count}.{suffix}"}
                        count += 1
                    segments.append(segment)
                record["segments"] = segments
            add(tar, f"{key}.json", json.dumps(record, sort_keys=True).encode("utf-8"))
            for name, data in members:
                add(tar, name, data)
    return path


__all__ = [
    "MANIFEST_KIND",
    "ShardList",
    "ShardReadError",
    "count_samples",
    "encoded_image",
    "expand_shards",
    "iter_shard",
    "read_manifest",
    "write_manifest",
    "write_shard",
]
