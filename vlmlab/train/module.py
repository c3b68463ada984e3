"""The LightningModule: one stage run of one VLM, with per-group learning rates and a non-finite guard."""

from __future__ import annotations

import io
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from vlmlab.config import ExperimentConfig
from vlmlab.errors import ConfigError, TrainingStopped, unpickling_refusal
from vlmlab.files import atomic_write_bytes
from vlmlab.models.flops import FlopModel, batch_shape
from vlmlab.models.open_weight import OpenWeightVLM
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.train.schedule import build_optimizer, build_scheduler
from vlmlab.train.sharding import local_tensor
from vlmlab.train.throughput import Throughput, this_device

BATCH_KEYS = ("input_ids", "labels", "segment_ids", "position_ids", "pixel_values")
progress = logging.getLogger("vlmlab.train")
DATA_STATE_KEY = "vlmlab_data_state"  # rank 0's stream state inside every checkpoint
KEEP_DATA_STATES = 3  # side files per rank kept (the newest), for checkpoints of recent steps


class NonFiniteLossError(TrainingStopped):
    """Training stopped because the loss or the weights became NaN/inf."""


class VLMModule(L.LightningModule):
    def __init__(self, config: ExperimentConfig, model: VisionLanguageModel | OpenWeightVLM) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self._last_time: float | None = None
        self._tokens_since = 0
        self.loader_factory: Any = None  # (rank, world_size) -> ResumableLoader, set by the run
        self.data_state_dir: Path | None = None  # where ranks > 0 keep their stream states
        self._loader: Any = None
        self._reported_step = -1
        self._data_state: dict[str, Any] | None = None
        # FLOPs per step (vlmlab/models/flops.py; set by the run for vlmlab's own models) and the rates
        self.flop_model: FlopModel | None = None
        self._flops_since = 0.0
        self.throughput = Throughput(*this_device(config.train.precision))

    def configure_model(self) -> None:
        if getattr(self, "_configured", False):  # Lightning may call the hook again (fit after validate)
            return
        self._configured = True
        if self.config.train.compile:  # before FSDP wraps the blocks (torchtitan's order)
            from vlmlab.train.compile import compile_blocks

            units = compile_blocks(self.model)
            if self.global_rank == 0:
                progress.info("compile: %d blocks (torch.compile, per block)", len(units))
        mesh = self.device_mesh  # set by ModelParallelStrategy (train.strategy: fsdp) only
        if mesh is None:
            return
        from vlmlab.train.sharding import shard_model, shard_open_weight

        bf16 = self.config.train.precision.startswith("bf16")
        shard = shard_open_weight if isinstance(self.model, OpenWeightVLM) else shard_model
        self._sharded_units = shard(self.model, mesh["data_parallel"], bf16=bf16)
        if self.global_rank == 0:
            progress.info("fsdp: %d units over %d processes", len(self._sharded_units), mesh.size())

    def train_dataloader(self) -> Any:
        loader = self.loader_factory(self.global_rank, self.trainer.world_size)
        if self._data_state is not None:  # resuming: continue this rank's stream where it stopped
            loader.restore(self._data_state)
            self._data_state = None
        self._loader = loader
        return loader

    # -- the data stream's position travels with every checkpoint (last.ckpt and Slurm's hpc_ckpt)
    def _data_state_file(self, step: int, rank: int) -> Path:
        if self.data_state_dir is None:
            raise ConfigError("multi-process training needs VLMModule.data_state_dir for the stream states.")
        return self.data_state_dir / f"step{step:09d}-rank{rank}.pt"

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._loader is None:
            return
        # the batches behind the weights: whole accumulation windows (Lightning has prefetched one more)
        consumed = self.trainer.global_step * self.trainer.accumulate_grad_batches
        state = self._loader.state_after(consumed)
        if self.global_rank == 0:
            checkpoint[DATA_STATE_KEY] = state
            return
        # other ranks keep theirs next to the checkpoint: no collective inside a (signal-time) save
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(
            self._data_state_file(self.trainer.global_step, self.global_rank), buffer.getvalue()
        )
        mine = sorted(self.data_state_dir.glob(f"step*-rank{self.global_rank}.pt"))
        for old in mine[:-KEEP_DATA_STATES]:
            old.unlink(missing_ok=True)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        step = int(checkpoint["global_step"])
        if self.global_rank == 0:
            state = checkpoint.get(DATA_STATE_KEY)
        else:
            path = self._data_state_file(step, self.global_rank)
            state = load_data_state(path) if path.exists() else None
        if state is None:
            raise ConfigError(
                f"The checkpoint of step {step} holds no data-stream state for rank {self.global_rank}, so the "
                "run cannot resume exactly; start a new run from its weights (train.init_from)."
            )
        self._data_state = state

    def forward(self, batch: dict[str, Any]) -> Any:
        if isinstance(self.model, OpenWeightVLM):  # the processor's own tensors, whatever they are
            inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
            return self.model(**inputs, return_logits=False)
        inputs = {k: batch[k] for k in BATCH_KEYS if k in batch and batch[k] is not None}
        if "pixel_values" in inputs and inputs["pixel_values"].numel() == 0:
            del inputs["pixel_values"]
        return self.model(**inputs, return_logits=False)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        loss = out.loss
        if not loss.requires_grad:  # e.g. a text-only batch while only the adapter trains: zero gradients
            loss = loss + 0.0 * sum(local_tensor(p).sum() for p in self.model.parameters() if p.requires_grad)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(self._non_finite_report(float(loss)))
        if "num_real_tokens" in batch:  # counted when the batch was collated: no wait on the device
            real = int(batch["num_real_tokens"])
        else:
            real = (
                int(batch["segment_ids"].ge(0).sum())
                if "segment_ids" in batch
                else batch["input_ids"].numel()
            )
        self._tokens_since += real
        if self.flop_model is not None and "shape" in batch:
            self._flops_since += self.flop_model.step(batch_shape(batch))
        self.log("train/loss", loss, prog_bar=True, on_step=True, batch_size=batch["input_ids"].shape[0])
        self.log("train/real_token_fraction", real / batch["input_ids"].numel(), on_step=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_time is not None and now > self._last_time:
            window = self.throughput.add(now - self._last_time, self._tokens_since, self._flops_since)
            rate = window["tokens_per_s_per_device"] * self.trainer.world_size
            self.log("train/tokens_per_s", rate, prog_bar=True, on_step=True)
            if self.flop_model is not None:  # per device: model FLOPs of this process's batches
                self.log("train/tflops", window["tflops"], on_step=True)
                if "mfu" in window:
                    self.log("train/mfu", window["mfu"], prog_bar=True, on_step=True)
        self._last_time, self._tokens_since, self._flops_since = now, 0, 0.0
        for group in self.trainer.optimizers[0].param_groups:
            if not group["name"].endswith(".no_decay"):
                self.log(f"lr/{group['name']}", group["lr"], on_step=True)
        step, every = self.trainer.global_step, self.config.train.log_every_n_steps
        if step != self._reported_step and step % every == 0 and self.trainer.is_global_zero:
            # a plain progress line: Slurm logs and pipes get no progress bar
            self._reported_step = step
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            progress.info("step %d/%d  loss %.4f", step, self.config.train.max_steps, float(loss))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self._any_rank(not all(_finite(g) for g in grads)):
            raise NonFiniteLossError(self._non_finite_report(None, gradients=True))

    def non_finite_weights(self) -> str | None:
        """The report naming the groups whose weights are NaN / inf, or None when all are finite."""
        finite = all(_finite(p) for params in self.model.parameter_groups().values() for _, p in params)
        if self._any_rank(not finite):
            return self._non_finite_report(None, gradients=False, weights_checked=True)
        return None

    def _any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on one (a sharded run sees only its own shard of each
        tensor, and all ranks must stop together)."""
        trainer = self._trainer
        return bool(trainer.strategy.reduce_boolean_decision(flag, all=False)) if trainer else flag

    def _non_finite_report(
        self, loss: float | None, gradients: bool = False, weights_checked: bool = False
    ) -> str:
        bad = []
        for group, params in self.model.parameter_groups().items():
            values = [p.grad if gradients else p for _, p in params]
            if any(v is not None and not _finite(v) for v in values):
                bad.append(group)
        what = "gradients" if gradients else "weights"
        where = ", ".join(bad) if bad else f"no group's {what} (the loss alone overflowed)"
        if loss is not None and not math.isfinite(loss):
            head = f"loss {loss}"
        else:
            head = (
                "non-finite weights after the optimizer step" if weights_checked else "non-finite gradients"
            )
        return (
            f"Training stopped at step {self.global_step}: {head}. Groups holding non-finite {what}: {where}. "
            "Checkpoints already written are kept; lower the learning rate or check the data."
        )

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.model.parameter_groups(), self.config.optim)
        total = self.config.train.schedule_steps or self.config.train.max_steps
        scheduler = build_scheduler(optimizer, self.config.optim, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(local_tensor(tensor)).all())


def load_data_state(path: Path) -> Any:
    """A rank's data-stream state file, tensors and plain values only: a file that would run code, or a cut
    one, is one line naming it."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(
            f"{path} is not a plain data-state file: loading it would run code ({unpickling_refusal(error)}); "
            "delete it if you did not write it."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise ConfigError(
            f"{path} is truncated or not a data-state file ({str(error).splitlines()[0][:160]}); delete it and "
            "its checkpoint to resume from an earlier one."
        ) from None
