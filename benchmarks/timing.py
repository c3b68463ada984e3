"""Wall and CPU seconds of a benchmark's timed part, so that its figures can be read on a shared machine.

Wall time is what a user waits; on a machine shared with other jobs it also counts the time this process
waited for a core. CPU time counts only the work done: this process's threads (`time.process_time`) and,
with `children=True`, its child processes (loader workers, pools, subprocesses). A rate per CPU second is
therefore "per core" whatever else the machine runs, and each benchmark prints both.

    with timed(children=True) as t:
        work()
    print(f"{t.rate(n):.1f} items/s wall, {t.cpu_rate(n):.1f} per CPU second")

Children are counted from two sources, so that neither misses nor double-counts a child:
- `os.times()`: children that ended and were waited for (a finished subprocess, a joined pool);
- `/proc` (Linux): children still running at the end (DataLoader workers), from what they had used when
  the block began, if they were running then. Elsewhere only ended children count: end the workers inside
  the block (close the loader) to have them counted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Timing:
    """Seconds spent in a `timed` block (filled when the block ends)."""

    wall: float = 0.0
    cpu: float = 0.0  # this process, plus its children when timed(children=True)

    def rate(self, items: float) -> float:
        """Items per wall second."""
        return items / max(self.wall, 1e-12)

    def cpu_rate(self, items: float) -> float:
        """Items per CPU second: the rate one fully available core would reach."""
        return items / max(self.cpu, 1e-12)

    def describe(self) -> str:
        """'wall 1.23 s, CPU 1.10 s' for a printed line."""
        return f"wall {self.wall:.2f} s, CPU {self.cpu:.2f} s"


def verdict(value: float, goal: float, higher_is_better: bool = True) -> str:
    """'met' / 'NOT met' for a figure against its goal."""
    return "met" if (value >= goal if higher_is_better else value <= goal) else "NOT met"


def _live_children_cpu() -> dict[int, float]:
    """CPU seconds used so far by each running child process of this one (empty where /proc is missing)."""
    used: dict[int, float] = {}
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return used
    for task in tasks:
        try:
            pids = (task / "children").read_text().split()
        except OSError:  # the thread ended, or a kernel without the children file
            continue
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:  # ended meanwhile: os.times() counts it once it is waited for
                continue
            fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (name) ": state, ppid, ...
            used[int(pid)] = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
    return used


def _ended_children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


@contextmanager
def timed(children: bool = False) -> Iterator[Timing]:
    """Measure the block's wall and CPU seconds into the yielded `Timing`."""
    timing = Timing()
    live_before = _live_children_cpu() if children else {}
    ended_before = _ended_children_cpu()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield timing
    finally:
        timing.wall = time.perf_counter() - wall
        timing.cpu = time.process_time() - cpu
        if children:
            live_after = _live_children_cpu()
            # a child running at the start and ended since is in os.times() with all it ever used
            ended = _ended_children_cpu() - ended_before
            ended -= sum(used for pid, used in live_before.items() if pid not in live_after)
            running = sum(used - live_before.get(pid, 0.0) for pid, used in live_after.items())
            timing.cpu += max(ended, 0.0) + running
