"""Fault injection for the crash-safety tests: `VLMLAB_FAULT=<point>` stops the process there.

Points: `step:N` (after optimizer step N, before anything is saved for it), `checkpoint:N` (right after
`last.ckpt` of step N is in place), `export` (after training, before the final weights and result are
written). At the point the process sends itself SIGKILL, or the signal `VLMLAB_FAULT_SIGNAL` names (SIGTERM,
SIGUSR1: pre-emption and the time limit, at a known step instead of whenever a test's poll notices a log
line). Unset, nothing happens; "kill -9 at the worst moment" becomes repeatable.
"""

from __future__ import annotations

import os
import signal


def inject_fault(point: str) -> None:
    if os.environ.get("VLMLAB_FAULT") == point:
        os.kill(os.getpid(), signal.Signals[os.environ.get("VLMLAB_FAULT_SIGNAL", "SIGKILL")])


__all__ = ["inject_fault"]
