"""Run a sweep's DAG on this machine: dependency order, N runs at a time, one log per run.

A run starts once all its parents have a result.json; a failed run leaves its dependants unstarted
("blocked: parent X failed"). Running the sweep again starts only what has no result.json, and the train
command resumes those from their checkpoints. Runs still alive from an earlier executor that was killed
(they run in their own session) are waited for, never started twice.

A run with `eval.every_n_checkpoints` gets its evaluator beside it (`vlmlab eval --checkpoints --follow`, a
process of its own, log `<run>/eval/checkpoints.log`): it scores the checkpoints the training holds for it
while the training goes on (vlmlab/eval/checkpoints.py). The sweep ends once the evaluators have ended too;
running it again starts an evaluator for a finished run that still holds checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import IO

from vlmlab.errors import ConfigError
from vlmlab.eval.checkpoints import needs_evaluator
from vlmlab.sweep.dag import Run, SweepDag
from vlmlab.sweep.expand import write_run_files
from vlmlab.sweep.report import report_to_trackers
from vlmlab.sweep.spec import SweepSpec
from vlmlab.sweep.state import SweepState, local_process_alive, now, process_start, sweep_lock

POLL_SECONDS = 0.2
# how long an ended run's leftover processes get to exit on their own before they are killed
SURVIVOR_GRACE = 5.0


def run_local(dag: SweepDag, spec: SweepSpec, parallel: int = 1, out: IO[str] | None = None) -> int:
    """Train every unfinished run; return 0 when all are done, 1 when some failed or were blocked."""
    out = out or sys.stdout
    if parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, got {parallel}.")
    with sweep_lock(dag.output_dir):
        write_run_files(dag)
        return _Executor(dag, spec, parallel, out).run()


class _Executor:
    def __init__(self, dag: SweepDag, spec: SweepSpec, parallel: int, out: IO[str]) -> None:
        self.dag, self.spec, self.parallel, self.out = dag, spec, parallel, out
        self.state = SweepState(dag.output_dir)
        self.started: dict[str, tuple[subprocess.Popen, IO[str]]] = {}  # run id -> process, log file
        self.adopted: set[str] = set()  # alive from an earlier executor: waited for, not started
        self.failed: dict[str, str] = {}  # run id -> why
        self.blocked: dict[str, str] = {}
        self.evaluators: dict[str, tuple[subprocess.Popen, IO[str]]] = {}  # run id -> evaluator, log file

    def say(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def run(self) -> int:
        self.state.data["executor"] = {
            "pid": os.getpid(),
            "start": process_start(os.getpid()),
            "host": socket.gethostname(),
        }
        self.state.save()
        previous = signal.signal(signal.SIGTERM, _cancelled)  # `vlmlab sweep --cancel` sends it
        try:
            return self._run()
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _run(self) -> int:
        todo = [run for run in self.dag if not run.is_done()]
        done_before = len(self.dag) - len(todo)
        todo_before = bool(todo)  # a sweep that had nothing to do logs no report again
        for run in todo:
            entry = self.state.runs.get(run.id)
            if entry and entry.get("backend") == "local" and entry.get("state") == "running":
                if local_process_alive(entry):
                    self.adopted.add(run.id)
                    self.say(f"waiting for {run.key}: still running as pid {entry['pid']}")
        self.say(f"sweep {self.dag.name}: {len(todo)} runs to do, {done_before} done already")
        try:
            for run in self.dag:  # finished runs whose evaluation was cut short
                if run.is_done() and self._evaluates(run):
                    self._start_evaluator(run)
            while todo or self.started or self.adopted or self.evaluators:  # result.json before exit
                todo = self._step(todo)
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self._stop_all("interrupted")
            raise
        except _Cancelled:
            self._stop_all("cancelled (vlmlab sweep --cancel)")
            self.say(f"sweep {self.dag.name}: cancelled")
            return 1
        failed, blocked = len(self.failed), len(self.blocked)
        finished = sum(run.is_done() for run in self.dag)
        self.say(f"sweep {self.dag.name}: {finished} done, {failed} failed, {blocked} blocked")
        if finished == len(self.dag) and todo_before:
            try:  # the tables and figures into the trackers; a tracker that fails does not fail the sweep
                report_to_trackers(self.dag, self.spec, self.out)
            except Exception as error:
                self.say(
                    f"sweep {self.dag.name}: the report was not logged ({' '.join(str(error).split())[:200]})"
                )
        return 0 if not failed and not blocked else 1

    def _step(self, todo: list[Run]) -> list[Run]:
        for run_id in list(self.started):
            self._reap(run_id)
        for run_id in list(self.evaluators):
            self._reap_evaluator(run_id)
        for run_id in list(self.adopted):
            if not local_process_alive(self.state.runs[run_id]):
                self.adopted.discard(run_id)
                self._finish(self.dag.runs[run_id], None)
        remaining = []
        for run in todo:
            if run.is_done() or run.id in self.failed or run.id in self.blocked:
                continue
            remaining.append(run)
            if run.id in self.started or run.id in self.adopted:
                continue
            bad = next((p for p in run.parents if p in self.failed or p in self.blocked), None)
            if bad:
                parent = self.dag.runs[bad]
                why = f"parent {parent.key} failed" if bad in self.failed else f"parent {parent.key} not run"
                self.blocked[run.id] = why
                self.say(f"blocked {run.key}: {self.blocked[run.id]}")
                continue
            busy = len(self.started) + len(self.adopted)
            if busy < self.parallel and all(self.dag.runs[p].is_done() for p in run.parents):
                self._start(run)
        return [run for run in remaining if run.id not in self.failed and run.id not in self.blocked]

    def _start(self, run: Run) -> None:
        command = run.command(self.spec.command)
        log = open(run.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in _reap
        log.write(f"\n=== vlmlab sweep {self.dag.name}: {now()} on {socket.gethostname()}: {command}\n")
        log.flush()
        process = subprocess.Popen(
            ["bash", "-c", command],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: --cancel and Ctrl-C stop the whole run
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.started[run.id] = (process, log)
        start = process_start(process.pid)
        self.state.record(
            run.id, backend="local", state="running", pid=process.pid, start=start, host=socket.gethostname()
        )
        self.state.save()
        self.say(f"started {run.key} (pid {process.pid}; log {run.log_path})")
        if self._evaluates(run):
            self._start_evaluator(run)

    def _evaluates(self, run: Run) -> bool:
        """An evaluator is due for `run` and none is alive (from this executor or an earlier one)."""
        every = int((run.config.get("eval") or {}).get("every_n_checkpoints") or 0)
        if run.id in self.evaluators or not needs_evaluator(run.run_dir, every):
            return False
        entry = self.state.data.get("evaluators", {}).get(run.id)
        return not (entry and entry.get("state") == "running" and local_process_alive(entry))

    def _start_evaluator(self, run: Run) -> None:
        folder = run.run_dir / "eval"
        folder.mkdir(parents=True, exist_ok=True)
        log = open(folder / "checkpoints.log", "a", encoding="utf-8")  # noqa: SIM115 - closed when reaped
        command = [sys.executable, "-m", "vlmlab.cli", "eval", "--checkpoints", "--follow", str(run.run_dir)]
        log.write(f"\n=== vlmlab sweep {self.dag.name}: {now()}: {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.evaluators[run.id] = (process, log)
        self.state.data.setdefault("evaluators", {})[run.id] = {
            "backend": "local",
            "state": "running",
            "pid": process.pid,
            "start": process_start(process.pid),
            "host": socket.gethostname(),
            "log": str(folder / "checkpoints.log"),
            "updated": now(),
        }
        self.state.save()
        self.say(f"started the evaluator of {run.key} (pid {process.pid}; log {folder / 'checkpoints.log'})")

    def _reap_evaluator(self, run_id: str) -> None:
        process, log = self.evaluators[run_id]
        code = process.poll()
        if code is None:
            return
        log.close()
        del self.evaluators[run_id]
        entry = self.state.data.setdefault("evaluators", {}).get(run_id, {})
        entry.update(state="exited" if code == 0 else "failed", exit_code=code, updated=now())
        self.state.save()
        run = self.dag.runs[run_id]
        if code:
            self.say(f"evaluator of {run.key} failed: exit code {code} (log: {entry.get('log')})")
        else:
            self.say(f"evaluator of {run.key} done")

    def _reap(self, run_id: str) -> None:
        process, log = self.started[run_id]
        code = process.poll()
        if code is None:
            return
        log.close()
        del self.started[run_id]
        self._stop_survivors(self.dag.runs[run_id], process.pid)
        self._finish(self.dag.runs[run_id], code)

    def _stop_survivors(self, run: Run, group: int) -> None:
        """Processes of an ended run still alive in its process group (a loader worker whose trainer was
        killed should follow it within a second or two, vlmlab/lifetime.py): given SURVIVOR_GRACE seconds,
        then killed, and named in the sweep's output."""
        deadline = time.monotonic() + SURVIVOR_GRACE
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        if _group_alive(group):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            self.say(f"killed processes of {run.key} that outlived it (process group {group})")

    def _finish(self, run: Run, code: int | None) -> None:
        entry = self.state.runs.get(run.id, {})
        if run.is_done():
            self.state.record(run.id, **{**entry, "state": "exited", "exit_code": code})
            self.say(f"done {run.key}")
        else:
            if code is None:
                reason = f"process {entry.get('pid')} ended without writing result.json"
            elif code < 0:
                reason = f"killed by signal {-code} (log: {run.log_path})"
            elif code == 0:
                reason = f"exited with code 0 but wrote no result.json (log: {run.log_path})"
            else:
                reason = f"exit code {code} (log: {run.log_path})"
            self.failed[run.id] = reason
            self.state.record(run.id, **{**entry, "state": "failed", "exit_code": code, "reason": reason})
            self.say(f"failed {run.key}: {reason}")
        self.state.save()

    def _stop_all(self, why: str) -> None:
        for process, _ in [*self.started.values(), *self.evaluators.values()]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.time() + 10
        for run_id, (process, log) in list(self.started.items()):
            try:
                process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()
            self._stop_survivors(self.dag.runs[run_id], process.pid)
            entry = self.state.runs.get(run_id, {})
            self.state.record(
                run_id, **{**entry, "state": "failed", "exit_code": process.returncode, "reason": why}
            )
        self.started.clear()
        for run_id, (process, log) in list(self.evaluators.items()):
            try:
                process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()
            self.state.data.setdefault("evaluators", {}).get(run_id, {}).update(state="failed", reason=why)
        self.evaluators.clear()
        self.state.save()


def _group_alive(group: int) -> bool:
    """Whether a live process (not a zombie waiting for its reaper) is in process group `group`."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc/self"):
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its closing bracket
                state, _, pgrp = handle.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(pgrp) == group and state != "Z":
            return True
    return False


class _Cancelled(Exception):
    pass


def _cancelled(*_: object) -> None:
    raise _Cancelled


def cancel_local(dag: SweepDag, state: SweepState) -> list[str]:
    """Stop the sweep's local runs; return their keys.

    A live executor gets SIGTERM and stops its runs itself (so it starts nothing more); runs left running
    by an executor that is gone get SIGTERM to their process group."""
    running = [
        run
        for run in dag
        if (entry := state.runs.get(run.id))
        and entry.get("backend") == "local"
        and entry.get("state") == "running"
        and local_process_alive(entry)
    ]
    executor = state.data.get("executor")
    if executor and local_process_alive(executor):
        os.kill(int(executor["pid"]), signal.SIGTERM)
        return [run.key for run in running]
    for run in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(state.runs[run.id]["pid"]), signal.SIGTERM)
    return [run.key for run in running]


__all__ = ["cancel_local", "run_local"]
