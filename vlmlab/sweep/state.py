"""What a sweep has launched, and each run's state derived from it.

`<sweep output>/sweep_state.json` records, per run id, how the run was last launched: a Slurm job id
(`<array job>_<task>`) or a local process (pid + its start time, so a recycled pid is never taken for the
run). It is written atomically, and only while holding `<sweep output>/.sweep.lock`, so two submissions of
one sweep never race. A run's state is never stored: it is derived each time from `result.json` (done),
the scheduler or the process (running / pending / failed and why) and the parents' states.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vlmlab.errors import ConfigError
from vlmlab.files import atomic_write_text

STATE_FILE = "sweep_state.json"
STATES = ("done", "running", "pending", "failed", "blocked", "not submitted")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class SweepState:
    """The launch records of one sweep output folder (see the module docstring)."""

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / STATE_FILE
        self.data: dict[str, Any] = {"version": 1, "runs": {}}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as error:
                raise ConfigError(f"Sweep state {str(self.path)!r} is not valid JSON: {error}.") from error
            self.data.setdefault("runs", {})

    @property
    def runs(self) -> dict[str, dict[str, Any]]:
        return self.data["runs"]

    def record(self, run_id: str, **entry: Any) -> None:
        self.runs[run_id] = {**entry, "updated": now()}

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def sweep_lock(output_dir: Path) -> Iterator[None]:
    """Hold the sweep's lock file: one submission or local executor per sweep output folder at a time."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / ".sweep.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(
                f"Another `vlmlab sweep` ({holder}) is submitting or running this sweep ({output_dir}); "
                "wait for it, or use --status."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def process_start(pid: int) -> str | None:
    """The start time (clock ticks since boot) of a live process, or None: with the pid it names a process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]  # field 22 of stat; a zombie has ended


def local_process_alive(entry: dict[str, Any]) -> bool:
    return (
        entry.get("host") == socket.gethostname()
        and entry.get("pid") is not None
        and process_start(int(entry["pid"])) == entry.get("start")
    )


@dataclass
class RunStatus:
    state: str  # one of STATES
    detail: str = ""
    job: str | None = None  # Slurm job id or "pid N"

    def text(self) -> str:
        return f"{self.state}: {self.detail}" if self.detail else self.state


def run_statuses(dag: Any, state: SweepState, jobs: dict[str, Any]) -> dict[str, RunStatus]:
    """Every run's state (the dag is in topological order, so parents are decided before children); `jobs`
    maps run ids to what Slurm still knows of their jobs (vlmlab.sweep.slurm.recorded_jobs)."""
    statuses: dict[str, RunStatus] = {}
    for run in dag:
        statuses[run.id] = _status(run, state.runs.get(run.id), jobs, statuses, dag)
    return statuses


def _status(run: Any, entry: dict | None, jobs: dict, statuses: dict[str, RunStatus], dag: Any) -> RunStatus:
    if run.is_done():
        return RunStatus("done")
    bad_parent = next((p for p in run.parents if statuses[p].state in ("failed", "blocked")), None)
    if entry is None:
        if bad_parent:
            return RunStatus("blocked", blocked_by(dag.runs[bad_parent], statuses[bad_parent]))
        return RunStatus("not submitted")
    if entry.get("backend") == "local":
        return _local_status(entry, bad_parent, dag, statuses)
    job_id = entry.get("job_id")
    info = jobs.get(run.id)
    if info is None:
        return RunStatus(
            "failed", f"job {job_id} is no longer known to Slurm and wrote no result.json", job_id
        )
    if info.reason == "DependencyNeverSatisfied" and info.state in ("PENDING", "CANCELLED"):
        parent = bad_parent or next((p for p in run.parents if not dag.runs[p].is_done()), None)
        name = dag.runs[parent].key if parent else "?"
        return RunStatus("failed", f"dependency never satisfied: parent {name} failed", job_id)
    if info.state == "PENDING":
        return RunStatus("pending", info.reason if info.reason not in ("None", "") else "", job_id)
    if info.live:
        return RunStatus("running", f"job {job_id}" + (f" on {info.node}" if info.node else ""), job_id)
    log = f"log: {run.log_path}"
    if info.state == "COMPLETED":
        return RunStatus("failed", f"job {job_id} completed without writing result.json ({log})", job_id)
    if info.state == "FAILED":
        return RunStatus("failed", f"exit code {info.exit_code} (job {job_id}; {log})", job_id)
    if info.state == "CANCELLED":
        return RunStatus("failed", f"cancelled (job {job_id}); submit again to resume", job_id)
    if info.state == "TIMEOUT":
        return RunStatus("failed", f"time limit reached (job {job_id}); submit again to resume", job_id)
    return RunStatus("failed", f"{info.state.lower()} (job {job_id}; {log})", job_id)


def blocked_by(parent: Any, status: RunStatus) -> str:
    """Why a run cannot start: its parent failed, or is itself blocked (then say by what)."""
    if status.state == "failed":
        return f"parent {parent.key} failed"
    return f"parent {parent.key} not run ({status.detail})"


def _local_status(
    entry: dict[str, Any], bad_parent: str | None, dag: Any, statuses: dict[str, RunStatus]
) -> RunStatus:
    pid = f"pid {entry.get('pid')}"
    if entry.get("state") == "running":
        if local_process_alive(entry):
            return RunStatus("running", f"{pid} on {entry.get('host')}", pid)
        return RunStatus("failed", f"process {entry.get('pid')} ended without writing result.json", pid)
    if entry.get("state") == "failed":
        return RunStatus("failed", entry.get("reason") or f"exit code {entry.get('exit_code')}", pid)
    if bad_parent:
        return RunStatus("blocked", blocked_by(dag.runs[bad_parent], statuses[bad_parent]))
    if entry.get("state") == "exited":
        return RunStatus("failed", "exited with code 0 but wrote no result.json", pid)
    return RunStatus("not submitted")


def evaluator_statuses(dag: Any, state: SweepState, jobs: dict[str, Any]) -> dict[str, RunStatus]:
    """The checkpoint evaluator of each run that has one (eval.every_n_checkpoints: vlmlab/eval/checkpoints.py),
    from its launch record in sweep_state.json ("evaluators") and, on Slurm, its job (`jobs`: run id -> what
    Slurm knows of the evaluator's job); the detail counts the checkpoints evaluated and still waiting."""
    from vlmlab.eval.checkpoints import held_checkpoints, read_results

    found = {}
    for run in dag:
        entry = state.data.get("evaluators", {}).get(run.id)
        if not entry:
            continue
        counts = f"{len(read_results(run.run_dir))} evaluated, {len(held_checkpoints(run.run_dir))} waiting"
        if entry.get("backend") == "local":
            where = f"pid {entry.get('pid')}"
            if entry.get("state") == "running" and local_process_alive(entry):
                found[run.id] = RunStatus("running", f"{where}; {counts}", where)
            elif entry.get("state") == "exited":
                found[run.id] = RunStatus("done", counts, where)
            else:
                why = entry.get("reason") or f"exit code {entry.get('exit_code')}; log: {entry.get('log')}"
                found[run.id] = RunStatus("failed", f"{why}; {counts}", where)
            continue
        job, info = entry.get("job_id"), jobs.get(run.id)
        if info is None:
            found[run.id] = RunStatus("failed", f"job {job} is no longer known to Slurm; {counts}", job)
        elif info.state == "PENDING":
            found[run.id] = RunStatus("pending", f"{info.reason}; {counts}", job)
        elif info.live:
            found[run.id] = RunStatus("running", f"job {job}; {counts}", job)
        elif info.state == "COMPLETED":
            found[run.id] = RunStatus("done", counts, job)
        else:
            found[run.id] = RunStatus("failed", f"{info.state.lower()} (job {job}); {counts}", job)
    return found


def format_statuses(
    dag: Any, statuses: dict[str, RunStatus], evaluators: dict[str, RunStatus] | None = None
) -> str:
    counts = {s: sum(st.state == s for st in statuses.values()) for s in STATES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [f"sweep {dag.name}: {len(statuses)} runs: {summary}"]
    width = max(len(run.key) for run in dag)
    for run in dag:
        lines.append(f"  {run.key.ljust(width)}  {statuses[run.id].text()}")
    if evaluators:
        lines.append("checkpoint evaluators (eval.every_n_checkpoints):")
        for run in dag:
            if run.id in evaluators:
                lines.append(f"  {run.key.ljust(width)}  {evaluators[run.id].text()}")
    return "\n".join(lines)


def statuses_json(
    dag: Any, statuses: dict[str, RunStatus], evaluators: dict[str, RunStatus] | None = None
) -> dict[str, Any]:
    return {
        "sweep": dag.name,
        "output_dir": str(dag.output_dir),
        "counts": {s: sum(st.state == s for st in statuses.values()) for s in STATES},
        "runs": [
            {
                "id": run.id,
                "stage": run.stage,
                "state": statuses[run.id].state,
                "detail": statuses[run.id].detail,
                "job": statuses[run.id].job,
                "run_dir": str(run.run_dir),
                "depends_on": run.parents,
            }
            for run in dag
        ],
        "evaluators": [
            {"id": run.id, "state": status.state, "detail": status.detail, "job": status.job}
            for run in dag
            if (status := (evaluators or {}).get(run.id))
        ],
    }


__all__ = [
    "RunStatus",
    "blocked_by",
    "evaluator_statuses",
    "STATES",
    "SweepState",
    "format_statuses",
    "local_process_alive",
    "process_start",
    "run_statuses",
    "statuses_json",
    "sweep_lock",
]
