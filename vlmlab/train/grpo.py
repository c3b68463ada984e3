"""GRPO fine-tuning of an open-weight VLM with the binary final-answer reward (paper, Appendix B.2, D.4).

The paper used verl's GRPO. vlmlab uses TRL's `GRPOTrainer` instead: it trains the transformers model object
vlmlab already loaded (same processor, same chat template, same freezing groups), runs on one GPU, several
(accelerate / DeepSpeed / FSDP) or, for tests, this CPU, and can generate rollouts with vLLM on GPUs
(`rl.use_vllm`); verl needs a Ray cluster and a vLLM / SGLang rollout engine, which cannot run in CI and
would be a second stack beside transformers. The algorithm is the same: per prompt `num_generations`
samples, advantages = reward minus the group mean (scaled by the group's standard deviation), a clipped
policy-gradient loss and a KL penalty (coefficient `rl.kl_coef`) to the starting model.

Table 15's settings are `RLConfig`'s defaults (vlmlab/config.py). The paper's batch sizes count prompts, as
verl does: 128 prompts x 5 samples = 640 completions per rollout, and training batch = rollout batch, so
each rollout gives one optimizer step on fresh samples (TRL: `generation_batch_size` 640 completions,
`per_device_train_batch_size x gradient_accumulation_steps x processes` = 640). Learning rate 1e-6,
constant, no warmup, AdamW with `optim.betas`, 15 epochs over the training prompts.

Reward: 1 when the option extracted after "Final answer:" (the paper's extraction, Appendix C) is the gold
answer, else 0, including answers with no extractable option. Best checkpoint: the validation sets
(`data.val`) are scored every `rl.eval_every_n_steps` steps (default: once per epoch) with the same
generation and extraction as every other run; the best mean accuracy is kept in `best/` (Tables 10-11
report the best RL checkpoint). The run folder has the layout of vlmlab/train/run.py; the resumable state is
the HF Trainer's checkpoint in `checkpoints/` (weights, optimizer, schedule, random states, position in the
epoch; loaded with weights_only), written every `train.checkpoint_every_n_steps` steps and at the step a
SIGUSR1 / SIGTERM arrives, after which the job is requeued inside Slurm; the same command resumes it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from vlmlab.config import ExperimentConfig
from vlmlab.data.chat_encode import ChatEncoder
from vlmlab.data.sources import open_source
from vlmlab.errors import ConfigError, TrainingStopped
from vlmlab.files import atomic_write_text
from vlmlab.models.open_weight import OpenWeightVLM, load_open_weight, trusted
from vlmlab.recipes import load_recipe
from vlmlab.runs.load import synthetic_image_size
from vlmlab.runs.record import run_record, write_record
from vlmlab.scoring.accuracy import score_item
from vlmlab.scoring.transfer import evaluate_transfer_after
from vlmlab.train.data import TrainData
from vlmlab.train.freezing import apply_freezing
from vlmlab.train.preemption import SignalFlag, requeue, slurm_job_id

log = logging.getLogger("vlmlab.train")


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a conversational one is a list of messages (the assistant's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        parts = []
        for message in completion:
            content = message.get("content") if isinstance(message, dict) else message
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(str(content or ""))
        return "".join(parts)
    return str(completion)


def final_answer_reward(
    completions: list[Any], answer: list[str], options: list[list[str]], **_: Any
) -> list[float]:
    """The binary reward of Appendix B.2: 1.0 for the correct final answer, 0.0 otherwise (wrong or not
    extractable), scored as validation scores a multiple-choice answer (vlmlab.scoring.accuracy.score_item)."""
    return [
        score_item(completion_text(completion), {"answer": gold, "options": choices})[0]
        for completion, gold, choices in zip(completions, answer, options, strict=True)
    ]


def prompt_dataset(config: ExperimentConfig, image_size: int) -> Any:
    """The training prompts of `data.train` (fixed splits: `num_samples` each) as TRL's conversational rows
    (a `datasets.Dataset`): the prompt messages with image placeholders, the images, and the gold answer
    with its options (the reward's columns)."""
    import datasets

    rows: list[dict[str, Any]] = []
    for source_config in config.data.train:
        if source_config.num_samples is None:
            raise ConfigError(
                "GRPO epochs need a fixed set of prompts: give data.train source "
                f"{source_config.name or source_config.task!r} a num_samples."
            )
        source = open_source(source_config, seed=config.train.seed, image_size=image_size)
        for sample in source.samples_in_order(source_config.num_samples):
            if not sample.get("options") or not isinstance(sample.get("answer"), str):
                raise ConfigError(
                    f"GRPO's reward needs multiple-choice samples (options + answer); {sample.get('id')!r} has "
                    "none."
                )
            messages, images = ChatEncoder.messages(sample)
            rows.append(
                {
                    "prompt": messages[:-1],  # without the supervised answer
                    "images": images,
                    "answer": sample["answer"],
                    "options": list(sample["options"]),
                }
            )
    return datasets.Dataset.from_list(rows)


def grpo_arguments(config: ExperimentConfig, out: Path, world_size: int = 1) -> Any:
    """TRL's GRPOConfig for Table 15's settings (module docstring)."""
    from trl import GRPOConfig

    rl, optim = config.rl, config.optim
    completions = rl.prompts_per_step * rl.num_generations
    per_step = rl.micro_batch_size * world_size
    if completions % per_step:
        raise ConfigError(
            f"rl.prompts_per_step x rl.num_generations = {completions} completions per step is not a multiple "
            f"of rl.micro_batch_size x processes = {rl.micro_batch_size} x {world_size}."
        )
    bf16 = config.train.precision.startswith("bf16")
    return GRPOConfig(
        output_dir=str(out / "checkpoints"),
        learning_rate=rl.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=optim.betas[0],
        adam_beta2=optim.betas[1],
        weight_decay=optim.weight_decay,
        max_grad_norm=optim.grad_clip if optim.grad_clip is not None else 1e9,
        num_train_epochs=rl.epochs,
        max_steps=rl.max_steps or -1,
        per_device_train_batch_size=rl.micro_batch_size,
        gradient_accumulation_steps=completions // per_step,
        generation_batch_size=completions,
        num_generations=rl.num_generations,
        beta=rl.kl_coef,
        temperature=rl.temperature,
        max_completion_length=rl.max_completion_length,
        use_vllm=rl.use_vllm,
        vllm_mode="colocate",
        bf16=bf16,
        use_cpu=config.train.accelerator == "cpu",
        seed=config.train.seed,
        data_seed=config.train.seed,
        save_strategy="steps",
        save_steps=config.train.checkpoint_every_n_steps,
        save_total_limit=1,  # the newest resumable state (HF Trainer checkpoint) for pre-emption
        logging_steps=config.train.log_every_n_steps,
        report_to=[],
        remove_unused_columns=False,
        trust_remote_code=trusted(config.model),
        disable_tqdm=True,
    )


def _best_checkpoint_callback(
    model: OpenWeightVLM, data: TrainData, out: Path, resolved: dict, every: int, stopping: Any
):
    from transformers import TrainerCallback

    class BestCheckpoint(TrainerCallback):
        """Scores data.val every `every` steps and at the end; keeps the best mean accuracy in best/."""

        def __init__(self) -> None:
            self.best = -1.0
            self.best_step: int | None = None
            self.best_metrics: dict[str, float] = {}
            self.last: dict[str, float] = {}
            self.last_step = -1
            kept = out / "best" / "meta.json"
            if kept.exists():  # resumed: the best so far survives a kill
                metrics = json.loads(kept.read_text())["metrics"]
                self.best = float(metrics.get("mean_accuracy", -1.0))
                self.best_step = metrics.get("step")
                self.best_metrics = {k: v for k, v in metrics.items() if k != "step"}

        def validate(self, step: int, is_zero: bool) -> None:
            if not data.config.data.val or step == self.last_step or stopping():
                return  # a signalled run saves and stops at once: Slurm kills it soon after
            self.last_step = step
            metrics = data.evaluate()
            self.last = metrics
            log.info("step %d validation: %s", step, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
            score = metrics.get("mean_accuracy", -1.0)
            if score > self.best:
                self.best, self.best_step, self.best_metrics = score, step, dict(metrics)
                if is_zero:
                    model.save(out / "best", resolved, {**metrics, "step": step})

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 (the HF callback signature)
            if state.global_step % every == 0:
                self.validate(state.global_step, state.is_world_process_zero)

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.validate(state.global_step, state.is_world_process_zero)

    return BestCheckpoint()


def _preemption_callback():
    from transformers import TrainerCallback

    class Preemption(SignalFlag, TrainerCallback):
        """SIGUSR1 / SIGTERM (Slurm's time-limit signal, pre-emption): save the HF Trainer checkpoint at the
        end of the current optimizer step and stop; the run folder resumes from it (vlmlab/train/preemption.py
        does the same for Lightning runs)."""

        def __init__(self) -> None:
            super().__init__()
            self.stopped_at: int | None = None

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 (the HF callback signature)
            if self.received is not None and self.stopped_at is None:
                self.stopped_at = state.global_step
                control.should_save = True
                control.should_training_stop = True

    return Preemption()


def train_grpo(config: ExperimentConfig, out: Path, resolved: dict[str, Any]) -> dict[str, Any]:
    """One GRPO run (train.method: grpo) into `out`; -> its result record (as vlmlab/train/run.py's)."""
    from omegaconf import OmegaConf
    from transformers.trainer_utils import get_last_checkpoint
    from trl import GRPOTrainer

    if not config.model.open_weight:
        raise ConfigError("train.method: grpo trains open-weight models: set model.open_weight.")
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    started = time.time()
    torch.manual_seed(config.train.seed)
    model = load_open_weight(config.model)
    freezing = apply_freezing(model, load_recipe(config.train.freeze), config.train.stage)
    prompts = prompt_dataset(config, synthetic_image_size(model))
    world = int(config.train.devices * config.train.num_nodes)
    args = grpo_arguments(config, out, world)
    steps_per_epoch = max(1, math.ceil(len(prompts) / config.rl.prompts_per_step))
    every = config.rl.eval_every_n_steps or steps_per_epoch
    data = TrainData(config, model)
    preemption = _preemption_callback()
    with preemption:  # a signal while the trainer is built stops the run after its first step
        stopping = lambda: preemption.received is not None  # noqa: E731
        best = _best_checkpoint_callback(model, data, out, resolved, every, stopping)
        trainer = GRPOTrainer(
            model=model.hf,
            reward_funcs=[final_answer_reward],
            args=args,
            train_dataset=prompts,
            processing_class=model.processor,
            callbacks=[best, preemption],
        )
        resume = get_last_checkpoint(str(out / "checkpoints")) if (out / "checkpoints").exists() else None
        if resume:
            log.info("resuming GRPO from %s", resume)
        log.info(
            "GRPO: %d prompts, %d per step x %d samples, %d steps per epoch, validation every %d steps",
            len(prompts),
            config.rl.prompts_per_step,
            config.rl.num_generations,
            steps_per_epoch,
            every,
        )
        trainer.train(resume_from_checkpoint=resume)
    is_zero = trainer.is_world_process_zero()
    if preemption.stopped_at is not None:
        name = preemption.signal_name
        if is_zero:
            requeue(preemption.stopped_at)
        where = "requeued" if slurm_job_id() else "run the same command again to resume"
        raise TrainingStopped(
            f"{name} received: stopped after step {preemption.stopped_at} with its checkpoint in "
            f"{out / 'checkpoints'}; {where}."
        )
    final = out / "final"
    if is_zero:
        model.save(final, resolved, best.last)
    history = [entry for entry in trainer.state.log_history if "reward" in entry]
    record = run_record(
        out,
        resolved,
        metrics=best.last,
        chance=data.chance_levels() if config.data.val else {},
        timings={"train_seconds": round(time.time() - started, 1), "steps": trainer.state.global_step},
        checkpoint=str(out / "best" if best.best_step is not None else final),
        best={"step": best.best_step, "metrics": best.best_metrics},
        freezing=freezing,
        base_weights=model.base_weights,
        data={"prompts": len(prompts)},
        rewards=[{"step": e.get("step"), "reward": e["reward"]} for e in history],
    )
    trainer.accelerator.wait_for_everyone()
    evaluate_transfer_after(config, out, rank_zero=is_zero)
    if is_zero:
        write_record(record, out / "result.json")
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # done: best/ and final/ are what is kept
    return record


__all__ = ["prompt_dataset", "completion_text", "final_answer_reward", "grpo_arguments", "train_grpo"]
