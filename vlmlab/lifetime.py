"""Child processes of a run die with it.

A data-loader worker of a trainer killed with SIGKILL is reparented to init and may live on for minutes:
torch's own parent check runs only between items, so a worker blocked inside one (waiting on a `pipe:`
shard's reader, a renderer, a full result pipe) never reaches it, and meanwhile it holds its memory, its
own child processes and the run's stdout (a wrapper reading that pipe never sees EOF). Two guards, both set
up inside the worker: the kernel's parent-death signal (Linux `prctl(PR_SET_PDEATHSIG)`: SIGTERM the moment
the process that forked the worker exits, which interrupts a blocking call), and a daemon thread that polls
the owner's pid once a second, for systems without prctl and for workers started by a helper process (a
forkserver) rather than the trainer. Either kills the worker's own descendants first, then the worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 1.0


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


# loaded here, not in a forked child: `preexec_fn` runs between fork and exec, where loading a library could
# wait forever on a lock another thread of the parent held at the fork
_LIBC = _libc()


def _set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send `signum` to this process when its parent exits (Linux); False elsewhere."""
    prctl = getattr(_LIBC, "prctl", None)
    return prctl is not None and prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _descendants(pid: int) -> list[int]:
    """The live descendants of `pid`, children first (from /proc; empty where there is none)."""
    parents: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as handle:
                    # pid (comm) state ppid ...: comm may hold spaces and brackets, so split after the last ")"
                    state, ppid = handle.read().rsplit(")", 1)[1].split()[:2]
            except (OSError, IndexError, ValueError):
                continue
            if state != "Z":
                parents.setdefault(int(ppid), []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def _die(*_: Any) -> None:
    """This process's owner is gone: kill what this process started (`pipe:` shard readers, renderers),
    then this process; nothing is flushed, as after a SIGKILL."""
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(owner: int, parent: int) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        if os.getppid() != parent or not _alive(owner):
            _die()


def die_with(owner: int) -> None:
    """Make this (child) process, and the processes it starts, die within about a second of `owner` (the
    trainer's pid) or of its own parent, whichever ends first. Call it first thing in the child, from its
    main thread. A SIGTERM from the kernel (the parent-death signal) runs the same clean-up."""
    parent = os.getppid()
    signal.signal(signal.SIGTERM, _die)
    _set_parent_death_signal(signal.SIGTERM)
    if not _alive(owner):  # the owner died before the guard was set
        _die()
    threading.Thread(target=_watch, args=(owner, parent), name="vlmlab-die-with-owner", daemon=True).start()


def _worker_init(owner: int, then: Callable[[int], Any] | None, worker_id: int) -> None:
    die_with(owner)
    if then is not None:
        then(worker_id)


def worker_init_fn(then: Callable[[int], Any] | None = None) -> Callable[[int], None]:
    """A DataLoader `worker_init_fn` that ties each worker's life to this process (picklable, so it works
    with any start method), then calls `then(worker_id)`."""
    return functools.partial(_worker_init, os.getpid(), then)


def preexec_die_with_parent() -> None:
    """`preexec_fn` for `subprocess.Popen` of helper programs (LaTeX, ...): killed when their starter dies."""
    _set_parent_death_signal(signal.SIGKILL)


__all__ = ["die_with", "preexec_die_with_parent", "worker_init_fn"]
