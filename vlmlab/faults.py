"""Fault injection for the crash-safety tests: `VLMLAB_FAULT=<point>` kills the process (SIGKILL) there.

Points: `step:N` (after optimizer step N, before anything is saved for it), `checkpoint:N` (right after
`last.ckpt` of step N is in place), `export` (after training, before the final weights and result are
written). Unset, nothing happens; a kill at a named point makes "kill -9 at the worst moment" repeatable.
"""

from __future__ import annotations

import os
import signal


def inject_fault(point: str) -> None:
    if os.environ.get("VLMLAB_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["inject_fault"]
