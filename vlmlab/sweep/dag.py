"""The expanded sweep: stage runs and what each starts from, as the backends and `--dry-run` see it."""

from __future__ import annotations

import shlex
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmlab.config import FUSION_NAMES, TRAIN_METHODS


@dataclass
class Run:
    """One stage run: trained by one `vlmlab train <run_dir>/config.yaml` into `run_dir`."""

    id: str
    stage: int
    config: dict[str, Any]  # the resolved ExperimentConfig, train.output_dir / train.init_from filled in
    parents: list[str]  # ids of the runs this one starts from (one, or none for stage 1)
    run_dir: Path
    labels: dict[str, Any] = field(default_factory=dict)  # the axis values it stands for (for people)

    @property
    def fusion(self) -> str:
        return self.config["model"]["fusion"]

    @property
    def open_weight(self) -> str | None:
        """The open-weight model this run trains (model.open_weight), or None for vlmlab's own models."""
        return self.config["model"].get("open_weight")

    @property
    def method(self) -> str:
        return self.config["train"].get("method", "sft")

    @property
    def key(self) -> str:
        return f"stage{self.stage}/{self.id}"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def result_path(self) -> Path:
        return self.run_dir / "result.json"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "stdout.log"

    def is_done(self) -> bool:
        return self.result_path.exists()

    def command(self, template: str, overrides: Sequence[str] = ()) -> str:
        """The shell command that trains this run: `template` with every value shell-quoted."""
        return template.format(
            python=shlex.quote(sys.executable),
            config=shlex.quote(str(self.config_path)),
            overrides=" ".join(shlex.quote(item) for item in overrides),
            run_dir=shlex.quote(str(self.run_dir)),
            run_id=shlex.quote(self.id),
            stage=self.stage,
        ).strip()


@dataclass
class SweepDag:
    """Runs in topological order (stage by stage) plus what the expansion left out and why."""

    name: str
    source: Path
    output_dir: Path
    runs: dict[str, Run]
    points: int = 0  # grid points (the axes' cross product)
    excluded: int = 0  # points removed by the file's `exclude` rules
    skipped: Counter = field(default_factory=Counter)  # reason -> points removed by the paper's rules
    seeds: list[int] = field(default_factory=list)  # replicates of every design point (`seeds`), if any

    def __iter__(self):
        return iter(self.runs.values())

    def __len__(self) -> int:
        return len(self.runs)

    def children(self, run_id: str) -> list[Run]:
        return [run for run in self.runs.values() if run_id in run.parents]

    def stages(self) -> list[int]:
        return sorted({run.stage for run in self.runs.values()})

    def counts(self) -> dict[str, Any]:
        """Runs per stage and per (stage, fusion architecture) of vlmlab's models; open-weight runs per
        (model, method) under `open_weight` (only when there are some); stage keys are strings (JSON)."""
        by_stage = Counter(run.stage for run in self.runs.values())
        own = [run for run in self.runs.values() if not run.open_weight]
        by_fusion = Counter((run.stage, run.fusion) for run in own)
        counts: dict[str, Any] = {
            "total": len(self.runs),
            "by_stage": {str(s): by_stage[s] for s in self.stages()},
            "by_stage_and_fusion": {
                str(s): {f: by_fusion[(s, f)] for f in FUSION_NAMES} for s in self.stages()
            },
        }
        opened = [run for run in self.runs.values() if run.open_weight]
        if opened:
            table: dict[str, dict[str, int]] = {}
            for run in opened:
                row = table.setdefault(run.open_weight, {method: 0 for method in TRAIN_METHODS})
                row[run.method] += 1
            counts["open_weight"] = table
        return counts

    def to_json(self) -> dict[str, Any]:
        grid: dict[str, Any] = {
            "points": self.points,
            "excluded": self.excluded,
            "skipped_by_rules": sum(self.skipped.values()),
            "rule_reasons": dict(self.skipped),
        }
        if self.seeds:  # only for sweeps with replicates: the others' JSON is as it was
            grid["seeds"] = list(self.seeds)
        return {
            "sweep": self.name,
            "file": str(self.source),
            "output_dir": str(self.output_dir),
            "counts": self.counts(),
            "grid": grid,
            "runs": [
                {
                    "id": run.id,
                    "stage": run.stage,
                    "fusion": run.fusion,
                    "labels": run.labels,
                    "run_dir": str(run.run_dir),
                    "depends_on": list(run.parents),
                }
                for run in self.runs.values()
            ],
        }

    def format_text(self) -> str:
        counts = self.counts()
        lines = [f"sweep {self.name}: {counts['total']} runs into {self.output_dir}", ""]
        if any(not run.open_weight for run in self.runs.values()):
            header = ["stage", *FUSION_NAMES, "total"]
            rows = [
                [str(s), *(str(counts["by_stage_and_fusion"][str(s)][f]) for f in FUSION_NAMES)]
                for s in self.stages()
            ]
            for row in rows:
                row.append(str(sum(int(cell) for cell in row[1:])))
            lines += _table(header, rows)
        if "open_weight" in counts:  # open-weight models: runs per model and method (eval = base model)
            header = ["open-weight model", *TRAIN_METHODS, "total"]
            rows = [
                [model, *(str(row[m]) for m in TRAIN_METHODS), str(sum(row.values()))]
                for model, row in counts["open_weight"].items()
            ]
            lines += _table(header, rows)
        lines.append("")
        seeds = (
            f" ({self.points // len(self.seeds)} design points x {len(self.seeds)} seeds)"
            if self.seeds
            else ""
        )
        lines.append(
            f"grid: {self.points} points{seeds}, {self.excluded} excluded by the file, "
            f"{sum(self.skipped.values())} left out or cut short by the paper's rules"
        )
        if self.seeds:
            lines.append(
                f"  replicates: each design point trained with train.seed = {', '.join(map(str, self.seeds))}, "
                "each seed its own chain of stages"
            )
        for reason, count in sorted(self.skipped.items()):
            lines.append(f"  {count} x {reason}")
        lines.append("")
        lines.append("runs (<- the run each starts from):")
        for run in self.runs.values():
            parents = ", ".join(self.runs[p].key for p in run.parents)
            lines.append(f"  {run.key}" + (f"  <- {parents}" if parents else ""))
        return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Right-aligned text columns (first column left-aligned) with a totals row."""
    totals = ["total", *(str(sum(int(r[i]) for r in rows)) for i in range(1, len(header)))]
    rows = [*rows, totals]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:]))]
        lines.append("  " + "  ".join(cells))
    return lines


__all__ = ["Run", "SweepDag"]
