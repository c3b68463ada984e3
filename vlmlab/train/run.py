"""One stage run, end to end: build, hand off from the parent, freeze, train, validate, export, record.

Run folder layout (`train.output_dir`):
    config.yaml            the resolved config
    checkpoints/last.ckpt  full training state for resume (written atomically every n steps)
    final/, best/          stage checkpoints: the trained delta + a pointer to the parent (checkpoint.py)
    logs/                  CSV and TensorBoard logs (metrics.csv keeps its history across resumes), tracker
                           outboxes (vlmlab/train/tracking.py)
    tracking.json          the MLflow / W&B run this stage run logs to (a resume continues it)
    checkpoints/eval/      checkpoints held for the evaluator beside the run (eval.every_n_checkpoints)
    eval/checkpoints/      its results, one file per checkpoint step (vlmlab/eval/checkpoints.py)
    result.json            written last, atomically: its existence means the run is done
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf

from vlmlab.config import ExperimentConfig, to_dict
from vlmlab.data.sources import first_sample, merge_health
from vlmlab.data.stream import data_health
from vlmlab.errors import ConfigError, TrainingStopped, unpickling_refusal
from vlmlab.faults import inject_fault
from vlmlab.files import atomic_write_text
from vlmlab.models.checkpoint import (
    load_stage_checkpoint,
    resolve_checkpoint,
    save_stage_checkpoint,
)
from vlmlab.models.flops import flop_model
from vlmlab.models.loss import resolve_loss_impl
from vlmlab.models.open_weight import OpenWeightVLM, load_open_weight
from vlmlab.models.vlm import VisionLanguageModel, build_vlm
from vlmlab.recipes import load_recipe
from vlmlab.runs.record import run_record, write_record
from vlmlab.runs.tracking import numeric_metrics
from vlmlab.scoring.transfer import evaluate_transfer_after
from vlmlab.train.callbacks import AtomicCheckpointIO, AtomicLastCheckpoint, PeriodicValidation
from vlmlab.train.data import TrainData
from vlmlab.train.freezing import apply_freezing
from vlmlab.train.module import VLMModule
from vlmlab.train.preemption import Preemption, slurm_job_id
from vlmlab.train.preflight import (
    RunLock,
    check_run_folder,
    launcher_rank,
    remove_leftovers,
    train_device,
    validate,
)
from vlmlab.train.tracking import FlushCovered, build_loggers, tracker_session, trackers

log = logging.getLogger("vlmlab.train")


def build_model(config: ExperimentConfig) -> tuple[VisionLanguageModel | OpenWeightVLM, Path | None]:
    """The model of this run, with its parent's weights applied (stage hand-off); an open-weight model
    (model.open_weight) as released, through its own processor."""
    torch.manual_seed(config.train.seed)  # random-init bases are a function of the seed
    if config.model.open_weight:  # from_pretrained returns it in eval mode
        return load_open_weight(config.model).train(), None
    model = build_vlm(config.model)
    model.loss_impl = resolve_loss_impl(config.train.loss_impl, train_device(config))
    parent = None
    if config.train.init_from:
        parent = resolve_checkpoint(config.train.init_from)
        load_stage_checkpoint(model, parent)
    elif config.train.stage > 1 and not load_recipe(config.train.freeze).skip_stage1:
        log.warning("stage %d run without train.init_from: starting from the base models", config.train.stage)
    return model, parent


def latest_checkpoint(folder: Path) -> tuple[Path | None, int]:
    """The newest resumable state: `last.ckpt`, or an `hpc_ckpt_*.ckpt` that an older vlmlab let Lightning
    write on pre-emption, whichever holds the later step (last.ckpt on a tie)."""
    best: tuple[Path | None, int] = (None, -1)
    for path in [folder / "last.ckpt", *sorted(folder.glob("hpc_ckpt_*.ckpt"))]:
        if path.exists():
            step = checkpoint_step(path)
            if step > best[1]:
                best = (path, step)
    return (best[0], best[1]) if best[0] is not None else (None, 0)


def _strategy(config: ExperimentConfig) -> Any:
    name = config.train.strategy  # one of config.STRATEGIES, checked when the config loaded
    if name == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        # FSDP2 over every process (VLMModule.configure_model shards per decoder layer); checkpoints are
        # gathered into one file on rank 0, so resume and stage export read plain tensors
        return ModelParallelStrategy(
            data_parallel_size=config.train.num_nodes * config.train.devices,
            tensor_parallel_size=1,
            save_distributed_checkpoint=False,
        )
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=False)
    return name


def checkpoint_step(path: Path) -> int:
    """The optimizer step a resume checkpoint was written at; loading runs no code (`weights_only=True`)."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(state, dict) or not {"global_step", "state_dict", "loops"} <= state.keys():
            raise ConfigError(
                f"{path} is not a training checkpoint (no global_step / state_dict / loops); delete it to "
                "resume from scratch."
            )
        return int(state["global_step"])
    except pickle.UnpicklingError as error:
        reason = unpickling_refusal(error)
        raise ConfigError(
            f"{path} is not a plain checkpoint: loading it would run code ({reason}). vlmlab loads tensors "
            "only; delete the file if you did not write it."
        ) from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, TypeError) as error:
        raise ConfigError(
            f"{path} is truncated or not a checkpoint ({str(error).splitlines()[0][:160]}); delete it to resume "
            "from scratch."
        ) from None


def train(config: ExperimentConfig) -> dict[str, Any]:
    out = Path(config.train.output_dir)
    accumulate = validate(config)  # before anything is written
    recipe = load_recipe(config.train.freeze)
    _check_lora(config, recipe.lora_groups(config.train.stage))
    resolved = to_dict(config)
    done = check_run_folder(out, resolved)
    if done is not None:
        log.info("%s is already done (result.json exists, same config); nothing to do", out)
        return done
    rank = launcher_rank(config.train.devices)
    with RunLock(out) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            for path in remove_leftovers(out):
                log.info("removed %s, left by an interrupted write", path)
        if config.train.method == "grpo":
            from vlmlab.train.grpo import train_grpo  # TRL is imported only by GRPO runs

            record = train_grpo(config, out, resolved)
        elif config.train.method == "eval":
            record = _evaluate_only(config, out, resolved)
        else:
            record = _train(config, out, resolved, accumulate)
        return record


def _check_lora(config: ExperimentConfig, lora_groups: list[str]) -> None:
    """The layouts LoRA is not wired into, refused in one line before anything is built."""
    if not lora_groups:
        return
    if config.train.method == "grpo":
        raise ConfigError(
            f"Recipe {config.train.freeze!r} trains the {', '.join(lora_groups)} through LoRA, which GRPO runs do "
            "not support (valid: train.method sft, or a recipe without lora)."
        )
    if config.model.open_weight and config.train.strategy == "fsdp":
        raise ConfigError(
            f"Recipe {config.train.freeze!r} trains an open-weight model through LoRA, whose export merges the "
            "adapters on one process: train it with train.strategy auto or ddp (LoRA adapters are small)."
        )


def save_checkpoint(
    model: VisionLanguageModel | OpenWeightVLM,
    folder: Path,
    resolved: dict[str, Any],
    parent: Path | None,
    include_frozen: bool,
    metrics: dict[str, float],
    state: dict[str, torch.Tensor] | None,
) -> Path:
    """A stage checkpoint (vlmlab's models: the trained delta on its parent) or, for an open-weight model,
    its save_pretrained folder (the model and processor as released, with the trained weights)."""
    if isinstance(model, OpenWeightVLM):
        sharded = resolved["train"]["strategy"] == "fsdp"
        return model.save(folder, resolved, metrics, state if sharded else None)
    return save_stage_checkpoint(model, folder, resolved, parent, include_frozen, metrics, state)


def _evaluate_only(config: ExperimentConfig, out: Path, resolved: dict[str, Any]) -> dict[str, Any]:
    """train.method: eval: the starting model evaluated as it is (the "Base" of Tables 8-11)."""
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    started = time.time()
    model, _ = build_model(config)
    model.eval()
    data = TrainData(config, model)
    metrics = data.evaluate() if config.data.val else {}
    record = run_record(
        out,
        resolved,
        metrics=metrics,
        chance=data.chance_levels() if config.data.val else {},
        timings={"eval_seconds": round(time.time() - started, 1), "steps": 0},
        checkpoint=str(getattr(model, "source", config.model.open_weight)),
        base_weights=model.base_weights,
    )
    del model
    evaluate_transfer_after(config, out, rank_zero=True)
    write_record(record, out / "result.json")
    return record


def _train(config: ExperimentConfig, out: Path, resolved: dict[str, Any], accumulate: int) -> dict[str, Any]:
    last_ckpt = out / "checkpoints" / "last.ckpt"
    checkpointer = AtomicLastCheckpoint(
        last_ckpt, config.train.checkpoint_every_n_steps, hold_every_n=config.eval.every_n_checkpoints
    )
    # SIGUSR1 / SIGTERM: "checkpoint at the next step, requeue"; the trackers are closed however it ends
    with Preemption(checkpointer) as preemption, contextlib.ExitStack() as closing:
        return _fit_and_export(config, out, resolved, accumulate, preemption, closing)


def _fit_and_export(
    config: ExperimentConfig,
    out: Path,
    resolved: dict[str, Any],
    accumulate: int,
    preemption: Preemption,
    closing: contextlib.ExitStack,
) -> dict[str, Any]:
    result_path = out / "result.json"
    checkpointer = preemption.checkpoint
    last_ckpt = checkpointer.path
    for source in [*config.data.train, *config.data.val]:  # seconds, before anything heavy is built
        first_sample(source, seed=config.train.seed)
    resume_from, done_steps = latest_checkpoint(last_ckpt.parent)
    started = time.time()
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    if config.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    model, parent = build_model(config)
    freezing = apply_freezing(model, load_recipe(config.train.freeze), config.train.stage, config.train.lora)

    data = TrainData(config, model)

    best: dict[str, Any] = {"score": -1.0, "step": None, "metrics": {}}
    if resume_from and (out / "best" / "meta.json").exists():  # the best so far survives a kill
        kept = json.loads((out / "best" / "meta.json").read_text())["metrics"]
        metrics = {k: v for k, v in kept.items() if k != "step"}
        best.update(score=metrics.get("mean_accuracy", -1.0), step=kept.get("step"), metrics=metrics)
    include_frozen = config.train.init_from is None and config.model.backbone_weights is None

    def on_validation(step: int, metrics: dict[str, float]) -> None:
        if not metrics:
            return
        log.info("step %d validation: %s", step, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        score = metrics.get("mean_accuracy", -1.0)
        # every rank sees the same metrics, so every rank takes part in gathering sharded weights
        if config.train.select_best and score > best["score"]:
            best.update(score=score, step=step, metrics=dict(metrics))
            state = full_state()
            if trainer.is_global_zero:
                save_checkpoint(
                    model, out / "best", resolved, parent, include_frozen, {**metrics, "step": step}, state
                )
        best.setdefault("last", {})
        best["last"] = dict(metrics)

    module = VLMModule(config, model)
    if isinstance(model, VisionLanguageModel):  # FLOPs per step for TFLOP/s and MFU (after freezing)
        module.flop_model = flop_model(model, config.model)

    def full_state() -> dict[str, torch.Tensor]:
        """The complete weights on rank 0 (FSDP gathers its shards; other strategies just return them)."""
        state = trainer.strategy.lightning_module_state_dict()
        return {name.removeprefix("model."): value for name, value in state.items()}

    # built once the strategy knows this process's rank: each rank reads its own share of every batch slot
    module.loader_factory = lambda rank, world_size: data.train_loader(
        rank=rank, world_size=world_size, keep=accumulate + 3
    )
    module.data_state_dir = out / "checkpoints" / "data_state"
    loggers = build_loggers(config, out, resolved, done_steps)
    closing.enter_context(tracker_session(loggers))
    callbacks = [
        # validation before the checkpoint of the same step: once last.ckpt holds step k, the score of step k
        # (and best/, if it won) is on disk, so a run killed right after that checkpoint and resumed picks the
        # same best step as one never stopped (the other order lost step k's validation to such a kill)
        PeriodicValidation(
            config.train.val_every_n_steps,
            data.evaluate,
            on_validation,
            skip=lambda: preemption.stopped_at is not None,
        ),
        checkpointer,
        preemption,
        FlushCovered(checkpointer, loggers),  # after every callback that may write a checkpoint
        L.pytorch.callbacks.TQDMProgressBar(refresh_rate=max(1, accumulate)),
    ]
    plugins: list[Any] = [AtomicCheckpointIO()]  # checkpoints staged in their own folder, not $TMPDIR
    if SLURMEnvironment.detect():  # vlmlab handles the requeue signal itself (vlmlab/train/preemption.py)
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = L.Trainer(
        accelerator=config.train.accelerator,
        devices=config.train.devices,
        num_nodes=config.train.num_nodes,
        strategy=_strategy(config),
        precision=config.train.precision,
        max_steps=config.train.max_steps,
        max_epochs=-1,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=config.optim.grad_clip,
        deterministic=config.train.deterministic or None,
        logger=loggers,
        callbacks=callbacks,
        enable_checkpointing=False,
        default_root_dir=out / "checkpoints",  # where a pre-empted Slurm job's hpc_ckpt lands
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        log_every_n_steps=config.train.log_every_n_steps,
        plugins=plugins,
    )
    if resume_from:
        log.info("resuming from %s (step %d)", resume_from, done_steps)
    # once the model, data and Trainer are built: a run that failed before leaves nothing to resume; shared
    # files are global rank 0's alone (other nodes' processes too)
    if launcher_rank(config.train.devices) == 0:
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    try:
        trainer.fit(module, ckpt_path=str(resume_from) if resume_from else None, weights_only=True)
    finally:
        if module._loader is not None:
            module._loader.close()
    if preemption.stopped_at is not None:
        where = "requeued" if slurm_job_id() else "run the same command again to resume"
        raise TrainingStopped(
            f"{preemption.signal_name} received: stopped after step {preemption.stopped_at} with its checkpoint "
            f"in {last_ckpt}; {where}."
        )
    if "last" not in best and config.data.val:  # resumed after the last step: validate the final weights
        on_validation(trainer.global_step, data.evaluate())
    inject_fault("export")

    final = None
    state = full_state()
    if trainer.is_global_zero:
        final = save_checkpoint(
            model, out / "final", resolved, parent, include_frozen, best.get("last", {}), state
        )
    if module._loader is not None:
        health = data_health(module._loader.state_after(module._loader.batches))
    else:  # nothing left to train after a resume: the counts are in the restored state
        health = data_health(module._data_state or {})
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, health)
        health = merge_health(gathered)
    record = run_record(
        out,
        resolved,
        metrics=best.get("last", {}),
        chance=data.chance_levels(),
        timings={
            "train_seconds": round(time.time() - started, 1),
            "steps": trainer.global_step,
            "throughput": module.throughput.summary(),  # medians per device: tokens/s, TFLOP/s, MFU
            **({"compile": _compile_summary()} if config.train.compile else {}),
        },
        checkpoint=str((out / "best") if best["step"] is not None else final),
        best={"step": best["step"], "metrics": best["metrics"]} if config.train.select_best else None,
        parent=str(parent) if parent else None,
        freezing=freezing,
        base_weights=model.base_weights,  # what the delta sits on: source, hub revision, file sha256
        data=health,  # samples read, skipped as bad (by reason and shard), dropped as too long
    )
    trainer.strategy.barrier()  # every process reads the checkpoint rank 0 wrote
    evaluate_transfer_after(config, out, rank_zero=trainer.is_global_zero)
    if trainer.is_global_zero:  # last: result.json means done, so a kill during the evaluation repeats it
        for tracker in trackers(loggers):  # at the last row's step (Lightning logs step k as row k - 1)
            tracker.log_summary(
                numeric_metrics(record.get("metrics", {}), "result/"), trainer.global_step - 1
            )
        write_record(record, result_path)
        if not config.train.keep_resume_state:  # done: only the weight delta (final/, best/) is needed now
            for path in [last_ckpt, *last_ckpt.parent.glob("hpc_ckpt_*.ckpt")]:
                path.unlink(missing_ok=True)
            shutil.rmtree(last_ckpt.parent / "data_state", ignore_errors=True)
    return record


def _compile_summary() -> dict[str, Any]:
    """What torch.compile did in this process: graph breaks (each one warned about), graphs, frames."""
    from vlmlab.train.compile import compile_counters

    counters = compile_counters()
    for reason, count in counters["graph_break_reasons"].items():
        log.warning("compile: graph break (%d x): %s", count, reason)
    return counters


__all__ = ["train", "build_model"]
