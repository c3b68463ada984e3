"""`vlmlab train CONFIG... [key=value ...]`: one stage run (see vlmlab/train/run.py for the run folder)."""

from __future__ import annotations

import argparse
import json
import logging


def _train(args: argparse.Namespace) -> int:
    from vlmlab.config import ExperimentConfig, load_config

    configs = [a for a in args.items if "=" not in a]
    overrides = [a for a in args.items if "=" in a]
    # the config is checked before torch, transformers and Lightning are imported (about ten seconds): a typo
    # or an unknown choice is answered at once
    config = load_config(ExperimentConfig, configs, overrides)

    import torch.distributed as dist

    from vlmlab.train.run import train

    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    record = train(config)
    summary = {
        "run": record["config"]["train"]["output_dir"],
        "checkpoint": record["checkpoint"],
        "steps": record["timings"]["steps"],
        "train_seconds": record["timings"]["train_seconds"],
        "metrics": record["metrics"],
    }
    if not dist.is_initialized() or dist.get_rank() == 0:  # one summary per run, not one per process
        print("\nrun finished\n" + json.dumps(summary, indent=2))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one stage run: vlmlab train stages/stage1 my.yaml train.output_dir=runs/x",
    )
    parser.add_argument(
        "items", nargs="+", help="YAML config files (merged left to right), then key=value overrides"
    )
    parser.set_defaults(func=_train)
