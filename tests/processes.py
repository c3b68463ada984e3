"""Separate processes for the tests, forked from one that has already imported vlmlab's training stack.

A new Python process spends about eleven CPU seconds importing torch, transformers, Lightning and open_clip
before it does anything (Lightning alone pulls in torchmetrics, torchvision and torch._dynamo), and the
suite starts some forty processes whose boundary is what a test is about: runs it kills, ranks that
rendezvous over TCP. multiprocessing's forkserver imports that stack once per pytest worker and forks every
such process from it, so each is still a separate process (its own pid, signal handlers, exit code and
sockets) without the import bill. The forkserver is single-threaded, so forking it is safe.

`start_train` stands in for `python -m vlmlab.cli train ...` (one rank) and `torchrun ... vlmlab.cli train`
(two ranks, with the environment torchrun gives them), `run_script` for `python SCRIPT ARGS` (the
benchmarks), `spawn` for `torch.multiprocessing.spawn`.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as torch_mp

# imported once by the forkserver; everything a training run or a rank of the sharding tests needs
PRELOAD = [
    "vlmlab.cli",
    "vlmlab.train.cli",
    "vlmlab.train.run",
    "vlmlab.train.sharding",
    "vlmlab.models.vlm",
    "vlmlab.data.validation",
    "torch.distributed.checkpoint.state_dict",
    "open_clip.transformer",
]
_FORKSERVER = multiprocessing.get_context("forkserver")
_FORKSERVER.set_forkserver_preload(PRELOAD)
_SCRATCH: list[tempfile.TemporaryDirectory] = []


def _output_folder(prefix: str) -> Path:
    """A new folder for one launch's stdout / stderr files, inside one that is removed when this pytest
    worker exits (made on first use: the forked processes import this module too)."""
    if not _SCRATCH:
        _SCRATCH.append(tempfile.TemporaryDirectory(prefix="vlmlab-test-processes-"))
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_SCRATCH[0].name))


def spawn(fn: Callable[..., None], args: tuple, nprocs: int = 2) -> None:
    """`torch.multiprocessing.spawn(fn, args, nprocs)`, the ranks forked from the preloaded server."""
    torch_mp.start_processes(fn, args=args, nprocs=nprocs, join=True, start_method="forkserver")


def _as_a_fresh_process(env: dict[str, str], cwd: str, stdout_path: str, stderr_path: str) -> None:
    """What a new interpreter started with `env` in `cwd` would have: its environment, folder, warning
    filter and start method, stdout and stderr going to files."""
    import warnings

    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    # the platform's default start method for the process's own children (data-loader workers), as in a
    # fresh interpreter: a forkserver child inherits "forkserver", and a second forkserver would import it all
    multiprocessing.set_start_method(None, force=True)
    if env.get("PYTHONWARNINGS") == "ignore":  # read at interpreter start, which the forkserver did
        warnings.simplefilter("ignore")
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        os.dup2(stdout.fileno(), 1)
        os.dup2(stderr.fileno(), 2)


def _train_main(argv: list[str], env: dict[str, str], cwd: str, stderr_path: str) -> None:
    """One rank of `vlmlab train ARGV`: stdout discarded, the exit code `main` returns."""
    import sys

    _as_a_fresh_process(env, cwd, os.devnull, stderr_path)
    from vlmlab.cli import main

    sys.exit(main(["train", *argv]))


def _script_main(script: str, argv: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    import runpy
    import sys

    _as_a_fresh_process(env, cwd, out, err)
    sys.argv = [script, *argv]
    sys.path.insert(0, str(Path(script).parent))  # what `python SCRIPT` puts first
    runpy.run_path(script, run_name="__main__")


def run_script(
    script: str | Path, *args: str, env: dict[str, str], cwd: str | Path, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` (its exit code, stdout and stderr) in a process forked from the preloaded one."""
    folder = _output_folder("script-")
    out, err = folder / "stdout", folder / "stderr"
    process = _FORKSERVER.Process(
        target=_script_main, args=(str(script), list(args), env, str(cwd), str(out), str(err))
    )
    process.start()
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise subprocess.TimeoutExpired(str(script), timeout)
    return subprocess.CompletedProcess(
        [str(script), *args],
        process.exitcode,
        out.read_text(errors="replace"),
        err.read_text(errors="replace"),
    )


class TrainRun:
    """The ranks of one `vlmlab train` launch, with the parts of `subprocess.Popen` the tests use. As under
    torchrun, a rank that fails takes the others down (a rank waiting in a collective would wait forever)."""

    def __init__(self, processes: list[Any], stderr_paths: list[Path]):
        self.processes = processes
        self.stderr_paths = stderr_paths
        self.returncode: int | None = None
        self.pid = processes[0].pid

    def poll(self) -> int | None:
        codes = [p.exitcode for p in self.processes]
        failed = [code for code in codes if code not in (None, 0)]
        if failed:
            self._stop_the_rest()
            self.returncode = failed[0]
        elif all(code == 0 for code in codes):
            self.returncode = 0
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            waiting = [p.sentinel for p in self.processes if p.exitcode is None]
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self.kill()
                raise subprocess.TimeoutExpired("vlmlab train", timeout)
            multiprocessing.connection.wait(waiting, left)
        for process in self.processes:
            process.join()
        return self.returncode

    def stderr_text(self) -> str:
        texts = [path.read_text(errors="replace") for path in self.stderr_paths if path.exists()]
        if len(texts) == 1:
            return texts[0]
        return "".join(f"--- rank {rank} ---\n{text}" for rank, text in enumerate(texts))

    def communicate(self, timeout: float | None = None) -> tuple[None, str]:
        self.wait(timeout)
        return None, self.stderr_text()

    def send_signal(self, signum: int) -> None:
        for process in self.processes:
            if process.exitcode is None:
                os.kill(process.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
        for process in self.processes:
            process.join()

    def _stop_the_rest(self) -> None:
        self.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.join(timeout=30)
        self.send_signal(signal.SIGKILL)


def start_train(argv: list[str], env: dict[str, str], cwd: str | Path, ranks: int = 1) -> TrainRun:
    """`vlmlab train ARGV` in `ranks` new processes (`env["MASTER_PORT"]` their rendezvous port)."""
    folder = _output_folder("run-")
    processes, paths = [], []
    run_id = uuid.uuid4().hex[:8]
    for rank in range(ranks):
        rank_env = dict(env)
        if ranks > 1:  # what torchrun --nnodes=1 --nproc-per-node=RANKS sets for each rank
            rank_env.update(
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                GROUP_RANK="0",
                ROLE_RANK=str(rank),
                WORLD_SIZE=str(ranks),
                LOCAL_WORLD_SIZE=str(ranks),
                ROLE_WORLD_SIZE=str(ranks),
                MASTER_ADDR="127.0.0.1",
                TORCHELASTIC_RUN_ID=run_id,
            )
        paths.append(folder / f"rank{rank}.stderr")
        process = _FORKSERVER.Process(target=_train_main, args=(argv, rank_env, str(cwd), str(paths[-1])))
        process.start()
        processes.append(process)
    return TrainRun(processes, paths)


__all__ = ["PRELOAD", "TrainRun", "run_script", "spawn", "start_train"]
