"""The slurm backend against a real one-node Slurm cluster on localhost (slurm/local-cluster.sh).

Submits small sweeps whose runs are tests/fixtures/fake_train.py (the `vlmlab train` contract without torch):
dependency order, a second submission that submits nothing, a failed stage-1 run whose dependants never
start (and what --status says), a task killed mid-way that resumes from its checkpoint when the sweep is
submitted again, and a SIGUSR1 pre-emption that checkpoints, requeues and resumes.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from vlmlab.cli import main as vlmlab_main
from vlmlab.presets import preset_root
from vlmlab.sweep.expand import expand, write_run_files
from vlmlab.sweep.spec import load_sweep
from vlmlab.sweep.state import SweepState

REPO = Path(__file__).resolve().parent.parent
PRESETS = preset_root()
FAKE_TRAIN = REPO / "tests" / "fixtures" / "fake_train.py"
FAKE = f"{{python}} {shlex.quote(str(FAKE_TRAIN))} {{config}} {{overrides}}"

pytestmark = pytest.mark.skipif(
    shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists(),
    reason="slurmctld is not installed (apt-get install slurmctld slurmd slurm-client munge; "
    "slurm/local-cluster.sh start does it)",
)

TWO_STAGES = f"""
name: slurm-test
base: {PRESETS}/model/tiny.yaml
axes:
  tokenizer: [clip-tiny, titok-tiny]
  fusion: [joint_decoder, mot]
stages:
  1: {{config: {{train: {{max_steps: 4}}}}, resources: {{time: "00:10:00", mem: 100M, cpus_per_task: 1}}}}
  2: {{config: {{train: {{max_steps: 2}}}}, resources: {{time: "00:10:00", mem: 100M}}}}
"""

ONE_RUN = f"""
name: slurm-resume
base: {PRESETS}/model/tiny.yaml
stages:
  1: {{config: {{train: {{max_steps: 60}}}}}}
"""


@pytest.fixture(scope="module")
def cluster() -> None:
    """Start (idempotently) the localhost cluster; fail, not skip, when Slurm is installed but will not run."""
    result = subprocess.run(
        [str(REPO / "slurm" / "local-cluster.sh"), "start"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"slurm/local-cluster.sh start failed:\n{result.stdout}\n{result.stderr}"


def sweep(*args: str) -> str:
    """`vlmlab sweep ...` in this process; returns what it printed."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = vlmlab_main(["sweep", *args])
    assert code == 0, buffer.getvalue()
    return buffer.getvalue()


def status(file: Path, out: Path) -> dict[str, dict]:
    return {
        run["id"]: run
        for run in json.loads(sweep(str(file), "--status", "--json", "--output", str(out)))["runs"]
    }


def wait_until(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def squeue(job: str) -> str:
    result = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True)
    return result.stdout.strip()


def settled(file: Path, out: Path) -> bool:
    return not any(run["state"] in ("running", "pending") for run in status(file, out).values())


def test_two_stage_sweep_order_failure_and_idempotence(cluster: None, tmp_path: Path) -> None:
    file = tmp_path / "two.yaml"
    file.write_text(TWO_STAGES)
    out = tmp_path / "sweep out"  # a space: paths reach sbatch directives and shell commands quoted
    dag = expand(load_sweep(file, output_dir=out))
    by_label = {(r.stage, r.labels["model.tokenizer"], r.labels["model.fusion"]): r for r in dag}
    titok_s1 = by_label[(1, "titok-tiny", "joint_decoder")]
    titok_kids = [by_label[(2, "titok-tiny", f)] for f in ("joint_decoder", "mot")]
    assert len(dag) == 6  # stage 1: JD x 2 tokenizers (MoT has none); stage 2: 2 x {JD, MoT}

    # 1. The titok stage-1 run fails: its dependants are never started, and --status says why.
    failing = FAKE + " --step-seconds 0.1 --fail-if model.tokenizer=titok-tiny"
    text = sweep(str(file), "--backend", "slurm", "--output", str(out), "--command", failing)
    assert "0 done, 0 queued or running, 6 to submit" in text
    assert (
        text.count("submitted stage 1") == 1 and text.count("submitted stage 2") == 2
    )  # one array per parent
    wait_until(lambda: settled(file, out), what="the sweep to settle")
    states = status(file, out)
    assert states[titok_s1.id]["state"] == "failed"
    assert states[titok_s1.id]["detail"].startswith("exit code 3")
    for kid in titok_kids:
        assert states[kid.id]["state"] == "failed"
        assert states[kid.id]["detail"] == f"dependency never satisfied: parent {titok_s1.key} failed"
        assert not kid.log_path.exists()  # never started
    done = [run for run in dag if run.labels["model.tokenizer"] == "clip-tiny"]
    assert all(states[run.id]["state"] == "done" for run in done)
    for run in done:  # stage-2 runs (the MoT one included) started after their stage-1 run finished
        if run.parents:
            parent = dag.runs[run.parents[0]]
            assert parent.labels["model.fusion"] == "joint_decoder"
            child, first = (json.loads(r.result_path.read_text()) for r in (run, parent))
            assert child["started"] >= first["finished"]

    # 2. Submitted again (the failure fixed): only the three unfinished runs go in.
    fixed = FAKE + " --step-seconds 0.1"
    text = sweep(str(file), "--backend", "slurm", "--output", str(out), "--command", fixed)
    assert "3 done, 0 queued or running, 3 to submit" in text
    wait_until(lambda: all(run.is_done() for run in dag), what="all runs to finish")

    # 3. And again: nothing to submit, the state file is untouched.
    before = (out / "sweep_state.json").read_text()
    text = sweep(str(file), "--backend", "slurm", "--output", str(out), "--command", fixed)
    assert "6 done, 0 queued or running, 0 to submit" in text and "submitted" not in text
    assert (out / "sweep_state.json").read_text() == before
    assert all(state["state"] == "done" for state in status(file, out).values())


def test_killed_and_preempted_runs_resume(cluster: None, tmp_path: Path) -> None:
    file = tmp_path / "one.yaml"
    file.write_text(ONE_RUN)
    out = tmp_path / "out"
    (run,) = expand(load_sweep(file, output_dir=out))
    marker = run.run_dir / "checkpoints" / "last.ckpt"
    command = FAKE + " --step-seconds 0.1"

    def step() -> int:
        return int(marker.read_text()) if marker.exists() else 0

    def job() -> str:
        return SweepState(out).runs[run.id]["job_id"]

    # Pre-emption: SIGUSR1 (what --signal=USR1@90 sends) -> checkpoint + `scontrol requeue` -> resumes.
    sweep(str(file), "--backend", "slurm", "--output", str(out), "--command", command)
    wait_until(lambda: step() >= 3, what="a few training steps")
    subprocess.run(["scancel", "--signal=USR1", job()], check=True)
    wait_until(lambda: "requeueing" in run.log_path.read_text(), what="the requeue")
    # Slurm holds a requeued job for ~2 minutes (BeginTime); let it start now to keep the test short.
    wait_until(lambda: squeue(job()) == "PENDING BeginTime", what="the requeued job to pend")
    time.sleep(2)  # slurmd refuses credentials issued in the second the old incarnation was revoked
    subprocess.run(["scontrol", "update", f"JobId={job()}", "StartTime=now"], check=True)
    assert "(restart 0)" in run.log_path.read_text()
    wait_until(lambda: "(restart 1)" in run.log_path.read_text(), what="the requeued task to start")

    # Killed mid-way (scancel): --status says so; submitted again, it resumes from its checkpoint.
    requeued_at = step()
    wait_until(lambda: step() >= requeued_at + 3, what="steps after the requeue")
    subprocess.run(["scancel", job()], check=True)
    wait_until(lambda: status(file, out)[run.id]["state"] == "failed", what="the cancelled state")
    assert "cancelled" in status(file, out)[run.id]["detail"]
    killed_at = step()
    assert 0 < killed_at < 60 and not run.is_done()
    text = sweep(str(file), "--backend", "slurm", "--output", str(out), "--command", command)
    assert "1 to submit" in text
    wait_until(run.is_done, timeout=60, what="the resumed run to finish")
    starts = [int(n) for n in re.findall(r"from step (\d+) to 60", run.log_path.read_text())]
    assert (
        len(starts) == 3 and 0 == starts[0] < starts[1] < starts[2] == killed_at
    )  # fresh, requeued, resubmitted
    assert json.loads(run.result_path.read_text())["resumed_from"] == killed_at


def test_cancel(cluster: None, tmp_path: Path) -> None:
    file = tmp_path / "one.yaml"
    file.write_text(ONE_RUN)
    out = tmp_path / "out"
    (run,) = expand(load_sweep(file, output_dir=out))
    sweep(str(file), "--backend", "slurm", "--output", str(out), "--command", FAKE + " --step-seconds 0.5")
    wait_until(lambda: status(file, out)[run.id]["state"] == "running", what="the run to start")
    text = sweep(str(file), "--cancel", "--output", str(out))
    assert "cancelled 1 job(s)" in text
    wait_until(lambda: status(file, out)[run.id]["state"] == "failed", what="the cancelled state")
    assert "cancelled" in status(file, out)[run.id]["detail"] and not run.is_done()


REAL_RUN = f"""
name: slurm-preempt
base: {PRESETS}/model/tiny.yaml
stages:
  1:
    config:
      data:
        max_length: 96
        micro_batch_size: 4
        train: [{{kind: synthetic, task: spatialmap, mode: caption, difficulty: {{num_objects: 2}}}}]
      train: {{stage: 1, freeze: unfreeze-all, max_steps: 40, global_batch_size: 8,
              checkpoint_every_n_steps: 1000, deterministic: true}}
    resources: {{time: "00:20:00", cpus_per_task: 1}}
"""


@pytest.fixture(scope="module")
def uninterrupted_real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The weights both pre-emption cases must end with: the same run config, trained without interruption
    outside Slurm (in this process: the process boundary is the Slurm job's, not the reference's)."""
    from test_training import cli

    root = tmp_path_factory.mktemp("uninterrupted")
    file = root / "real.yaml"
    file.write_text(REAL_RUN)
    dag = expand(load_sweep(file, output_dir=root / "out"))
    write_run_files(dag)
    (run,) = dag
    code, error = cli(str(run.config_path), f"train.output_dir={root / 's'}")
    assert code == 0, error
    return root / "s" / "final" / "weights.safetensors"


@pytest.mark.slow(seconds=70)
@pytest.mark.parametrize("how", ["usr1", "scontrol-requeue"])
def test_real_runs_preempted_before_their_first_checkpoint_resume_exactly(
    cluster: None, tmp_path: Path, how: str, uninterrupted_real_run: Path
) -> None:
    """A real `vlmlab train` in a Slurm job, signalled long before its first periodic checkpoint (the
    time-limit USR1, or SIGTERM from `scontrol requeue`): it saves the next optimizer step with its data
    position, is requeued, resumes, and ends with the weights of an uninterrupted run."""
    import torch
    from safetensors.torch import load_file

    file = tmp_path / "real.yaml"
    file.write_text(REAL_RUN)
    out = tmp_path / "out"
    (run,) = expand(load_sweep(file, output_dir=out))
    sweep(str(file), "--backend", "slurm", "--output", str(out))

    def job() -> str:
        return SweepState(out).runs[run.id]["job_id"]

    def log() -> str:  # the log is being written: a read may end inside a multi-byte character
        return run.log_path.read_text(errors="replace") if run.log_path.exists() else ""

    wait_until(lambda: "step 10/40" in log(), timeout=180, what="the run to train ten steps")
    if how == "usr1":
        subprocess.run(["scancel", "--signal=USR1", job()], check=True)
    else:
        subprocess.run(["scontrol", "requeue", job()], check=True)
    if how == "usr1":  # the time-limit signal leaves the run its grace time: it checkpoints the next step
        wait_until(lambda: "checkpoint of step" in log(), timeout=60, what="the checkpoint on the signal")
    # (scontrol requeue: SIGTERM, then SIGKILL after KillWait; a checkpoint then is a bonus, not a promise)
    wait_until(lambda: squeue(job()).startswith("PENDING"), timeout=60, what="the requeued job to pend")
    time.sleep(2)  # slurmd refuses credentials issued in the second the old incarnation was revoked
    subprocess.run(["scontrol", "update", f"JobId={job()}", "StartTime=now"], check=True)
    wait_until(run.is_done, timeout=240, what="the resumed run to finish")
    stopped = [int(n) for n in re.findall(r"checkpoint of step (\d+) in place", log())]
    assert len(stopped) <= 1 and all(0 < n < 40 for n in stopped), log()[-2000:]
    assert stopped or how != "usr1"
    assert "(restart 1)" in log()  # it did run again after the requeue
    a = load_file(str(uninterrupted_real_run))
    b = load_file(str(run.run_dir / "final" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


EVALUATED = f"""
name: slurm-eval
base: {PRESETS}/model/tiny.yaml
axes:
  fusion: [joint_decoder, cross_attention]
stages:
  1: {{config: {{train: {{max_steps: 6}}, eval: {{every_n_checkpoints: 2, transfer_samples: 4}}}},
      resources: {{time: "00:10:00", mem: 500M}}}}
"""


def test_checkpoint_evaluators_are_jobs_of_the_dag(cluster: None, tmp_path: Path) -> None:
    """eval.every_n_checkpoints: an evaluator array beside the training array, started after it, listed by
    --status, and not submitted again once done (the evaluation itself: tests/test_tracking.py)."""
    file = tmp_path / "evaluated.yaml"
    file.write_text(EVALUATED)
    out = tmp_path / "out"
    dag = expand(load_sweep(file, output_dir=out))
    command = FAKE + " --step-seconds 0.5"
    text = sweep(str(file), "--backend", "slurm", "--output", str(out), "--command", command)
    assert "submitted stage 1: job array" in text
    assert "submitted stage 1 checkpoint evaluators: job array" in text and "(2 runs)" in text
    entries = json.loads((out / "sweep_state.json").read_text())["evaluators"]
    assert set(entries) == {run.id for run in dag}
    script = Path(next(iter(entries.values()))["script"]).read_text()
    trainings = sorted(SweepState(out).runs[run.id]["job_id"] for run in dag)
    assert f"#SBATCH --dependency=after:{':'.join(trainings)}" in script

    def evaluators() -> dict[str, dict]:
        shown = json.loads(sweep(str(file), "--status", "--json", "--output", str(out)))
        return {entry["id"]: entry for entry in shown["evaluators"]}

    wait_until(lambda: all(e["state"] == "done" for e in evaluators().values()), 120, "the evaluators")
    assert all(run.is_done() for run in dag)
    assert {e["detail"] for e in evaluators().values()} == {"0 evaluated, 0 waiting"}
    text = sweep(str(file), "--backend", "slurm", "--output", str(out), "--command", command)
    assert "submitted" not in text  # done runs whose checkpoints were all evaluated: nothing to submit
