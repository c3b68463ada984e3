"""Evaluation result records, and the gatherer that turns a sweep's records into the paper's tables.

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

`baselines` (written by `vlmlab eval`, vlmlab.eval.transfer) hold, per synthetic cell, the accuracy of
strategies that need no reasoning, measured on the held-out samples that cell scored: "majority" (always
the most common answer), "start" (Grid: the start object) and "offset" (Ring: the most frequent offset of
the answer from the start); see vlmlab.data.synthetic.stats.

Plain floats (older records) and {"score", ...} dicts are both read. The evaluations write the dict form:
`vlmlab eval` (vlmlab.eval.transfer, benchmark_eval) with "n", "ci" and, for 0/1 outcomes, "correct";
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

Tables
------
`design_table` builds Tables 1-5 (per-benchmark columns, In-domain / Out-of-domain / overall averages,
rows grouped by config keys) and Table 2 (`pivot=` a key such as model.fusion: its values become column
groups of the three averages). `transfer_table` builds Tables 6-7 for one evaluation modality: rows
tokenizer x fusion, columns task x {InD, OOD} x {No Train, same-modality, cross-modality}, plus a chance
row and a row per trivial baseline (the records' `baselines`). `scaling_table` is the data behind
Figure 2 (rows = series x backbone, the best value marked per backbone size). `open_weight_sft_table`
builds Table 8 (fine-tuned on VQA; columns VQA InD/OOD then TQA InD/OOD) and Table 9 (on TQA; TQA columns
first), rows dataset x model, each cell the SFT score with its change from the base model in parentheses
("98.6 (+18.4)": points, sign always shown, the difference of the two values as displayed, so that the
printed numbers add up; CSV: a `<column>_delta` column, two decimals), best per column within each
dataset in bold; `open_weight_rl_table` builds Table 10/11 for one model: rows the four test splits,
column groups per dataset {Base, SFT, RL}, SFT and RL with their change from Base, the higher of the two
bold; `open_weight_tables` gives all of them (a Table 10/11 per model with a grpo record). A change needs
the base score: without one the cell shows the score alone (and a note says so). Every `Table` renders to
Markdown, CSV and LaTeX.

Conventions (deliberate, so that missing work can never read as a result):
  * scores are shown in %, one decimal; a missing run or benchmark is a gap ("–" in Markdown, "--" in
    LaTeX, an empty CSV cell), never 0;
  * averages: In-domain = mean over the in-domain benchmarks that appear anywhere in the gathered records,
    Out-of-domain likewise, overall = mean over all of them (as the paper's "Average All", not the mean of
    the two averages). A row missing one of those benchmarks gets NO average (a gap) by default; with
    `partial_averages=True` it gets the mean of what it has, marked "†" (CSV: listed in a `partial` column)
    and excluded from the best-per-column marking;
  * when several records fall into one row (e.g. tokenizers averaged, as in Table 2), cells are their mean;
    a benchmark missing from any of them makes that cell a gap too (or partial, as above);
  * the best value per column is bold (Markdown/LaTeX; CSV: a `best` column listing the columns where the
    row is best), compared at the displayed precision so ties are all marked;
  * 95 % confidence intervals, where the records carry them, follow the value: Markdown `48.5 [41.6, 55.4]`
    (in %, one decimal; brackets, not ±, since Wilson and bootstrap intervals are not symmetric), LaTeX
    the same with the brackets in a smaller font (scriptsize), CSV in the columns `<column>_lo` and
    `<column>_hi` after each value column (always present, empty without an interval). A cell from one
    record shows that record's interval (Wilson for 0/1 outcomes, percentile bootstrap for soft scores:
    vlmlab.eval.intervals). A cell averaging several results (records of one row, benchmarks of an
    average, `Table.collapse`) shows the Wilson interval of their pooled samples when every one records
    its 0/1 outcomes ("correct") on the same number of samples, so that the pooled proportion IS the
    displayed mean (the pooled samples are treated as independent; the same items answered by several
    models are not, so read it as the uncertainty over the items); otherwise, and for partial averages,
    it has no interval. The chance row has none. A note under the table says so whenever one is shown.
LaTeX output uses booktabs rules (and graphicx's \resizebox for wide tables).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vlmlab.data.benchmarks import DISPLAY_NAMES, IN_DOMAIN, OUT_OF_DOMAIN
from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.eval.intervals import wilson

__all__ = [
    "AVERAGE_LABELS",
    "DEFAULT_GROUP_BY",
    "OPEN_WEIGHT_KEY",
    "OPEN_WEIGHT_NAMES",
    "TRAIN_METHOD_KEY",
    "TRANSFER_TASKS",
    "Column",
    "Evidence",
    "Row",
    "Table",
    "config_hash",
    "design_table",
    "flatten_metrics",
    "get_dotted",
    "make_record",
    "metric_evidence",
    "open_weight_name",
    "open_weight_rl_table",
    "open_weight_sft_table",
    "open_weight_tables",
    "read_records",
    "scaling_table",
    "transfer_table",
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
AVERAGE_LABELS = {"avg_ind": "Avg In-domain", "avg_ood": "Avg Out-of-domain", "avg_all": "Avg All"}
DEFAULT_GROUP_BY: dict[str, tuple[str, ...]] = {
    "design": ("model.tokenizer", "model.fusion", "train.freeze"),
    "transfer": ("model.tokenizer", "model.fusion"),
    "scaling": ("model.tokenizer", "model.fusion", "train.freeze"),
    "open_weight": ("model.open_weight",),  # the model; rows are dataset x model (Tables 8-9)
}
# Config paths that define a design point; if one varies inside a table row, the table says so.
DESIGN_AXES = ("model.tokenizer", "model.fusion", "model.backbone", "train.freeze", "stage")
# Where a stage-3 run's config says what it was fine-tuned on (vlmlab.config: data.train[0].{task,mode}).
TRAIN_MODALITY_KEY = "data.train.0.mode"
TRAIN_TASK_KEY = "data.train.0.task"
TRANSFER_TASKS = ("spatialmap", "grid", "ring")
# Open-weight VLMs (Tables 8-11): the model (hub id or folder) and how it was trained (vlmlab.config)
OPEN_WEIGHT_KEY = "model.open_weight"
TRAIN_METHOD_KEY = "train.method"
# The models the paper fine-tunes, by the last part of their hub id (lowercase), in its row order.
OPEN_WEIGHT_NAMES = {
    "qwen2.5-vl-7b-instruct": "Qwen2.5-VL-7B",
    "qwen2.5-vl-3b-instruct": "Qwen2.5-VL-3B",
    "internvl3-8b-hf": "InternVL3-8B",
    "gemma-3-4b-it": "Gemma-3-4B",
    "kimi-vl-a3b-instruct": "Kimi-VL-A3B",
}
_METHOD_ALIASES = {"eval": "eval", "base": "eval", "sft": "sft", "grpo": "grpo", "rl": "grpo"}
TASK_NAMES = {"spatialmap": "SpatialMap", "grid": "Grid", "ring": "Ring"}
MODALITIES = ("vqa", "tqa")
_MODALITY_ALIASES = {"vqa": "vqa", "image": "vqa", "img": "vqa", "tqa": "tqa", "text": "tqa", "txt": "tqa"}
_TRANSFER_METRIC = re.compile(r"^(?P<task>[a-z0-9_\-]+)\.(?P<mod>vqa|tqa)\.(?P<split>ind|id|test|ood)$")
_CONDITIONS = ("none", "same", "cross")
# Trivial baselines of the synthetic tasks (kind in a record's `baselines` -> row label), in row order.
BASELINE_ROWS = {
    "majority": "Majority answer",
    "start": "Answer = start (Grid)",
    "offset": "Most frequent offset (Ring)",
}
MISSING = {"md": "–", "tex": "--", "csv": ""}
INTERVAL_NOTE = (
    "[low, high]: 95 % confidence interval (Wilson for 0/1 outcomes, percentile bootstrap for soft scores); "
    "a cell averaging several results has the interval of their pooled samples where each records its "
    "0/1 outcomes on as many samples, and none otherwise."
)
DELTA_INTERVAL_NOTE = "An interval is the score's, not that of its change from base."

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

    The JSON goes to a temporary file in the same folder, is flushed to disk, then renamed over the target,
    so concurrent readers (the gatherer, a sweep monitor) see either the old file or the complete new one.
    """
    record = validate_record(record)
    dest = Path(dest)
    if dest.suffix != ".json":
        safe_id = re.sub(r"[^A-Za-z0-9._\-]+", "_", record["run_id"])
        dest = dest / f"{safe_id}.stage{record['stage']}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, sort_keys=False, default=str, ensure_ascii=False) + "\n"
    handle, temporary = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, dest)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
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
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            warnings.warn(f"Skipping unreadable JSON {path}: {error}", stacklevel=2)
            continue
        if not isinstance(data, Mapping) or "run_id" not in data or "metrics" not in data:
            continue
        try:
            record = validate_record(data, source=str(path))
        except ConfigError as error:
            warnings.warn(f"Skipping invalid record: {error}", stacklevel=2)
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


@dataclass(frozen=True)
class Evidence:
    """What a record says about one score beyond its value: the number of samples `n`, the 95 % interval
    `ci` (low, high) as fractions, and `correct`, the number of successes when the outcomes are 0/1."""

    n: int | None = None
    ci: tuple[float, float] | None = None
    correct: int | None = None


def _count(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return int(round(value))
    return None


def _interval(value: Any) -> tuple[float, float] | None:
    """A well-formed interval [low, high] within [0, 1], else None (a malformed one is ignored)."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    low, high = float(value[0]), float(value[1])
    return (low, high) if 0.0 <= low <= high <= 1.0 else None


def metric_evidence(metrics: Mapping[str, Any]) -> dict[str, Evidence]:
    """{"dotted.name": Evidence} for the metrics that carry more than a score: {"score", "n", "ci",
    "correct"} dicts, and flat `X_ci_low` / `X_ci_high` pairs beside a score X. Names as `flatten_metrics`."""
    found: dict[str, Evidence] = {}
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            if "score" in value:
                n, correct = _count(value.get("n")), _count(value.get("correct"))
                if correct is not None and (n is None or correct > n):
                    correct = None
                evidence = Evidence(n, _interval(value.get("ci")), correct)
                if evidence != Evidence():
                    found[prefix.lower()] = evidence
                return
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix.lower()] = value

    walk("", metrics)
    for name in flat:
        if name.endswith("_ci_low"):
            base = name.removesuffix("_ci_low")
            ci = _interval([flat[name], flat.get(f"{base}_ci_high")])
            if base in flat and ci is not None and base not in found:
                found[base] = Evidence(ci=ci)
    return found


def _pool(evidence: Sequence[Evidence | None]) -> Evidence | None:
    """Evidence of the mean of several results: one result's own; several, the Wilson interval of the
    pooled 0/1 samples when each has `correct` out of the same `n` (the pooled proportion is then the
    unweighted mean the table shows); None otherwise."""
    if not evidence or any(e is None for e in evidence):
        return None
    if len(evidence) == 1:
        return evidence[0]
    sizes = {e.n for e in evidence}
    if len(sizes) != 1 or None in sizes or any(e.correct is None for e in evidence):
        return None
    correct = sum(e.correct for e in evidence)
    n = sum(e.n for e in evidence)
    return Evidence(n, wilson(correct, n), correct)


_RECORD_FIELDS = ("run_id", "stage", "config_hash")


def get_dotted(mapping: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """`get_dotted(cfg, "model.tokenizer")` -> cfg["model"]["tokenizer"]; integer parts index lists
    ("data.train.0.mode"); `default` if any step is absent."""
    value: Any = mapping
    for part in key.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list | tuple) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return default
    return value


# ---------------------------------------------------------------------------------------------------------
# Display and ordering of config values
# ---------------------------------------------------------------------------------------------------------

_PRETTY_VALUES = {
    "joint_decoder": "Joint-Decoder",
    "joint-decoder": "Joint-Decoder",
    "jointdecoder": "Joint-Decoder",
    "joint": "Joint-Decoder",
    "cross_attention": "Cross-Attention",
    "cross-attention": "Cross-Attention",
    "crossattention": "Cross-Attention",
    "cross": "Cross-Attention",
    "mot": "MoT",
    "mixture_of_transformers": "MoT",
    "mixture-of-transformers": "MoT",
}
# Paper order: text-aware tokenizers first (CLIP, AIMv2, SigLIP 2), then DINOv3, TiTok, VAR; fusions as in
# Figure 1. Values are matched by prefix, case-insensitively; others follow in natural order.
_KNOWN_ORDER = ("clip", "aimv2", "siglip", "dinov3", "dino", "titok", "var", "joint", "cross", "mot")
# The freezing recipes of configs/freeze/ in Table 2's row order (matched exactly).
_RECIPE_ORDER = (
    "all-frozen",
    "unfreeze-lm",
    "unfreeze-tok-s2",
    "unfreeze-tok-s2-lm",
    "unfreeze-tok-s1s2",
    "unfreeze-all",
)
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", re.IGNORECASE)


def display_value(value: Any) -> str:
    """How a config value appears in a table cell: names for named configs, yes/no for flags."""
    if value is None:
        return MISSING["md"]
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        for key in ("name", "id", "arch"):
            if isinstance(value.get(key), str | int | float):
                return display_value(value[key])
        return ", ".join(f"{key}={display_value(item)}" for key, item in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return _PRETTY_VALUES.get(text.lower(), text)


def parse_size(value: Any) -> float | None:
    """Parameter count in billions from a backbone value ("qwen3-1.7b", "600M", {"params": 4e9}), or None."""
    if isinstance(value, Mapping):
        for key in ("params", "num_params", "n_params"):
            if isinstance(value.get(key), int | float):
                return float(value[key]) / 1e9
        value = display_value(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1e9 if value > 1e5 else float(value)
    match = _SIZE.search(str(value))
    if not match:
        return None
    number = float(match.group(1))
    return number / 1000.0 if match.group(2).lower() == "m" else number


def _natural(text: str) -> tuple[tuple[int, float, str], ...]:
    return tuple(
        (0, float(tok), "") if tok[0].isdigit() else (1, 0.0, tok) for tok in re.findall(r"\d+|\D+", text)
    )


def order_key(value: Any) -> tuple[Any, ...]:
    """Sort key for row values: flags frozen-first (as in the paper), known names in the paper's order,
    sizes numerically ("0.6b" < "1.7b" < "4b"), the rest naturally; missing values last."""
    if value is None:
        return (9,)
    if isinstance(value, bool):
        return (0, 0 if value else 1)
    text = display_value(value).lower()
    if text in _RECIPE_ORDER:
        return (1, len(_KNOWN_ORDER) + _RECIPE_ORDER.index(text), ())
    for rank, prefix in enumerate(_KNOWN_ORDER):
        if text.startswith(prefix):
            return (1, rank, _natural(text))
    size = parse_size(value)
    if size is not None:
        return (2, size)
    return (3, 0, _natural(text))


def _key_label(key: str) -> str:
    parts = key.split(".")
    return ".".join(parts[1:]) if len(parts) > 1 else key


# ---------------------------------------------------------------------------------------------------------
# Table model and rendering
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Column:
    """One value column: `key` is its id, `label` its header, `group` an optional spanning header."""

    key: str
    label: str
    group: str | None = None
    mark_best: bool = True
    # the cell shows its change from the row's `reference` value (Tables 8-11: from the base model)
    delta: bool = False


@dataclass
class Row:
    """One table row: the grouping values (raw and displayed), cell values in [0, 1] or None, and the
    columns whose value is a partial average."""

    raw: tuple[Any, ...]
    labels: tuple[str, ...]
    values: dict[str, float | None]
    partial: set[str] = field(default_factory=set)
    kind: str = "data"  # "data", "chance" or "baseline" (a trivial baseline: no run behind it)
    evidence: dict[str, Evidence] = field(default_factory=dict)  # per column: n, interval, successes
    # per column: the value the cell is compared with (Tables 8-11: the base model's score); a `delta`
    # column shows the change from it, and nothing where it is absent
    reference: dict[str, float] = field(default_factory=dict)

    def change(self, key: str, digits: int = 1) -> float | None:
        """The cell's change from its reference in points (%), from both values at `digits` decimals (as
        displayed, so that the shown numbers add up); None where either is missing."""
        value, reference = self.values.get(key), self.reference.get(key)
        if value is None or reference is None or math.isnan(value) or math.isnan(reference):
            return None
        change = round(100 * value, digits) - round(100 * reference, digits)
        return 0.0 if abs(change) < 0.5 * 10**-digits else change

    def interval(self, key: str) -> tuple[float, float] | None:
        """The 95 % interval (fractions) of the cell in column `key`, None where it has none."""
        if self.kind != "data" or self.values.get(key) is None:
            return None
        evidence = self.evidence.get(key)
        return evidence.ci if evidence is not None else None


@dataclass
class Table:
    """A paper-style table that renders to Markdown, CSV or LaTeX (see the module docstring)."""

    name: str
    title: str
    keys: list[str]
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    # A key whose values are compared separately when marking the best per column (the scaling table:
    # the best setup at each backbone size, not the largest backbone everywhere); None = the whole column.
    best_within: str | None = None
    # Sets of column keys compared within each row instead of down the column (Tables 10-11: the higher of
    # SFT and RL per dataset and test split); those columns are not compared down the column.
    best_among: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def key_labels(self) -> list[str]:
        return [_key_label(key) for key in self.keys]

    def column(self, key: str) -> Column:
        for column in self.columns:
            if column.key == key:
                return column
        raise unknown_choice("table column", key, [c.key for c in self.columns])

    def best(self) -> dict[str, set[int]]:
        """Row indices holding the best value of each column, at display precision (ties all count)."""
        marks: dict[str, set[int]] = {}
        within = self.keys.index(self.best_within) if self.best_within in self.keys else None
        among = {key for keys in self.best_among for key in keys}
        for column in self.columns:
            if not column.mark_best or column.key in among:
                continue
            shown = {
                i: round(100 * row.values[column.key], 1)
                for i, row in enumerate(self.rows)
                if row.kind == "data"
                and row.values.get(column.key) is not None
                and column.key not in row.partial
            }
            blocks: dict[str, dict[int, float]] = {}
            for i, value in shown.items():
                block = self.rows[i].labels[within] if within is not None else ""
                blocks.setdefault(block, {})[i] = value
            for block in blocks.values():
                if len(block) >= 2:
                    top = max(block.values())
                    marks.setdefault(column.key, set()).update(i for i, v in block.items() if v == top)
        for keys in self.best_among:
            for i, row in enumerate(self.rows):
                if row.kind != "data":
                    continue
                shown = {
                    key: round(100 * row.values[key], 1)
                    for key in keys
                    if row.values.get(key) is not None
                    and not math.isnan(row.values[key])
                    and key not in row.partial
                }
                if len(shown) >= 2:
                    top = max(shown.values())
                    for key, value in shown.items():
                        if value == top:
                            marks.setdefault(key, set()).add(i)
        return marks

    def _cell(self, row: Row, column: Column, best: bool, style: str) -> str:
        value = row.values.get(column.key)
        if value is None or math.isnan(value):
            return MISSING[style]
        text = f"{100 * value:.2f}" if style == "csv" else f"{100 * value:.1f}"
        partial = column.key in row.partial
        ci = row.interval(column.key)
        shown_ci = f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci is not None else ""
        change = row.change(column.key) if column.delta and style != "csv" else None
        shown_change = f" ({change:+.1f})" if change is not None else ""
        if style == "md":
            text = f"**{text}**" if best else text
            return text + ("†" if partial else "") + shown_change + (f" {shown_ci}" if shown_ci else "")
        if style == "tex":
            text = rf"\textbf{{{text}}}" if best else text
            text += r"$^\dagger$" if partial else ""
            text += shown_change.replace("(-", "($-$")
            return text + (rf" {{\scriptsize {shown_ci}}}" if shown_ci else "")
        return text

    def _delta_cells(self, row: Row, column: Column) -> list[str]:
        """CSV: the `_delta` cell of a `delta` column (change from the reference in points, two decimals,
        empty without one); no cell for other columns."""
        if not column.delta:
            return []
        change = row.change(column.key, 2) if row.kind == "data" else None
        return [f"{change:.2f}" if change is not None else ""]

    def _interval_cells(self, row: Row, column: Column) -> list[str]:
        """CSV: the `_lo` and `_hi` cells of a value (in %, two decimals), empty without an interval."""
        ci = row.interval(column.key)
        return [f"{100 * ci[0]:.2f}", f"{100 * ci[1]:.2f}"] if ci is not None else ["", ""]

    def has_intervals(self) -> bool:
        """Whether any cell of the table has a confidence interval."""
        return any(row.interval(column.key) for row in self.rows for column in self.columns)

    @property
    def shown_notes(self) -> list[str]:
        """The notes, with the interval convention added where the table shows an interval."""
        if not self.has_intervals() or INTERVAL_NOTE in self.notes:
            return list(self.notes)
        if any(column.delta for column in self.columns):
            return [*self.notes, INTERVAL_NOTE, DELTA_INTERVAL_NOTE]
        return [*self.notes, INTERVAL_NOTE]

    def _column_header(self, column: Column, sep: str = " ") -> str:
        return f"{column.group}{sep}{column.label}" if column.group else column.label

    def _row_labels(self, style: str) -> list[list[str]]:
        """Group values, blanked where they repeat the row above (as the paper prints its tokenizer column).

        Only leading categorical keys are blanked; flags (yes/no) and the last key are always printed, so
        every recipe row reads on its own.
        """
        data = [row for row in self.rows if row.kind == "data"]
        n_blank = 0
        while n_blank < len(self.keys) - 1 and not any(isinstance(r.raw[n_blank], bool) for r in data):
            n_blank += 1
        out = []
        previous: tuple[str, ...] | None = None
        for row in self.rows:
            labels = list(row.labels)
            if previous is not None and row.kind == "data":
                for i in range(n_blank):
                    if row.labels[: i + 1] == previous[: i + 1]:
                        labels[i] = ""
            previous = row.labels if row.kind == "data" else None
            out.append([_escape_tex(label) if style == "tex" else label for label in labels])
        return out

    def to_markdown(self) -> str:
        best = self.best()
        header = [*self.key_labels, *(self._column_header(c, ": " if c.group else " ") for c in self.columns)]
        lines = [f"**{self.title}**", ""] if self.title else []
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join([":---"] * len(self.keys) + ["---:"] * len(self.columns)) + "|")
        for i, (row, labels) in enumerate(zip(self.rows, self._row_labels("md"))):
            cells = [self._cell(row, c, i in best.get(c.key, ()), "md") for c in self.columns]
            lines.append("| " + " | ".join([*labels, *cells]) + " |")
        notes = self.shown_notes
        if notes:
            lines.append("")
            lines.extend(f"{note}  " if n < len(notes) - 1 else note for n, note in enumerate(notes))
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        best = self.best()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        headers = [self._column_header(c, " / ") for c in self.columns]
        interval_headers = [
            f"{header}{end}"
            for header, column in zip(headers, self.columns)
            for end in ("", "_lo", "_hi", *(("_delta",) if column.delta else ()))
        ]
        writer.writerow([*self.key_labels, *interval_headers, "best", "partial"])
        for i, row in enumerate(self.rows):
            labels = [label if label != MISSING["md"] else "" for label in row.labels]
            cells = [
                cell
                for c in self.columns
                for cell in (
                    self._cell(row, c, False, "csv"),
                    *self._interval_cells(row, c),
                    *self._delta_cells(row, c),
                )
            ]
            best_in = [headers[j] for j, c in enumerate(self.columns) if i in best.get(c.key, ())]
            partial = [headers[j] for j, c in enumerate(self.columns) if c.key in row.partial]
            writer.writerow([*labels, *cells, ";".join(best_in), ";".join(partial)])
        return buffer.getvalue()

    def to_latex(self) -> str:
        best = self.best()
        n_keys = len(self.keys)
        spec = "l" * n_keys + "r" * len(self.columns)
        lines = [r"\begin{table}[t]", r"\centering", r"\small"]
        if self.title:
            lines.append(rf"\caption{{{_escape_tex(self.title)}}}")
        wide = len(self.keys) + len(self.columns) > 10
        if wide:  # scale wide tables to the text width (needs \usepackage{graphicx})
            lines.append(r"\resizebox{\linewidth}{!}{%")
        lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
        groups: list[tuple[str | None, int]] = []
        for column in self.columns:
            if groups and groups[-1][0] == column.group:
                groups[-1] = (column.group, groups[-1][1] + 1)
            else:
                groups.append((column.group, 1))
        if any(group for group, _ in groups):
            cells, rules, start = [""] * n_keys, [], n_keys + 1
            for group, span in groups:
                cells.append(rf"\multicolumn{{{span}}}{{c}}{{{_escape_tex(group or '')}}}")
                if group:
                    rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
                start += span
            lines.append(" & ".join(cells) + r" \\")
            lines.append(" ".join(rules))
        header = [_escape_tex(label) for label in self.key_labels] + [
            _escape_tex(c.label) for c in self.columns
        ]
        lines += [" & ".join(header) + r" \\", r"\midrule"]
        for i, (row, labels) in enumerate(zip(self.rows, self._row_labels("tex"))):
            labels = [label if label != MISSING["md"] else MISSING["tex"] for label in labels]
            cells = [self._cell(row, c, i in best.get(c.key, ()), "tex") for c in self.columns]
            lines.append(" & ".join([*labels, *cells]) + r" \\")
            following = self.rows[i + 1] if i + 1 < len(self.rows) else None
            if row.kind != "data" and following is not None and following.kind == "data":
                lines.append(r"\midrule")  # chance and baseline rows above the runs
        lines += [r"\bottomrule", r"\end{tabular}" + ("}" if wide else "")]
        notes = self.shown_notes
        if notes:
            lines.append(r"\par\smallskip\footnotesize " + " ".join(_escape_tex(n) for n in notes))
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"

    def collapse(self, keep: int) -> Table:
        """Average the data rows over all but the first `keep` keys (e.g. over fusions, as Figures 4-5 do).

        Strict like the tables: a cell is a gap unless every averaged row has it, so a missing run never
        silently turns a mean over three fusions into a mean over two. Chance rows are kept.
        """
        if not 0 < keep <= len(self.keys):
            raise ConfigError(f"collapse(keep={keep}) needs 1..{len(self.keys)} keys.")
        if keep == len(self.keys):
            return self
        merged: dict[tuple[str, ...], list[Row]] = {}
        for row in self.rows:
            if row.kind == "data":
                merged.setdefault(row.labels[:keep], []).append(row)
        rows = [
            Row(row.raw[:keep], row.labels[:keep], dict(row.values), set(row.partial), row.kind)
            for row in self.rows
            if row.kind != "data"
        ]  # (chance rows: no intervals)
        expected = {row.labels[keep:] for row in self.rows if row.kind == "data"}
        for labels, members in merged.items():
            values: dict[str, float | None] = {}
            partial: set[str] = set()
            evidence: dict[str, Evidence] = {}
            absent = len(expected - {m.labels[keep:] for m in members})  # e.g. a fusion never run here
            for column in self.columns:
                scores = [m.values.get(column.key) for m in members] + [None] * absent
                value, _ = _mean(scores, allow_partial=False)
                values[column.key] = value
                if value is not None and any(column.key in m.partial for m in members):
                    partial.add(column.key)
                elif value is not None:  # the pooled samples of the rows averaged (see the docstring)
                    pooled = _pool([m.evidence.get(column.key) for m in members])
                    if pooled is not None:
                        evidence[column.key] = pooled
            rows.append(Row(members[0].raw[:keep], labels, values, partial, evidence=evidence))
        dropped = ", ".join(self.key_labels[keep:])
        notes = [*self.notes, f"Averaged over {dropped}; a cell is empty unless every {dropped} has it."]
        within = self.best_within if self.best_within in self.keys[:keep] else None
        return Table(
            self.name, self.title, self.keys[:keep], list(self.columns), rows, notes, within, self.best_among
        )

    def render(self, fmt: str) -> str:
        """Render as "md", "csv" or "tex"."""
        renderers = {"md": self.to_markdown, "csv": self.to_csv, "tex": self.to_latex}
        if fmt not in renderers:
            raise unknown_choice("table format", fmt, renderers)
        return renderers[fmt]()


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
    "†": r"$^\dagger$",
    "→": r"$\rightarrow$",
}


def _escape_tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(char, char) for char in text)


# ---------------------------------------------------------------------------------------------------------
# Gathering helpers
# ---------------------------------------------------------------------------------------------------------


def _filter(records: Iterable[Mapping[str, Any]], where: Mapping[str, Sequence[str]] | None) -> list[Mapping]:
    """Keep records whose config value at each key matches one of the given strings (case-insensitive;
    matched against the raw value and its displayed form, so `train.freeze.lang=true` and `=yes` work)."""
    kept = []
    for record in records:
        ok = True
        for key, allowed in (where or {}).items():
            value = _value(record, key)
            forms = {display_value(value).lower(), str(value).lower(), _canonical_json(value).lower()}
            if not forms & {str(a).lower() for a in allowed}:
                ok = False
                break
        if ok:
            kept.append(record)
    return kept


def _expand_keys(records: Sequence[Mapping[str, Any]], keys: Sequence[str], notes: list[str]) -> list[str]:
    """Dict-valued group keys without a name (e.g. a freezing recipe {image_s1, image_s2, lang_s2}) become
    one column per leaf; keys absent from every record are dropped (with a note)."""
    expanded: list[str] = []
    for key in keys:
        values = [_value(record, key) for record in records]
        if all(value is None for value in values):
            notes.append(f"Config key {key!r} is absent from every record; not used for grouping.")
            continue
        dicts = [
            v for v in values if isinstance(v, Mapping) and not any(k in v for k in ("name", "id", "arch"))
        ]
        if dicts:
            leaves: list[str] = []
            for value in dicts:
                for leaf in _leaf_paths(value, key):
                    if leaf not in leaves:
                        leaves.append(leaf)
            expanded.extend(leaves)
        else:
            expanded.append(key)
    if not expanded:  # nothing to group by: one row per run rather than one meaningless average
        notes.append("Rows are individual runs (none of the group-by keys is set).")
        expanded.append("run_id")
    return expanded


def _leaf_paths(value: Mapping[str, Any], prefix: str) -> list[str]:
    paths = []
    for key, item in value.items():
        path = f"{prefix}.{key}"
        if isinstance(item, Mapping) and not any(k in item for k in ("name", "id", "arch")):
            paths.extend(_leaf_paths(item, path))
        else:
            paths.append(path)
    return paths


def _value(record: Mapping[str, Any], key: str) -> Any:
    """A grouping value: `run_id` / `stage` / `config_hash` from the record itself, else a config path."""
    if key in _RECORD_FIELDS:
        return record.get(key)
    return get_dotted(record["config"], key)


def _group(
    records: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    fill: Sequence[str] = (),
    notes: list[str] | None = None,
) -> list[tuple[tuple[Any, ...], list]]:
    """Records grouped by their (expanded) key values, sorted in the paper's order.

    With `fill` (the original, unexpanded group keys), every observed combination of the leading keys gets a
    row for every value of the LAST key seen anywhere (e.g. each tokenizer x fusion gets every freezing
    recipe; each scaling series every backbone size), so a missing run shows up as an empty row instead of
    vanishing. Whole values are used (a recipe stays one recipe), and leading-key combinations that were
    never run at all (an unplanned tokenizer x fusion) are not invented.
    """
    groups: dict[str, tuple[tuple[Any, ...], list]] = {}
    for record in records:
        raw = tuple(_value(record, key) for key in keys)
        ident = _canonical_json([display_value(v) for v in raw])
        groups.setdefault(ident, (raw, []))[1].append(record)
    if len(fill) >= 2 and not any(key in _RECORD_FIELDS for key in fill):
        prefixes: dict[str, tuple[Any, ...]] = {}
        lasts: dict[str, Any] = {}
        for record in records:
            values = tuple(_value(record, key) for key in fill)
            prefixes.setdefault(_canonical_json(values[:-1]), values[:-1])
            lasts.setdefault(_canonical_json(values[-1]), values[-1])
        added = 0
        for prefix, last in itertools.product(prefixes.values(), lasts.values()):
            synthetic: dict[str, Any] = {}
            for key, value in zip(fill, (*prefix, last)):
                _set_dotted(synthetic, key, value)
            raw = tuple(_value({"config": synthetic}, key) for key in keys)
            ident = _canonical_json([display_value(v) for v in raw])
            if ident not in groups:
                groups[ident] = (raw, [])
                added += 1
        if added and notes is not None:
            notes.append(
                f"{added} row(s) with no run (a {_key_label(fill[-1])} value seen elsewhere) are shown empty."
            )
    return sorted(groups.values(), key=lambda item: tuple(order_key(v) for v in item[0]))


def _set_dotted(mapping: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        mapping = mapping.setdefault(part, {})
    mapping[last] = value


def _fill_keys(group_by: Sequence[str], keys: Sequence[str]) -> list[str]:
    """The requested group keys that survived `_expand_keys` (as themselves or as expanded leaves)."""
    return [g for g in group_by if any(k == g or k.startswith(g + ".") for k in keys)]


def _varying_axes_note(
    groups: Sequence[tuple[tuple[Any, ...], list]], used: Sequence[str], notes: list[str]
) -> None:
    """Say so when a row silently averages over different design points (an ungrouped axis varies)."""
    for axis in DESIGN_AXES:
        if any(key == axis or key.startswith(axis + ".") or axis.startswith(key + ".") for key in used):
            continue
        varying: set[str] = set()
        for _, members in groups:
            values = [_value(record, axis) for record in members]
            if len({_canonical_json(value) for value in values}) > 1:
                varying.update(display_value(value) for value in values)
        if varying:
            notes.append(f"Rows average over several {axis} values ({', '.join(sorted(varying))}).")


def _mean(values: Sequence[float | None], allow_partial: bool) -> tuple[float | None, bool]:
    present = [v for v in values if v is not None and not math.isnan(v)]
    if not present:
        return None, False
    if len(present) < len(values):
        return (sum(present) / len(present), True) if allow_partial else (None, False)
    return sum(present) / len(present), False


def _benchmarks_in(records: Sequence[Mapping[str, Any]]) -> list[str]:
    names: set[str] = set()
    for record in records:
        names.update(name for name in flatten_metrics(record["metrics"]) if "." not in name)
    known = [name for name in (*IN_DOMAIN, *OUT_OF_DOMAIN) if name in names]
    return known + sorted(names - set(known))


def _record_cells(
    record: Mapping[str, Any], benchmarks: Sequence[str], domains: Mapping[str, Sequence[str]], partial: bool
) -> tuple[dict[str, float | None], set[str], dict[str, Evidence | None]]:
    """A record's benchmark and average cells, the averages that are partial, and each cell's evidence."""
    flat = flatten_metrics(record["metrics"])
    known = metric_evidence(record["metrics"])
    cells: dict[str, float | None] = {}
    evidence: dict[str, Evidence | None] = {}
    for name in benchmarks:
        value = flat.get(name)
        cells[name] = None if value is None or math.isnan(value) else value
        evidence[name] = known.get(name) if cells[name] is not None else None
    flags = set()
    for average, members in domains.items():
        if not members:
            cells[average] = None
            continue
        value, is_partial = _mean([flat.get(name) for name in members], partial)
        cells[average] = value
        evidence[average] = None
        if is_partial:
            flags.add(average)
        elif value is not None:
            evidence[average] = _pool([known.get(name) for name in members])
    return cells, flags, evidence


# ---------------------------------------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------------------------------------


def design_table(
    records: Sequence[Mapping[str, Any]],
    group_by: Sequence[str] = DEFAULT_GROUP_BY["design"],
    *,
    pivot: str | None = None,
    benchmarks: Sequence[str] | None = None,
    where: Mapping[str, Sequence[str]] | None = None,
    partial_averages: bool = False,
    averages_only: bool = False,
    fill_missing: bool = True,
    name: str = "design",
    title: str | None = None,
) -> Table:
    """Tables 1-5 (and Table 2 with `pivot`): per-benchmark columns plus the three averages.

    `group_by` are dotted config paths defining the rows; with `fill_missing`, each combination of the
    leading keys gets a row for every value of the last key, empty where that run is missing. `pivot` turns
    one more path's values into column groups of the three averages (Table 2: rows = freezing recipe,
    pivot = model.fusion, `where` selecting the text-aware tokenizers). `benchmarks` restricts/reorders the
    benchmark columns (default: those found, in-domain first in the paper's order). Records without any of
    those benchmarks are ignored.
    """
    notes: list[str] = []
    records = _filter(records, where)
    if not records:
        raise ConfigError(f"No records match the filter {dict(where or {})!r}.")
    found = _benchmarks_in(records)
    shown = list(benchmarks) if benchmarks is not None else found
    for bench in shown:
        if bench not in found:
            notes.append(f"No record has {bench!r}.")
    records = [r for r in records if any(b in flatten_metrics(r["metrics"]) for b in shown)]
    if not records:
        if not shown:
            raise ConfigError(
                "No academic benchmark scores (vqav2, aokvqa, ...) in the records; "
                "transfer records (<task>.<vqa|tqa>.<ind|ood>) need --layout transfer."
            )
        raise ConfigError(f"No records with any of the benchmarks {', '.join(shown)} to tabulate.")
    domains = {
        "avg_ind": [b for b in IN_DOMAIN if b in found],
        "avg_ood": [b for b in OUT_OF_DOMAIN if b in found],
    }
    domains["avg_all"] = domains["avg_ind"] + domains["avg_ood"]
    averages = [avg for avg, members in domains.items() if members]

    keys = _expand_keys(records, list(group_by), notes)
    pivot_values: list[Any] = []
    if pivot is not None:
        pivot_raw = {_canonical_json(_value(r, pivot)): _value(r, pivot) for r in records}
        pivot_values = sorted(pivot_raw.values(), key=order_key)
    groups = _group(records, keys, _fill_keys(group_by, keys) if fill_missing else (), notes)
    _varying_axes_note(groups, [*keys, *([pivot] if pivot else []), *(where or {})], notes)

    if pivot is None:
        metric_keys = ([] if averages_only else list(shown)) + averages
        columns = [Column(k, DISPLAY_NAMES.get(k, AVERAGE_LABELS.get(k, k))) for k in metric_keys]
    else:
        columns = [
            Column(f"{display_value(p)}|{avg}", AVERAGE_LABELS[avg].replace("Avg ", ""), display_value(p))
            for p in pivot_values
            for avg in averages
        ]

    averaged_axes = [
        axis
        for axis in DESIGN_AXES
        if not any(
            k == axis or k.startswith(axis + ".") or axis.startswith(k + ".") for k in [*keys, pivot or ""]
        )
    ]

    def point(record: Mapping[str, Any]) -> str:
        return _canonical_json([_value(record, axis) for axis in averaged_axes])

    rows: list[Row] = []
    for raw, members in groups:
        # (cells, partial-average flags) of each record in the row
        per_record = [_record_cells(r, shown, domains, partial_averages) for r in members]
        expected = {point(r) for r in members}
        values: dict[str, float | None] = {}
        partial: set[str] = set()
        evidence: dict[str, Evidence] = {}
        for column in columns:
            absent = 0
            if pivot is None:
                selected, metric = per_record, column.key
            else:
                label, metric = column.key.split("|")
                chosen = [display_value(_value(record, pivot)) == label for record in members]
                selected = [entry for entry, keep in zip(per_record, chosen) if keep]
                # A pivot cell averages over the same design points (e.g. tokenizers) as its row; a point
                # with no run under this pivot value counts as a missing value, not as a smaller average.
                absent = len(expected - {point(r) for r, keep in zip(members, chosen) if keep})
            if not selected:
                values[column.key] = None
                continue
            scores = [cells[metric] for cells, _, _ in selected] + [None] * absent
            value, is_partial = _mean(scores, partial_averages)
            values[column.key] = value
            if value is not None and (is_partial or any(metric in flags for _, flags, _ in selected)):
                partial.add(column.key)
            elif value is not None and not absent:
                pooled = _pool([found[metric] for _, _, found in selected])
                if pooled is not None:
                    evidence[column.key] = pooled
        rows.append(Row(raw, tuple(display_value(v) for v in raw), values, partial, evidence=evidence))

    notes.insert(0, "Accuracy in %; best per column in bold; – = not evaluated.")
    if any(row.partial for row in rows):
        notes.append("† averaged over the available benchmarks only (incomplete row).")
    elif (
        not partial_averages
        and pivot is None
        and any(
            row.values.get(avg) is None and any(row.values.get(b) is not None for b in shown)
            for row in rows
            for avg in averages
        )
    ):
        notes.append("Averages are left empty for rows missing a benchmark.")
    if title is None:
        title = "Evaluation results (accuracy in %)"
        if pivot:
            title = f"Average in-domain / out-of-domain / overall accuracy (%) by {_key_label(pivot)}"
    return Table(name, title, keys, columns, rows, notes)


def scaling_table(
    records: Sequence[Mapping[str, Any]],
    series_by: Sequence[str] = DEFAULT_GROUP_BY["scaling"],
    x_key: str = "model.backbone",
    *,
    where: Mapping[str, Sequence[str]] | None = None,
    partial_averages: bool = False,
    fill_missing: bool = True,
) -> Table:
    """Figure 2's data: the three averages per series (tokenizer x recipe) and backbone size (last key)."""
    series = [key for key in series_by if key != x_key]
    table = design_table(
        records,
        [*series, x_key],
        where=where,
        partial_averages=partial_averages,
        averages_only=True,
        fill_missing=fill_missing,
        name="scaling",
        title=f"Average accuracy (%) against {_key_label(x_key)} size",
    )
    if x_key in table.keys:  # Figure 2 compares setups at one size; the largest size would win everywhere
        table.best_within = x_key
        table.notes[0] = table.notes[0].replace(
            "best per column", f"best per column at each {_key_label(x_key)}"
        )
    return table


def _baseline_rows(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    modality: str,
    n_keys: int,
    notes: list[str],
) -> list[Row]:
    """One row per trivial baseline that some record carries, cells as the chance row's (same per
    condition: the baseline belongs to the evaluated set, not to the run); the first record naming a cell
    gives it, as for chance (the evaluations of one sweep score the same held-out sets)."""
    found: dict[str, float] = {}
    for record in records:
        for name, value in flatten_metrics(record.get("baselines") or {}).items():
            found.setdefault(name, value)
    rows = []
    for kind, label in BASELINE_ROWS.items():
        values: dict[str, float | None] = {}
        for column in columns:
            task, split, _ = column.key.split("|")
            names = (f"{task}.{modality}.{split}", f"{task}.{split}", f"{task}.{modality}", task)
            value = next((found[f"{n}.{kind}"] for n in names if f"{n}.{kind}" in found), None)
            values[column.key] = None if value is None or math.isnan(value) else value
        if any(v is not None for v in values.values()):
            labels = (label, *[""] * (n_keys - 1))
            rows.append(Row(labels, labels, values, kind="baseline"))
    if rows:
        notes.append(
            "Baseline rows: accuracy of answering without reasoning (always the most common answer; Grid: "
            "the start object; Ring: the object at the most frequent offset from the start), on the "
            "held-out samples scored."
        )
    elif any(record.get("chance") for record in records):
        notes.append("No trivial baselines: these records predate them; `vlmlab eval` again to record them.")
    return rows


def _modality(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "none", "null", "no", "false", "no_train", "notrain"):
        return None
    if text not in _MODALITY_ALIASES:
        raise unknown_choice("training modality", value, sorted(_MODALITY_ALIASES) + ["none"])
    return _MODALITY_ALIASES[text]


def _lookup_chance(chances: Mapping[str, float], task: str, modality: str, split: str) -> float | None:
    for name in (f"{task}.{modality}.{split}", f"{task}.{split}", f"{task}.{modality}", task):
        if name in chances and not math.isnan(chances[name]):
            return chances[name]
    return None


def _transfer_cell(name: str) -> tuple[str, str, str] | None:
    match = _TRANSFER_METRIC.match(name)
    if not match:
        return None
    return match.group("task"), match.group("mod"), "ood" if match.group("split") == "ood" else "ind"


def _transfer_scores(record: Mapping[str, Any]) -> dict[tuple[str, str, str], float]:
    """(task, modality, ind|ood) -> score of one record, accepting "test"/"id" for the InD split."""
    scores = {}
    for name, value in flatten_metrics(record["metrics"]).items():
        cell = _transfer_cell(name)
        if cell and not math.isnan(value):
            scores[cell] = value
    return scores


def _transfer_evidence(record: Mapping[str, Any]) -> dict[tuple[str, str, str], Evidence]:
    """(task, modality, ind|ood) -> the evidence (n, interval, successes) of one record's score."""
    return {
        cell: evidence
        for name, evidence in metric_evidence(record["metrics"]).items()
        if (cell := _transfer_cell(name)) is not None
    }


def transfer_tasks(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Synthetic tasks with `<task>.<vqa|tqa>.<ind|ood>` metrics, in the paper's order then by name."""
    found = {task for record in records for task, _, _ in _transfer_scores(record)}
    known = [task for task in TRANSFER_TASKS if task in found]
    return known + sorted(found - set(known))


def transfer_table(
    records: Sequence[Mapping[str, Any]],
    eval_modality: str = "tqa",
    group_by: Sequence[str] = DEFAULT_GROUP_BY["transfer"],
    *,
    tasks: Sequence[str] | None = None,
    where: Mapping[str, Sequence[str]] | None = None,
    modality_key: str = TRAIN_MODALITY_KEY,
    task_key: str = TRAIN_TASK_KEY,
    fill_missing: bool = True,
) -> Table:
    """Tables 6-7 for one evaluation modality: accuracy on the `eval_modality` version of each task.

    eval_modality="tqa" is the image-to-text direction (Table 6 / Figure 4): "No Train" is the stage-2
    model (records of stage < 3), "TQA-trained" the same-modality fine-tune and "VQA-trained" the
    cross-modality one, told apart by the config value at `modality_key`. "vqa" is the text-to-image
    direction (Table 7 / Figure 5). Trained records count only for the task at `task_key` (when set). A
    first "Chance" row gives the chance level from the records' `chance` entries, and the rows after it
    the trivial baselines from their `baselines` (majority answer; Grid: the start object; Ring: the most
    frequent offset), both measured on the held-out samples the evaluation scored.
    """
    requested = eval_modality
    eval_modality = _MODALITY_ALIASES.get(str(eval_modality).strip().lower(), "")
    if eval_modality not in MODALITIES:
        raise unknown_choice("evaluation modality", requested, MODALITIES)
    other = "vqa" if eval_modality == "tqa" else "tqa"
    notes: list[str] = []
    records = [r for r in _filter(records, where) if transfer_tasks([r])]
    tasks = list(tasks) if tasks is not None else transfer_tasks(records)
    if not records or not tasks:
        raise ConfigError(
            "No transfer records: expected metrics named <task>.<vqa|tqa>.<ind|ood> (e.g. grid.tqa.ind)."
        )
    keys = _expand_keys(records, list(group_by), notes)
    groups = _group(records, keys, _fill_keys(group_by, keys) if fill_missing else (), notes)
    # the untrained (stage 2) and fine-tuned (stage 3) runs share rows by design
    _varying_axes_note(groups, [*keys, *(where or {}), "stage"], notes)

    condition_labels = {
        "none": "No Train",
        "same": f"{eval_modality.upper()}-trained",
        "cross": f"{other.upper()}-trained",
    }
    columns = []
    for task in tasks:
        for split in ("ind", "ood"):
            group = (
                f"{TASK_NAMES.get(task, task)} {eval_modality.upper()} ({'InD' if split == 'ind' else 'OOD'})"
            )
            for cond in _CONDITIONS:
                columns.append(Column(f"{task}|{split}|{cond}", condition_labels[cond], group))

    def condition(record: Mapping[str, Any]) -> str:
        if record["stage"] < 3:  # the stage-2 model, before any synthetic fine-tuning
            return "none"
        trained = _modality(_value(record, modality_key))
        return "none" if trained is None else ("same" if trained == eval_modality else "cross")

    chances: dict[str, float] = {}
    for record in records:
        for name, value in flatten_metrics(record.get("chance") or {}).items():
            chances.setdefault(name, value)
    chance_values = {}
    for column in columns:
        task, split, _ = column.key.split("|")
        chance_values[column.key] = _lookup_chance(chances, task, eval_modality, split)
    rows: list[Row] = []
    if any(v is not None for v in chance_values.values()):
        labels = ("Chance", *[""] * (len(keys) - 1))
        rows.append(Row(labels, labels, chance_values, kind="chance"))
    rows += _baseline_rows(records, columns, eval_modality, len(keys), notes)

    for raw, members in groups:
        values: dict[str, float | None] = {}
        evidence: dict[str, Evidence] = {}
        for column in columns:
            task, split, cond = column.key.split("|")
            scores = []
            found: list[Evidence | None] = []
            for record in members:
                if condition(record) != cond:
                    continue
                trained_task = _value(record, task_key)
                if cond != "none" and trained_task is not None and str(trained_task).lower() != task:
                    continue
                value = _transfer_scores(record).get((task, eval_modality, split))
                if value is not None:
                    scores.append(value)
                    found.append(_transfer_evidence(record).get((task, eval_modality, split)))
            values[column.key] = sum(scores) / len(scores) if scores else None
            pooled = _pool(found) if scores else None
            if pooled is not None:
                evidence[column.key] = pooled
        rows.append(Row(raw, tuple(display_value(v) for v in raw), values, evidence=evidence))

    direction = "Image-to-Text (VQA→TQA)" if eval_modality == "tqa" else "Text-to-Image (TQA→VQA)"
    notes.insert(
        0, f"Accuracy in % on the {eval_modality.upper()} versions; best per column in bold; – = no run."
    )
    return Table(
        f"transfer_{eval_modality}",
        f"{direction} transfer: accuracy (%) on the {eval_modality.upper()} tasks",
        keys,
        columns,
        rows,
        notes,
    )


# ---------------------------------------------------------------------------------------------------------
# Open-weight VLMs (Appendix B, Tables 8-11)
# ---------------------------------------------------------------------------------------------------------


def open_weight_name(value: Any) -> str:
    """A model's short name: the paper's for the five models it fine-tunes, else the last path part
    ("Qwen/Qwen2.5-VL-7B-Instruct" -> "Qwen2.5-VL-7B", "/ckpt/my-vlm/" -> "my-vlm")."""
    last = str(value).strip().rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return OPEN_WEIGHT_NAMES.get(last.lower(), last)


def _open_weight_order(name: str) -> tuple[Any, ...]:
    known = list(OPEN_WEIGHT_NAMES.values())
    return (0, known.index(name)) if name in known else (1, _natural(name.lower()))


def _method(value: Any) -> str | None:
    """A train.method value -> "eval" | "sft" | "grpo", or None when it is none of them."""
    if value is None:  # vlmlab.config.TrainConfig's default
        return "sft"
    return _METHOD_ALIASES.get(str(value).strip().lower())


def _open_weight_records(
    records: Iterable[Mapping[str, Any]],
    where: Mapping[str, Sequence[str]] | None,
    model_key: str,
    method_key: str,
    notes: list[str],
) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(model name, method, record) of the records with a model at `model_key` and transfer metrics."""
    kept: list[tuple[str, str, Mapping[str, Any]]] = []
    ids: dict[str, set[str]] = {}
    unknown: set[str] = set()
    for record in _filter(records, where):
        model = _value(record, model_key)
        if model is None or isinstance(model, bool) or not str(model).strip() or not _transfer_scores(record):
            continue
        method = _method(_value(record, method_key))
        if method is None:
            unknown.add(str(_value(record, method_key)))
            continue
        name = open_weight_name(model)
        ids.setdefault(name, set()).add(str(model))
        kept.append((name, method, record))
    if unknown:
        notes.append(f"Records with {method_key} = {', '.join(sorted(unknown))} are not tabulated.")
    for name, paths in sorted(ids.items()):
        if len(paths) > 1:
            notes.append(f"{name} gathers the records of {', '.join(sorted(paths))}.")
    return kept


def _trained_modality(record: Mapping[str, Any], key: str) -> str | None:
    """ "vqa" | "tqa" a run was trained on, None for anything else (a base record's, a caption stage)."""
    return _MODALITY_ALIASES.get(str(_value(record, key)).strip().lower())


def _matches(record: Mapping[str, Any], key: str, wanted: str) -> bool:
    value = _value(record, key)
    return value is not None and str(value).strip().lower() == wanted


def _trained(
    entries: Sequence[tuple[str, str, Mapping[str, Any]]],
    model: str,
    method: str,
    modality: str,
    task: str,
    modality_key: str,
    task_key: str,
) -> list[Mapping[str, Any]]:
    """The `method` runs of `model` trained on the `modality` version of `task`."""
    return [
        record
        for name, found, record in entries
        if name == model
        and found == method
        and _trained_modality(record, modality_key) == modality
        and _matches(record, task_key, task)
    ]


def _cell_of(
    records: Sequence[Mapping[str, Any]], cell: tuple[str, str, str]
) -> tuple[float | None, Evidence | None, int]:
    """Mean score of `records` in `cell` (those that have it), their pooled evidence, and how many."""
    present = [r for r in records if cell in _transfer_scores(r)]
    if not present:
        return None, None, 0
    value = sum(_transfer_scores(r)[cell] for r in present) / len(present)
    return value, _pool([_transfer_evidence(r).get(cell) for r in present]), len(present)


def _base_cell(
    entries: Sequence[tuple[str, str, Mapping[str, Any]]],
    model: str,
    task: str,
    cell: tuple[str, str, str],
    task_key: str,
) -> tuple[float | None, Evidence | None, int]:
    """The base model's score in `cell`: its "eval" records evaluated for `task` (data.train.0.task) where
    some have the cell, else all its "eval" records that have it; several are averaged."""
    bases = [record for name, method, record in entries if name == model and method == "eval"]
    preferred = [r for r in bases if _matches(r, task_key, task) and cell in _transfer_scores(r)]
    return _cell_of(preferred or bases, cell)


_SPLIT_LABELS = {"ind": "InD", "ood": "OOD"}
_BASE_NOTE = (
    'Base: the model before fine-tuning on synthetic data (train.method "eval"); where a model has several '
    "such records, those evaluated for the row's dataset ({task_key}) are used, and several are averaged."
)
_NO_BASE_NOTE = "A score without a change in parentheses has no base-model record to compare with."


def _open_weight_setup(
    records: Iterable[Mapping[str, Any]],
    where: Mapping[str, Sequence[str]] | None,
    model_key: str,
    method_key: str,
    tasks: Sequence[str] | None,
    notes: list[str],
) -> tuple[list[tuple[str, str, Mapping[str, Any]]], list[str], list[str]]:
    entries = _open_weight_records(records, where, model_key, method_key, notes)
    if not entries:
        raise ConfigError(
            f"No open-weight records: expected config.{model_key} (a hub id or folder) and metrics named "
            "<task>.<vqa|tqa>.<ind|ood> (e.g. grid.tqa.ind)."
        )
    models = sorted({name for name, _, _ in entries}, key=_open_weight_order)
    tasks = list(tasks) if tasks is not None else transfer_tasks(record for _, _, record in entries)
    return entries, models, tasks


def open_weight_sft_table(
    records: Sequence[Mapping[str, Any]],
    train_modality: str = "vqa",
    *,
    tasks: Sequence[str] | None = None,
    where: Mapping[str, Sequence[str]] | None = None,
    model_key: str = OPEN_WEIGHT_KEY,
    method_key: str = TRAIN_METHOD_KEY,
    modality_key: str = TRAIN_MODALITY_KEY,
    task_key: str = TRAIN_TASK_KEY,
    fill_missing: bool = True,
) -> Table:
    """Table 8 (train_modality="vqa": Image-to-Text) or Table 9 ("tqa": Text-to-Image) for open-weight VLMs.

    Rows dataset x model (the model at `model_key`), columns the trained modality's InD and OOD splits
    then the other modality's. A cell is the score of the model fine-tuned (train.method "sft") on the
    `train_modality` version of the row's dataset, with its change from the base model's score in the same
    cell (train.method "eval"). With `fill_missing`, every model gets a row for every dataset (a gap where
    it was not fine-tuned on it); without, rows with no score are left out.
    """
    requested = train_modality
    train_modality = _MODALITY_ALIASES.get(str(train_modality).strip().lower(), "")
    if train_modality not in MODALITIES:
        raise unknown_choice("training modality", requested, MODALITIES)
    other = "vqa" if train_modality == "tqa" else "tqa"
    notes: list[str] = []
    entries, models, tasks = _open_weight_setup(records, where, model_key, method_key, tasks, notes)
    cells = [(mod, split) for mod in (train_modality, other) for split in ("ind", "ood")]
    columns = [
        Column(f"{mod}|{split}", f"{mod.upper()} ({_SPLIT_LABELS[split]})", delta=True)
        for mod, split in cells
    ]
    rows: list[Row] = []
    averaged = no_base = False
    for task in tasks:
        for model in models:
            runs = _trained(entries, model, "sft", train_modality, task, modality_key, task_key)
            values: dict[str, float | None] = {}
            evidence: dict[str, Evidence] = {}
            reference: dict[str, float] = {}
            for column, (mod, split) in zip(columns, cells):
                value, found, count = _cell_of(runs, (task, mod, split))
                values[column.key] = value
                averaged |= count > 1
                if found is not None:
                    evidence[column.key] = found
                base, _, _ = _base_cell(entries, model, task, (task, mod, split), task_key)
                if base is not None:
                    reference[column.key] = base
                no_base |= value is not None and base is None
            if fill_missing or any(v is not None for v in values.values()):
                labels = (TASK_NAMES.get(task, task), model)
                rows.append(Row((task, model), labels, values, evidence=evidence, reference=reference))
    trained = train_modality.upper()
    notes.insert(
        0,
        f"Accuracy in %; models fine-tuned (SFT) on the {trained} version of the row's dataset; in "
        "parentheses the change from the base model, in points; best per column within each dataset in "
        f"bold (every column; the paper bolds the {other.upper()} ones); – = no run.",
    )
    notes.insert(1, _BASE_NOTE.format(task_key=task_key))
    if averaged:
        notes.append("Cells with several fine-tuned runs (seeds) show their mean.")
    if no_base:
        notes.append(_NO_BASE_NOTE)
    direction = "Image-to-Text (VQA→TQA)" if train_modality == "vqa" else "Text-to-Image (TQA→VQA)"
    return Table(
        f"open_weight_sft_{train_modality}",
        f"{direction} transfer of open-weight VLMs fine-tuned on {trained}: accuracy (%) and change from base",
        ["Dataset", "Model"],
        columns,
        rows,
        notes,
        best_within="Dataset",
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "model"


def open_weight_rl_table(
    records: Sequence[Mapping[str, Any]],
    model: str,
    train_modality: str = "vqa",
    *,
    tasks: Sequence[str] | None = None,
    where: Mapping[str, Sequence[str]] | None = None,
    model_key: str = OPEN_WEIGHT_KEY,
    method_key: str = TRAIN_METHOD_KEY,
    modality_key: str = TRAIN_MODALITY_KEY,
    task_key: str = TRAIN_TASK_KEY,
) -> Table:
    """Tables 10-11 for one open-weight model (its short name or its id/folder): Base, SFT and RL (GRPO,
    the record of its best checkpoint) after training on the `train_modality` version of each dataset.

    Rows the four test splits (VQA/TQA x InD/OOD), column groups per dataset {Base, SFT, RL}; SFT and RL
    show their change from Base in parentheses, and per dataset and row the higher of the two is bold.
    """
    requested = train_modality
    train_modality = _MODALITY_ALIASES.get(str(train_modality).strip().lower(), "")
    if train_modality not in MODALITIES:
        raise unknown_choice("training modality", requested, MODALITIES)
    notes: list[str] = []
    entries, models, tasks = _open_weight_setup(records, where, model_key, method_key, tasks, notes)
    name = model if model in models else open_weight_name(model)
    if name not in models:
        raise unknown_choice("open-weight model", model, models)
    columns = []
    for task in tasks:
        group = TASK_NAMES.get(task, task)
        columns.append(Column(f"{task}|base", "Base", group, mark_best=False))
        columns.append(Column(f"{task}|sft", "SFT", group, delta=True))
        columns.append(Column(f"{task}|grpo", "RL", group, delta=True))
    runs = {
        (task, method): _trained(entries, name, method, train_modality, task, modality_key, task_key)
        for task in tasks
        for method in ("sft", "grpo")
    }
    rows: list[Row] = []
    averaged = no_base = False
    for mod in MODALITIES:
        for split in ("ind", "ood"):
            values: dict[str, float | None] = {}
            evidence: dict[str, Evidence] = {}
            reference: dict[str, float] = {}
            for task in tasks:
                cell = (task, mod, split)
                base, base_evidence, _ = _base_cell(entries, name, task, cell, task_key)
                values[f"{task}|base"] = base
                if base_evidence is not None:
                    evidence[f"{task}|base"] = base_evidence
                for method in ("sft", "grpo"):
                    key = f"{task}|{method}"
                    value, found, count = _cell_of(runs[(task, method)], cell)
                    values[key] = value
                    averaged |= count > 1
                    if found is not None:
                        evidence[key] = found
                    if base is not None:
                        reference[key] = base
                    no_base |= value is not None and base is None
            label = f"{mod.upper()} ({_SPLIT_LABELS[split]})"
            rows.append(Row((label,), (label,), values, evidence=evidence, reference=reference))
    trained = train_modality.upper()
    notes.insert(
        0,
        f"Accuracy in %; {name} trained on the {trained} version of each dataset: SFT (supervised "
        "fine-tuning) and RL (GRPO, best checkpoint), in parentheses the change from Base, in points; per "
        "dataset and test split the higher of SFT and RL in bold; – = no run.",
    )
    notes.insert(1, _BASE_NOTE.format(task_key=task_key).replace("row's dataset", "column's dataset"))
    if averaged:
        notes.append("Cells with several runs (seeds, checkpoints) show their mean.")
    if no_base:
        notes.append(_NO_BASE_NOTE)
    suffix = "" if train_modality == "vqa" else f"_{train_modality}"
    return Table(
        f"open_weight_rl_{_slug(name)}{suffix}",
        f"{name}: Base, SFT and RL trained on {trained}, accuracy (%) and change from base",
        ["Test split"],
        columns,
        rows,
        notes,
        best_among=[(f"{task}|sft", f"{task}|grpo") for task in tasks],
    )


def open_weight_tables(
    records: Sequence[Mapping[str, Any]],
    *,
    tasks: Sequence[str] | None = None,
    where: Mapping[str, Sequence[str]] | None = None,
    model_key: str = OPEN_WEIGHT_KEY,
    method_key: str = TRAIN_METHOD_KEY,
    modality_key: str = TRAIN_MODALITY_KEY,
    task_key: str = TRAIN_TASK_KEY,
    fill_missing: bool = True,
) -> list[Table]:
    """Appendix B's tables of the records that name an open-weight model: Table 8 (SFT on VQA) and Table 9
    (SFT on TQA) where some run was fine-tuned on that modality, then one Table 10/11 per model and
    modality with an RL (grpo) run, in the paper's model order."""
    notes: list[str] = []
    entries, models, tasks = _open_weight_setup(records, where, model_key, method_key, tasks, notes)
    options = {
        "tasks": tasks,
        "where": where,
        "model_key": model_key,
        "method_key": method_key,
        "modality_key": modality_key,
        "task_key": task_key,
    }
    trained = {
        (name, method, _trained_modality(record, modality_key))
        for name, method, record in entries
        if method != "eval"
    }
    tables = [
        open_weight_sft_table(records, modality, fill_missing=fill_missing, **options)
        for modality in MODALITIES
        if any(method == "sft" and mod == modality for _, method, mod in trained)
    ]
    tables += [
        open_weight_rl_table(records, model, modality, **options)
        for model in models
        for modality in MODALITIES
        if (model, "grpo", modality) in trained
    ]
    if not tables:
        raise ConfigError(
            "The open-weight records hold no fine-tuned run (train.method sft or grpo, with "
            f"{modality_key} vqa or tqa); Tables 8-11 compare those with the base models."
        )
    return tables
