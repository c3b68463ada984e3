"""A LLaVA JSON list / JSONL file as an on-disk Arrow index, memory-mapped and shared by every process.

Loading a JSON list with `json.load` costs each process (the main one and every loader worker, on every
rank) its own Python copy: about 3 GB for LLaVA-v1.5's mix665k and 7 s to parse. Instead the file is read
once per node into an Arrow file (one row per entry: the entry's JSON text as written, and its `id`) that
every process opens with `datasets.Dataset.from_file`, memory-mapped: the pages live once in the page cache,
shared by all processes, and opening costs the same for 150 entries or 1.3 million. An entry is parsed
(`json.loads` of one row) only when it is read.

The index lives in `$VLMLAB_CACHE_DIR/json-index/` (default `~/.cache/vlmlab`), named by the file's absolute
path and a key of its size, modification time and a hash of its first and last MiB (constant cost at start),
so an edited JSON gets a new index and the stale one is removed. Building is safe when ranks and workers
race: a file lock lets one process build while the others wait, and the index appears by an atomic rename
of a fsynced temporary file, so a reader never sees a partial index. The build streams the JSON (one entry
decoded at a time from 64 MiB chunks) so it never holds the whole parsed list either.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmlab.errors import ConfigError

INDEX_VERSION = 1
CHUNK_CHARS = 64 * 1024 * 1024
BATCH_ROWS = 20_000
_SPACE = re.compile(r"\s*")
_EDGE_BYTES = 1024 * 1024


def index_root() -> Path:
    root = os.environ.get("VLMLAB_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "vlmlab") / "json-index"


def _fingerprint(path: Path) -> tuple[str, str]:
    """(the file's path key, its content key): size, mtime and the first / last MiB, at constant cost."""
    resolved = str(path.resolve())
    stat = path.stat()
    digest = hashlib.sha256(f"{INDEX_VERSION}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(_EDGE_BYTES))
        if stat.st_size > _EDGE_BYTES:
            handle.seek(max(_EDGE_BYTES, stat.st_size - _EDGE_BYTES))
            digest.update(handle.read(_EDGE_BYTES))
    return hashlib.sha256(resolved.encode()).hexdigest()[:16], digest.hexdigest()[:16]


def _list_entries(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    """(JSON text, value) of each element of a JSON list, decoded one at a time from bounded chunks."""
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8") as handle:
        buffer, pos, eof = "", 0, False

        def fill() -> bool:
            nonlocal buffer, pos, eof
            chunk = handle.read(CHUNK_CHARS)
            eof = not chunk
            buffer, pos = buffer[pos:] + chunk, 0
            return not eof

        def skip_space() -> str:
            nonlocal pos
            while True:
                pos = _SPACE.match(buffer, pos).end()  # type: ignore[union-attr]
                if pos < len(buffer) or not fill():
                    return buffer[pos] if pos < len(buffer) else ""

        def bad(what: str) -> ConfigError:
            return ConfigError(f"source {name!r}: {str(path)!r} is not valid JSON ({what}).")

        fill()
        if skip_space() != "[":
            raise ConfigError(f"source {name!r}: {str(path)!r} must hold a list of objects (one per sample).")
        pos += 1
        if skip_space() == "]":
            return
        while True:
            while True:
                try:
                    value, end = decoder.raw_decode(buffer, pos)
                    break
                except json.JSONDecodeError as error:
                    if eof or not fill():  # an entry cut by the chunk's end: read more, else it is broken
                        raise bad(str(error)) from None
            yield buffer[pos:end], value
            pos = end
            separator = skip_space()
            pos += 1
            if separator == "]":
                return
            if separator != ",":
                raise bad(f"expected ',' or ']' after an entry, got {separator or 'the end of the file'!r}")
            skip_space()


def _lines(path: Path, name: str) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield line.strip(), json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(
                    f"source {name!r}: {str(path)!r} line {number} is not valid JSON ({error})."
                ) from None


def _build(path: Path, target: Path, name: str) -> None:
    """Write the index to a temporary file beside `target`, fsync it, and rename it into place."""
    import pyarrow as pa

    schema = pa.schema([("json", pa.large_string()), ("id", pa.string())])
    entries = _lines(path, name) if path.suffix == ".jsonl" else _list_entries(path, name)
    temporary = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    count = 0
    try:
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            texts: list[str] = []
            ids: list[str] = []
            for text, value in entries:
                if not isinstance(value, dict):
                    raise ConfigError(
                        f"source {name!r}: {str(path)!r} entry {count} is a {type(value).__name__}; the file must "
                        "hold a list of objects (one per sample)."
                    )
                texts.append(text)
                ids.append(str(value.get("id", count)))
                count += 1
                if len(texts) >= BATCH_ROWS:
                    writer.write_batch(pa.record_batch([texts, ids], schema=schema))
                    texts, ids = [], []
            if texts:
                writer.write_batch(pa.record_batch([texts, ids], schema=schema))
        if count == 0:
            raise ConfigError(f"source {name!r}: {str(path)!r} holds no samples.")
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        temporary.unlink(missing_ok=True)


def index_path(path: Path) -> Path:
    """Where the index of the JSON file's current content lives (whether built or not)."""
    path_key, content_key = _fingerprint(path)
    return index_root() / f"{path.stem[:40]}-{path_key}-{content_key}.arrow"


def open_json_index(path: Path, name: str) -> Any:
    """The memory-mapped index of a JSON list / JSONL file (a `datasets.Dataset`: columns `json`, `id`),
    built first when missing or stale (module docstring)."""
    import datasets
    from filelock import FileLock

    try:
        target = index_path(path)
    except OSError as error:
        raise ConfigError(f"source {name!r}: cannot read {str(path)!r}: {error}") from error
    root, path_key = target.parent, target.stem.rsplit("-", 2)[1]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"source {name!r}: cannot create the JSON index folder {str(root)!r}: {error}"
        ) from error
    if not target.is_file():
        with FileLock(str(root / f"{path_key}.lock")):
            if not target.is_file():  # another rank or worker may have built it while this one waited
                for leftover in root.glob(f"*-{path_key}-*.arrow.tmp-*"):  # a builder killed mid-way
                    leftover.unlink(missing_ok=True)  # (the lock is held: nobody else writes these)
                _build(path, target, name)
                for stale in root.glob(f"*-{path_key}-*.arrow"):  # older versions of this file
                    if stale != target:
                        stale.unlink(missing_ok=True)
    return datasets.Dataset.from_file(str(target), in_memory=False)


class JsonRows:
    """Random access to a JSON file's entries through its index: `rows[i]` parses entry i alone."""

    def __init__(self, path: Path, name: str) -> None:
        self.dataset = open_json_index(path, name)
        # the Arrow columns themselves (memory-mapped); indexing them skips datasets' row formatting
        self._json = self.dataset.data.column("json")
        self._ids = self.dataset.data.column("id")

    def __len__(self) -> int:
        return self.dataset.num_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        return json.loads(self._json[index].as_py())

    def id(self, index: int) -> str:
        return str(self._ids[index].as_py())


__all__ = ["JsonRows", "index_path", "index_root", "open_json_index"]
