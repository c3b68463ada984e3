"""One error type for every bad input, always naming the bad value and the valid choices."""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Callable, Iterable


class ConfigError(ValueError):
    """A user-facing configuration mistake (unknown name, impossible setting, mismatched shapes)."""


class TrainingStopped(RuntimeError):
    """A run stopped on purpose (non-finite loss or weights, ...): the message says why and what was kept."""


def closest(value: str, choices: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_choice(what: str, value: object, choices: Iterable[str]) -> ConfigError:
    """Build the error for `value` not being one of `choices`, with a did-you-mean hint."""
    choices = sorted(str(c) for c in choices)
    hint = closest(str(value), choices)
    did_you_mean = f" Did you mean {hint!r}?" if hint else ""
    return ConfigError(f"Unknown {what} {value!r}.{did_you_mean} Valid choices: {', '.join(choices)}.")


def count_argument(minimum: int = 1) -> Callable[[str], int]:
    """An argparse `type` for a count: an integer >= `minimum`, else one line naming the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a count (valid: an integer >= {minimum})")
        return value

    parse.__name__ = "count"
    return parse


def unpickling_refusal(error: BaseException) -> str:
    """What torch.load(weights_only=True) refused, in a few words ("Unsupported global: GLOBAL os.system"),
    without its advice to load the file with weights_only=False, which would run the code."""
    text = str(error)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|\nCheck the documentation|$)", text, re.S)
    detail = match.group(1) if match else (text.strip().splitlines() or ["refused"])[0]
    return " ".join(detail.split())[:160]
