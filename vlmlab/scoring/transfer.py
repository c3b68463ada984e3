"""The cross-modality transfer protocol (paper, section 4): every synthetic task in both modalities.

A model is evaluated on the VQA (image) and TQA (text) versions of SpatialMap, Grid and Ring, on the
in-distribution test split and the OOD split. Evaluated before stage 3 it is the "No Train" reference; a
stage-3 model trained on one task's VQA or TQA version gives the same- and cross-modality cells of
Tables 6-7. The record it writes (`<run>/eval.json`) carries the run's training metrics too, so that
`vlmlab results` finds everything about a run in one record, and beside each cell's chance level the
trivial baselines (`baselines`: majority answer, Grid's start object, Ring's most frequent offset;
vlmlab.data.synthetic.stats) over exactly the samples that cell scored.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vlmlab.config import SYNTHETIC_TASKS, DataSourceConfig, ExperimentConfig, to_dict
from vlmlab.data.synthetic.generate import generate_split
from vlmlab.data.synthetic.stats import BASELINE_KINDS, shortcut_baselines
from vlmlab.data.validation import build_val_set
from vlmlab.runs.load import load_run, synthetic_image_size, text_side
from vlmlab.runs.record import config_hash, write_record
from vlmlab.scoring.accuracy import as_metric, evaluate_items

log = logging.getLogger("vlmlab.scoring")

TASKS = SYNTHETIC_TASKS
MODALITIES = ("vqa", "tqa")
SPLITS = {"test": "ind", "ood": "ood"}
EVAL_SEED = 0  # generator seed of the held-out sets (the baselines regenerate them with it)


def evaluate_transfer(
    run_dir: str | Path,
    tasks: Sequence[str] = TASKS,
    num_samples: int = 500,
    difficulty: dict[str, dict[str, dict[str, Any]]] | None = None,
    max_length: int | None = None,
    write: bool = True,
    loaded: tuple[ExperimentConfig, Any] | None = None,
) -> dict[str, Any]:
    """Accuracy per task x modality x split. `difficulty[task][split]` overrides the generator settings
    (e.g. the quickstart's easy tasks); by default each split has the paper's settings.

    Each cell is stored as {"score", "n", "ci": [low, high], "correct", "outcomes", "items"}
    (vlmlab.scoring.accuracy.as_metric): the accuracy, the number of samples, its 95 % interval, the number
    answered correctly, and each sample's 0/1 outcome with a digest of the samples (for paired tests
    between design points, `vlmlab results --compare`). `loaded`: the run's config and a model already built
    (an intermediate checkpoint's: vlmlab/eval/checkpoints.py)."""
    started = time.time()
    config, model = loaded or load_run(run_dir)
    tokenizer, encoder = text_side(config, model, max_length)
    metrics: dict[str, Any] = {}
    chance: dict[str, Any] = {}
    baselines: dict[str, Any] = {}
    size = synthetic_image_size(model)
    for task in tasks:
        for modality in MODALITIES:
            for split, cell in SPLITS.items():
                knobs = dict(((difficulty or {}).get(task) or {}).get(split) or {})
                source = DataSourceConfig(
                    kind="synthetic", task=task, mode=modality, split=split, difficulty=knobs
                )
                items = build_val_set(source, encoder, num_samples, seed=EVAL_SEED, image_size=size)
                result = evaluate_items(
                    model, tokenizer, items, max_new_tokens=config.data.val_max_new_tokens, keep_items=True
                )
                metrics.setdefault(task, {}).setdefault(modality, {})[cell] = as_metric(result)
                chance.setdefault(task, {}).setdefault(modality, {})[cell] = result["chance"]
                trivial = _baselines(source, num_samples, items)
                baselines.setdefault(task, {}).setdefault(modality, {})[cell] = trivial
    run_dir = Path(run_dir)
    previous = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").exists() else {}
    training = {k: v for k, v in previous.get("metrics", {}).items() if isinstance(v, int | float)}
    resolved = to_dict(config)
    record = {
        "run_id": previous.get("run_id", run_dir.name),
        "config_hash": config_hash(resolved),
        "stage": config.train.stage,
        "config": resolved,
        "metrics": {**_as_fractions(training), **metrics},
        "chance": chance,
        "baselines": baselines,
        "timings": {**previous.get("timings", {}), "eval_seconds": round(time.time() - started, 1)},
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    }
    if write:
        write_record(record, run_dir / "eval.json")
    return record


def _baselines(source: DataSourceConfig, num_samples: int, items: Sequence[dict[str, Any]]) -> dict:
    """The trivial baselines over the samples `items` holds: the split is generated again as
    `build_val_set` drew it (same seed and settings, text only) and cut to the ids it kept."""
    kept = {item["id"] for item in items}
    raws = generate_split(
        source.task, source.split, num_samples, seed=EVAL_SEED, image=False, **dict(source.difficulty or {})
    )
    scored = [raw for raw in raws if f"{raw['id']}-{source.mode}" in kept]  # sample ids: <raw id>-<mode>
    if not scored:  # nothing was scored: no baseline to compare with
        return {}
    trivial = shortcut_baselines(scored)
    return {kind: trivial[kind] for kind in BASELINE_KINDS if trivial[kind] is not None}


def _as_fractions(metrics: dict[str, float]) -> dict[str, Any]:
    """Training-time validation metrics that are fractions (accuracies), renamed without slashes; an
    accuracy's `<name>_ci_low` / `<name>_ci_high` (vlmlab.train.data) become its {"score", "ci"} entry."""
    out: dict[str, Any] = {}
    for name, value in metrics.items():
        if not 0.0 <= value <= 1.0 or "extraction" in name or name.endswith(("_ci_low", "_ci_high")):
            continue
        low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
        entry: Any = value
        if isinstance(low, int | float) and isinstance(high, int | float):
            entry = {"score": value, "ci": [low, high]}
        out[f"val.{name.replace('/', '.')}"] = entry
    return out


def trained_tasks(config: ExperimentConfig) -> list[str]:
    """The synthetic tasks (SpatialMap, Grid, Ring) a run's training data comes from, in order."""
    tasks = [s.task for s in config.data.train if s.kind == "synthetic" and s.mode in ("vqa", "tqa")]
    return list(dict.fromkeys(tasks))


def evaluate_transfer_after(config: ExperimentConfig, out: Path, rank_zero: bool) -> dict[str, Any] | None:
    """The transfer protocol on the trained tasks when `train.transfer_eval_samples` asks for it (every
    process takes part; rank 0 writes eval.json)."""
    if not config.train.transfer_eval_samples:
        return None
    tasks = trained_tasks(config)
    if not tasks:
        log.warning("train.transfer_eval_samples is set but the run trained on no synthetic task: skipped")
        return None
    record = evaluate_transfer(out, tasks, num_samples=config.train.transfer_eval_samples, write=rank_zero)
    log.info("transfer evaluation of %s written to %s", ", ".join(tasks), out / "eval.json")
    return record
