"""The `vlmlab` command line: a thin layer over the package.

Each area contributes its sub-commands through an `add_commands(subparsers)` function, so this file only
wires them together and never holds logic of its own.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from vlmlab.errors import ConfigError, TrainingStopped

# Modules that contribute sub-commands, in the order they appear in `vlmlab --help`.
COMMAND_MODULES = [
    "vlmlab.models.cli",
    "vlmlab.data.cli",
    "vlmlab.train.cli",
    "vlmlab.eval.cli",
    "vlmlab.reports.cli",
    "vlmlab.sweep.cli",
]


class UsageError(Exception):
    """A command line argparse refuses (unknown option, bad number): one line, like every other bad input."""


class _Parser(argparse.ArgumentParser):
    # sub-command parsers are made with the class of their parent (argparse's parser_class default)
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vlmlab", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # that area has no commands yet
                continue
            raise
        module.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        print(f"vlmlab: error: {error}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as error:
        print(f"vlmlab: error: {one_line(error)}", file=sys.stderr)
        return 2
    except TrainingStopped as error:
        print(f"vlmlab: stopped: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # an output path that cannot be written, a file that vanished
        where = f" {error.filename!r}" if error.filename else ""
        print(f"vlmlab: error:{where} {error.strerror or error}", file=sys.stderr)
        return 2


def one_line(error: ConfigError) -> str:
    """The message itself; an error re-raised from a data-loader worker carries the worker's traceback,
    whose last line is the original message."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


if __name__ == "__main__":
    sys.exit(main())
