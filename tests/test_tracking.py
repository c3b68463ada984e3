"""Experiment tracking (vlmlab/train/tracking.py), read back through the trackers' own readers: MLflow's client
against a real tracking server on localhost (tests/conftest.py), W&B's own reader of its offline run files."""

from __future__ import annotations

import csv
import io
import json
import signal
from collections import Counter
from pathlib import Path

import pytest
from ports import unused_port
from test_training import cli, run_cli, write_config

from vlmlab.presets import preset_root
from vlmlab.sweep.expand import expand, write_run_files
from vlmlab.sweep.report import report_to_trackers
from vlmlab.sweep.spec import load_sweep

PRESETS = preset_root()
TRACKED = ["train.log_every_n_steps=1", "data.val=[]", "train.select_best=false"]


def sweep_file(tmp: Path, uri: str) -> Path:
    """Two stages on tiny models, one grid axis (MoT's stage 1 is the Joint-Decoder run: 1 + 2 runs)."""
    common = (
        "max_steps: 2, global_batch_size: 4, checkpoint_every_n_steps: 1, log_every_n_steps: 1, "
        f"loggers: [csv, mlflow], tracking: {{uri: '{uri}'}}"
    )
    data = "micro_batch_size: 4, max_length: 96, val: []"
    source = "{kind: synthetic, task: spatialmap, mode: %s, difficulty: {num_objects: 2}}"
    path = tmp / "tracked.yaml"
    path.write_text(
        f"""
name: tracked-{unused_port()}
base: {PRESETS}/model/tiny.yaml
axes:
  fusion: [joint_decoder, mot]
stages:
  1: {{config: {{train: {{{common}}}, data: {{{data}, train: [{source % "caption"}]}}}}}}
  2: {{config: {{train: {{{common}, transfer_eval_samples: 2}}, data: {{{data}, train: [{source % "vqa"}]}}}}}}
results: [--layout, transfer]
"""
    )
    return path


def steps_of(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def csv_steps(run: Path, key: str = "train/loss") -> list[int]:
    with open(run / "logs" / "metrics.csv", newline="") as handle:
        return sorted(int(row["step"]) for row in csv.DictReader(handle) if row.get(key))


@pytest.mark.slow(seconds=60)
def test_a_two_stage_sweep_logs_params_grid_tags_parents_and_steps_to_mlflow(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    spec = load_sweep(sweep_file(tmp_path, mlflow_server), output_dir=tmp_path / "out")
    dag = expand(spec)
    write_run_files(dag)
    for run in dag:  # what the local backend runs, in dependency order, in this process
        code, error = cli(str(run.config_path))
        assert code == 0, error

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(spec.name)
    assert experiment is not None
    found = {r.data.tags["vlmlab.run"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(found) == {run.id for run in dag}  # one tracker run per stage run
    for run in dag:
        tracked = found[run.id]
        tracking = json.loads((run.run_dir / "tracking.json").read_text())["mlflow"]
        assert tracked.info.run_id == tracking["run_id"] and tracked.info.status == "FINISHED"
        params = tracked.data.params
        assert params["model.fusion"] == run.config["model"]["fusion"]
        assert params["train.stage"] == str(run.stage) and params["optim.lr.adapter"]
        for key, value in run.labels.items():  # every grid-axis value as a tag
            assert tracked.data.tags[f"axis.{key}"] == str(value)
        if run.parents:  # the stage hand-off as MLflow's own parent link
            parent = dag.runs[run.parents[0]]
            assert tracked.data.tags["vlmlab.parent_run"] == parent.id
            assert tracked.data.tags["mlflow.parentRunId"] == found[parent.id].info.run_id
        assert steps_of(client, tracked.info.run_id, "train/loss") == [0, 1]
        assert steps_of(client, tracked.info.run_id, "lr/adapter") == [0, 1]
        result = json.loads(run.result_path.read_text())
        summary = {k: v for k, v in tracked.data.metrics.items() if k.startswith("result/")}
        assert summary == {f"result/{k}": v for k, v in result["metrics"].items()}
        assert csv_steps(run.run_dir) == [0, 1]

    # the end of the sweep: the results tables and figures (the file's `results:`: the transfer layout) as
    # artifacts of a report run in the sweep's experiment
    said = io.StringIO()
    logged = report_to_trackers(dag, spec, said)
    assert set(logged) == {"mlflow"}, said.getvalue()
    report = client.get_run(logged["mlflow"])
    assert (
        report.info.experiment_id == experiment.experiment_id and report.data.tags["vlmlab.report"] == "true"
    )
    stored = {Path(a.path).name for a in client.list_artifacts(logged["mlflow"], "report")}
    written = {p.name for p in (spec.output_dir / "report").iterdir()}
    assert stored == written and {"transfer_vqa.md", "transfer_vqa.png"} <= stored, said.getvalue()
    copy = Path(client.download_artifacts(logged["mlflow"], "report/transfer_vqa.md", str(tmp_path)))
    assert copy.read_bytes() == (spec.output_dir / "report" / "transfer_vqa.md").read_bytes()


@pytest.mark.slow(seconds=40)
def test_a_killed_and_resumed_run_is_one_tracker_run_with_every_step_once(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    # validation every 2 steps: its scores too go to the tracker once, at their step
    settings = ["train.log_every_n_steps=1", "train.select_best=false", "train.val_every_n_steps=2"]
    settings += ["data.val_samples=4", "train.loggers=[csv,mlflow]", f"train.tracking.uri={mlflow_server}"]
    settings.append(f"train.tracking.experiment=resume-{unused_port()}")
    config = write_config(tmp_path, "victim", max_steps=4, checkpoint_every_n_steps=2, global_batch_size=4)
    victim = run_cli(str(config), *settings, fault="step:3")  # killed after step 3, checkpoint at step 2
    assert victim.wait(timeout=300) == -signal.SIGKILL, victim.stderr_text()
    run = tmp_path / "victim"
    # the victim opened its tracker run while it built the model, unless the server was slower than its steps
    opened = json.loads((run / "tracking.json").read_text()) if (run / "tracking.json").exists() else {}
    code, error = cli(str(config), *settings)
    assert code == 0, error
    first = json.loads((run / "tracking.json").read_text())["mlflow"]["run_id"]
    assert opened.get("mlflow", {}).get("run_id", first) == first  # the resume continued the victim's run
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(settings[-1].split("=", 1)[1])
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [first]
    for key in ("train/loss", "lr/adapter"):  # tokens_per_s starts at a process's second step
        assert steps_of(client, first, key) == [0, 1, 2, 3], key
    assert steps_of(client, first, "val/mean_accuracy") == [1, 3]  # after steps 2 (before the kill) and 4
    assert csv_steps(run) == [0, 1, 2, 3]  # the CSV log kept the rows of before the kill, and no replay twice
    assert csv_steps(run, "val/mean_accuracy") == [1, 3]


def test_a_tracker_that_refuses_connections_never_stops_training(tmp_path):
    refused = f"http://127.0.0.1:{unused_port()}"  # nothing listens there
    config = write_config(tmp_path, "offline", max_steps=2, checkpoint_every_n_steps=1, global_batch_size=4)
    settings = [*TRACKED, "train.loggers=[csv,mlflow]", f"train.tracking.uri={refused}"]
    code, error = cli(str(config), *settings, "train.tracking.retry_seconds=3600")
    assert code == 0, error
    run = tmp_path / "offline"
    assert (run / "result.json").exists() and csv_steps(run) == [0, 1]
    # one warning (the run's log handler writes to stderr), though the thread tried at least twice
    assert error.count("mlflow is not reachable") == 1, error
    # the rows wait in the outbox for a resume (or the tracker) to take them
    kept = [json.loads(line) for line in (run / "logs" / "mlflow-outbox.jsonl").read_text().splitlines()]
    assert sorted({row["step"] for row in kept if "train/loss" in row["metrics"]}) == [0, 1]


def wandb_history(folder: Path) -> list[dict]:
    """Every history row of the offline run files under `folder`, through wandb's own reader."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    rows = []
    for path in sorted(folder.rglob("*.wandb")):
        store = datastore.DataStore()
        store.open_for_scan(str(path))
        while (data := store.scan_data()) is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        item.key or "/".join(item.nested_key): json.loads(item.value_json)
                        for item in record.history.item
                    }
                )
    return rows


@pytest.mark.slow(seconds=40)
def test_wandb_offline_run_files_hold_the_same_keys_once_per_step_across_a_resume(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    settings = [*TRACKED, "train.loggers=[csv,wandb]", "train.tracking.project=vlmlab-test"]
    config = write_config(tmp_path, "wb", max_steps=4, checkpoint_every_n_steps=2, global_batch_size=4)
    victim = run_cli(str(config), *settings, fault="step:3", env={**__import__("os").environ})
    assert victim.wait(timeout=300) == -signal.SIGKILL, victim.stderr_text()
    code, error = cli(str(config), *settings)
    assert code == 0, error
    run = tmp_path / "wb"
    rows = [row for row in wandb_history(run / "logs") if "train/loss" in row]
    steps = Counter(row["trainer/global_step"] for row in rows)
    assert steps == {0: 1, 1: 1, 2: 1, 3: 1}
    with open(run / "logs" / "metrics.csv", newline="") as handle:
        csv_keys = {
            k
            for row in csv.DictReader(handle)
            for k, v in row.items()
            if v and k.startswith(("train/", "lr/"))
        }
    assert csv_keys <= set().union(*rows)  # the same keys as the local CSV log
    tracking = json.loads((run / "tracking.json").read_text())["wandb"]
    # one W&B run: every offline folder is `offline-run-<start time>-<id>` (wandb may add `-1` to a resumed
    # run's folder when the name exists already)
    assert {p.name.split("-")[3] for p in (run / "logs" / "wandb").glob("offline-run-*")} == {tracking["id"]}

    # a checkpoint evaluator's scores: a run of their own beside it (W&B takes no second writer into a live
    # run), in the same group, plotted against the checkpoint's step
    from vlmlab.runs.tracking import log_to_wandb_group

    assert log_to_wandb_group(run, "wb", {"eval/grid.vqa.ind": 0.25}, 3, "checkpoint/step")
    evaluation = list((run / "logs" / "wandb").glob(f"offline-run-*-{tracking['id']}-eval"))
    assert len(evaluation) == 1
    (row,) = [r for r in wandb_history(evaluation[0]) if "eval/grid.vqa.ind" in r]
    assert {k: v for k, v in row.items() if not k.startswith("_")} == {
        "checkpoint/step": 3,
        "eval/grid.vqa.ind": 0.25,
    }


def async_sweep_file(tmp: Path, uri: str) -> Path:
    """One tiny run that holds every 2nd of its 4 checkpoints for an evaluator beside it."""
    train = (
        "max_steps: 4, global_batch_size: 4, checkpoint_every_n_steps: 1, log_every_n_steps: 1, "
        f"select_best: false, keep_resume_state: true, loggers: [csv, mlflow], tracking: {{uri: '{uri}'}}"
    )
    data = "micro_batch_size: 4, max_length: 96, val: [], train: [{kind: synthetic, task: spatialmap, mode: caption}]"
    evaluation = "every_n_checkpoints: 2, transfer_samples: 2, tasks: [spatialmap]"
    path = tmp / "async.yaml"
    path.write_text(
        f"""
name: async-{unused_port()}
base: {PRESETS}/model/tiny.yaml
stages:
  1: {{config: {{train: {{{train}}}, data: {{{data}}}, eval: {{{evaluation}}}}}}}
"""
    )
    return path


@pytest.mark.slow(seconds=90)
def test_local_sweep_evaluates_held_checkpoints_beside_the_run_into_the_tracker(tmp_path, mlflow_server):
    import contextlib
    import io

    import torch
    from mlflow.tracking import MlflowClient

    from vlmlab.cli import main as vlmlab_main
    from vlmlab.eval.checkpoints import load_checkpoint_model
    from vlmlab.runs.load import load_run
    from vlmlab.scoring.transfer import evaluate_transfer
    from vlmlab.sweep.local import run_local

    file = async_sweep_file(tmp_path, mlflow_server)
    spec = load_sweep(file, output_dir=tmp_path / "out")
    dag = expand(spec)
    said = io.StringIO()
    assert run_local(dag, spec, out=said) == 0, said.getvalue()
    (run,) = list(dag)
    assert "started the evaluator of" in said.getvalue() and "evaluator of" in said.getvalue()

    # results of the chosen checkpoints (every 2nd: steps 2 and 4) in the run folder, nothing held any more
    results = {
        int(p.stem.removeprefix("step")): json.loads(p.read_text())
        for p in (run.run_dir / "eval" / "checkpoints").glob("step*.json")
    }
    assert sorted(results) == [2, 4] and all(r["tracked"] for r in results.values())
    assert not list((run.run_dir / "checkpoints" / "eval").iterdir())
    # the checkpoint of the last step holds the final weights: the evaluator's loader gives the model that
    # `vlmlab eval` loads from final/ (another file, another loader), tensor for tensor, and the same scores
    config, finished = load_run(run.run_dir)
    held = load_checkpoint_model(config, run.run_dir / "checkpoints" / "last.ckpt").state_dict()
    assert held.keys() == finished.state_dict().keys()
    assert all(torch.equal(held[k], v) for k, v in finished.state_dict().items())
    final = evaluate_transfer(run.run_dir, ["spatialmap"], 2, write=False)["metrics"]["spatialmap"]
    assert results[4]["scores"]["spatialmap"] == final

    # in the tracker, at the row of the step whose update made those weights (Lightning's row k - 1)
    client = MlflowClient(mlflow_server)
    run_id = json.loads((run.run_dir / "tracking.json").read_text())["mlflow"]["run_id"]
    for key in ("spatialmap.vqa.ind", "spatialmap.tqa.ood"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, f"eval/{key}"))
        assert history == [(1, results[2]["flat"][key]), (3, results[4]["flat"][key])], key

    # --status shows the evaluator as part of the sweep
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        assert vlmlab_main(["sweep", str(file), "--status", "--json", "--output", str(tmp_path / "out")]) == 0
    (evaluator,) = json.loads(shown.getvalue())["evaluators"]
    assert evaluator["id"] == run.id and evaluator["state"] == "done"
    assert evaluator["detail"] == "2 evaluated, 0 waiting"


def test_the_csv_log_of_a_resume_keeps_the_rows_its_checkpoint_covers_and_drops_a_torn_line(tmp_path):
    from vlmlab.train.tracking import HistoryCSVLogger

    logs = tmp_path / "logs"
    logs.mkdir()
    rows = "".join(f"{0.5 + s},{s},{s / 10}\n" for s in range(6))
    (logs / "metrics.csv").write_text("lr/adapter,step,train/loss\n" + rows + "0.9,1")  # killed mid-append
    logger = HistoryCSVLogger(tmp_path, resumed_step=3)  # last.ckpt holds step 3: rows 0-2 stay
    logger.log_metrics({"train/loss": 0.33}, step=3)  # step 4, trained again after the resume
    logger.checkpointed(5)
    logger.log_metrics({"train/loss": 0.44, "val/acc": 1.0}, step=4)  # a new column: the file is rewritten
    logger.checkpointed(5)
    with open(logs / "metrics.csv", newline="") as handle:
        got = [(int(r["step"]), r["train/loss"], r.get("val/acc", "")) for r in csv.DictReader(handle)]
    assert got == [(0, "0.0", ""), (1, "0.1", ""), (2, "0.2", ""), (3, "0.33", ""), (4, "0.44", "1.0")]
