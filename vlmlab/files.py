"""Writing files so that readers never see a partial one: temporary file in the same folder, fsync, rename."""

from __future__ import annotations

import contextlib
import errno
import os
import re
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


# a destination that cannot take the write: full, over quota, read-only, too large, failing, not allowed
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO, errno.EACCES, errno.EPERM}
# what a full or read-only disk raises from libraries that do not raise OSError (safetensors' Rust writer
# says `IoError(Os { code: 28, kind: StorageFull, ... })`)
_OS_CODE = re.compile(r"\bcode: (\d+)\b|\[Errno (\d+)\]")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Name `path` (the file or folder being written: inside the run folder, the export folder) in any
    failure to write it, as one OSError: a full disk says which destination it could not write, not which
    temporary file (`'/tmp/tmpXXXXXXXX' No space left on device`). Errors that are not about the disk pass
    through unchanged."""
    try:
        yield
    except Exception as error:
        code = _write_errno(error)
        if code is None:
            raise
        raise OSError(code, f"cannot write it: {os.strerror(code)}", str(path)) from None


def _write_errno(error: BaseException | None) -> int | None:
    """The errno of a failed write behind `error`: its own, one in its message, or one of the error it
    was raised while handling (torch.save's zip writer masks a full disk with its own RuntimeError)."""
    for _ in range(8):
        if error is None:
            return None
        if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
            return error.errno
        match = _OS_CODE.search(str(error)) if not isinstance(error, OSError) else None
        if match and int(match.group(1) or match.group(2)) in WRITE_ERRNOS:
            return int(match.group(1) or match.group(2))
        error = error.__cause__ or error.__context__
    return None


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
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with writing(path), open(fd, mode, encoding="utf-8" if mode == "w" else None) as handle:
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
    "writing",
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
