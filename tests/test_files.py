"""`vlmlab.files.atomic_open`, the one writer behind every file vlmlab writes under vlmlab/data: plain-open
permissions, the old file intact and no temporary file left when a write fails, and each converted writer
still producing its files."""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from vlmlab.data.inspect import contact_sheet
from vlmlab.data.lomo.transform import LomoConfig, read_rendered_shard, write_rendered_shards
from vlmlab.data.shards import write_shard
from vlmlab.data.synthetic.shards import read_split, write_split
from vlmlab.files import atomic_open, atomic_write_bytes, atomic_write_text


@pytest.fixture(params=[0o022, 0o027])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_open_gives_the_permissions_of_a_plain_open(tmp_path: Path, umask: int) -> None:
    plain = tmp_path / "plain.bin"
    with open(plain, "wb") as handle:
        handle.write(b"x")
    with atomic_open(tmp_path / "atomic.bin") as handle:
        handle.write(b"x")
    atomic_write_text(tmp_path / "text.txt", "x")
    assert mode(tmp_path / "atomic.bin") == mode(plain) == 0o666 & ~umask
    assert mode(tmp_path / "text.txt") == mode(plain)
    if umask == 0o022:
        assert mode(plain) == 0o644


def test_atomic_open_writes_bytes_and_utf8_text(tmp_path: Path) -> None:
    with atomic_open(tmp_path / "deep" / "a.txt", "w") as handle:  # parent folders are made
        handle.write("naïve\n")
    assert (tmp_path / "deep" / "a.txt").read_bytes() == "naïve\n".encode()
    atomic_write_bytes(tmp_path / "a.txt", b"\x00\x01")
    assert (tmp_path / "a.txt").read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="mode 'wb' or 'w', not 'a'"):
        with atomic_open(tmp_path / "b.txt", "a"):  # type: ignore[arg-type]
            pass
    assert not (tmp_path / "b.txt").exists()


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(target, "w") as handle:
            handle.write("half of the new")
            handle.flush()
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(tmp_path / "new.bin") as handle:
            handle.write(b"partial")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


# ------------------------------------------------------------------------------------- converted writers


def only_final_files(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.iterdir())
    assert not any(name.startswith(".") or name.endswith(".tmp") for name in names), names
    for name in names:
        assert mode(folder / name) == 0o644, name
    return names


@pytest.mark.parametrize("umask", [0o022], indirect=True)
def test_converted_writers_produce_their_files_with_plain_permissions(tmp_path: Path, umask: int) -> None:
    sample = {"id": "s0", "segments": [{"type": "image", "image": Image.new("RGB", (4, 4), "red")},
                                       {"type": "text", "text": "What colour?"}], "response": "red"}  # fmt: skip
    write_shard([sample], tmp_path / "shard" / "copy.tar")
    assert only_final_files(tmp_path / "shard") == ["copy.tar"]
    with tarfile.open(tmp_path / "shard" / "copy.tar") as tar:
        assert tar.getnames() == ["s0.json", "s0.0.png"]

    write_split("ring", "test", tmp_path / "synthetic", num=5, image_size=32, shard_size=2)
    assert only_final_files(tmp_path / "synthetic") == [
        "ring-test-00000.tar", "ring-test-00001.tar", "ring-test-00002.tar", "ring-test.jsonl"
    ]  # fmt: skip
    assert len(list(read_split(tmp_path / "synthetic", "ring", "test"))) == 5

    text_only = [{"prompt": "Look.", "image": "kept as is", "response": f"ok {i}"} for i in range(3)]
    paths = write_rendered_shards(text_only, tmp_path / "lomo", LomoConfig(), samples_per_shard=2)
    assert only_final_files(tmp_path / "lomo") == ["lomo-000000.tar", "lomo-000001.tar"]
    assert [r["response"] for p in paths for r in read_rendered_shard(p)] == ["ok 0", "ok 1", "ok 2"]

    contact_sheet([("s0", [Image.new("RGB", (8, 8), "blue")], "a blue square")], tmp_path / "sheet" / "x.png")
    assert only_final_files(tmp_path / "sheet") == ["x.png"]
    with Image.open(tmp_path / "sheet" / "x.png") as sheet:
        assert sheet.format == "PNG"


@pytest.mark.parametrize("umask", [0o022], indirect=True)
def test_folder_writers_replace_whole_folders_readable_by_the_group(tmp_path: Path, umask: int) -> None:
    import torch
    from data_helpers import IMAGE_ID, VOCAB

    from vlmlab.data.text_tokenizer import build_tiny_tokenizer
    from vlmlab.models.checkpoint import WEIGHTS, save_stage_checkpoint

    tokenizer = build_tiny_tokenizer(VOCAB, IMAGE_ID, tmp_path / "cache")
    assert mode(tokenizer) == 0o755 and sorted(p.name for p in tokenizer.parent.iterdir()) == [tokenizer.name]

    model = torch.nn.Linear(2, 2)
    config = {"train": {"stage": "align"}, "model": {"fusion": "early"}}
    folder = save_stage_checkpoint(model, tmp_path / "runs" / "stage1", config, None, include_frozen=False)
    first = (folder / WEIGHTS).read_bytes()
    torch.nn.init.ones_(model.weight)
    save_stage_checkpoint(
        model, folder, config, None, include_frozen=False
    )  # over the old one: a whole-folder swap
    assert (folder / WEIGHTS).read_bytes() != first
    assert sorted(p.name for p in folder.parent.iterdir()) == ["stage1"]  # no temporary or `.old` folder
    assert mode(folder) == 0o755
