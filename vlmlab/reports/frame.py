"""Result records as one pandas DataFrame, and the config values the tables group by.

`records_frame` flattens the records once with `pandas.json_normalize`: one row per record, the record's
`run_id` / `stage` / `config_hash`, its config as dotted columns `config.<path>` (list items by position,
so `config.data.train.0.mode`), and per metric name (as `flatten_metrics` names them) the columns
`score.<name>`, its evidence `n.<name>`, `correct.<name>`, `ci_lo.<name>`, `ci_hi.<name>`, `seeds.<name>`
and `seed_scores.<name>` (replicates: how many, and each seed's score as a tuple), and the record's `chance.<name>` and `baseline.<name>.<kind>`. Every layout filters, groups
and pivots that frame. Records that are seeds of one design point are merged first
(vlmlab.reports.replicates): one row, the mean over seeds, the interval across them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vlmlab.config import FUSION_NAMES, FUSIONS
from vlmlab.recipes import list_recipes
from vlmlab.reports.replicates import Comparison, merge_replicates, seeds_phrase
from vlmlab.runs.record import flatten_metrics
from vlmlab.scoring.intervals import wilson

RECORD_FIELDS = ("run_id", "stage", "config_hash")
EVIDENCE_FIELDS = ("n", "correct", "ci_lo", "ci_hi", "seeds", "seed_scores")
MISSING_LABEL = "–"


def canonical(value: Any) -> str:
    """A value's identity for grouping (dicts compare by content, whatever their key order)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


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


# ---------------------------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class Evidence:
    """What a record says about one score beyond its value: the number of samples `n`, the 95 % interval
    `ci` (low, high) as fractions, `correct`, the number of successes when the outcomes are 0/1, and
    `seeds`, the number of replicates a merged score is the mean of (then `ci` is across them), with
    `seed_scores`, each seed's own score (the figures draw them)."""

    n: int | None = None
    ci: tuple[float, float] | None = None
    correct: int | None = None
    seeds: int | None = None
    seed_scores: tuple[float, ...] | None = None


def _scores(value: Any) -> tuple[float, ...] | None:
    """A merged metric's `seed_scores`: finite numbers within [0, 1], else None (ignored)."""
    if not isinstance(value, list | tuple) or len(value) < 2:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in value):
        return None
    return tuple(float(v) for v in value)


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
                seeds, scores = _count(value.get("seeds")), _scores(value.get("seed_scores"))
                evidence = Evidence(n, _interval(value.get("ci")), correct, seeds, scores)
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


NO_EVIDENCE = pd.Series({field: math.nan for field in EVIDENCE_FIELDS})


def pool(evidence: pd.DataFrame) -> pd.Series:
    """Evidence of the mean of several results (rows: n, correct, ci_lo, ci_hi): one result's own; several,
    the Wilson interval of the pooled 0/1 samples when each has `correct` out of the same `n` (the pooled
    proportion is then the unweighted mean the table shows); none (all NaN) otherwise, and whenever a
    result has no evidence at all."""
    if evidence.empty or not evidence.notna().any(axis=1).all():
        return NO_EVIDENCE
    if len(evidence) == 1:
        return evidence.iloc[0]
    sizes, correct = evidence["n"], evidence["correct"]
    if sizes.isna().any() or sizes.nunique() != 1 or correct.isna().any():
        return NO_EVIDENCE
    low, high = wilson(int(correct.sum()), int(sizes.sum()))
    pooled = {"n": sizes.sum(), "correct": correct.sum(), "ci_lo": low, "ci_hi": high}
    return pd.Series({field: pooled.get(field, math.nan) for field in EVIDENCE_FIELDS})


# ------------------------------------------------------------------------------------------- the frame


def _indexed(value: Any) -> Any:
    """Lists -> {"0": ..., "1": ...}, so that json_normalize gives their items dotted columns too."""
    if isinstance(value, Mapping):
        return {str(key): _indexed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return {str(i): _indexed(item) for i, item in enumerate(value)}
    return value


def records_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per record (see the module docstring), replicates merged; an empty frame with the record
    fields for none."""
    rows = []
    for record in merge_replicates(records):
        evidence = metric_evidence(record["metrics"])
        row = {field: record.get(field) for field in RECORD_FIELDS}
        row["config"] = _indexed(record["config"])
        row["score"] = flatten_metrics(record["metrics"])
        row["n"] = {name: e.n for name, e in evidence.items() if e.n is not None}
        row["correct"] = {name: e.correct for name, e in evidence.items() if e.correct is not None}
        row["ci_lo"] = {name: e.ci[0] for name, e in evidence.items() if e.ci is not None}
        row["ci_hi"] = {name: e.ci[1] for name, e in evidence.items() if e.ci is not None}
        row["seeds"] = {name: e.seeds for name, e in evidence.items() if e.seeds is not None}
        row["seed_scores"] = {name: e.seed_scores for name, e in evidence.items() if e.seed_scores}
        row["chance"] = flatten_metrics(record.get("chance") or {})
        row["baseline"] = flatten_metrics(record.get("baselines") or {})
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=list(RECORD_FIELDS))
    return pd.json_normalize(rows)


def prefixed(frame: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """The columns `<prefix>.<name>` of the frame, renamed to `<name>`."""
    start = f"{prefix}."
    columns = [column for column in frame.columns if column.startswith(start)]
    return frame[columns].rename(columns=lambda column: column[len(start) :])


def evidence_of(frame: pd.DataFrame, names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Per evidence field (n, correct, ci_lo, ci_hi) a records x `names` frame, NaN where absent."""
    return {field: prefixed(frame, field).reindex(columns=list(names)) for field in EVIDENCE_FIELDS}


def _python(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _unflatten(items: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in items.items():
        target = nested
        *parents, last = path.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    return nested


def config_value(frame: pd.DataFrame, key: str) -> pd.Series:
    """The raw value of every record at a dotted config path (a record field for run_id / stage /
    config_hash): a scalar, a dict rebuilt from its dotted columns (a named tokenizer, a freezing recipe),
    or None where the record lacks it."""
    if key in RECORD_FIELDS:
        return (
            frame[key].map(_python).astype(object) if key in frame else pd.Series(None, frame.index, object)
        )
    column = f"config.{key}"
    below = [c for c in frame.columns if c.startswith(column + ".")]
    whole = frame[column] if column in frame else pd.Series(None, frame.index, dtype=object)
    values = []
    for index in frame.index:
        value = _python(whole[index])
        if value is None and below:
            leaves = {c[len(column) + 1 :]: _python(frame.at[index, c]) for c in below}
            leaves = {path: leaf for path, leaf in leaves.items() if leaf is not None}
            value = _unflatten(leaves) or None
        values.append(value)
    return pd.Series(values, index=frame.index, dtype=object)


# ---------------------------------------------------------------------------- display and ordering

# Spellings of the fusion names (vlmlab.config.FUSIONS) that records written by hand or by older tools use.
_FUSION_ALIASES = {"joint": "joint_decoder", "cross": "cross_attention", "mixture_of_transformers": "mot"}
# Paper order of the tokenizer families: text-aware first (CLIP, AIMv2, SigLIP 2), then DINOv3, TiTok, VAR,
# matched by prefix, case-insensitively; then the fusions as in Figure 1, then the freezing recipes in Table 2's
# row order; others follow in natural order.
_TOKENIZER_ORDER = ("clip", "aimv2", "siglip", "dinov3", "dino", "titok", "var")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", re.IGNORECASE)


def is_indexed_list(value: Any) -> bool:
    """Whether a mapping is a list that records_frame indexed ({"0": a, "1": b}), rebuilt by config_value."""
    return isinstance(value, Mapping) and bool(value) and all(str(k) == str(i) for i, k in enumerate(value))


def display_value(value: Any) -> str:
    """How a config value appears in a table cell: names for named configs, yes/no for flags."""
    if value is None:
        return MISSING_LABEL
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        if is_indexed_list(value):  # e.g. an encoder set's towers
            return " + ".join(display_value(item) for item in value.values())  # e.g. an encoder set's towers
        for key in ("name", "id", "arch"):
            if isinstance(value.get(key), str | int | float):
                return display_value(value[key])
        return ", ".join(f"{key}={display_value(item)}" for key, item in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    fusion = fusion_name(text)
    return FUSIONS[fusion].display if fusion else text


def fusion_name(text: str) -> str | None:
    """The fusion a value names (`joint_decoder`, `Joint-Decoder`, `jointdecoder`, `joint`), or None."""
    key = text.lower().replace("-", "_")
    key = _FUSION_ALIASES.get(key, key)
    if key in FUSIONS:
        return key
    return {name.replace("_", ""): name for name in FUSIONS}.get(key)


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


def natural(text: str) -> tuple[tuple[int, float, str], ...]:
    """Sort key that orders the numbers inside a text by value ("b2" < "b10")."""
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
    if text in list_recipes():
        return (1, len(_TOKENIZER_ORDER) + len(FUSIONS) + list_recipes().index(text), ())
    fusion = fusion_name(text)
    if fusion:
        return (1, len(_TOKENIZER_ORDER) + FUSION_NAMES.index(fusion), natural(text))
    for rank, prefix in enumerate(_TOKENIZER_ORDER):
        if text.startswith(prefix):
            return (1, rank, natural(text))
    size = parse_size(value)
    if size is not None:
        return (2, size)
    return (3, 0, natural(text))


def key_label(key: str) -> str:
    """A config path as a column header: without its section ("model.tokenizer" -> "tokenizer")."""
    parts = key.split(".")
    return ".".join(parts[1:]) if len(parts) > 1 else key


def filter_frame(frame: pd.DataFrame, where: Mapping[str, Sequence[str]] | None) -> pd.DataFrame:
    """Keep records whose config value at each key matches one of the given strings (case-insensitive;
    matched against the raw value and its displayed form, so `train.freeze.lang=true` and `=yes` work)."""
    keep = pd.Series(True, index=frame.index)
    for key, allowed in (where or {}).items():
        wanted = {str(a).lower() for a in allowed}
        forms = config_value(frame, key).map(
            lambda v: {display_value(v).lower(), str(v).lower(), canonical(v).lower()}
        )
        keep &= ~forms.map(wanted.isdisjoint).astype(bool)
    return frame[keep]


def format_comparison(item: Comparison) -> str:
    """One line: the difference in points with its interval, the p-value, seeds and whether it holds."""
    r = item.result
    fixed = ", ".join(f"{k.split('.')[-1]}={display_value(v)}" for k, v in item.fixed.items())
    low, high = (100 * v for v in r.ci)
    seeds = seeds_phrase(r.seeds[0]) if r.seeds[0] == r.seeds[1] else f"{r.seeds[0]} vs {r.seeds[1]} seeds"
    test = "exact" if r.exact else "9999 random"
    if r.holds:
        verdict = "holds across seeds" if r.across_seeds else "holds, on one seed only"
    elif r.p_value < 0.05 and min(r.seeds) >= 2 and not r.across_seeds:
        verdict = "not across seeds (seeds disagree in sign)"
    else:
        verdict = "no effect shown"
    per_seed = ""
    if len(r.per_seed) > 1:
        per_seed = "; per seed " + " / ".join(f"{100 * d:+.1f}" for d in r.per_seed)
    return (
        f"{item.metric} ({fixed}): {display_value(item.a)} - {display_value(item.b)} = "
        f"{100 * r.difference:+.1f} points [{low:+.1f}, {high:+.1f}], p = {r.p_value:.4f} "
        f"({test} paired permutation over {r.n} items), {seeds}{per_seed}: {verdict}"
    )
