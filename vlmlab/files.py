"""Writing files so that readers never see a partial one: temporary file in the same folder, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def shareable(path: str | os.PathLike, folder: bool = False) -> None:
    """Give a file made by `mkstemp` (0600) or a folder made by `mkdtemp` (0700) the permissions a plain
    `open` / `mkdir` would have had (0666 / 0777 minus the umask): the group can read results."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file to disk (before it is renamed into place)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: Literal["wb", "w"] = "wb") -> Iterator[IO[Any]]:
    """Open `path` for writing so that readers see the old file or the complete new one, never a part: the
    handle writes a temporary file beside `path` (same file system, so the rename is atomic), which is
    fsynced, given the permissions a plain `open` would have (`shareable`) and renamed over `path` when the
    block ends; an exception in the block (disk full, bad sample, Ctrl-C) removes it and leaves `path` as it
    was. Text mode (`"w"`) writes UTF-8. Streaming writers (tar shards, JSONL indexes) write through it
    piece by piece, so nothing is held in memory."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes a new file: mode 'wb' or 'w', not {mode!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, mode, encoding="utf-8" if mode == "w" else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        shareable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_open`)."""
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically, as UTF-8 (see `atomic_open`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_file",
    "replace_folder",
    "shareable",
]


def replace_folder(tmp: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Put the complete folder `tmp` in the place of `folder` (renames: a reader sees the old or the new one,
    never a mix; the old one is removed afterwards)."""
    tmp, folder = Path(tmp), Path(folder)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
