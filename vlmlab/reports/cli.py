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
    vlmlab results runs/idefics2_connector --layout idefics2_connector   # Idefics2's connectors (3.3)
    vlmlab results runs/prismatic_fused --layout encoders        # Prismatic's fused towers vs each alone
    vlmlab results runs/idefics2_lora --layout idefics2_lora   # Idefics2's frozen / LoRA / full LM (3.2)
    vlmlab results runs/quickstart --layout transfer --compare model.fusion=joint_decoder,mot

--compare KEY=A,B runs a paired test between the design points that differ only in KEY (A vs B), on every
metric both scored on the same samples with per-sample outcomes: the difference in points with its 95 %
interval (bootstrap over samples and seeds), the permutation p-value over samples, the number of seeds, and
whether the effect holds across seeds (vlmlab.scoring.replicates). Runs that differ only in train.seed are
replicates: every table cell is their mean with the interval across seeds, marked "(k seeds)".

The open_weight layout reads records whose config names config.model.open_weight (train.method eval = the
base model, sft, grpo = RL) and writes open_weight_sft_vqa (Table 8), open_weight_sft_tqa (Table 9) and
open_weight_rl_<model> (Tables 10-11, one per model with a grpo run); its --group-by is the one model key.

Tables are written as OUTDIR/<name>.{md,csv,tex} (default OUTDIR: DIR/report), figures as OUTDIR/<name>.png,
and the Markdown is printed.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.files import atomic_write_text

if TYPE_CHECKING:
    from vlmlab.reports.table import Table

LAYOUTS = (
    "design",
    "transfer",
    "scaling",
    "open_weight",
    "resize",
    "idefics2_connector",
    "encoders",
    "idefics2_lora",
)


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


def _parse_compare(text: str) -> tuple[str, str, str]:
    key, sep, values = text.partition("=")
    parts = _split_list(values)
    if not sep or not key.strip() or len(parts) != 2 or parts[0] == parts[1]:
        raise ConfigError(
            f"--compare expects KEY=A,B (a config key and two of its values), got {text!r}; "
            "e.g. --compare model.fusion=joint_decoder,mot."
        )
    return key.strip(), parts[0], parts[1]


def _where_records(records: list[dict], where: dict[str, list[str]]) -> list[dict]:
    from vlmlab.reports.frame import filter_frame, records_frame

    if not where:
        return records
    # the tables' own filter, applied to the raw records (one per run) so that seeds stay apart
    keep = []
    for record in records:
        if not filter_frame(records_frame([record]), where).empty:
            keep.append(record)
    return keep


def _write_table(table: Table, out: Path, formats: list[str]) -> list[Path]:
    """Each format as OUTDIR/<name>.<fmt>, written atomically (a reader never sees half a table)."""
    written = []
    for fmt in formats:
        path = out / f"{table.name}.{fmt}"
        atomic_write_text(path, table.render(fmt))
        written.append(path)
    return written


def _tokens_per_image(model: dict) -> int:
    """The image tokens a record's model gives the language model, counted by the model itself (built on
    the meta device: no weights read; once per distinct connector and tokenizer)."""
    import json

    # only what decides the count (a record written by another version may hold keys this one lacks); a
    # tokenizer a record stores as its spec is named by the spec's `name`
    keys = ("tokenizer", "adapter", "adapter_tokens", "pixel_shuffle_ratio", "fusion")
    counted = {key: model[key] for key in keys if key in model}
    if isinstance(counted.get("tokenizer"), dict) and "name" in counted["tokenizer"]:
        counted["tokenizer"] = counted["tokenizer"]["name"]
    return _count_tokens(json.dumps(counted, sort_keys=True))


@functools.cache
def _count_tokens(model_json: str) -> int:
    import json

    from vlmlab.config import ModelConfig, load_config
    from vlmlab.models.describe import build_on_meta

    # the count depends on the tokenizer and the connector, not on the backbone's size: the tiny backbone
    # builds in a fraction of the time of a 0.6B-8B one
    model = {**json.loads(model_json), "backbone": "qwen3-tiny"}
    return int(build_on_meta(load_config(ModelConfig, [model])).features_per_image)


def run_results(args: argparse.Namespace) -> int:
    """Entry point of `vlmlab results` (see the module docstring)."""
    from vlmlab.reports import layouts, open_weight, plots  # pandas: only when a report is made
    from vlmlab.reports.table import FORMATS
    from vlmlab.runs.record import read_records

    formats = _split_list(args.format) or list(FORMATS)
    for fmt in formats:
        if fmt not in FORMATS:
            raise unknown_choice("table format", fmt, FORMATS)
    records = read_records(args.dir, stage=args.stage)
    if not records:
        raise ConfigError(f"No result records (JSON with run_id and metrics) under {str(args.dir)!r}.")
    group_by = _split_list(args.group_by) or list(layouts.DEFAULT_GROUP_BY[args.layout])
    where = _parse_where(args.where)
    compare = _parse_compare(args.compare) if args.compare else None
    compared: list[str] = []
    if compare is not None:  # before any table: a bad key or value fails at once
        from vlmlab.reports import replicates
        from vlmlab.reports.frame import format_comparison

        found = replicates.compare(_where_records(records, where), *compare)
        compared = [format_comparison(item) for item in found]
    out = Path(args.out) if args.out else Path(args.dir) / "report"
    out.mkdir(parents=True, exist_ok=True)

    tables: list[Table] = []
    figures: list[Path] = []
    if args.layout == "design":
        table = layouts.design_table(
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
                chart = layouts.design_table(
                    records,
                    [*group_by, args.pivot],
                    where=where,
                    partial_averages=args.partial_averages,
                    fill_missing=not args.no_fill,
                )
            figures.append(plots.plot_design(chart, out / f"{table.name}.png"))
    elif args.layout == "transfer":
        for modality in ("tqa", "vqa"):  # Table 6 / Figure 4, then Table 7 / Figure 5
            table = layouts.transfer_table(
                records,
                modality,
                group_by,
                where=where,
                modality_key=args.train_modality_key,
                task_key=args.train_task_key,
                fill_missing=not args.no_fill,
            )
            if not table.values[(table.kind == "data").to_numpy()].notna().any().any():
                continue  # nothing was evaluated on this modality
            tables.append(table)
            if not args.no_plot:
                # Figures 4/5: a bar group per table row, so every cell of the table is drawn (an average
                # over fusions or recipes would hide the cells only some of them have)
                figures.append(plots.plot_transfer(table, out / f"{table.name}.png"))
        if not tables:
            raise ConfigError(f"No transfer scores under {str(args.dir)!r}.")
    elif args.layout == "resize":  # Prismatic's resize / letterbox / crop (sweep prismatic_resize): no figure
        tables.append(
            layouts.resize_table(
                records,
                group_by,
                where=where,
                partial_averages=args.partial_averages,
                fill_missing=not args.no_fill,
            )
        )
    elif (
        args.layout == "encoders"
    ):  # Prismatic's fused towers vs each alone (sweep prismatic_fused): no figure
        tables.append(
            layouts.encoders_table(
                records,
                group_by,
                where=where,
                partial_averages=args.partial_averages,
                fill_missing=not args.no_fill,
            )
        )
    elif args.layout == "idefics2_connector":  # no figure: three rows read as a table
        tables.append(
            layouts.connector_table(
                records,
                _tokens_per_image,
                group_by,
                where=where,
                partial_averages=args.partial_averages,
                fill_missing=not args.no_fill,
            )
        )
    elif args.layout == "idefics2_lora":  # no figure: six rows read as a table
        tables.append(
            layouts.lm_training_table(
                records,
                group_by,
                where=where,
                partial_averages=args.partial_averages,
                fill_missing=not args.no_fill,
            )
        )
    elif args.layout == "open_weight":  # Tables 8-11: no figures
        if len(group_by) != 1:
            raise ConfigError(
                f"--layout open_weight takes one --group-by key (the model, default "
                f"{open_weight.OPEN_WEIGHT_KEY}), got {','.join(group_by)!r}."
            )
        try:
            tables += open_weight.open_weight_tables(
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
        table = layouts.scaling_table(
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
    if compare is not None:
        path = out / "compare.md"
        atomic_write_text(
            path,
            f"**Paired comparison: {compare[0]} = {compare[1]} vs {compare[2]}**\n\n"
            + "\n".join(f"- {x}" for x in compared)
            + "\n",
        )
        written.append(path)
        print(f"Paired comparison, {compare[0]} = {compare[1]} vs {compare[2]} (difference A - B):")
        for line in compared:
            print(f"  {line}")
    for path in [*written, *figures]:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `vlmlab results` on the top-level parser."""
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
    parser.add_argument(
        "--compare",
        metavar="KEY=A,B",
        default=None,
        help="paired test of KEY=A against KEY=B, every other setting equal: difference, interval, p-value, "
        "seeds (needs per-sample outcomes, which `vlmlab eval` stores)",
    )
    parser.set_defaults(func=run_results)
