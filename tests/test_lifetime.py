"""No process of a run outlives it: a trainer killed with SIGKILL takes its loader workers along (and the
pipe its stdout went to sees EOF), and the local sweep backend kills whatever a finished run left behind.

Truth: the kernel's process table (psutil), read before the kill and 10 s after it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.utils.data
from test_sweep import FAKE_COMMAND, cli, write
from test_training import REPO, write_config

from vlmlab.lifetime import worker_init_fn
from vlmlab.sweep.expand import expand
from vlmlab.sweep.spec import load_sweep


def _alive(process: psutil.Process) -> bool:
    try:  # a reparented worker that init has not reaped yet is a zombie: dead, holding nothing
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow(seconds=45)
def test_sigkill_of_a_trainer_takes_its_two_loader_workers_along(tmp_path: Path) -> None:
    """A real `python -m vlmlab.cli train` (its stdout a pipe, as under a wrapper) with data.num_workers=2,
    killed mid-run: 10 s later none of its processes is alive, and the pipe has reached EOF."""
    config = write_config(tmp_path, "run", max_steps=10_000, checkpoint_every_n_steps=10_000)
    trainer = subprocess.Popen(
        [sys.executable, "-m", "vlmlab.cli", "train", str(config), "data.num_workers=2", "data.val=[]"]
        + ["train.select_best=false"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    process = psutil.Process(trainer.pid)
    output = bytearray()
    eof = threading.Event()

    def read() -> None:  # the wrapper: reads the pipe until EOF
        while chunk := trainer.stdout.read1(65536):
            output.extend(chunk)
        eof.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        children: list[psutil.Process] = []
        while time.monotonic() < deadline and trainer.poll() is None:
            children = process.children(recursive=True)
            if len(children) >= 2 and b"Epoch" in output:  # both workers up, batches flowing
                break
            time.sleep(0.2)
        assert trainer.poll() is None and len(children) >= 2, output.decode(errors="replace")[-3000:]
        time.sleep(1.0)  # the workers busy producing batches into their queues
        children = process.children(recursive=True)
        trainer.send_signal(signal.SIGKILL)
        assert trainer.wait(timeout=10) == -signal.SIGKILL
        time.sleep(10)
        survivors = [child.pid for child in children if _alive(child)]
        assert survivors == [], f"alive 10 s after the kill: {survivors}"
        assert eof.wait(timeout=1), "the stdout pipe is still held open"
    finally:
        trainer.kill()
        for child in process.children(recursive=True) if trainer.poll() is None else []:
            child.kill()


SURVIVOR_SWEEP = """
name: survivor
base: {base}
axes:
  fusion: [joint_decoder]
stages:
  1: {{config: {{train: {{max_steps: 2}}}}}}
"""


def test_local_sweep_kills_what_a_finished_run_left_running(tmp_path: Path, capsys) -> None:
    """A run's command starts a background process that ignores SIGTERM and outlives the run: the
    executor names it and kills it."""
    from vlmlab.presets import preset_root

    sweep = write(tmp_path / "s.yaml", SURVIVOR_SWEEP.format(base=preset_root() / "model" / "tiny.yaml"))
    out = tmp_path / "out"
    (run,) = list(expand(load_sweep(sweep, output_dir=out)))
    pid_file = tmp_path / "survivor.pid"
    command = f"(trap '' TERM; exec sleep 120) & echo $! > {shlex.quote(str(pid_file))}; " + FAKE_COMMAND
    code, text, _ = cli(
        str(sweep), "--backend", "local", "--output", str(out), "--command", command, capsys=capsys
    )
    assert code == 0, text
    assert f"killed processes of {run.key} that outlived it" in text
    survivor = int(pid_file.read_text())
    time.sleep(0.2)
    assert not psutil.pid_exists(survivor) or psutil.Process(survivor).status() == psutil.STATUS_ZOMBIE


class _Blocked(torch.utils.data.IterableDataset):
    """Each worker starts a child (`sleep`, standing in for a `pipe:` shard reader) and waits for it: busy
    inside one item, where torch's own between-items parent check never runs."""

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        child = subprocess.Popen(["sleep", "300"])
        Path(os.environ["PIDS"], f"{info.id}").write_text(f"{os.getpid()} {child.pid}")
        child.wait()
        yield torch.zeros(1)


def _owner(pids: str, guarded: bool) -> None:
    os.environ["PIDS"] = pids
    kwargs = {"worker_init_fn": worker_init_fn()} if guarded else {}
    next(iter(torch.utils.data.DataLoader(_Blocked(), num_workers=2, batch_size=None, **kwargs)))


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "unguarded"])
def test_workers_blocked_inside_an_item_die_with_their_owner(tmp_path: Path, guarded: bool) -> None:
    """The guard that ResumableLoader gives every worker (vlmlab/lifetime.py): with it, the workers and
    their own children are gone within 10 s of the owner's SIGKILL; without it (the control) they are not."""
    owner = multiprocessing.get_context("fork").Process(target=_owner, args=(str(tmp_path), guarded))
    owner.start()
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = [int(pid) for path in tmp_path.iterdir() for pid in path.read_text().split()]
    processes = [psutil.Process(pid) for pid in pids]
    os.kill(owner.pid, signal.SIGKILL)
    owner.join()
    time.sleep(10)
    survivors = [p.pid for p in processes if _alive(p)]
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    assert len(pids) == 4
    if guarded:
        assert survivors == [], f"alive 10 s after the kill: {survivors}"
    else:
        assert len(survivors) == 4
