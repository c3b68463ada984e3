"""The training run's data: the text tokenizer, the encoder, the resumable train stream, validation sets.

A thin adapter between the config and vlmlab.data: everything here runs in the training process; the
heavy lifting (rendering, image preprocessing, encoding, packing) runs inside vlmlab.data's stream, in
data-loader workers.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from vlmlab.config import ExperimentConfig
from vlmlab.data.stream import ResumableLoader, TrainStream, train_loader
from vlmlab.data.validation import build_val_set
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.runs.load import synthetic_image_size, text_side
from vlmlab.scoring.accuracy import chance_level, evaluate_items

log = logging.getLogger("vlmlab.train")


class TrainData:
    def __init__(self, config: ExperimentConfig, model: VisionLanguageModel) -> None:
        self.config = config
        self.model = model
        self.text_tokenizer, self.encoder = text_side(config, model)
        self._val_sets: dict[str, list[dict[str, Any]]] | None = None

    def train_loader(self, rank: int = 0, world_size: int = 1, keep: int = 4) -> ResumableLoader:
        """This rank's resumable loader; it keeps the states of its last `keep` batches."""
        stream = TrainStream.from_config(
            self.config.data,
            self.encoder,
            seed=self.config.train.seed,
            image_size=synthetic_image_size(self.model),
            rank=rank,
            world_size=world_size,
        )
        if rank == 0:
            for line in stream.describe():
                log.info("data: %s", line)
        return train_loader(
            stream, num_workers=self.config.data.num_workers, keep=keep, pin_memory=torch.cuda.is_available()
        )

    # -- validation: generation + the paper's "Final answer:" extraction
    def val_sets(self) -> dict[str, list[dict[str, Any]]]:
        if self._val_sets is None:
            self._val_sets = {}
            for index, source in enumerate(self.config.data.val):
                name = source.name or f"{source.task}-{source.mode}-{source.split}-{index}"
                self._val_sets[name] = build_val_set(
                    source,
                    self.encoder,
                    self.config.data.val_samples,
                    seed=self.config.train.seed + 1000 + index,
                    image_size=synthetic_image_size(self.model),
                )
        return self._val_sets

    def chance_levels(self) -> dict[str, float]:
        """Chance per validation set, where one exists (multiple choice); open-ended sets have none."""
        levels = {name: chance_level(items) for name, items in self.val_sets().items()}
        return {name: level for name, level in levels.items() if level is not None}

    def evaluate(self) -> dict[str, float]:
        """Every validation set scored by generation (vlmlab.scoring.accuracy: the official metric of a
        benchmark set, "Final answer:" extraction for multiple choice), sharded across ranks, under the
        training precision; `mean_accuracy` (the mean over the sets) selects the best checkpoint.
        Each `<set>/accuracy` comes with its 95 % interval as `<set>/accuracy_ci_low` / `_ci_high`
        (plain floats, as every metric here; vlmlab.runs.record pairs them with the accuracy)."""
        bf16 = self.config.train.precision.startswith("bf16")
        metrics: dict[str, float] = {}
        for name, items in self.val_sets().items():
            result = evaluate_items(
                self.model,
                self.text_tokenizer,
                items,
                max_new_tokens=self.config.data.val_max_new_tokens,
                dtype=torch.bfloat16 if bf16 else None,
            )
            metrics[f"{name}/accuracy"] = result["accuracy"]
            metrics[f"{name}/accuracy_ci_low"] = result["ci_low"]
            metrics[f"{name}/accuracy_ci_high"] = result["ci_high"]
            if "extraction_failures" in result:
                metrics[f"{name}/extraction_failures"] = result["extraction_failures"]
        accuracies = [v for k, v in metrics.items() if k.endswith("/accuracy")]
        if accuracies:
            metrics["mean_accuracy"] = sum(accuracies) / len(accuracies)
        return metrics
