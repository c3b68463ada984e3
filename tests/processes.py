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


AUDITED = ("open", "os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def audit_file_access(log: str | Path, roots: list[str | Path]) -> None:
    """From now on, log every file this process opens, creates, renames or removes under `roots` to `log`
    ("read PATH", "write PATH", "rename SRC -> DST", "mkdir PATH", "remove PATH"): Python's audit events,
    so every open through Python (builtins, os, tempfile, shutil) is seen, whoever calls it."""
    import sys

    fd = os.open(str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # before the hook: not logged
    prefixes = [os.path.realpath(root) + os.sep for root in roots]

    def under(path: object) -> str | None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str | os.PathLike):
            return None
        full = os.path.realpath(os.path.join(os.getcwd(), os.fspath(path)))
        return full if any((full + os.sep).startswith(prefix) for prefix in prefixes) else None

    def hook(event: str, args: tuple) -> None:
        if event not in AUDITED or not args:
            return
        path = under(args[0])
        if path is None:
            return
        if event == "open":
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writes = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & _WRITE_FLAGS)
            line = f"{'write' if writes else 'read'} {path}"
        elif event == "os.rename":
            line = f"rename {path} -> {under(args[1])}"
        else:
            line = f"{event.removeprefix('os.').removeprefix('shutil.')} {path}"
        os.write(fd, (line + "\n").encode())

    sys.addaudithook(hook)


def _train_main(
    argv: list[str], env: dict[str, str], cwd: str, stderr_path: str, audit: tuple | None = None
) -> None:
    """One rank of `vlmlab train ARGV`: stdout discarded, the exit code `main` returns; with `audit`
    (log, roots), its file accesses under the roots logged (`audit_file_access`)."""
    import sys

    _as_a_fresh_process(env, cwd, os.devnull, stderr_path)
    if audit is not None:
        audit_file_access(*audit)
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


def start_train(
    argv: list[str],
    env: dict[str, str],
    cwd: str | Path,
    ranks: int = 1,
    nodes: int = 1,
    rank_env: dict[int, dict[str, str]] | None = None,
    audit: tuple[Path, list[Path]] | None = None,
) -> TrainRun:
    """`vlmlab train ARGV` in `ranks` new processes (`env["MASTER_PORT"]` their rendezvous port), spread over
    `nodes` node ranks as `torchrun --nnodes NODES --node-rank N --nproc-per-node RANKS/NODES` on each node
    would start them; `rank_env` adds variables to single ranks (a fault for one node's process); `audit`
    (folder, roots) logs each rank's file accesses under the roots to folder/rank<R>.log."""
    folder = _output_folder("run-")
    processes, paths = [], []
    run_id = uuid.uuid4().hex[:8]
    per_node = ranks // nodes
    for rank in range(ranks):
        rank_env_vars = {**env, **(rank_env or {}).get(rank, {})}
        if ranks > 1:  # what torchrun sets for each process of node rank `rank // per_node`
            rank_env_vars.update(
                RANK=str(rank),
                LOCAL_RANK=str(rank % per_node),
                GROUP_RANK=str(rank // per_node),
                GROUP_WORLD_SIZE=str(nodes),
                ROLE_RANK=str(rank),
                WORLD_SIZE=str(ranks),
                LOCAL_WORLD_SIZE=str(per_node),
                ROLE_WORLD_SIZE=str(ranks),
                MASTER_ADDR="127.0.0.1",
                TORCHELASTIC_RUN_ID=run_id,
            )
        paths.append(folder / f"rank{rank}.stderr")
        audited = None if audit is None else (str(audit[0] / f"rank{rank}.log"), [str(r) for r in audit[1]])
        process = _FORKSERVER.Process(
            target=_train_main, args=(argv, rank_env_vars, str(cwd), str(paths[-1]), audited)
        )
        process.start()
        processes.append(process)
    return TrainRun(processes, paths)


__all__ = ["PRELOAD", "TrainRun", "audit_file_access", "run_script", "spawn", "start_train"]
