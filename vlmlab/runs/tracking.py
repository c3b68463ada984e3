"""What a run folder records about its experiment trackers, and the tracker calls shared by training, the
checkpoint evaluator and the sweep (so that none of them imports another).

`<run>/tracking.json` (written atomically) holds, per tracker, the tracker run this stage run logs to and how
far the training process got in sending its rows:

    {"mlflow": {"run_id": "...", "experiment_id": "3", "uri": "http://...", "params_logged": true,
                "sent_seq": 41},
     "wandb": {"id": "x1y2z3", "project": "vlmlab", "dir": "<run>/logs/wandb", "sent_seq": 41}}

A resume reads it to continue the same tracker run (vlmlab/train/tracking.py); the evaluator of held
checkpoints reads it to log its results into that run at the checkpoint's step (vlmlab/eval/checkpoints.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmlab.files import atomic_write_text

log = logging.getLogger("vlmlab.tracking")

TRACKING_FILE = "tracking.json"
SWEEP_RUN_FILE = "sweep_run.json"  # what the sweep knows of a run (vlmlab/sweep/expand.py: write_run_files)
TRACKERS = ("mlflow", "wandb")

_lock = threading.Lock()  # the sender threads and the main thread of one process update the same file


def read_tracking(run_dir: str | Path) -> dict[str, Any]:
    """The run folder's tracking.json ({} when there is none, or a torn one from an older crash)."""
    path = Path(run_dir) / TRACKING_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def update_tracking(run_dir: str | Path, tracker: str, **fields: Any) -> dict[str, Any]:
    """Set `fields` of `tracker`'s entry in tracking.json (atomically); the whole file after the update."""
    with _lock:
        data = read_tracking(run_dir)
        entry = dict(data.get(tracker) or {})
        entry.update(fields)
        data[tracker] = entry
        atomic_write_text(Path(run_dir) / TRACKING_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return data


def read_sweep_run(run_dir: str | Path) -> dict[str, Any]:
    """The run's sweep_run.json (sweep name, run id, stage, parents, grid-axis labels); {} outside a sweep."""
    try:
        data = json.loads((Path(run_dir) / SWEEP_RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as {"dotted.key": leaf}; list items by index (data.train.0.mode), an empty list or
    dict as its JSON text, so that every setting is one tracker parameter."""
    flat: dict[str, Any] = {}
    items = config.items() if isinstance(config, Mapping) else enumerate(config)
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping | list | tuple) and len(value):
            flat.update(flatten(value, name))
        elif isinstance(value, Mapping | list | tuple):
            flat[name] = json.dumps(value if isinstance(value, Mapping) else list(value))
        else:
            flat[name] = value
    return flat


def numeric_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a record's metrics, flattened with "." (a {"score", ...} entry is its score),
    names prefixed: what a tracker can plot."""
    flat: dict[str, float] = {}

    def walk(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            if "score" in value:
                walk(name, value["score"])
                return
            for key, item in value.items():
                walk(f"{name}.{key}" if name else str(key), item)
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            flat[prefix + name] = float(value)

    walk("", metrics)
    return flat


def mlflow_client_defaults() -> None:
    """Bound MLflow's HTTP retries (its default backs off for minutes on a server that is down): a tracker
    that does not answer is retried by vlmlab's own loop instead. Settings a user exported are kept."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def mlflow_uri(configured: str | None) -> str | None:
    """The tracking URI: train.tracking.uri, else MLflow's own MLFLOW_TRACKING_URI (None: MLflow's default)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or None


def log_to_mlflow_run(run_dir: str | Path, metrics: Mapping[str, float], step: int) -> bool:
    """Log `metrics` at `step` into the MLflow run the training of `run_dir` opened (tracking.json); False
    when the run has none. A second process logging into a live run is fine for MLflow (its server orders
    the rows by step)."""
    entry = read_tracking(run_dir).get("mlflow") or {}
    if not entry.get("run_id") or not metrics:
        return False
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    mlflow_client_defaults()
    client = MlflowClient(entry.get("uri") or None)
    stamp = int(time.time() * 1000)
    rows = [Metric(key, float(value), stamp, int(step)) for key, value in metrics.items()]
    client.log_batch(entry["run_id"], metrics=rows)
    return True


def log_to_wandb_group(
    run_dir: str | Path, name: str, metrics: Mapping[str, float], step: int, step_key: str
) -> bool:
    """Log `metrics` into a W&B run of its own beside the training run (same project and group, job type
    `eval`, id `<training id>-eval`): W&B does not take a second writer into a live run. `step_key` holds the
    checkpoint's step, the x axis its charts are plotted against."""
    entry = read_tracking(run_dir).get("wandb") or {}
    if not entry.get("id") or not metrics:
        return False
    import wandb

    run = wandb.init(
        id=f"{entry['id']}-eval",
        name=f"{name}/eval",
        project=entry.get("project"),
        entity=entry.get("entity"),
        group=entry.get("group"),
        job_type="eval",
        dir=str(Path(run_dir) / "logs"),
        resume="allow",
        reinit="create_new",
    )
    try:
        run.define_metric(step_key)
        run.define_metric("*", step_metric=step_key)
        run.log({step_key: int(step), **metrics})
    finally:
        run.finish()
    return True


def log_report(
    folder: Path, experiment: str, trackers: list[str], settings: Mapping[str, Any]
) -> dict[str, str]:
    """A sweep's results tables and figures (`folder`) as artifacts of one report run per tracker, in the
    sweep's experiment (MLflow) / group (W&B) beside its stage runs; again at a later call, the same MLflow
    run (found by its tag) gets the new files. `settings` is train.tracking of the sweep's runs. -> tracker ->
    the report run's id."""
    found: dict[str, str] = {}
    if "mlflow" in trackers:
        from mlflow.tracking import MlflowClient

        mlflow_client_defaults()
        client = MlflowClient(mlflow_uri(settings.get("uri")))
        known = client.get_experiment_by_name(experiment)
        experiment_id = known.experiment_id if known else client.create_experiment(experiment)
        runs = client.search_runs([experiment_id], "tags.`vlmlab.report` = 'true'", max_results=1)
        if runs:
            run_id = runs[0].info.run_id
        else:
            run_id = client.create_run(
                experiment_id, run_name="report", tags={"vlmlab.report": "true", "vlmlab.sweep": experiment}
            ).info.run_id
        client.log_artifacts(run_id, str(folder), "report")
        client.set_terminated(run_id, "FINISHED")
        found["mlflow"] = run_id
    if "wandb" in trackers:
        import wandb

        run = wandb.init(
            project=settings.get("project") or os.environ.get("WANDB_PROJECT") or "vlmlab",
            entity=settings.get("entity") or os.environ.get("WANDB_ENTITY"),
            group=experiment,
            job_type="report",
            name=f"{experiment}/report",
            dir=str(folder),
            reinit="create_new",
        )
        try:
            artifact = wandb.Artifact(f"{experiment}-report", type="report")
            artifact.add_dir(str(folder))
            run.log_artifact(artifact)
            found["wandb"] = run.id
        finally:
            run.finish()
    return found


__all__ = [
    "SWEEP_RUN_FILE",
    "TRACKERS",
    "TRACKING_FILE",
    "flatten",
    "log_report",
    "log_to_mlflow_run",
    "log_to_wandb_group",
    "mlflow_client_defaults",
    "mlflow_uri",
    "numeric_metrics",
    "read_sweep_run",
    "read_tracking",
    "update_tracking",
]
