"""Which base weights a model was built from: source, hub revision and the sha256 of every weight file read.

A stage checkpoint holds only a weight delta on top of its base weights (the released backbone and image
tokenizer), so it records them (`meta.json` -> `base_weights`), and loading a delta onto other base weights
is refused instead of silently giving a different model. A record is

    {"source": "Qwen/Qwen3-0.6B",          # the string the config gave (hub id, library tag or local path)
     "revision": "c1899de2...",            # the hub commit when the files came from the hub cache, else None
     "sha256": "...",                      # the file's sha256 (one file) or a digest over all of them (shards)
     "files": [{"path": ..., "bytes": ..., "sha256": ...}]}   # None when the loader cannot tell what it read

Hashing streams each file in 16 MiB chunks, once per (path, size, mtime, inode) in a process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmlab.errors import ConfigError

log = logging.getLogger("vlmlab.models")

CHUNK_BYTES = 16 * 2**20
PARTS = ("backbone", "image_tokenizer")  # the keys of VisionLanguageModel.base_weights
PART_PREFIX = {"backbone": "lm.", "image_tokenizer": "image_tokenizer."}  # their parameter names
_SNAPSHOT = re.compile(r"(?:^|/)snapshots/([0-9a-f]{40})/")
_HASHES: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 16 MiB chunks; cached per (path, size, mtime, inode) in this process."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def hub_revision(path: str | Path) -> str | None:
    """The commit of a file in a Hugging Face cache (`.../snapshots/<commit>/...`), else None."""
    match = _SNAPSHOT.search(Path(path).expanduser().absolute().as_posix())
    return match.group(1) if match else None


def weight_record(source: str, files: list[Path] | None, revision: str | None = None) -> dict[str, Any]:
    """The record of base weights loaded from `source` by reading `files` (None: the loader cannot tell).

    `revision` defaults to the hub commit of the files' snapshot folder when they sit in the hub cache.
    """
    if files is None:
        return {"source": source, "revision": revision, "sha256": None, "files": None}
    entries = [
        {
            "path": str(Path(f).expanduser().absolute()),
            "bytes": Path(f).stat().st_size,
            "sha256": file_sha256(f),
        }
        for f in files
    ]
    if revision is None:
        revisions = {hub_revision(f) for f in files}
        revision = revisions.pop() if len(revisions) == 1 else None
    if len(entries) == 1:
        combined = entries[0]["sha256"]
    else:  # shards: one digest over (file name, file digest) pairs in loading order
        lines = "".join(f"{Path(e['path']).name}:{e['sha256']}\n" for e in entries)
        combined = hashlib.sha256(lines.encode()).hexdigest()
    return {"source": source, "revision": revision, "sha256": combined, "files": entries}


def record_loaded(source: str, find_files: Callable[[], list[Path] | None]) -> dict[str, Any]:
    """`weight_record` of the files `find_files` names after a successful load.

    Finding them must never break a load that worked: if it fails, the record keeps the source with
    `files: None`, which turns off the base-weights check for this part.
    """
    try:
        return weight_record(source, find_files())
    except (OSError, ValueError, KeyError, TypeError, ImportError) as error:
        log.warning(
            "could not tell which weight files %r loaded (%s); recording the source only", source, error
        )
        return weight_record(source, None)


# -- transformers' from_pretrained layout (the backbone, and transformers image tokenizers)

# the order in which from_pretrained picks a folder's weights (transformers.modeling_utils)
_FOLDER_LAYOUTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def pretrained_folder_files(folder: str | Path) -> list[Path]:
    """The weight files from_pretrained reads from a save_pretrained folder (all shards of a sharded one)."""
    folder = Path(folder).expanduser()
    for name in _FOLDER_LAYOUTS:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        weight_map = json.loads(path.read_text())["weight_map"]
        return [folder / shard for shard in dict.fromkeys(weight_map.values())]
    raise ValueError(f"no {' / '.join(_FOLDER_LAYOUTS)} in {folder}")


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of a hub repo at `revision` (default: the cached `main`), without network."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(cached).parent if isinstance(cached, str) else None


def pretrained_files(name_or_path: str) -> list[Path] | None:
    """What `from_pretrained(name_or_path)` read: a local folder's weight files, or the hub snapshot's."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return pretrained_folder_files(local)
    snapshot = hub_snapshot(name_or_path)
    return pretrained_folder_files(snapshot) if snapshot is not None else None


def cached_hub_file(repo_id: str, filenames: list[str], revision: str | None = None) -> Path | None:
    """The first of `filenames` in the hub cache of `repo_id` (the order a library tries them), or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        cached = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(cached, str):
            return Path(cached)
    return None


# -- the check when a delta is loaded


def base_weights_mismatch(
    checkpoint: Path, recorded: dict[str, Any] | None, built: dict[str, Any] | None, parts: list[str]
) -> str | None:
    """One line naming the first of `parts` whose recorded file hash differs from the model's, else None.

    A part without a hash on either side (an old checkpoint, random init, a loader that cannot tell which file
    it read) is not checked.
    """
    for part in parts:
        then = (recorded or {}).get(part) or {}
        now = (built or {}).get(part) or {}
        if then.get("sha256") and now.get("sha256") and then["sha256"] != now["sha256"]:
            label = part.replace("_", " ")
            return (
                f"The delta in {checkpoint} was trained on {label} weights sha256 {then['sha256'][:12]}… "
                f"({then.get('source')}) but the model was built from sha256 {now['sha256'][:12]}… "
                f"({now.get('source')}): build it from the same {label} weights, or retrain the run."
            )
    return None


def check_base_weights(
    checkpoint: Path, recorded: dict[str, Any] | None, built: dict[str, Any] | None, parts: list[str]
) -> None:
    message = base_weights_mismatch(checkpoint, recorded, built, parts)
    if message:
        raise ConfigError(message)


__all__ = [
    "PARTS",
    "PART_PREFIX",
    "base_weights_mismatch",
    "cached_hub_file",
    "check_base_weights",
    "file_sha256",
    "hub_revision",
    "hub_snapshot",
    "pretrained_files",
    "pretrained_folder_files",
    "record_loaded",
    "weight_record",
]
