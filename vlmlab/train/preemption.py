"""Pre-emption and time limits: a signal becomes a checkpoint at the next optimizer step, then a requeue.

Slurm sends the `--signal` of the sbatch script (vlmlab's: USR1, 90 s before the time limit) and SIGTERM on
pre-emption or `scontrol requeue` (then SIGKILL after KillWait). Either signal only sets a flag here; at the
end of the next optimizer step every rank agrees (one boolean all-reduce per step), `last.ckpt` is written
with the data-stream state of exactly that step, the job is requeued (`scontrol requeue`, rank 0, inside
Slurm) and training stops without exporting anything. The requeued job resumes from that checkpoint
exactly. Lightning's own SLURM handler, which saves mid-accumulation `hpc_ckpt_*` files from inside the
signal handler, is switched off (`SLURMEnvironment(auto_requeue=False)`). A signal after training finished
changes nothing: the run exports and records its result as usual.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Any

import lightning as L

log = logging.getLogger("vlmlab.train")
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` needs: ARRAY_JOB_TASK for an array task, else the job id."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class SignalFlag:
    """While installed, SIGUSR1 / SIGTERM only record themselves (the first one wins); uninstalling puts back
    the handlers from before, so a process that trains again (a notebook, a sweep driver) neither keeps a
    finished run alive through them nor checkpoints it on the next signal."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in SIGNALS:
            previous = signal.signal(signum, self._on_signal)
            self._previous.setdefault(signum, previous)  # installed again over Lightning's: keep the first

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def __enter__(self) -> SignalFlag:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _on_signal(self, signum: int, frame: Any) -> None:  # async: only record it
        if self.received is None:
            self.received = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "no signal"


class Preemption(SignalFlag, L.Callback):
    """Checkpoint at the next optimizer step after SIGUSR1 / SIGTERM, requeue inside Slurm, stop."""

    def __init__(self, checkpoint: Any) -> None:
        super().__init__()
        self.checkpoint = checkpoint  # the AtomicLastCheckpoint callback (its save() is once per step)
        self.stopped_at: int | None = None
        self.training = False
        self._seen_step = -1

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.install()  # over Lightning's handlers, which it registered when fit began
        self.training = True
        self._seen_step = trainer.global_step
        if self._agreed(trainer):  # signalled while the run was being built: its state is on disk already
            self._stop(trainer, module, save=False)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self._seen_step:  # not the micro-batch of an optimizer step
            return
        self._seen_step = trainer.global_step
        if self._agreed(trainer):
            self._stop(trainer, module, save=True)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.training = False

    def _agreed(self, trainer: L.Trainer) -> bool:
        return bool(trainer.strategy.reduce_boolean_decision(self.received is not None, all=False))

    def _stop(self, trainer: L.Trainer, module: L.LightningModule, save: bool) -> None:
        if save:
            self.checkpoint.save(trainer, module)
        self.stopped_at = trainer.global_step
        trainer.should_stop = True
        if trainer.is_global_zero:
            log.info("%s: checkpoint of step %d in place", self.signal_name, trainer.global_step)
            requeue(trainer.global_step)


def requeue(step: int) -> None:
    """Inside Slurm, put this job back in the queue (it resumes from the checkpoint of `step`)."""
    job = slurm_job_id()
    if not job:
        return
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode == 0:
        log.info("requeued Slurm job %s; it resumes from step %d", job, step)
    else:
        log.warning("scontrol requeue %s failed: %s", job, result.stderr.strip())


__all__ = ["Preemption", "SIGNALS", "SignalFlag", "requeue", "slurm_job_id"]
