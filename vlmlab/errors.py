"""One error type for every bad input, always naming the bad value and the valid choices."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
