"""`vlmlab data ...`: generate synthetic splits as shards and summarise them."""

from __future__ import annotations

import argparse
import os

from vlmlab.errors import ConfigError, count_argument

TASK_NAMES = ("spatialmap", "grid", "ring")  # for help text; the registry is the source of truth
SPLIT_NAMES = ("train", "test", "ood")


def _objects(value: str) -> int | tuple[int, int]:
    """Parse "7" as 7 and "3-4" as (3, 4), so the CLI can ask for a range of object counts."""
    try:
        if "-" in value:
            low, high = value.split("-", 1)
            return int(low), int(high)
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K or LOW-HIGH, got {value!r}") from None


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="datasets: index shards, generate and inspect synthetic splits")
    commands = data.add_subparsers(dest="data_command", required=True)

    synth = commands.add_parser("synth", help="generate one split of a synthetic task as webdataset shards")
    synth.add_argument("task", metavar="{" + ",".join(TASK_NAMES) + "}")
    synth.add_argument("--split", default="train", metavar="{" + ",".join(SPLIT_NAMES) + "}")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument(
        "--num", type=count_argument(), help="number of samples (default: paper size, 4500/500/500)"
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=count_argument(), default=384, help="image side in pixels")
    synth.add_argument(
        "--objects", type=_objects, help="objects per sample, K or LOW-HIGH (spatialmap, ring)"
    )
    synth.add_argument("--grid-size", type=int, help="grid side length (grid)")
    synth.add_argument("--min-steps", type=int, help="shortest navigation (grid, ring)")
    synth.add_argument("--max-steps", type=int, help="longest navigation (grid, ring)")
    synth.add_argument(
        "--balance-start",
        action="store_true",
        help="grid: redraw walks that return to their start until that happens at chance (1/n^2); "
        "off = the paper's generator, where 30%% of 3x3 answers are the start object",
    )
    synth.add_argument("--shard-size", type=count_argument(), default=1000, help="samples per shard")
    synth.add_argument(
        "--workers", type=count_argument(), default=min(2, os.cpu_count() or 1), help="render processes"
    )
    synth.add_argument("--stats", action="store_true", help="print split statistics afterwards")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_synth)

    index = commands.add_parser(
        "index", help="count the samples of webdataset shards once: the manifest that gives epoch sizes"
    )
    index.add_argument("pattern", help="shards: brace pattern, directory, file or URL (pipe:, http://)")
    index.add_argument("--out", help="manifest path (default: shards.json next to the first local shard)")
    index.set_defaults(func=_index)

    inspect = commands.add_parser(
        "inspect",
        help="samples exactly as the model sees them (chat text, tokens, scored spans) + contact sheet",
    )
    inspect.add_argument(
        "source", help="a config YAML (its data.train sources) or a path (shards, JSON, parquet, ...)"
    )
    inspect.add_argument("overrides", nargs="*", help="key=value config overrides (with a config YAML)")
    inspect.add_argument("-n", type=count_argument(), default=8, help="samples per source")
    inspect.add_argument(
        "--tokens-per-image",
        type=count_argument(),
        default=16,
        help="placeholder tokens per image (per tile when the config tiles)",
    )
    inspect.add_argument("--sheet", default="inspect.png", help="contact sheet PNG ('' for none)")
    inspect.set_defaults(func=_inspect)

    stats = commands.add_parser(
        "stats", help="any source: samples, tokens, images, lengths; a synthetic split folder: answer balance"
    )
    stats.add_argument(
        "source", help="a folder of `data synth` JSONL indexes, a config YAML or a source path"
    )
    stats.add_argument("overrides", nargs="*", help="key=value config overrides (with a config YAML)")
    stats.add_argument("-n", type=count_argument(), default=1000, help="samples read per source")
    stats.add_argument(
        "--tokens-per-image",
        type=count_argument(),
        default=16,
        help="placeholder tokens per image (per tile when the config tiles)",
    )
    stats.set_defaults(func=_stats)


def _synth(args: argparse.Namespace) -> int:
    from vlmlab.data.synthetic import format_stats, read_index, split_stats, write_split

    difficulty = {
        "num_objects": args.objects,
        "grid_size": args.grid_size,
        "min_steps": args.min_steps,
        "max_steps": args.max_steps,
        "balance_start": True if args.balance_start else None,  # None: not given (other tasks lack it)
    }
    given = {k: v for k, v in difficulty.items() if v is not None}
    files = write_split(
        args.task,
        args.split,
        args.out,
        num=args.num,
        seed=args.seed,
        image_size=args.image_size,
        shard_size=args.shard_size,
        workers=args.workers,
        progress=not args.quiet,
        **given,
    )
    print(f"wrote {files.count} samples to {len(files.shards)} shard(s); index {files.index}")
    if args.stats:
        print(format_stats(split_stats(read_index(files.index))))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    if os.path.isdir(args.source) and any(Path(args.source).glob("*.jsonl")):  # a `data synth` output folder
        from vlmlab.data.synthetic import format_stats, load_records, split_stats

        print(format_stats(split_stats(load_records(args.source))))
        return 0
    from vlmlab.data.inspect import stats

    print(stats(args.source, args.overrides, args.n, args.tokens_per_image))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlmlab.data.inspect import NothingUsable, inspect

    try:
        report = inspect(
            args.source,
            args.overrides,
            args.n,
            args.tokens_per_image,
            Path(args.sheet) if args.sheet else None,
        )
    except NothingUsable as error:  # the report, then the one-line error and a non-zero exit
        print(error.report)
        raise
    print(report)
    return 0


def _index(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vlmlab.data.shards import MANIFEST_NAME, expand_shards, write_manifest

    shards = expand_shards(args.pattern)
    if args.out:
        out = Path(args.out)
    elif "://" not in shards.urls[0] and not shards.urls[0].startswith("pipe:"):
        out = Path(shards.urls[0]).parent / MANIFEST_NAME
    else:
        raise ConfigError(f"{args.pattern!r} names remote shards: give the manifest's path with --out.")
    index = write_manifest(shards.urls, out)
    total = sum(entry["nsamples"] for entry in index["shardlist"])
    print(f"{out}: {len(index['shardlist'])} shards, {total} samples")
    for problem in index["problems"]:
        print(f"  unreadable to its end: {problem}")
    return 0
