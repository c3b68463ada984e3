"""Submit a sweep's DAG to Slurm as job arrays chained by `afterok` dependencies on specific array tasks.

How dependencies are expressed: the runs of a stage are grouped by the jobs they wait for, and each group is
one job array with `--dependency=afterok:<parent array job>_<parent task>`. Every stage-2 run has exactly
one parent (its stage-1 run, which for MoT is the Joint-Decoder one), so a group is "all stage-2 runs that
start from stage-1 task j": they start as soon as that one task succeeds, not when the whole stage-1 array
ends, and a failed stage-1 task stops only its own dependants. `aftercorr` (task i after task i) cannot say
this, since stage 1 -> 2 is one-to-many; and a whole-array `afterok` would let one failure block everything.
A parent that is already done (result.json) adds no dependency; one still queued or running from an
earlier submission is depended on by the job id recorded in sweep_state.json.

Dependants of a failed task are cancelled by Slurm (`--kill-on-invalid-dep=yes`, reason
DependencyNeverSatisfied) instead of pending forever, so `--status` can say why and a later submission
submits them again along with their parent. Pre-emption and time limits: `--signal=USR1@90` plus
`--requeue` let the run checkpoint at its next optimizer step and requeue itself (SIGTERM from a pre-emption
does the same: vlmlab/train/preemption.py); a task that ends anyway (scancel, node failure) is simply
submitted again next time and resumes from its checkpoint.

Checkpoint evaluators (eval.every_n_checkpoints, vlmlab/eval/checkpoints.py) are jobs of the DAG too: per
stage, one array of `vlmlab eval --checkpoints --follow RUN` tasks with `--dependency=after:<training
tasks>` (they start once their trainings have started, and run beside them, on the resources of
`eval.device`: a GPU only when it names one). Submitting again submits an evaluator only for a run that
still needs one (not done, or checkpoints still held) and whose evaluator job is not queued or running.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from vlmlab.errors import ConfigError
from vlmlab.eval.checkpoints import needs_evaluator
from vlmlab.files import atomic_write_text
from vlmlab.sweep.dag import Run, SweepDag
from vlmlab.sweep.expand import write_run_files
from vlmlab.sweep.spec import Resources, SweepSpec
from vlmlab.sweep.state import SweepState, local_process_alive, sweep_lock

TEMPLATE = Path(__file__).resolve().parents[2] / "slurm" / "stage.sbatch"
MAX_ARRAY = 1000  # Slurm's default MaxArraySize is 1001 (indices 0-1000)
LIVE_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
}
_FIELD = re.compile(r"\{\{(\w+)\}\}")
_COMMAND = re.compile(r" Command=(.*?) WorkDir=")
_SAFE_DIRECTIVE = re.compile(r"^--?[A-Za-z][A-Za-z0-9-]*(=[^\n\"]*)?$")


@dataclass
class JobInfo:
    job_id: str  # <array job>_<task>
    state: str
    reason: str = ""
    exit_code: int | None = None
    node: str = ""
    script: str = ""  # the batch script (scontrol's Command): tells our job from a reused job id

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


def require_slurm() -> None:
    missing = [c for c in ("sbatch", "scontrol", "scancel") if shutil.which(c) is None]
    if missing:
        raise ConfigError(
            f"The slurm backend needs Slurm's client commands on PATH; missing: {', '.join(missing)}. "
            "(slurm/local-cluster.sh start sets up a one-node cluster on this machine.)"
        )


def submit_slurm(dag: SweepDag, spec: SweepSpec, out: IO[str] | None = None) -> list[str]:
    """Submit what is neither done nor queued/running; return the array job ids submitted."""
    out = out or sys.stdout
    require_slurm()
    with sweep_lock(dag.output_dir):
        write_run_files(dag)
        state = SweepState(dag.output_dir)
        jobs = recorded_jobs(state)
        job_of: dict[str, str] = {}  # run id -> job id it is (or will be) trained by
        todo: list[Run] = []
        stale = []
        for run in dag:
            if run.is_done():
                continue
            entry = state.runs.get(run.id) or {}
            info = jobs.get(run.id)
            if info is not None and info.live:
                if info.reason == "DependencyNeverSatisfied":
                    stale.append(info.job_id)  # its parent failed; it would pend forever
                else:
                    job_of[run.id] = info.job_id
                    continue
            if (
                entry.get("backend") == "local"
                and entry.get("state") == "running"
                and local_process_alive(entry)
            ):
                raise ConfigError(
                    f"Run {run.key} is running locally (pid {entry['pid']}); wait for it first."
                )
            todo.append(run)
        if stale:
            _run(["scancel", *stale])
        print(
            f"sweep {dag.name}: {sum(r.is_done() for r in dag)} done, {len(job_of)} queued or running, "
            f"{len(todo)} to submit",
            file=out,
        )
        submitted = []
        (dag.output_dir / "slurm" / "logs").mkdir(parents=True, exist_ok=True)
        for stage in dag.stages():
            groups: dict[tuple[str, ...], list[Run]] = {}
            for run in todo:
                if run.stage == stage:
                    waits = tuple(sorted(job_of[p] for p in run.parents if not dag.runs[p].is_done()))
                    groups.setdefault(waits, []).append(run)
            for waits, runs in groups.items():
                for start in range(0, len(runs), MAX_ARRAY):
                    chunk = runs[start : start + MAX_ARRAY]
                    script = script_path(dag, stage)
                    atomic_write_text(script, render_script(dag, spec, stage, chunk, list(waits)))
                    check_script(script)
                    job = _sbatch(script)
                    submitted.append(job)
                    for index, run in enumerate(chunk):
                        job_of[run.id] = f"{job}_{index}"
                        state.record(
                            run.id,
                            backend="slurm",
                            job_id=f"{job}_{index}",
                            array_job_id=job,
                            script=str(script),
                        )
                    state.save()  # after every sbatch: a crash mid-way never loses a job id
                    after = f" after {', '.join(waits)}" if waits else ""
                    print(f"submitted stage {stage}: job array {job} ({len(chunk)} runs){after}", file=out)
        submitted += _submit_evaluators(dag, spec, state, job_of, out)
        return submitted


def _submit_evaluators(
    dag: SweepDag, spec: SweepSpec, state: SweepState, job_of: dict[str, str], out: IO[str]
) -> list[str]:
    """One evaluator array per stage for the runs that need one and have none queued or running."""
    jobs = recorded_evaluator_jobs(state)
    submitted = []
    for stage in dag.stages():
        runs = [
            run
            for run in dag
            if run.stage == stage
            and needs_evaluator(
                run.run_dir, int((run.config.get("eval") or {}).get("every_n_checkpoints") or 0)
            )
            and not (run.id in jobs and jobs[run.id].live)
        ]
        for start in range(0, len(runs), MAX_ARRAY):
            chunk = runs[start : start + MAX_ARRAY]
            waits = sorted({job_of[run.id] for run in chunk if not run.is_done() and run.id in job_of})
            script = script_path(dag, stage).with_suffix(".eval.sbatch")
            atomic_write_text(script, evaluator_script(dag, spec, stage, chunk, waits))
            check_script(script)
            job = _sbatch(script)
            submitted.append(job)
            evaluators = state.data.setdefault("evaluators", {})
            for index, run in enumerate(chunk):
                evaluators[run.id] = {
                    "backend": "slurm",
                    "job_id": f"{job}_{index}",
                    "array_job_id": job,
                    "script": str(script),
                }
            state.save()
            print(
                f"submitted stage {stage} checkpoint evaluators: job array {job} ({len(chunk)} runs)",
                file=out,
            )
    return submitted


def evaluator_script(dag: SweepDag, spec: SweepSpec, stage: int, runs: list[Run], waits: list[str]) -> str:
    """The sbatch script of one evaluator array: task i follows runs[i] (`vlmlab eval --checkpoints
    --follow`), started once the training tasks `waits` have started."""
    resources = spec.stages[stage].resources
    logs = dag.output_dir / "slurm" / "logs"
    options = [
        f"--job-name=vlmlab-{dag.name}-s{stage}-eval",
        f"--array=0-{len(runs) - 1}",
        "--ntasks=1",
        "--open-mode=append",
        f"--output={logs}/eval-%A_%a.out",
    ]
    devices = {str((run.config.get("eval") or {}).get("device") or "cpu") for run in runs}
    if any(device.startswith("cuda") for device in devices):
        options.append("--gpus=1")
    for name in ("cpus_per_task", "mem", "time", "partition", "account", "qos"):
        value = getattr(resources, name)
        if value is not None:
            options.append(f"--{name.replace('_', '-')}={value}")
    if waits:
        options.append(f"--dependency=after:{':'.join(waits)}")
    for option in options:
        if not _SAFE_DIRECTIVE.match(option):
            raise ConfigError(
                f"sbatch option {option!r} must be one line of the form --name[=value] without quotes."
            )
    run_dirs = "\n".join(f"    {shlex.quote(str(run.run_dir))}" for run in runs)
    setup = "\n".join(resources.setup)
    return f"""#!/bin/bash
# vlmlab sweep {dag.name}: stage {stage} checkpoint evaluators, {len(runs)} run(s), one per task.
# Task i evaluates the checkpoints RUN_DIRS[i] holds for it while it trains (vlmlab/eval/checkpoints.py).
{chr(10).join(f"#SBATCH {option}" for option in options)}

set -euo pipefail

RUN_DIRS=(
{run_dirs}
)
RUN_DIR="${{RUN_DIRS[${{SLURM_ARRAY_TASK_ID:?this script runs as a task of a job array}}]}}"
cd {shlex.quote(str(Path.cwd()))}
{setup}
mkdir -p "$RUN_DIR/eval"
exec {shlex.quote(sys.executable)} -m vlmlab.cli eval --checkpoints --follow "$RUN_DIR" >>"$RUN_DIR/eval/checkpoints.log" 2>&1
"""


def recorded_evaluator_jobs(state: SweepState) -> dict[str, JobInfo]:
    """Run id -> the Slurm job of its checkpoint evaluator, when Slurm still knows it and it is ours."""
    entries = {
        r: e
        for r, e in state.data.get("evaluators", {}).items()
        if e.get("backend") == "slurm" and e.get("job_id")
    }
    jobs = query_jobs(e["job_id"] for e in entries.values()) if entries else {}
    return {
        run_id: jobs[entry["job_id"]]
        for run_id, entry in entries.items()
        if entry["job_id"] in jobs
        and (not entry.get("script") or jobs[entry["job_id"]].script == entry["script"])
    }


def cancel_slurm(dag: SweepDag, state: SweepState) -> list[str]:
    """scancel every queued or running job of the sweep; return the job ids cancelled."""
    require_slurm()
    live = [info.job_id for run_id, info in recorded_jobs(state).items() if run_id in dag.runs and info.live]
    live += [
        info.job_id
        for run_id, info in recorded_evaluator_jobs(state).items()
        if run_id in dag.runs and info.live
    ]
    if live:
        _run(["scancel", *live])
    return live


def render_script(dag: SweepDag, spec: SweepSpec, stage: int, runs: list[Run], waits: list[str]) -> str:
    """The sbatch script of one job array: task i trains runs[i]; `waits` are the job ids it needs first."""
    resources = spec.stages[stage].resources
    template_path = Path(resources.template) if resources.template else TEMPLATE
    if not template_path.is_absolute():
        template_path = spec.root / template_path
    if not template_path.exists():
        raise ConfigError(f"sbatch template {str(template_path)!r} does not exist.")
    overrides = [f"train.num_nodes={resources.nodes}", f"train.devices={max(resources.gpus_per_node, 1)}"]
    values = {
        "sweep": dag.name,
        "stage": str(stage),
        "count": str(len(runs)),
        "directives": "\n".join(f"#SBATCH {d}" for d in directives(dag, stage, resources, len(runs), waits)),
        "run_dirs": "\n".join(f"    {shlex.quote(str(run.run_dir))}" for run in runs),
        "commands": "\n".join(f"    {shlex.quote(run.command(spec.command, overrides))}" for run in runs),
        "workdir": shlex.quote(str(Path.cwd())),
        "setup": "\n".join(resources.setup),
    }

    def fill(match: re.Match) -> str:
        if match.group(1) not in values:
            raise ConfigError(
                f"Unknown field {{{{{match.group(1)}}}}} in {template_path}; known fields: {', '.join(values)}."
            )
        return values[match.group(1)]

    return _FIELD.sub(fill, template_path.read_text())


def directives(dag: SweepDag, stage: int, resources: Resources, count: int, waits: list[str]) -> list[str]:
    """The #SBATCH options of one array (values are checked to be one line; spaced ones are quoted)."""
    tasks = max(resources.gpus_per_node, 1)
    array = f"0-{count - 1}" + (f"%{resources.max_parallel}" if resources.max_parallel else "")
    logs = dag.output_dir / "slurm" / "logs"
    options = [
        f"--job-name=vlmlab-{dag.name}-s{stage}",
        f"--array={array}",
        f"--nodes={resources.nodes}",
        f"--ntasks-per-node={tasks}",
    ]
    if resources.gpus_per_node:
        options.append(f"--gpus-per-node={resources.gpus_per_node}")
    for name in ("cpus_per_task", "mem", "time", "partition", "account", "qos", "constraint"):
        value = getattr(resources, name)
        if value is not None:
            options.append(f"--{name.replace('_', '-')}={value}")
    if waits:
        options += [f"--dependency=afterok:{':'.join(waits)}", "--kill-on-invalid-dep=yes"]
    options += [
        "--signal=USR1@90",
        "--requeue",
        "--open-mode=append",
        f"--output={logs}/%A_%a.out",
        *resources.extra,
    ]
    checked = []
    for option in options:
        if not _SAFE_DIRECTIVE.match(option):
            raise ConfigError(
                f"sbatch option {option!r} must be one line of the form --name[=value] without quotes."
            )
        name, sep, value = option.partition("=")
        checked.append(f'{name}="{value}"' if sep and re.search(r"\s", value) else option)
    return checked


def script_path(dag: SweepDag, stage: int) -> Path:
    folder = dag.output_dir / "slurm" / "scripts"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    index = len(list(folder.glob(f"stage{stage}-{stamp}-*.sbatch")))
    return folder / f"stage{stage}-{stamp}-{index}.sbatch"


def check_script(path: Path) -> None:
    """Refuse to submit a script bash cannot parse (a template edited by hand, say)."""
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    if result.returncode:
        raise ConfigError(f"Rendered sbatch script {path} does not parse: {result.stderr.strip()}")


def query_jobs(job_ids: Iterable[str]) -> dict[str, JobInfo]:
    """State of each `<array job>_<task>` id, from `scontrol show job` (finished jobs stay MinJobAge)."""
    wanted = set(job_ids)
    infos: dict[str, JobInfo] = {}
    for array_id in sorted({job.split("_")[0] for job in wanted}, key=lambda j: int(j) if j.isdigit() else 0):
        result = subprocess.run(
            ["scontrol", "-o", "show", "job", array_id], capture_output=True, text=True, timeout=60
        )
        if result.returncode:  # "Invalid job id specified": purged, or never existed on this cluster
            continue
        for line in result.stdout.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            array_job = fields.get("ArrayJobId", fields.get("JobId", ""))
            tasks = fields.get("ArrayTaskId")
            indices = _task_indices(tasks) if tasks else [None]
            code = fields.get("ExitCode", "0:0").split(":")[0]
            command = _COMMAND.search(line)  # a path may hold spaces, so not from the split fields
            for index in indices:
                job = f"{array_job}_{index}" if index is not None else array_job
                if job in wanted:
                    infos[job] = JobInfo(
                        job_id=job,
                        state=fields.get("JobState", "UNKNOWN"),
                        reason=fields.get("Reason", ""),
                        exit_code=int(code) if code.isdigit() else None,
                        node=fields.get("NodeList", "") if fields.get("NodeList") != "(null)" else "",
                        script=command.group(1) if command else "",
                    )
    return infos


def recorded_jobs(state: SweepState) -> dict[str, JobInfo]:
    """Run id -> the Slurm job recorded for it, when Slurm still knows that job and it is ours (same batch
    script: job ids restart when a cluster's state is wiped, and a stranger's job must not count)."""
    entries = {r: e for r, e in state.runs.items() if e.get("backend") == "slurm" and e.get("job_id")}
    jobs = query_jobs(e["job_id"] for e in entries.values()) if entries else {}
    found = {}
    for run_id, entry in entries.items():
        info = jobs.get(entry["job_id"])
        if info is not None and (not entry.get("script") or info.script == entry["script"]):
            found[run_id] = info
    return found


def _task_indices(text: str) -> list[int]:
    """Slurm's task list of a (partly) pending array, e.g. `0-5,7,9-11%2` -> [0..5, 7, 9, 10, 11]."""
    indices = []
    for part in text.split("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit():
            indices.extend(range(int(low), int(high or low) + 1))
    return indices


def _sbatch(script: Path) -> str:
    result = _run(["sbatch", "--parsable", str(script)])
    job = result.stdout.strip().split(";")[0]
    if not job.isdigit():
        raise ConfigError(f"sbatch did not return a job id for {script}: {result.stdout!r}")
    return job


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if result.returncode:
        raise ConfigError(f"`{shlex.join(argv)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


__all__ = [
    "JobInfo",
    "cancel_slurm",
    "check_script",
    "directives",
    "evaluator_script",
    "query_jobs",
    "recorded_evaluator_jobs",
    "recorded_jobs",
    "render_script",
    "require_slurm",
    "submit_slurm",
]
