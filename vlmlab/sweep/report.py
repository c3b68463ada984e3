"""A finished sweep's report (`vlmlab results` tables and figures) as artifacts of the runs' trackers.

`vlmlab sweep FILE` on the local backend does it once every run is done; `vlmlab sweep FILE --report` does it
on demand (a Slurm sweep: once its jobs are done). The report is `<sweep output>/report/`, made with the sweep
file's `results:` options; the trackers and their settings are those of the sweep's runs (train.loggers,
train.tracking), the experiment / group the sweep's name unless train.tracking.experiment says otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from typing import IO

from vlmlab.errors import ConfigError
from vlmlab.runs.tracking import TRACKERS, log_report
from vlmlab.sweep.dag import SweepDag
from vlmlab.sweep.spec import SweepSpec


def report_to_trackers(dag: SweepDag, spec: SweepSpec, out: IO[str] | None = None) -> dict[str, str]:
    """Make the sweep's report and log it; {} (and one line saying why) when there is nothing to do."""
    out = out or sys.stdout
    runs = list(dag)
    trackers = sorted({t for run in runs for t in run.config["train"].get("loggers", []) if t in TRACKERS})
    if not trackers:
        return {}
    if not all(run.is_done() for run in runs):
        raise ConfigError(
            f"sweep {dag.name}: {sum(not r.is_done() for r in runs)} runs are not done; the report waits for all."
        )
    folder = dag.output_dir / "report"
    command = [sys.executable, "-m", "vlmlab.cli", "results", str(dag.output_dir), "--out", str(folder)]
    made = subprocess.run([*command, *spec.results], capture_output=True, text=True)
    if made.returncode:  # no scores to tabulate yet, say: the runs' trackers hold what there is
        reason = (made.stderr.strip().splitlines() or ["?"])[-1]
        print(f"sweep {dag.name}: no report for the trackers ({reason})", file=out)
        return {}
    settings = runs[0].config["train"].get("tracking") or {}
    experiment = settings.get("experiment") or dag.name
    found = log_report(folder, experiment, trackers, settings)
    print(f"sweep {dag.name}: report {folder} logged to {', '.join(found)}", file=out)
    return found


__all__ = ["report_to_trackers"]
