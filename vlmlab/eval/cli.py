"""`vlmlab eval`: evaluate runs on the cross-modality transfer protocol or on academic benchmarks."""

from __future__ import annotations

import argparse
from typing import Any

from vlmlab.errors import ConfigError, count_argument, unknown_choice


def _split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _parse_difficulty(items: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """`TASK.SPLIT.KNOB=VALUE` items -> {task: {split: {knob: value}}}."""
    from omegaconf import OmegaConf

    nested: dict[str, dict[str, dict[str, Any]]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 3:
            raise ConfigError(
                f"--difficulty expects TASK.SPLIT.KNOB=VALUE (e.g. grid.ood.grid_size=3), got {item!r}."
            )
        task, split, knob = parts
        nested.setdefault(task, {}).setdefault(split, {})[knob] = OmegaConf.from_dotlist([f"v={value}"])["v"]
    return nested


def _score_of(value: Any) -> float | None:
    """A record metric's score: the float itself, or the "score" of a {"score", "n", "ci"} entry."""
    return value.get("score") if isinstance(value, dict) else value


def _with_interval(value: Any, digits: int = 3) -> str:
    """`0.485 [0.416, 0.554]` for a metric entry with an interval, the bare score otherwise."""
    text = f"{_score_of(value):.{digits}f}"
    ci = value.get("ci") if isinstance(value, dict) else None
    if isinstance(ci, list | tuple) and len(ci) == 2:
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def _eval_checkpoints(args: argparse.Namespace) -> int:
    """The checkpoints a run holds for evaluation (eval.every_n_checkpoints; vlmlab/eval/checkpoints.py)."""
    from vlmlab.eval.checkpoints import evaluate_held, follow, read_results

    for run in args.runs:
        steps = follow(run, start_grace=args.start_grace) if args.follow else evaluate_held(run)
        print(f"{run}: evaluated the checkpoints of steps {steps or 'none'}")
        for step, result in sorted(read_results(run).items()):
            shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(result["flat"].items()))
            print(f"  step {step}: {shown}" + ("" if result.get("tracked") else " (not in a tracker yet)"))
    return 0


def _eval(args: argparse.Namespace) -> int:
    if args.follow and not args.checkpoints:
        raise ConfigError("--follow goes with --checkpoints (valid: vlmlab eval --checkpoints --follow RUN).")
    if args.checkpoints:
        return _eval_checkpoints(args)
    if args.benchmark:
        return _eval_benchmarks(args)
    from vlmlab.scoring.transfer import TASKS, evaluate_transfer

    tasks = _split_list(args.tasks) or list(TASKS)
    for task in tasks:
        if task not in TASKS:
            raise unknown_choice("synthetic task", task, TASKS)
    difficulty = _parse_difficulty(args.difficulty)
    for run in args.runs:
        record = evaluate_transfer(run, tasks, args.num_samples, difficulty)
        print(f"{run}:")
        for task in tasks:
            cells = record["metrics"][task]
            chance = record["chance"][task]
            line = "  ".join(
                f"{m}/{s} {_with_interval(cells[m][s])} (chance {chance[m][s]:.3f})"
                for m in ("vqa", "tqa")
                for s in ("ind", "ood")
            )
            print(f"  {task:<10} {line}")
    return 0


def _eval_benchmarks(args: argparse.Namespace) -> int:
    from vlmlab.eval.benchmark_eval import PROTOCOLS, evaluate_benchmarks
    from vlmlab.eval.rendered import rendered_gap_table

    entries = []
    for item in args.benchmark:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--benchmark expects NAME=FOLDER (e.g. docvqa=/data/docvqa), got {item!r}.")
        entries.append(
            {
                "name": name,
                "path": path,
                **({"limit": args.limit} if args.limit else {}),
                **({"split": args.split} if args.split else {}),
            }
        )
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}.")
    protocols = PROTOCOLS if args.rendered else ("standard",)
    suffix = f"-{args.split}" if args.split else ""
    for run in args.runs:
        record = evaluate_benchmarks(
            run,
            entries,
            protocols,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            out_dir=args.out,
        )
        metrics = record["metrics"]
        print(f"{run}:")
        entries_of = {e["name"]: metrics.get(e["name"] + suffix) for e in entries}
        standard = {name: _score_of(value) for name, value in entries_of.items()}
        if args.rendered and all(v is not None for v in standard.values()):
            rendered = {e["name"]: _score_of(metrics[f"{e['name']}{suffix}.rendered"]) for e in entries}
            print(rendered_gap_table(standard, rendered))
        else:
            for name, value in entries_of.items():
                shown = (
                    _with_interval(value, 4)
                    if value is not None
                    else "no reference answers: see the submission file"
                )
                print(f"  {name:<12} {shown}")
        for key, path in record["files"].items():
            print(f"  {'submission' if key.endswith('.submission') else 'predictions'}: {path}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `vlmlab eval` on the top-level parser."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate runs on the cross-modality transfer protocol (VQA and TQA, test and OOD splits)",
    )
    parser.add_argument("runs", nargs="+", help="run folders (each holds config.yaml and its checkpoint)")
    parser.add_argument("--tasks", default="", help="comma-separated subset of spatialmap,grid,ring")
    parser.add_argument(
        "--num-samples", type=count_argument(), default=500, help="samples per task, modality and split"
    )
    parser.add_argument(
        "--difficulty", nargs="*", default=[], help="generator settings per split: TASK.SPLIT.KNOB=VALUE"
    )
    parser.add_argument(
        "--benchmark",
        action="append",
        default=[],
        help="evaluate on an academic benchmark instead: NAME=FOLDER (repeatable), e.g. docvqa=/data/docvqa",
    )
    parser.add_argument(
        "--rendered", action="store_true", help="with --benchmark: also LoMo's rendered protocol"
    )
    parser.add_argument(
        "--limit", type=count_argument(), default=None, help="with --benchmark: first N items only"
    )
    parser.add_argument(
        "--split",
        default=None,
        help="with --benchmark: the split (default: each benchmark's local one), e.g. test-dev",
    )
    parser.add_argument("--device", default=None, help="with --benchmark: e.g. cuda, cuda:1 (default: cpu)")
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="with --benchmark: autocast precision",
    )
    parser.add_argument(
        "--batch-size",
        type=count_argument(),
        default=16,
        help="with --benchmark: prompts per generation batch",
    )
    parser.add_argument(
        "--max-new-tokens", type=count_argument(), default=32, help="with --benchmark: answer length limit"
    )
    parser.add_argument(
        "--out", default=None, help="with --benchmark: folder for predictions (default: RUN/eval/)"
    )
    parser.add_argument(
        "--checkpoints",
        action="store_true",
        help="evaluate the intermediate checkpoints each run holds for it (eval.every_n_checkpoints), as the "
        "run's config says, into RUN/eval/checkpoints/ and the run's tracker",
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="with --checkpoints: keep evaluating new ones until the training is over (what `vlmlab sweep` "
        "starts beside each such run)",
    )
    parser.add_argument(
        "--start-grace",
        type=float,
        default=600.0,
        help="with --follow: seconds to wait for the training to start (default 600)",
    )
    parser.set_defaults(func=_eval)

    export = subparsers.add_parser(
        "export",
        help="write a run's model as a Hugging Face folder (LLaVA where it is one, else remote code)",
        description="A trained model as a Hugging Face folder that transformers loads (vlmlab/eval/export.py).",
    )
    export.add_argument(
        "run", metavar="RUN_OR_CHECKPOINT", help="a run folder (its best/ or final/) or a checkpoint"
    )
    export.add_argument(
        "--out", required=True, help="the folder to write (must not exist unless --overwrite)"
    )
    export.add_argument(
        "--format", default="auto", help="auto (default: llava where the model is one), llava, or remote-code"
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    export.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    """`vlmlab export`: torch and the tower libraries are imported only when a model is exported."""
    import json

    from vlmlab.eval.export import export_run

    out = export_run(args.run, args.out, format=args.format, overwrite=args.overwrite)
    record = json.loads((out / "vlmlab_export.json").read_text())
    print(f"Wrote {record['format']} folder {out} ({record['why']}).")
    return 0
