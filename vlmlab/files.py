"""Writing files so that readers never see a partial one: temporary file in the same folder, fsync, rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically: readers see the old file or the new one, never a mix; a failed
    write (disk full, kill) leaves no temporary file behind when the process survives to clean up."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        shareable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_file", "shareable"]


def replace_folder(tmp: str | os.PathLike, folder: str | os.PathLike) -> None:
    """Put the complete folder `tmp` in the place of `folder` (renames: a reader sees the old or the new one,
    never a mix; the old one is removed afterwards)."""
    import shutil

    tmp, folder = Path(tmp), Path(folder)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
