"""Temporary files of checkpoints, results and exports live beside their destination, never in $TMPDIR, and a
full disk is one line naming the run-folder path that could not be written.

Truth: real file systems of a known size (a tmpfs mounted for the test; skipped where mounting needs
privileges this machine lacks): a 64 KiB $TMPDIR, which takes a probe file but no checkpoint, and a run
folder too small for one.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_bad_inputs import _log_handlers_follow_the_capture, tiny_config  # noqa: F401 (autouse fixture)

from vlmlab.cli import main


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` mounted on `folder` for the block."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_tmpdir(tmp_path, monkeypatch):
    with small_disk(tmp_path / "small-tmp", "64k") as folder:
        monkeypatch.setenv("TMPDIR", str(folder))
        monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads $TMPDIR again
        assert tempfile.gettempdir() == str(folder)
        yield folder


def test_checkpoints_result_and_export_never_stage_in_a_small_tmpdir(tmp_path, capfd, small_tmpdir):
    """Lightning stages a checkpoint in $TMPDIR (fsspec's transaction): with a 64 KiB one every checkpoint
    failed. Through the CLI: train (two resume checkpoints, final/, result.json), then export."""
    config = tiny_config(tmp_path, train={"checkpoint_every_n_steps": 1, "keep_resume_state": True})
    code = main(["train", str(config)])
    err = capfd.readouterr().err
    assert code == 0, err[-3000:]
    run = tmp_path / "run"
    assert (run / "result.json").exists() and (run / "final" / "weights.safetensors").exists()
    assert (run / "checkpoints" / "last.ckpt").stat().st_size > 64 * 1024  # could never fit the $TMPDIR
    code = main(["export", str(run), "--out", str(tmp_path / "exported")])
    err = capfd.readouterr().err
    assert code == 0, err[-3000:]
    assert (tmp_path / "exported" / "vlmlab_export.json").exists()
    # nothing staged there (wandb, imported by Lightning, makes two empty folders of its own)
    assert [p for p in small_tmpdir.rglob("*") if p.is_file()] == []
    leftovers = [p for p in [*run.rglob(".*"), *tmp_path.glob(".*")] if ".tmp" in p.name or p.is_dir()]
    assert leftovers == []


def test_a_full_run_folder_is_one_line_naming_it(tmp_path, capfd):
    """A run folder on a 256 KiB disk: the config and the logs fit, the first checkpoint does not."""
    with small_disk(tmp_path / "disk", "256k") as disk:
        config = tiny_config(tmp_path, train={"checkpoint_every_n_steps": 1})
        code = main(["train", str(config), f"train.output_dir={disk / 'run'}"])
        err = capfd.readouterr().err
        lines = [line for line in err.strip().splitlines() if line.startswith("vlmlab: ")]
        assert code != 0 and "Traceback" not in err, err[-3000:]
        assert str(disk / "run") in lines[-1] and "No space left on device" in lines[-1], lines
        assert not [p for p in (disk / "run").rglob("*") if ".tmp" in p.name]
        assert not (disk / "run" / "result.json").exists() and not (disk / "run" / "final").exists()
