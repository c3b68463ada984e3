"""Evaluation of a run's intermediate checkpoints off the training path (`eval.every_n_checkpoints`).

Training links every n-th resume checkpoint into `<run>/checkpoints/eval/stepNNNNNNNNN.ckpt`
(vlmlab/train/callbacks.py: a hard link made after the checkpoint was renamed into place, so the name only
ever points at a complete file, and the file outlives `last.ckpt`'s replacement and the finished run's
cleanup). The evaluator, a separate process (`vlmlab eval --checkpoints RUN [--follow]`, which `vlmlab sweep`
starts beside each such run: a process on the local backend, a job of the DAG on Slurm), takes them in step
order:

1. builds the run's model and loads the checkpoint's weights (tensors only: `weights_only=True`);
2. scores it: the transfer protocol on the run's synthetic tasks (`eval.transfer_samples`) and the
   benchmarks of `vlmlab eval --benchmark` (`eval.benchmarks`, predictions in `eval/checkpoints/stepN/`);
3. writes `<run>/eval/checkpoints/stepNNNNNNNNN.json` atomically ({"step", "scores", "flat", "tracked"});
4. logs the flat scores as `eval/<name>` into the run's tracker run at the checkpoint's row (Lightning logs
   optimizer step k as row k - 1, so the scores of the weights after step k sit beside that step's loss);
5. removes the held link: the checkpoint is kept exactly until its evaluation has read it.

With `--follow` it waits for more until the training is over (result.json, or no process holds the run's
lock and none took it within `--start-grace` seconds) and nothing is held any more. A tracker that fails
does not lose a result: the file says `"tracked": false` and the next pass logs it again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import struct
import time
from pathlib import Path
from typing import Any

from vlmlab.config import ExperimentConfig, load_config
from vlmlab.errors import ConfigError
from vlmlab.files import atomic_write_text
from vlmlab.runs.tracking import log_to_mlflow_run, log_to_wandb_group, numeric_metrics, read_tracking

log = logging.getLogger("vlmlab.eval")

HELD_DIR = Path("checkpoints") / "eval"  # where training links the checkpoints it holds for us
RESULTS_DIR = Path("eval") / "checkpoints"
PREFIX = "eval/"  # tracker metric names: eval/<benchmark or task.modality.split>
STEP_KEY = "checkpoint/step"  # W&B's x axis of the evaluation run


def held_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(optimizer step, file) of every checkpoint held for evaluation, oldest first (the `.tmp` names of a
    link being made are not complete and never listed)."""
    found = []
    for path in (Path(run_dir) / HELD_DIR).glob("step*.ckpt"):
        digits = path.stem.removeprefix("step")
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)


def result_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / RESULTS_DIR / f"step{step:09d}.json"


def read_results(run_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Step -> the evaluation file written for that checkpoint."""
    results = {}
    for path in sorted((Path(run_dir) / RESULTS_DIR).glob("step*.json")):
        try:
            data = json.loads(path.read_text())
            results[int(data["step"])] = data
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return results


def load_checkpoint_model(config: ExperimentConfig, checkpoint: Path) -> Any:
    """The run's model with the weights of a resume checkpoint: built as the training built it (the parent's
    LoRA adapters replayed, this stage's added), then every tensor of the checkpoint loaded strictly."""
    import torch

    from vlmlab.models.checkpoint import load_stage_checkpoint, resolve_checkpoint
    from vlmlab.models.lora import add_lora, hand_off, lora_adapters
    from vlmlab.models.vlm import build_vlm
    from vlmlab.recipes import load_recipe

    torch.manual_seed(config.train.seed)
    model = build_vlm(config.model)
    if config.train.init_from:  # the parent's adapters give the module its shape
        load_stage_checkpoint(model, resolve_checkpoint(config.train.init_from))
    groups = load_recipe(config.train.freeze).lora_groups(config.train.stage)
    hand_off(model, groups, config.train.lora)
    for group in groups:
        if group not in lora_adapters(model):
            add_lora(model, group, config.train.lora)
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    except Exception as error:  # truncated, not a checkpoint, or a pickle that would run code
        raise ConfigError(f"{checkpoint} is not a readable training checkpoint: {error}") from None
    weights = {name.removeprefix("model."): value for name, value in state.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{checkpoint} does not fit the run's model: {len(missing)} missing tensors "
            f"({', '.join(missing[:3])}), {len(unexpected)} unexpected ({', '.join(unexpected[:3])})."
        )
    return model.eval()


def evaluate_checkpoint(run_dir: Path, config: ExperimentConfig, step: int, checkpoint: Path) -> dict:
    """Score one held checkpoint as `eval` asks; the scores as records hold them (nested, with intervals)."""
    from vlmlab.eval.benchmark_eval import evaluate_benchmarks
    from vlmlab.scoring.transfer import TASKS, evaluate_transfer, trained_tasks

    settings = config.eval
    model = load_checkpoint_model(config, checkpoint)
    if settings.device:
        import torch

        model.to(torch.device(settings.device))
    scores: dict[str, Any] = {}
    if settings.transfer_samples:
        tasks = list(settings.tasks) or trained_tasks(config) or list(TASKS)
        record = evaluate_transfer(
            run_dir, tasks, settings.transfer_samples, write=False, loaded=(config, model)
        )
        scores.update({task: record["metrics"][task] for task in tasks})
    if settings.benchmarks:
        entries = [
            {
                "name": name,
                "path": path,
                **({"limit": settings.benchmark_limit} if settings.benchmark_limit else {}),
            }
            for name, path in settings.benchmarks.items()
        ]
        record = evaluate_benchmarks(
            run_dir,
            entries,
            ("standard",),
            write=False,
            out_dir=run_dir / RESULTS_DIR / f"step{step:09d}",
            loaded=(config, model),
        )
        scores.update({k: v for k, v in record["metrics"].items() if k in settings.benchmarks})
    return scores


def _log_to_trackers(run_dir: Path, result: dict[str, Any]) -> bool:
    """The result's flat scores into the run's tracker(s); False if one of them failed (tried again later)."""
    metrics = {PREFIX + k: v for k, v in result["flat"].items()}
    row = max(0, int(result["step"]) - 1)
    tracking = read_tracking(run_dir)
    ok = True
    for tracker in ("mlflow", "wandb"):
        if tracker not in tracking:
            continue
        try:
            if tracker == "mlflow":
                log_to_mlflow_run(run_dir, metrics, row)
            else:
                name = (
                    json.loads((run_dir / "sweep_run.json").read_text()).get("id", run_dir.name)
                    if (run_dir / "sweep_run.json").exists()
                    else run_dir.name
                )
                log_to_wandb_group(run_dir, name, metrics, row, STEP_KEY)
        except Exception as error:  # the result stays on disk, marked untracked
            ok = False
            log.warning(
                "%s: logging the evaluation of step %d failed (%s); kept in %s",
                tracker,
                result["step"],
                " ".join(str(error).split())[:200],
                result_path(run_dir, result["step"]),
            )
    return ok


def evaluate_held(run_dir: str | Path) -> list[int]:
    """Evaluate every checkpoint held now (oldest first) and log what was not logged yet; the steps done."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise ConfigError(f"{str(run_dir)!r} is not a vlmlab run folder (no config.yaml).")
    config: ExperimentConfig | None = None
    done = []
    for step, path in held_checkpoints(run_dir):
        config = config or load_config(ExperimentConfig, [config_path])
        target = result_path(run_dir, step)
        if not target.exists():  # a kill after the result and before the unlink: not evaluated twice
            started = time.time()
            scores = evaluate_checkpoint(run_dir, config, step, path)
            result = {
                "step": step,
                "scores": scores,
                "flat": numeric_metrics(scores),
                "seconds": round(time.time() - started, 1),
                "tracked": False,
            }
            atomic_write_text(target, json.dumps(result, indent=2) + "\n")
            log.info("evaluated %s step %d: %s", run_dir, step, result["flat"])
        path.unlink(missing_ok=True)  # read: the checkpoint may go now
        done.append(step)
    for step, result in sorted(read_results(run_dir).items()):
        if not result.get("tracked") and _log_to_trackers(run_dir, result):
            result["tracked"] = True
            atomic_write_text(result_path(run_dir, step), json.dumps(result, indent=2) + "\n")
    return done


def needs_evaluator(run_dir: str | Path, every_n_checkpoints: int) -> bool:
    """Whether a run with `eval.every_n_checkpoints` still needs its evaluator: it has not finished, or it
    left checkpoints held or results not in its tracker yet (an evaluator that was stopped)."""
    if not every_n_checkpoints:
        return False
    run_dir = Path(run_dir)
    if not (run_dir / "result.json").exists() or held_checkpoints(run_dir):
        return True
    return any(not result.get("tracked") for result in read_results(run_dir).values())


def training_alive(run_dir: Path) -> bool:
    """Whether a `vlmlab train` holds the run's lock (vlmlab/train/preflight.py: RunLock, a POSIX lock that
    the OS releases when the process dies)."""
    path = run_dir / ".lock"
    if not path.exists():
        return False
    # F_GETLK asks who holds the lock without taking it: taking it, even for a moment, could make a
    # training that starts at that moment refuse the folder as in use
    query = struct.pack("@hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0)  # struct flock: whole file
    with open(path, "rb") as handle:
        answer = fcntl.fcntl(handle.fileno(), fcntl.F_GETLK, query)
    return struct.unpack("@hhqqi4x", answer)[0] != fcntl.F_UNLCK


def follow(run_dir: str | Path, poll_seconds: float = 2.0, start_grace: float = 600.0) -> list[int]:
    """Evaluate held checkpoints as they come until the training is over and none is left."""
    run_dir = Path(run_dir)
    started = time.monotonic()
    done: list[int] = []
    seen_alive = False
    while True:
        if (run_dir / "config.yaml").exists():
            done += evaluate_held(run_dir)
        finished = (run_dir / "result.json").exists()
        alive = training_alive(run_dir)
        seen_alive = seen_alive or alive
        waiting = not seen_alive and time.monotonic() - started < start_grace  # not started yet
        if (finished or not (alive or waiting)) and not held_checkpoints(run_dir):
            if not finished:
                log.info("%s: the training is not running; evaluated what it held", run_dir)
            return done
        time.sleep(poll_seconds)


__all__ = [
    "HELD_DIR",
    "RESULTS_DIR",
    "evaluate_checkpoint",
    "evaluate_held",
    "follow",
    "held_checkpoints",
    "load_checkpoint_model",
    "needs_evaluator",
    "read_results",
    "result_path",
    "training_alive",
]
