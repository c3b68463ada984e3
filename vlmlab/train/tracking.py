"""The run's loggers: CSV and TensorBoard files in the run folder, MLflow and Weights & Biases trackers.

Three rules make a run's history exact across kills and resumes, with a tracker up or down:

* A logged row is *covered* once a resume checkpoint holds its step (Lightning logs optimizer step k as row
  k - 1). Only covered rows leave the process (CSV file, tracker): a row of a step after the last checkpoint
  is trained, and logged, again on resume, so sending it early would send it twice.
* The CSV log keeps its history: rows up to the resumed checkpoint stay, rows after it (replayed) are
  dropped, the file is rewritten atomically (Lightning's CSVLogger deletes the file on a restart).
* A tracker is fed by a thread of its own (training never waits on the network) from an outbox in the run
  folder (`logs/<tracker>-outbox.jsonl`, fsynced); the last row the tracker has for sure is recorded in
  `tracking.json`, with the tracker run's id, so a resume continues the same tracker run and sends what was
  left, once (MLflow's server has a row when its call returns; W&B's client buffers rows in its service
  process, so they count as sent when the run finishes, and a killed run sends them again in order). A tracker that fails is reported once, as a warning, and tried again every
  `train.tracking.retry_seconds`; training goes on either way.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from vlmlab.config import ExperimentConfig
from vlmlab.errors import ConfigError
from vlmlab.files import atomic_open
from vlmlab.runs.tracking import (
    flatten,
    mlflow_client_defaults,
    read_sweep_run,
    read_tracking,
    update_tracking,
)

log = logging.getLogger("vlmlab.tracking")


def _row_step(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer, keeping the rows of the steps a resumed run does not train again.

    Rows are appended while the columns stay the same (the file is rewritten, atomically, only when a new
    column appears and once on a resume), so the cost per checkpoint does not grow with the run's length; a
    line torn by a kill during an append is dropped on the resume."""

    def __init__(self, log_dir: str, keep_through: int) -> None:
        self._keep_through = keep_through
        self._history: list[dict[str, Any]] = []
        self._columns: list[str] = []
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        text = path.read_text()
        if text and not text.endswith("\n"):  # the last append was cut short
            text = text[: text.rfind("\n") + 1]
        kept = []
        for row in csv.DictReader(io.StringIO(text)):
            step = _row_step(row.get("step"))
            if step is not None and step <= self._keep_through:
                kept.append({k: v for k, v in row.items() if k is not None and v not in ("", None)})
        self._history = kept
        self._rewrite()

    def _rewrite(self) -> None:
        self._columns = sorted(set().union(*self._history)) if self._history else []
        with atomic_open(self.metrics_file_path, "w") as handle:  # a kill leaves the old file or the new
            writer = csv.DictWriter(handle, fieldnames=self._columns, restval="")
            if self._columns:
                writer.writeheader()
            writer.writerows(self._history)

    def save(self) -> None:
        if not self.metrics:
            return
        rows, self.metrics = self.metrics, []
        self._history.extend(rows)
        if not self._columns or not set().union(*rows) <= set(self._columns):
            self._rewrite()
            return
        with open(self.metrics_file_path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self._columns, restval="").writerows(rows)


class HistoryCSVLogger(CSVLogger):
    """`logs/metrics.csv`, one row per logged step across resumes; written when its rows are covered."""

    def __init__(self, out: Path, resumed_step: int) -> None:
        # Lightning flushes every n rows; covered rows are flushed by `checkpointed` instead
        super().__init__(out, name="logs", version="", flush_logs_every_n_steps=10**9)
        self._keep_through = resumed_step - 1  # row k - 1 = optimizer step k
        self._covered = self._keep_through

    @property
    @rank_zero_experiment  # other ranks get Lightning's dummy: one process owns the file
    def experiment(self) -> _HistoryWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(self.log_dir, self._keep_through)
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        if step is not None and step <= self._covered:
            self.experiment.save()

    @rank_zero_only
    def checkpointed(self, step: int) -> None:
        """A resume checkpoint holds optimizer step `step`: rows up to it are final."""
        self._covered = step - 1
        pending = self.experiment.metrics
        if pending and all(_row_step(row.get("step")) <= self._covered for row in pending):
            self.experiment.save()


class TrackerLogger(Logger):
    """One experiment tracker (MLflow or W&B) behind Lightning's own logger for it, fed by a thread."""

    def __init__(
        self, kind: str, config: ExperimentConfig, out: Path, resolved: dict[str, Any], resumed_step: int
    ) -> None:
        super().__init__()
        self.kind = kind
        self.config, self.out, self.resolved = config, out, resolved
        self.settings = config.train.tracking
        self.outbox = out / "logs" / f"{kind}-outbox.jsonl"
        self._covered = resumed_step - 1
        self._resuming = resumed_step > 0
        self._pending: list[tuple[int, dict[str, float]]] = []  # logged, not yet covered
        self._queue: list[dict[str, Any]] = []  # covered, in the outbox, not yet acknowledged
        self._seq = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._warned = False
        self.inner: Any = None  # Lightning's MLFlowLogger / WandbLogger once the tracker answered
        self.failures = 0
        self._restore(resumed_step)
        self._thread = threading.Thread(target=self._loop, name=f"vlmlab-{kind}", daemon=True)
        self._wake.set()  # open the tracker run now, while the model is built: it shows up as training starts
        self._thread.start()

    # -- Lightning's Logger interface
    @property
    def name(self) -> str:
        return self.kind

    @property
    def version(self) -> str:
        return str(read_tracking(self.out).get(self.kind, {}).get("run_id", ""))

    @property
    def experiment(self) -> Any:
        return self.inner

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The resolved config is logged when the tracker run opens (once per tracker run)."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        row = {k: float(v) for k, v in metrics.items() if k != "epoch"}
        if not row:
            return
        step = int(step or 0)
        if step <= self._covered:
            self._post([(step, row)])
        else:
            self._pending.append((step, row))

    @rank_zero_only
    def checkpointed(self, step: int) -> None:
        self._covered = step - 1
        ready = [(s, row) for s, row in self._pending if s <= self._covered]
        self._pending = [(s, row) for s, row in self._pending if s > self._covered]
        self._post(ready)

    @rank_zero_only
    def log_summary(self, metrics: Mapping[str, float], step: int) -> None:
        """Metrics of the finished run (result.json), after every covered row."""
        self._post([(step, dict(metrics))])

    @rank_zero_only
    def close(self, success: bool, timeout: float = 60.0) -> None:
        """Send what is left (one last try), end the tracker run on success; whatever the tracker has not
        taken stays in the outbox, and a resume of the run sends it."""
        self._stopping = True
        self._finish = success
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            left = len(self._queue)
        if left:
            log.info("%s: %d rows not sent; kept in %s", self.kind, left, self.outbox)

    def finalize(self, status: str) -> None:  # the run ends the tracker run itself (close), after export
        pass

    # -- the outbox
    def _restore(self, resumed_step: int) -> None:  # noqa: ARG002 - kept for symmetry with the CSV log
        """Rows a previous process covered but the tracker never acknowledged, sent first."""
        sent = int(read_tracking(self.out).get(self.kind, {}).get("sent_seq", 0))
        rows = []
        if self.outbox.exists():
            for line in self.outbox.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line torn by a kill during its append
                    continue
        self._seq = max([sent, *(r["seq"] for r in rows)])
        # only covered rows ever enter the outbox, so none of these is trained (and logged) again
        self._queue = [r for r in rows if r["seq"] > sent]
        # a kill between a row's delivery and the record of it leaves the row in doubt: the tracker is asked
        # before it is sent again (MLflow keeps every point it is sent, a second one would be a duplicate)
        self._in_doubt = {r["seq"] for r in self._queue}
        self.outbox.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.outbox, "w") as handle:  # compacted: what is still to send
            handle.writelines(json.dumps(r) + "\n" for r in self._queue)

    def _post(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        if not rows:
            return
        entries = []
        for step, metrics in rows:
            if not metrics:
                continue
            self._seq += 1
            entries.append({"seq": self._seq, "step": step, "metrics": metrics})
        if not entries:
            return
        with open(self.outbox, "a") as handle:  # before the thread may send them: a kill loses none
            handle.writelines(json.dumps(e) + "\n" for e in entries)
            handle.flush()
            os.fsync(handle.fileno())
        with self._lock:
            self._queue.extend(entries)
        self._wake.set()

    # -- the sender thread
    def _loop(self) -> None:
        retry_at = 0.0
        while True:
            left = max(0.0, retry_at - time.monotonic())
            self._wake.wait(None if not retry_at else left)
            self._wake.clear()
            stopping = self._stopping
            if time.monotonic() >= retry_at or stopping:
                try:
                    self._send()
                    retry_at = 0.0
                except Exception as error:  # any failure of the tracker: training goes on
                    self._failed(error)
                    retry_at = time.monotonic() + self.settings.retry_seconds
            with self._lock:
                empty = not self._queue
            if stopping:
                if empty and self.inner is not None and getattr(self, "_finish", False):
                    try:
                        self._end_run()
                    except Exception as error:
                        self._failed(error)
                return
            if retry_at and empty:
                retry_at = 0.0

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        if not self._warned:
            self._warned = True
            log.warning(
                "%s is not reachable (%s): training goes on; metrics are kept in %s and the run folder's "
                "logs/, and sent when it answers (tried again every %gs)",
                self.kind,
                reason,
                self.outbox,
                self.settings.retry_seconds,
            )
        else:
            log.debug("%s still failing: %s", self.kind, reason)

    def _send(self) -> None:
        if self.inner is None:
            self.inner = self._open()
        while True:
            with self._lock:
                batch = list(self._queue[:200])
            if not batch:
                return
            for entry in batch:
                if not self._delivered_before(entry):
                    self._send_row(entry["step"], entry["metrics"])
                with self._lock:
                    self._queue.pop(0)
            # MLflow's server has the rows once the call returns. W&B's client hands them to its service
            # process, which buffers them (a SIGKILL loses them with it: seen in offline mode), so its rows
            # count as sent only once the run finished them (_end_run); a resume sends the others again
            # (in order, so W&B's own check of increasing steps drops none and repeats none)
            if self.kind == "mlflow":
                update_tracking(self.out, self.kind, sent_seq=batch[-1]["seq"])

    # -- per tracker
    def _tags(self) -> dict[str, str]:
        sweep = read_sweep_run(self.out)
        train = self.resolved["train"]
        tags = {
            "vlmlab.run": str(sweep.get("id") or self.out.name),
            "vlmlab.stage": str(train["stage"]),
            "vlmlab.run_dir": str(self.out.resolve()),
        }
        if sweep.get("sweep"):
            tags["vlmlab.sweep"] = str(sweep["sweep"])
        for key, value in (sweep.get("labels") or {}).items():
            tags[f"axis.{key}"] = value if isinstance(value, str) else json.dumps(value)
        parents = list(sweep.get("parents") or [])
        parent_dirs = list(sweep.get("parent_dirs") or [])
        if not parent_dirs and train.get("init_from"):
            parent_dirs = [str(train["init_from"])]
        if parents:
            tags["vlmlab.parent_run"] = parents[0]
        if parent_dirs:
            tags["vlmlab.parent_dir"] = str(Path(parent_dirs[0]).resolve())
        return tags

    def _parent_tracker_run(self) -> str | None:
        tags = self._tags()
        folder = tags.get("vlmlab.parent_dir")
        if not folder:
            return None
        path = Path(folder)
        if not (path / "config.yaml").exists() and path.parent.joinpath("config.yaml").exists():
            path = path.parent  # init_from named a checkpoint folder (best/, final/) inside the run folder
        key = "run_id" if self.kind == "mlflow" else "id"
        return read_tracking(path).get(self.kind, {}).get(key)

    def _experiment_name(self) -> str:
        return self.settings.experiment or read_sweep_run(self.out).get("sweep") or "vlmlab"

    def _run_name(self) -> str:
        tags = self._tags()
        return f"stage{tags['vlmlab.stage']}/{tags['vlmlab.run']}"

    def _params(self) -> dict[str, Any]:
        return {k: v for k, v in flatten(self.resolved).items() if v is not None}

    def _open(self) -> Any:
        return self._open_mlflow() if self.kind == "mlflow" else self._open_wandb()

    def _open_mlflow(self) -> Any:
        from lightning.pytorch.loggers import MLFlowLogger

        mlflow_client_defaults()
        entry = read_tracking(self.out).get("mlflow", {})
        uri = self.settings.uri or os.environ.get("MLFLOW_TRACKING_URI")
        tags = self._tags()
        parent = self._parent_tracker_run()
        if parent:
            tags["mlflow.parentRunId"] = parent  # MLflow's own link: the UI nests the run under its parent
        logger = MLFlowLogger(
            experiment_name=self._experiment_name(),
            run_name=self._run_name(),
            tracking_uri=uri,
            tags=tags,
            run_id=entry.get("run_id") or self._unrecorded_mlflow_run(uri, tags["vlmlab.run_dir"]),
        )
        run_id = logger.run_id  # creates the experiment and the run, or finds the run of before
        if not entry.get("run_id"):
            update_tracking(self.out, "mlflow", run_id=run_id, experiment_id=logger.experiment_id, uri=uri)
        if not entry.get("params_logged"):
            logger.log_hyperparams(self._params())
            update_tracking(self.out, "mlflow", params_logged=True)
        return logger

    def _unrecorded_mlflow_run(self, uri: str | None, run_dir: str) -> str | None:
        """The MLflow run a killed process of this run created but did not live to record in tracking.json
        (found by its `vlmlab.run_dir` tag), so that a resume never makes a second tracker run."""
        from mlflow.tracking import MlflowClient

        if not self._resuming or "'" in run_dir:  # a fresh start, or a path MLflow's filter cannot quote
            return None
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name(self._experiment_name())
        if experiment is None:
            return None
        found = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`vlmlab.run_dir` = '{run_dir}'", max_results=1
        )
        return found[0].info.run_id if found else None

    def _open_wandb(self) -> Any:
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        entry = read_tracking(self.out).get("wandb", {})
        run_id = entry.get("id") or wandb.util.generate_id()
        project = self.settings.project or os.environ.get("WANDB_PROJECT") or "vlmlab"
        if not entry.get("id"):  # before init: a kill during it still resumes this id
            update_tracking(self.out, "wandb", id=run_id, project=project)
        tags = self._tags()
        parent = self._parent_tracker_run()
        logger = WandbLogger(
            name=self._run_name(),
            save_dir=str(self.out / "logs"),
            id=run_id,
            project=project,
            entity=self.settings.entity or os.environ.get("WANDB_ENTITY"),
            group=self._experiment_name(),
            job_type=f"stage{tags['vlmlab.stage']}",
            tags=[f"{k}={v}"[:64] for k, v in tags.items() if k.startswith("axis.")],
            resume="allow",
        )
        run = logger.experiment
        config = {**self._params(), **{f"tag.{k}": v for k, v in tags.items()}}
        if parent:
            config["tag.vlmlab.parent_wandb_run"] = parent
        run.config.update(config, allow_val_change=True)
        # what the checkpoint evaluator needs to log beside this run (vlmlab/runs/tracking.py)
        update_tracking(
            self.out, "wandb", dir=str(Path(run.dir).parent), group=self._experiment_name(), entity=run.entity
        )
        return logger

    def _send_row(self, step: int, metrics: dict[str, float]) -> None:
        self.inner.log_metrics(metrics, step=step)

    def _delivered_before(self, entry: dict[str, Any]) -> bool:
        """Whether a row in doubt (sent by a killed process, its delivery not recorded) is in the MLflow run
        already: a point of its first metric at its step. W&B's rows are sent again in order instead: its
        client drops a step it already has."""
        if self.kind != "mlflow" or entry["seq"] not in self._in_doubt:
            return False
        self._in_doubt.discard(entry["seq"])
        key = next(iter(entry["metrics"]))
        history = self.inner.experiment.get_metric_history(self.inner.run_id, key)
        return any(point.step == entry["step"] for point in history)

    def _end_run(self) -> None:
        if self.kind == "mlflow":
            self.inner.experiment.set_terminated(self.inner.run_id, "FINISHED")
        else:
            self.inner.experiment.finish()
            update_tracking(self.out, self.kind, sent_seq=self._seq)  # all on disk now (see _send)


class FlushCovered(L.Callback):
    """After the resume checkpoint's callbacks (place it after them): tell the loggers which rows a
    checkpoint now covers."""

    def __init__(self, checkpointer: Any, loggers: list[Any]) -> None:
        self.checkpointer = checkpointer
        self.loggers = [logger for logger in loggers if hasattr(logger, "checkpointed")]
        self._told = -1

    def _tell(self) -> None:
        step = self.checkpointer.saved_at
        if step > self._told:
            self._told = step
            for logger in self.loggers:
                logger.checkpointed(step)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._told = trainer.global_step  # the checkpoint resumed from was told by the previous process

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        self._tell()

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._tell()


@contextlib.contextmanager
def tracker_session(loggers: list[Any]) -> Iterator[None]:
    """Close the trackers when the run ends: the tracker run is ended only when the block succeeded."""
    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        for tracker in trackers(loggers):
            tracker.close(success=succeeded)


def build_loggers(
    config: ExperimentConfig, out: Path, resolved: dict[str, Any], resumed_step: int
) -> list[Logger]:
    """The loggers `train.loggers` names (checked when the config loaded), trackers only on rank 0."""
    loggers: list[Logger] = []
    for name in config.train.loggers:
        if name == "csv":
            loggers.append(HistoryCSVLogger(out, resumed_step))
        elif name == "tensorboard":
            loggers.append(TensorBoardLogger(out, name="logs", version="tensorboard"))
        elif rank_zero_only.rank == 0:
            _require(name)
            loggers.append(TrackerLogger(name, config, out, resolved, resumed_step))
    return loggers


def _require(name: str) -> None:
    import importlib.util

    module = {"mlflow": "mlflow", "wandb": "wandb"}[name]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"train.loggers names {name}, which is not installed: pip install 'vlmlab[tracking]' "
            f"(or pip install {module}), or drop it from train.loggers."
        )


def trackers(loggers: list[Any]) -> list[TrackerLogger]:
    return [logger for logger in loggers if isinstance(logger, TrackerLogger)]


__all__ = [
    "FlushCovered",
    "HistoryCSVLogger",
    "TrackerLogger",
    "build_loggers",
    "tracker_session",
    "trackers",
]
