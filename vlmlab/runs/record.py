"""Evaluation result records: their format, validation, atomic writing and gathering.

The paper's tables and figures are drawn from them by vlmlab.reports.

Record format
-------------
One JSON object per evaluated run and stage, written atomically (temporary file + rename, so a reader never
sees half a record) by `write_record`; `make_record` fills in the hash and the time:

    {
      "run_id": "clip-joint-s2",                 # str, unique per run
      "config_hash": "5d41402abc4b2a76",         # first 16 hex digits of sha256(canonical JSON of config)
      "stage": 2,                                # int: training stage the evaluated checkpoint ends
      "config": {...},                           # the resolved config (dict); rows are grouped by dotted
                                                 #   paths into it: model.tokenizer, model.fusion,
                                                 #   train.freeze, model.backbone, data.train.0.mode ...
      "metrics": {                               # name -> score in [0, 1], or a dict:
        "vqav2": 0.712,                          #   academic benchmarks by their `benchmarks` name,
        "docvqa": {"score": 0.253, "n": 5349,    #   a dict with "score" (extras such as n are kept),
                   "ci": [0.241, 0.265]},        #   "ci": its 95 % interval, "correct": 0/1 successes,
        "grid": {"tqa": {"ind": {"score": 0.58, "n": 200, "ci": [0.511, 0.646], "correct": 116}}}
      },                                         # or nested dicts, flattened with "." ("grid.tqa.ind")
      "chance": {"grid.tqa.ind": 0.25, "ring": 0.1},   # optional: chance level, same names (or a prefix)
      "baselines": {"grid": {"tqa": {"ind": {"majority": 0.04, "start": 0.30}}}},  # optional: trivial
                                                 #   baselines per metric name (or prefix) and kind
      "timings": {"eval_s": 812.4},              # free-form timing info, seconds
      "created": "2026-11-23T11:30:00+00:00"     # ISO 8601 time the record was written
    }

`baselines` (written by `vlmlab eval`, vlmlab.scoring.transfer) hold, per synthetic cell, the accuracy of
strategies that need no reasoning, measured on the held-out samples that cell scored: "majority" (always
the most common answer), "start" (Grid: the start object) and "offset" (Ring: the most frequent offset of
the answer from the start); see vlmlab.data.synthetic.stats.

Plain floats (older records) and {"score", ...} dicts are both read. The evaluations write the dict form:
`vlmlab eval` (vlmlab.scoring.transfer, benchmark_eval) with "n", "ci" and, for 0/1 outcomes, "correct";
a training run's result.json (vlmlab.train.data) flat floats, an accuracy `X` with `X_ci_low` / `X_ci_high`
beside it, which are read as X's interval (and not as metrics of their own).

Cross-modality transfer records (Tables 6-7, Figures 4-5) name metrics `<task>.<vqa|tqa>.<ind|ood>`
(task: spatialmap, grid, ring; "test" is accepted for "ind", the synthetic sets' in-distribution split).
Records of stage < 3 are the untrained stage-2 models ("No Train"); a stage-3 record says what it was
fine-tuned on through its config, `data.train.0.mode` ("vqa" | "tqa") and `data.train.0.task` (the
synthetic source of `vlmlab.config.DataSourceConfig`). Both key paths can be changed.

Open-weight VLM records (Appendix B, Tables 8-11) are transfer records whose config names the model at
`model.open_weight` (a hub id or folder, shown by its short name: the paper's for its five models) and how
it was trained at `train.method`: "eval" (the base model, not trained), "sft" (also when absent, the
config's default) or "grpo" (RL, the record of the best checkpoint), on the synthetic `data.train.0.task` and modality `data.train.0.mode`. A base record
serves every dataset (its scores are looked up by the row's task), preferring the base records whose
data.train.0.task is that dataset, averaged if several. Records without `model.open_weight` are ignored
there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vlmlab.errors import ConfigError
from vlmlab.files import atomic_write_text

# Keys that say how a run executes (hardware layout, logging), not what it learns: left out of run ids so the
# same run has the same folder on a laptop and on a 4-node allocation. `vlmlab sweep` replaces init_from
# by parent ids (vlmlab/sweep/expand.py).
EXECUTION_KEYS = (
    "train.output_dir",
    "train.devices",
    "train.num_nodes",
    "train.accelerator",
    "train.strategy",
    "train.log_every_n_steps",
    "train.checkpoint_every_n_steps",
    "model.gradient_checkpointing",
    "model.attn_implementation",
    "data.num_workers",
    "train.loss_impl",  # every implementation is exact (vlmlab/models/loss.py)
    "train.compile",  # the same model, compiled (vlmlab/train/compile.py)
    "train.loggers",  # where metrics go and what is measured on the side: never what is learned
    "train.tracking",
    "eval",
)

__all__ = [
    "EXECUTION_KEYS",
    "RECORD_KEYS",
    "config_hash",
    "flatten_metrics",
    "make_record",
    "read_records",
    "RUN_KEYS",
    "run_record",
    "validate_record",
    "write_record",
]

RECORD_KEYS = (
    "run_id",
    "config_hash",
    "stage",
    "config",
    "metrics",
    "chance",
    "baselines",
    "timings",
    "created",
)

log = logging.getLogger("vlmlab.runs")


# ---------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def config_hash(config: Mapping[str, Any]) -> str:
    """Short stable hash of a resolved config (key order does not matter), to spot identical design points."""
    return hashlib.sha256(_canonical_json(config).encode("utf-8")).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """OmegaConf containers and other mappings/sequences -> plain JSON-able Python objects."""
    try:  # a resolved DictConfig is the usual input; keep omegaconf optional here
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    except ModuleNotFoundError:  # pragma: no cover
        pass
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def make_record(
    run_id: str,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    *,
    stage: int,
    timings: Mapping[str, Any] | None = None,
    chance: Mapping[str, Any] | None = None,
    created: str | None = None,
    baselines: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble (and validate) one record; `config_hash` and `created` (UTC now) are filled in.
    `baselines` is stored only when given (records without it are the older form)."""
    config = _plain(config)
    record = {
        "run_id": str(run_id),
        "config_hash": config_hash(config),
        "stage": stage,
        "config": config,
        "metrics": _plain(metrics),
        "chance": _plain(chance or {}),
        "timings": _plain(timings or {}),
        "created": created or datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    }
    if baselines is not None:
        record["baselines"] = _plain(baselines)
    return validate_record(record)


# What a run's own record (result.json) adds to an evaluation record: written by every training method
# (sft, grpo) and by eval-only runs, so the three share one key set (None where a method has nothing).
RUN_KEYS = ("best", "checkpoint", "parent", "freezing", "base_weights", "data", "rewards")


def run_record(
    out: Path,
    config: Mapping[str, Any],
    *,
    metrics: Mapping[str, Any],
    chance: Mapping[str, Any],
    timings: Mapping[str, Any],
    checkpoint: str,
    best: Mapping[str, Any] | None = None,
    parent: str | None = None,
    freezing: Mapping[str, Any] | None = None,
    base_weights: Any = None,
    data: Mapping[str, Any] | None = None,
    rewards: list[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The record of the run in folder `out` (its result.json): what an evaluation record holds, plus the
    best checkpoint (None without best-checkpoint selection), the weights kept and their parent, what was
    frozen, the base weights the delta sits on, the data health, and for RL the reward per step."""
    record = make_record(
        out.name, config, metrics, stage=int(config["train"]["stage"]), timings=timings, chance=chance
    )
    extra = {
        "best": best,
        "checkpoint": checkpoint,
        "parent": parent,
        "freezing": freezing or {},
        "base_weights": base_weights,
        "data": data or {},
        "rewards": rewards,
    }
    return {**record, **_plain(extra)}


def _check_scores(values: Mapping[str, Any], what: str, source: str) -> None:
    for name, value in flatten_metrics(values, strict=True, source=source).items():
        if not (math.isnan(value) or 0.0 <= value <= 1.0):
            raise ConfigError(
                f"{source}: {what} {name!r} = {value} is outside [0, 1] (store fractions, not %)."
            )


def validate_record(record: Mapping[str, Any], source: str = "record") -> dict[str, Any]:
    """Check a record's keys and types; raise ConfigError naming the problem. Returns it as a dict."""
    if not isinstance(record, Mapping):
        raise ConfigError(f"{source}: a result record must be a JSON object, got {type(record).__name__}.")
    missing = [key for key in ("run_id", "stage", "config", "metrics") if key not in record]
    if missing:
        raise ConfigError(
            f"{source}: result record lacks {', '.join(missing)} (keys: {', '.join(RECORD_KEYS)})."
        )
    if not isinstance(record["stage"], int) or isinstance(record["stage"], bool):
        raise ConfigError(f"{source}: stage must be an int, got {record['stage']!r}.")
    for key in ("config", "metrics"):
        if not isinstance(record[key], Mapping):
            raise ConfigError(f"{source}: {key} must be an object, got {type(record[key]).__name__}.")
    for key in ("chance", "baselines", "timings"):
        if record.get(key) is not None and not isinstance(record[key], Mapping):
            raise ConfigError(f"{source}: {key} must be an object, got {type(record[key]).__name__}.")
    _check_scores(record["metrics"], "metric", source)
    _check_scores(record.get("chance") or {}, "chance level", source)
    _check_scores(record.get("baselines") or {}, "baseline", source)
    return dict(record)


def write_record(record: Mapping[str, Any], dest: str | os.PathLike[str]) -> Path:
    """Write a record atomically. `dest` is a `.json` path, or a folder (file `<run_id>.stage<N>.json`).

    Written through vlmlab.files (temporary file beside the target, fsync, rename), so concurrent readers
    (the gatherer, a sweep monitor) see either the old file or the complete new one.
    """
    record = validate_record(record)
    dest = Path(dest)
    if dest.suffix != ".json":
        safe_id = re.sub(r"[^A-Za-z0-9._\-]+", "_", record["run_id"])
        dest = dest / f"{safe_id}.stage{record['stage']}.json"
    atomic_write_text(
        dest, json.dumps(record, indent=2, sort_keys=False, default=str, ensure_ascii=False) + "\n"
    )
    return dest


def _created_key(record: Mapping[str, Any]) -> datetime:
    try:
        stamp = datetime.fromisoformat(str(record.get("created", "")))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def read_records(root: str | os.PathLike[str], *, stage: int | None = None) -> list[dict[str, Any]]:
    """All result records under `root` (recursively), newest per (run_id, stage), sorted by run id.

    JSON files that are not records (configs, manifests: no `run_id`/`metrics`) are skipped silently;
    malformed records are skipped with a warning, so one broken run cannot hide the rest of a sweep.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"Results folder {str(root)!r} does not exist or is not a folder.")
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for path in sorted(root.rglob("*.json")):
        text = None
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            # one line (a warning would print its source line too): one broken run cannot hide the rest
            empty = text is not None and not text.strip()
            log.warning(
                "vlmlab: skipped %s: %s", path, "it is empty" if empty else f"not readable JSON ({error})"
            )
            continue
        if not isinstance(data, Mapping) or "run_id" not in data or "metrics" not in data:
            continue
        try:
            record = validate_record(data, source=str(path))
        except ConfigError as error:
            log.warning("vlmlab: skipped an invalid record: %s", error)
            continue
        if stage is not None and record["stage"] != stage:
            continue
        key = (str(record["run_id"]), record["stage"])
        if key not in latest or _created_key(record) >= _created_key(latest[key]):
            latest[key] = record
    return [latest[key] for key in sorted(latest)]


def flatten_metrics(
    metrics: Mapping[str, Any], *, strict: bool = False, source: str = "record"
) -> dict[str, float]:
    """Nested metric dicts -> {"dotted.name": float}, names lowercased; a dict with "score" is that score.

    Non-numeric leaves (counts are numeric too, but only under a "score" dict) are dropped, or rejected
    with `strict=True`. NaN stays NaN here and is treated as missing by the tables.
    """
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            if "score" in value:
                walk(prefix, value["score"])
                return
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[prefix.lower()] = float(value)
        elif value is None:
            return
        elif strict:
            raise ConfigError(f"{source}: metric {prefix!r} has non-numeric value {value!r}.")

    walk("", metrics)
    for name in [n for n in flat if n.endswith(_CI_SUFFIXES)]:  # an accuracy's interval, not a metric
        if name.rsplit("_ci_", 1)[0] in flat:
            del flat[name]
    return flat


_CI_SUFFIXES = ("_ci_low", "_ci_high")
