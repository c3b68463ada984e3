"""`vlmlab sweep FILE`: expand a sweep file into stage runs and run, submit, inspect or cancel them.

vlmlab sweep design_space --dry-run [--json]    # the DAG: counts and dependencies
vlmlab sweep tiny --backend local --parallel 2  # train here, in dependency order
vlmlab sweep design_space --backend slurm       # submit job arrays (again: only what is missing)
vlmlab sweep design_space --status [--json]     # done / running / pending / failed (why) / ...
vlmlab sweep design_space --cancel              # scancel (or kill) the sweep's jobs
vlmlab sweep design_space --report              # the results tables and figures into the runs' trackers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlmlab.errors import count_argument
from vlmlab.sweep.spec import BACKENDS, SweepSpec


def _sweep(args: argparse.Namespace) -> int:
    from vlmlab.sweep.expand import expand
    from vlmlab.sweep.spec import load_sweep
    from vlmlab.sweep.state import (
        SweepState,
        evaluator_statuses,
        format_statuses,
        run_statuses,
        statuses_json,
    )

    spec = load_sweep(args.file, output_dir=args.output, command=args.command)
    if args.set:
        add_execution_overrides(spec, args.set)
    dag = expand(spec)
    if args.dry_run:
        print(json.dumps(dag.to_json(), indent=2) if args.json else dag.format_text())
        return 0
    if args.status:
        from vlmlab.sweep.slurm import recorded_evaluator_jobs, recorded_jobs

        state = SweepState(dag.output_dir)
        slurm_runs = any(e.get("backend") == "slurm" for e in state.runs.values())
        statuses = run_statuses(dag, state, recorded_jobs(state) if slurm_runs else {})
        slurm_evals = any(e.get("backend") == "slurm" for e in state.data.get("evaluators", {}).values())
        evaluators = evaluator_statuses(dag, state, recorded_evaluator_jobs(state) if slurm_evals else {})
        print(
            json.dumps(statuses_json(dag, statuses, evaluators), indent=2)
            if args.json
            else format_statuses(dag, statuses, evaluators)
        )
        return 0
    if args.report:
        from vlmlab.sweep.report import report_to_trackers

        if not report_to_trackers(dag, spec):
            print(f"sweep {dag.name}: nothing logged (no run logs to mlflow or wandb, or no report)")
        return 0
    if args.cancel:
        from vlmlab.sweep.local import cancel_local

        state = SweepState(dag.output_dir)
        stopped = cancel_local(dag, state)
        if any(e.get("backend") == "slurm" for e in state.runs.values()):
            from vlmlab.sweep.slurm import cancel_slurm

            stopped += cancel_slurm(dag, state)
        print(f"sweep {dag.name}: cancelled {len(stopped)} job(s) {' '.join(stopped)}".rstrip())
        return 0
    backend = args.backend or spec.backend
    if backend == "local":
        from vlmlab.sweep.local import run_local

        return run_local(dag, spec, parallel=args.parallel)
    from vlmlab.sweep.slurm import submit_slurm

    submit_slurm(dag, spec)
    return 0


def add_execution_overrides(spec: SweepSpec, items: list[str]) -> None:
    """`--set KEY=VALUE` onto every stage of `spec`: only keys that say how runs execute or log (where
    metrics go, what is measured beside them), never what they learn, so that no run's id changes."""
    from vlmlab.errors import ConfigError
    from vlmlab.runs.record import EXECUTION_KEYS

    for item in items:
        key, sep, _ = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}.")
        settable = [k for k in EXECUTION_KEYS if k != "train.output_dir"]  # each run has its own folder
        if not any(key == k or key.startswith(k + ".") for k in settable):
            raise ConfigError(
                f"--set {key}: only settings that leave a run's id unchanged can be set for a whole sweep "
                f"(valid: {', '.join(settable)} and the keys under them); put {key} in the sweep file."
            )
    for stage in spec.stages.values():
        stage.overrides = [*stage.overrides, *items]


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    add_quickstart_command(subparsers)
    parser = subparsers.add_parser(
        "sweep",
        help="run a sweep file's grid of stage runs (locally or on Slurm); --dry-run shows the DAG",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", help="sweep file (YAML) or a shipped sweep's name, e.g. design_space")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--dry-run", action="store_true", help="print the DAG (runs per stage, dependencies)")
    action.add_argument("--status", action="store_true", help="print each run's state")
    action.add_argument("--cancel", action="store_true", help="cancel the sweep's queued and running jobs")
    action.add_argument(
        "--report",
        action="store_true",
        help="make the finished sweep's report (`vlmlab results`, the file's `results:` options) and log its "
        "tables and figures to the runs' trackers (the local backend does it when the sweep ends)",
    )
    parser.add_argument("--json", action="store_true", help="with --dry-run or --status: JSON output")
    parser.add_argument(
        "--backend", choices=BACKENDS, help="where runs train (default: the file's `backend`)"
    )
    parser.add_argument(
        "--parallel", type=count_argument(), default=1, help="local backend: runs at a time (default 1)"
    )
    parser.add_argument("--output", help="sweep output folder (default: the file's `output_dir`)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an execution setting for every run (repeatable), e.g. 'train.loggers=[csv,mlflow]', "
        "train.tracking.uri=http://127.0.0.1:5000, eval.every_n_checkpoints=4: never what runs learn",
    )
    parser.add_argument(
        "--command",
        help="what a run executes (default: the file's `command`, else `vlmlab train`); "
        "fields: {python} {config} {overrides} {run_dir} {run_id} {stage}",
    )
    parser.set_defaults(func=_sweep)


def _quickstart(args: argparse.Namespace) -> int:
    from vlmlab.sweep.quickstart import run_quickstart

    return run_quickstart(Path(args.out), parallel=args.parallel, num_eval=args.num_eval)


def add_quickstart_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="the CPU main job: synthetic data, a 3-fusion x 2-recipe ablation through 3 stages, table + plot",
    )
    parser.add_argument("--out", default="quickstart_out", help="where data, runs and the report go")
    parser.add_argument("--parallel", type=count_argument(), default=2, help="runs trained at a time")
    parser.add_argument(
        "--num-eval", type=count_argument(), default=300, help="held-out samples per split and modality"
    )
    parser.set_defaults(func=_quickstart)
