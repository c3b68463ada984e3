"""Callbacks: crash-safe resume checkpoints and validation with best-checkpoint export."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vlmlab.errors import TrainingStopped
from vlmlab.faults import inject_fault
from vlmlab.files import atomic_open, fsync_file

log = logging.getLogger("vlmlab.train")


class AtomicLastCheckpoint(L.Callback):
    """Write `last.ckpt` (weights, optimizer, scheduler, loop and data-stream state) every n optimizer steps,
    atomically: a kill -9 during the write leaves the previous checkpoint intact.

    Only at optimizer-step boundaries and once per step: a resumed run does not rewrite the checkpoint of the
    step it resumed from (that would record a micro-batch whose accumulated gradient is not saved). Weights
    that are not finite are never saved: the run stops naming the groups, and the last good checkpoint stays
    the resume point.
    """

    def __init__(self, path: Path, every_n_steps: int, hold_every_n: int = 0) -> None:
        self.path = Path(path)
        self.every = max(1, every_n_steps)
        self._saved_at = self._seen_step = -1
        # eval.every_n_checkpoints: every n-th checkpoint (by step, so a resume holds the same ones) is also
        # linked into `checkpoints/eval/` for the evaluator beside the run (vlmlab/eval/checkpoints.py)
        self.hold_every = hold_every_n * self.every

    @property
    def saved_at(self) -> int:
        """The step of the newest resume checkpoint on disk (or resumed from)."""
        return self._saved_at

    @property
    def hold_dir(self) -> Path:
        return self.path.parent / "eval"

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # the state resumed from (or the fresh start) needs no checkpoint of its own
        self._saved_at = self._seen_step = trainer.global_step

    def save(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.global_step == self._saved_at:
            return
        report = getattr(module, "non_finite_weights", lambda: None)()
        if report:
            raise NonFiniteWeightsError(report)
        # the full training state, written atomically beside its destination by AtomicCheckpointIO
        trainer.save_checkpoint(self.path, weights_only=False)
        if trainer.is_global_zero:
            for stale in self.path.parent.glob("hpc_ckpt_*.ckpt"):  # superseded emergency checkpoints
                stale.unlink(missing_ok=True)
            if self.hold_every and trainer.global_step % self.hold_every == 0:
                hold_for_evaluation(self.path, self.hold_dir, trainer.global_step)
        trainer.strategy.barrier()
        self._saved_at = trainer.global_step
        inject_fault(f"checkpoint:{trainer.global_step}")

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        # global_step moves only on the micro-batch that ends an accumulation window (the optimizer step)
        if trainer.global_step == self._seen_step:
            return
        self._seen_step = trainer.global_step
        inject_fault(f"step:{trainer.global_step}")
        if trainer.global_step % self.every == 0:
            self.save(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.save(trainer, module)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, staging in the checkpoint's own folder: Lightning's stages a local
    checkpoint in $TMPDIR (fsspec's transaction writes a `tempfile.mkstemp()` file, then moves it), so a
    small or full node-local /tmp failed every large checkpoint naming a temporary path. Here: a temporary
    file beside the destination, fsync, rename (vlmlab.files.atomic_open); a full disk names the checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options.")
        with atomic_open(Path(path)) as handle:
            torch.save(checkpoint, handle)


def hold_for_evaluation(checkpoint: Path, folder: Path, step: int) -> Path:
    """A second name for the complete checkpoint of `step` in `folder`: a hard link costs no copy and no time
    on the training path, and keeps the file's contents when the next checkpoint replaces `last.ckpt` or the
    finished run deletes it. The evaluator removes the link once it has read the checkpoint, so the file is
    never read while being written (it was renamed into place first) nor deleted before it is read."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step{step:09d}.ckpt"
    tmp = folder / f".{target.name}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(checkpoint, tmp)
    except OSError:  # a file system without hard links: a copy, as atomically
        import shutil

        shutil.copyfile(checkpoint, tmp)
        fsync_file(tmp)
    os.replace(tmp, target)
    return target


class NonFiniteWeightsError(TrainingStopped):
    """The weights became NaN / inf: nothing was saved for this step."""


class PeriodicValidation(L.Callback):
    """Run `evaluate()` every n optimizer steps and at the end; `on_result(step, metrics)` handles the
    outcome (logging, best-checkpoint export)."""

    def __init__(
        self,
        every_n_steps: int | None,
        evaluate: Callable[[], dict[str, float]],
        on_result: Callable[[int, dict[str, float]], None],
        skip: Callable[[], bool] = lambda: False,
    ) -> None:
        self.skip = skip  # e.g. a pre-empted run stops without validating
        self.every = every_n_steps
        self.evaluate = evaluate
        self.on_result = on_result
        self._done_at = -1
        self._last: dict[str, float] = {}

    def _run(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.global_step == self._done_at:
            return
        self._last = self.evaluate()
        self._done_at = trainer.global_step
        self._log(trainer)
        self.on_result(trainer.global_step, self._last)

    def _log(self, trainer: L.Trainer) -> None:
        """The scores into every logger at the row of the step they score (Lightning logs optimizer step k
        as row k - 1), whether or not `log_every_n_steps` logs that step's training metrics."""
        if trainer.is_global_zero and self._last:
            for logger in trainer.loggers:
                logger.log_metrics(
                    {f"val/{k}": v for k, v in self._last.items()}, step=trainer.global_step - 1
                )

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if self.every and trainer.global_step > 0 and trainer.global_step % self.every == 0:
            self._run(trainer, module)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.skip():
            return
        if trainer.global_step != self._done_at:  # the final weights are always evaluated
            self._last = self.evaluate()
            self._done_at = trainer.global_step
            self._log(trainer)
            self.on_result(trainer.global_step, self._last)
