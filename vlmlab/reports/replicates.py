"""Replicates (seeds) in the reports, and paired comparisons between design points.

Records whose configs differ only in `train.seed` (and in where the run lived: its folder, its parent's
folder, the keys that only say how it executed) are replicates of one design point. `merge_replicates`
turns each such group of two or more seeds into one record: every metric is the mean over the seeds with
the interval across seeds (vlmlab.scoring.replicates.seed_interval) and `"seeds": k`, so every layout
shows the mean, its interval and the number of seeds. A record without replicates is passed through
untouched, so single runs keep their sample-level interval and the tables print as before.

`compare(records, key, a, b)` pairs the design points whose configs differ only in `key` (a vs b) and, for
every metric both evaluated on the same items with per-item outcomes (`outcomes`, `items` in the metric
entry, written by `vlmlab eval`), runs the paired test (vlmlab.scoring.replicates.paired_comparison) over
items and seeds: what `vlmlab results --compare KEY=A,B` prints.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vlmlab.errors import ConfigError
from vlmlab.runs.record import EXECUTION_KEYS, config_hash
from vlmlab.scoring.replicates import PairedComparison, paired_comparison, seed_interval

SEED_KEY = "train.seed"
# keys in which replicates of one design point differ: the seed, and where each run lived
# Config paths that define a design point (the seeds of one are its replicates); if one varies inside a
# table row, the table says so (vlmlab/reports/layouts.py).
DESIGN_AXES = ("model.tokenizer", "model.fusion", "model.backbone", "train.freeze", "stage")
REPLICATE_KEYS = (SEED_KEY, "train.output_dir", "train.init_from", *EXECUTION_KEYS)

__all__ = [
    "Comparison",
    "DESIGN_AXES",
    "REPLICATE_KEYS",
    "compare",
    "design_point",
    "merge_replicates",
    "metric_entries",
    "seeds_phrase",
]


def _get(mapping: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        mapping = mapping.get(part) if isinstance(mapping, Mapping) else None
    return mapping


def _pop(mapping: Any, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        mapping = mapping.get(part) if isinstance(mapping, Mapping) else None
    if isinstance(mapping, dict):
        mapping.pop(last, None)


def design_point(record: Mapping[str, Any], ignore: Sequence[str] = ()) -> str:
    """The identity of a record's design point: its stage and its config without the replicate keys (and
    `ignore`), as canonical JSON."""
    config = copy.deepcopy(dict(record.get("config") or {}))
    for key in (*REPLICATE_KEYS, *ignore):
        _pop(config, key)
    return json.dumps([record.get("stage"), config], sort_keys=True, default=str)


def metric_entries(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """{"dotted.name": entry} of a record's metrics, named as `flatten_metrics` names them: an entry is a
    number or a {"score", ...} dict (kept whole, with its n, ci, correct, outcomes, items)."""
    found: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and "score" not in value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, Mapping) or (isinstance(value, int | float) and not isinstance(value, bool)):
            found[prefix.lower()] = value

    walk("", metrics)
    return found


def _score(entry: Any) -> float | None:
    value = entry.get("score") if isinstance(entry, Mapping) else entry
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _seed(record: Mapping[str, Any]) -> Any:
    return _get(record.get("config"), SEED_KEY)


def merge_replicates(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The records with each design point's seeds merged into one record (module docstring); a group is
    merged only when its records have distinct seeds (a re-evaluation of one run is not a replicate)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(design_point(record), []).append(record)
    merged: list[dict[str, Any]] = []
    for members in groups.values():
        seeds = [_seed(r) for r in members]
        replicated = len(members) >= 2 and None not in seeds and len(set(map(str, seeds))) == len(seeds)
        merged.extend([_merge(members)] if replicated else [dict(r) for r in members])
    return merged


def _merge(members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    members = sorted(members, key=lambda r: (str(type(_seed(r))), _seed(r)))
    entries = [metric_entries(r["metrics"]) for r in members]
    metrics: dict[str, Any] = {}
    for name in dict.fromkeys(n for e in entries for n in e):
        present = [e[name] for e in entries if name in e and _score(e[name]) is not None]
        if len(present) < 2:  # one seed evaluated it: that run's own entry, said to rest on one seed
            only = present[0] if present else None
            metrics[name] = {**(only if isinstance(only, Mapping) else {"score": _score(only)}), "seeds": 1}
            metrics[name].pop("outcomes", None)
            continue
        scores = [_score(entry) for entry in present]
        sizes = {entry.get("n") for entry in present if isinstance(entry, Mapping)}
        n = (
            sizes.pop()
            if len(sizes) == 1 and len(present) == sum(isinstance(e, Mapping) for e in present)
            else None
        )
        mean, (low, high) = seed_interval(scores, n if isinstance(n, int) else None)
        metrics[name] = {"score": mean, "ci": [low, high], "seeds": len(present), "seed_scores": scores}
        if isinstance(n, int):
            metrics[name]["n"] = n
    config = copy.deepcopy(dict(members[0]["config"]))
    config.setdefault("train", {})["seed"] = [_seed(r) for r in members]
    first = members[0]
    record = {
        "run_id": "+".join(str(r["run_id"]) for r in members),
        "config_hash": config_hash(config),
        "stage": first["stage"],
        "config": config,
        "metrics": metrics,
        "replicates": [str(r["run_id"]) for r in members],
        "created": max(str(r.get("created", "")) for r in members),
    }
    for key in ("chance", "baselines"):
        if first.get(key) is not None:
            record[key] = copy.deepcopy(first[key])
    return record


# -------------------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class Comparison:
    """One paired comparison: `key` a vs b on `metric`, other design settings `fixed` (key -> value)."""

    key: str
    a: Any
    b: Any
    metric: str
    fixed: dict[str, Any]
    result: PairedComparison


def _matches(value: Any, wanted: str) -> bool:
    """A config value named on the command line: by its text, its name (a named config) or its JSON."""
    forms = {str(value).lower(), json.dumps(value, sort_keys=True, default=str).lower()}
    if isinstance(value, Mapping) and "name" in value:
        forms.add(str(value["name"]).lower())
    return wanted.lower() in forms


def compare(
    records: Sequence[Mapping[str, Any]], key: str, a: str, b: str, metrics: Sequence[str] | None = None
) -> list[Comparison]:
    """Paired tests of `key` = a against `key` = b, for each design point the two share otherwise, each
    metric with per-item outcomes on the same items in both (see the module docstring). Raises ConfigError
    naming the key or value when no record has it, or when no pair has outcomes to compare."""
    values = [_get(r.get("config"), key) for r in records]
    present = [v for v in values if v is not None]
    if not present:
        raise ConfigError(
            f"--compare: no record has the config key {key!r} (a dotted key such as model.fusion or "
            "train.freeze)."
        )
    seen = sorted(
        {
            json.dumps(v, sort_keys=True, default=str) if isinstance(v, Mapping | list) else str(v)
            for v in present
        }
    )
    for wanted in (a, b):
        if not any(_matches(v, wanted) for v in present):
            raise ConfigError(f"--compare: no record has {key}={wanted!r}. Valid choices: {', '.join(seen)}.")
    sides: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for record, value in zip(records, values):
        side = "a" if value is not None and _matches(value, a) else "b" if _matches(value, b) else None
        if side:
            sides.setdefault(design_point(record, ignore=[key]), {}).setdefault(side, []).append(record)
    found: list[Comparison] = []
    for point, pair in sides.items():
        if "a" not in pair or "b" not in pair:
            continue
        stage, config = json.loads(point)
        fixed = {"stage": stage, **_design_settings(config)}
        side_a, side_b = _outcomes(pair["a"]), _outcomes(pair["b"])
        for metric in sorted(set(side_a) & set(side_b)):
            if metrics and metric not in metrics:
                continue
            (items_a, rows_a), (items_b, rows_b) = side_a[metric], side_b[metric]
            if items_a != items_b:
                continue  # other test items: no paired test
            result = paired_comparison(rows_a, rows_b)
            found.append(
                Comparison(
                    key,
                    _get(pair["a"][0]["config"], key),
                    _get(pair["b"][0]["config"], key),
                    metric,
                    fixed,
                    result,
                )
            )
    if not found:
        raise ConfigError(
            f"--compare {key}={a},{b}: no design point has both with per-item outcomes on the same items "
            "(records written by `vlmlab eval` since per-item outcomes are stored, one design point "
            "differing only in this key)."
        )
    return found


def _design_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    settings = {axis: _get(config, axis) for axis in DESIGN_AXES if axis != "stage"}
    return {axis: value for axis, value in settings.items() if value is not None}


def _outcomes(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[str, list[list[float]]]]:
    """metric -> (items digest, one row of per-item outcomes per seed) over the records that carry them
    on the same items."""
    rows: dict[str, tuple[str, list[list[float]]]] = {}
    for record in sorted(records, key=lambda r: str(_seed(r))):
        for name, entry in metric_entries(record["metrics"]).items():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("outcomes"), list):
                continue
            items = str(entry.get("items"))
            if name not in rows:
                rows[name] = (items, [])
            if rows[name][0] == items:
                rows[name][1].append([float(x) for x in entry["outcomes"]])
    return rows


def seeds_phrase(count: int) -> str:
    return "1 seed" if count == 1 else f"{count} seeds"
