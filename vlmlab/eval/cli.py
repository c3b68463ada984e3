"""`vlmlab results`: gather a sweep's evaluation records into the paper's tables and figures.

    vlmlab results DIR [--out OUTDIR] [--layout {design,transfer,scaling,open_weight}] [--group-by KEY,...]
                       [--pivot KEY] [--where KEY=V1,V2 ...] [--format md,csv,tex] [--stage N]
                       [--partial-averages] [--x-key KEY] [--no-fill] [--no-plot]

Examples:
    vlmlab results runs/sweep1                                   # Tables 3-5 in one, + bar chart
    vlmlab results runs/sweep1 --where model.fusion=joint_decoder --group-by model.tokenizer,train.freeze.lang_s2
    vlmlab results runs/sweep1 --group-by train.freeze --pivot model.fusion --where model.tokenizer=clip,aimv2,siglip2
    vlmlab results runs/transfer --layout transfer               # Tables 6-7 + Figures 4-5
    vlmlab results runs/scaling --layout scaling                 # Figure 2
    vlmlab results runs/open --layout open_weight                # Tables 8-11 (open-weight VLMs)

The open_weight layout reads records whose config names config.model.open_weight (train.method eval = the
base model, sft, grpo = RL) and writes open_weight_sft_vqa (Table 8), open_weight_sft_tqa (Table 9) and
open_weight_rl_<model> (Tables 10-11, one per model with a grpo run); its --group-by is the one model key.

Tables are written as OUTDIR/<name>.{md,csv,tex} (default OUTDIR: DIR/report), figures as OUTDIR/<name>.png,
and the Markdown is printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vlmlab.errors import ConfigError, unknown_choice

FORMATS = ("md", "csv", "tex")
LAYOUTS = ("design", "transfer", "scaling", "open_weight")


def _split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _parse_where(items: list[str]) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not _split_list(values):
            raise ConfigError(f"--where expects KEY=VALUE[,VALUE...], got {item!r}.")
        where.setdefault(key.strip(), []).extend(_split_list(values))
    return where


def _write_table(table: Any, out: Path, formats: list[str]) -> list[Path]:
    written = []
    for fmt in formats:
        path = out / f"{table.name}.{fmt}"
        path.write_text(table.render(fmt), encoding="utf-8")
        written.append(path)
    return written


def run_results(args: argparse.Namespace) -> int:
    """Entry point of `vlmlab results` (see the module docstring)."""
    from vlmlab.eval import plots, results

    formats = _split_list(args.format) or list(FORMATS)
    for fmt in formats:
        if fmt not in FORMATS:
            raise unknown_choice("table format", fmt, FORMATS)
    records = results.read_records(args.dir, stage=args.stage)
    if not records:
        raise ConfigError(f"No result records (JSON with run_id and metrics) under {str(args.dir)!r}.")
    group_by = _split_list(args.group_by) or list(results.DEFAULT_GROUP_BY[args.layout])
    where = _parse_where(args.where)
    out = Path(args.out) if args.out else Path(args.dir) / "report"
    out.mkdir(parents=True, exist_ok=True)

    tables: list[Any] = []
    figures: list[Path] = []
    if args.layout == "design":
        table = results.design_table(
            records,
            group_by,
            pivot=args.pivot,
            where=where,
            partial_averages=args.partial_averages,
            fill_missing=not args.no_fill,
        )
        tables.append(table)
        if not args.no_plot:
            # The chart always shows the unpivoted rows: bars per first key, one per remaining key combination.
            chart = table
            if args.pivot:
                chart = results.design_table(
                    records,
                    [*group_by, args.pivot],
                    where=where,
                    partial_averages=args.partial_averages,
                    fill_missing=not args.no_fill,
                )
            figures.append(plots.plot_design(chart, out / f"{table.name}.png"))
    elif args.layout == "transfer":
        for modality in ("tqa", "vqa"):  # Table 6 / Figure 4, then Table 7 / Figure 5
            table = results.transfer_table(
                records,
                modality,
                group_by,
                where=where,
                modality_key=args.train_modality_key,
                task_key=args.train_task_key,
                fill_missing=not args.no_fill,
            )
            if not any(
                v is not None for row in table.rows if row.kind == "data" for v in row.values.values()
            ):
                continue  # nothing was evaluated on this modality
            tables.append(table)
            if not args.no_plot:
                # Figures 4/5 average over the fusions: one bar group per value of the first key.
                figures.append(plots.plot_transfer(table.collapse(1), out / f"{table.name}.png"))
        if not tables:
            raise ConfigError(f"No transfer scores under {str(args.dir)!r}.")
    elif args.layout == "open_weight":  # Tables 8-11: no figures
        if len(group_by) != 1:
            raise ConfigError(
                f"--layout open_weight takes one --group-by key (the model, default "
                f"{results.OPEN_WEIGHT_KEY}), got {','.join(group_by)!r}."
            )
        try:
            tables += results.open_weight_tables(
                records,
                where=where,
                model_key=group_by[0],
                modality_key=args.train_modality_key,
                task_key=args.train_task_key,
                fill_missing=not args.no_fill,
            )
        except ConfigError as error:
            raise ConfigError(f"{str(args.dir)!r}: {error}") from None
    else:
        table = results.scaling_table(
            records,
            group_by,
            args.x_key,
            where=where,
            partial_averages=args.partial_averages,
            fill_missing=not args.no_fill,
        )
        tables.append(table)
        if not args.no_plot:
            figures.append(plots.plot_scaling(table, out / f"{table.name}.png"))

    written = [path for table in tables for path in _write_table(table, out, formats)]
    for table in tables:
        print(table.to_markdown())
    for path in [*written, *figures]:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `vlmlab results` and `vlmlab eval` on the top-level parser."""
    add_eval_command(subparsers)
    parser = subparsers.add_parser(
        "results",
        help="gather evaluation records into paper-style tables (md/csv/tex) and figures (png)",
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", type=Path, help="sweep folder holding result records (searched recursively)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: DIR/report)")
    parser.add_argument("--layout", choices=LAYOUTS, default="design", help="table layout (default: design)")
    parser.add_argument(
        "--group-by",
        default=None,
        help="comma-separated dotted config keys defining the rows (default depends on --layout; "
        "design/scaling: model.tokenizer,model.fusion,train.freeze; transfer: model.tokenizer,model.fusion; "
        "open_weight: model.open_weight, the one model key)",
    )
    parser.add_argument(
        "--pivot", default=None, help="design layout: config key whose values become column groups"
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="keep records whose config KEY is one of the values (repeatable)",
    )
    parser.add_argument("--format", default="md,csv,tex", help="comma-separated table formats: md,csv,tex")
    parser.add_argument("--stage", type=int, default=None, help="only records of this training stage")
    parser.add_argument(
        "--partial-averages",
        action="store_true",
        help="average incomplete rows over the benchmarks they have (marked with a dagger) instead of a gap",
    )
    parser.add_argument("--x-key", default="model.backbone", help="scaling layout: the x-axis config key")
    parser.add_argument(
        "--train-modality-key",
        default="data.train.0.mode",
        help="transfer/open_weight layouts: config key holding a run's training modality (vqa|tqa)",
    )
    parser.add_argument(
        "--train-task-key",
        default="data.train.0.task",
        help="transfer/open_weight layouts: config key holding a run's synthetic task",
    )
    parser.add_argument(
        "--no-fill",
        action="store_true",
        help="do not add empty rows for combinations of the row keys that have no run",
    )
    parser.add_argument("--no-plot", action="store_true", help="write tables only")
    parser.set_defaults(func=run_results)


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


def _eval(args: argparse.Namespace) -> int:
    if args.benchmark:
        return _eval_benchmarks(args)
    from vlmlab.eval.transfer import TASKS, evaluate_transfer

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


def add_eval_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate runs on the cross-modality transfer protocol (VQA and TQA, test and OOD splits)",
    )
    parser.add_argument("runs", nargs="+", help="run folders (each holds config.yaml and its checkpoint)")
    parser.add_argument("--tasks", default="", help="comma-separated subset of spatialmap,grid,ring")
    parser.add_argument("--num-samples", type=int, default=500, help="samples per task, modality and split")
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
    parser.add_argument("--limit", type=int, default=None, help="with --benchmark: first N items only")
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
        "--batch-size", type=int, default=16, help="with --benchmark: prompts per generation batch"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=32, help="with --benchmark: answer length limit"
    )
    parser.add_argument(
        "--out", default=None, help="with --benchmark: folder for predictions (default: RUN/eval/)"
    )
    parser.set_defaults(func=_eval)
