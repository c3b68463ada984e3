"""`vlmlab describe`: what a config assembles, its parameters per group and FLOPs per token."""

from __future__ import annotations

import argparse
import json

from omegaconf import OmegaConf

from vlmlab.config import ModelConfig, load_config, read_yaml_file
from vlmlab.errors import count_argument


def model_config_from(path: str | None, overrides: list[str]) -> ModelConfig:
    sources = []
    if path:
        data = OmegaConf.to_container(read_yaml_file(path))
        sources.append(data.get("model", {}) if isinstance(data, dict) else {})
    model_overrides = [o.removeprefix("model.") for o in overrides]
    return load_config(ModelConfig, sources, model_overrides)


def _describe(args: argparse.Namespace) -> int:
    from vlmlab.models.describe import build_on_meta, describe, format_description

    info = describe(build_on_meta(model_config_from(args.config, args.overrides)), args.context_length)
    print(json.dumps(info, indent=2) if args.json else format_description(info))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "describe",
        help="print an assembled model's parameters per group and FLOPs per token (no weights allocated)",
    )
    parser.add_argument("config", nargs="?", help="a YAML config with a `model:` section")
    parser.add_argument("overrides", nargs="*", help="model.key=value overrides, e.g. model.fusion=mot")
    parser.add_argument("--json", action="store_true", help="print JSON with a `params` object per group")
    parser.add_argument(
        "--context-length", type=count_argument(), default=2048, help="average over this causal context"
    )
    parser.set_defaults(func=_describe)
