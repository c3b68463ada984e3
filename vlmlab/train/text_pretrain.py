"""A text-only language model trained once: the stand-in for a released checkpoint in offline runs.

The paper starts every VLM from a pretrained Qwen3. Without a download, a tiny random Qwen3 frozen in
stage 1 (paper, 2.3) cannot learn to caption: the adapter has no language model to steer, and the caption
loss stays at its random level. So offline runs (the CPU quickstart) first train the tiny Qwen3 as a plain
causal language model (next-token loss on every token of a text corpus) and save it with `save_pretrained`;
stage 1 then loads it through `model.backbone_weights`, the same path a real checkpoint takes.

The folder is reused when it already holds a model trained with the same recipe (`pretraining.json`), and
it appears only when complete (written next to its final place, then renamed).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from vlmlab.files import atomic_write_text
from vlmlab.models.backbone import load_backbone_spec

log = logging.getLogger("vlmlab.train")
RECIPE_FILE = "pretraining.json"


@dataclass(frozen=True)
class TextPretraining:
    """What a pretrained text model is a function of; a folder trained with another recipe is not reused."""

    backbone: str  # preset name (vlmlab/presets/backbone/)
    corpus: str  # a name for the text stream, e.g. "synthetic-text-v1"
    steps: int = 300
    batch_size: int = 32
    max_length: int = 96  # tokens per text; longer texts are cut
    lr: float = 1e-3
    warmup_steps: int = 20
    seed: int = 0
    text_tokenizer: str = "tiny"


class _TokenStream(IterableDataset):
    def __init__(
        self, texts: Callable[[], Iterable[str]], encode: Callable[[str], list[int]], max_length: int
    ):
        self.texts, self.encode, self.max_length = texts, encode, max_length

    def __iter__(self) -> Iterator[list[int]]:
        for text in self.texts():
            ids = self.encode(text)[: self.max_length]
            if len(ids) > 1:
                yield ids


def _pad(pad_id: int) -> Callable[[list[list[int]]], dict[str, torch.Tensor]]:
    def collate(rows: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), pad_id)
        labels = torch.full((len(rows), width), -100)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = labels[i, : len(row)] = torch.tensor(row)
        return {"input_ids": input_ids, "labels": labels, "attention_mask": labels != -100}

    return collate


class _CausalLM(L.LightningModule):
    def __init__(self, model: torch.nn.Module, recipe: TextPretraining) -> None:
        super().__init__()
        self.model, self.recipe = model, recipe
        self.losses: list[float] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.recipe.lr, weight_decay=0.0)
        warmup, total = max(1, self.recipe.warmup_steps), self.recipe.steps

        def factor(step: int) -> float:  # linear warmup, cosine decay to 10 %
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def pretrained_text_backbone(
    recipe: TextPretraining, texts: Callable[[], Iterable[str]], out: str | Path
) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse) the text model of `recipe` on the endless stream `texts()`; returns (folder, record).

    The folder holds config.json + model.safetensors (`save_pretrained`) and `pretraining.json` (the recipe,
    the loss at the start and at the end, the wall time).
    """
    from transformers import Qwen3ForCausalLM

    from vlmlab.data.text_tokenizer import load_text_tokenizer

    out = Path(out)
    wanted = asdict(recipe)
    if (out / RECIPE_FILE).exists():
        record = json.loads((out / RECIPE_FILE).read_text())
        if record.get("recipe") == wanted:
            return out, record
        log.info("%s was trained with another recipe; training it again", out)
    spec = load_backbone_spec(recipe.backbone)
    tokenizer = load_text_tokenizer(recipe.text_tokenizer, spec.vocab_size, spec.image_token_id)
    backend = tokenizer.backend_tokenizer

    def encode(text: str) -> list[int]:
        return backend.encode(text, add_special_tokens=False).ids

    L.seed_everything(recipe.seed, verbose=False)
    # a model this small runs twice as fast on one thread as on two (measured: 0.4 s against 0.8 s a step)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    hf_config = spec.to_hf_config("sdpa")
    # tied or not as the preset's released checkpoint is (Qwen3 <= 4B tie): loading unties it (backbone.py)
    hf_config.tie_word_embeddings = spec.tie_word_embeddings
    model = Qwen3ForCausalLM(hf_config)
    module = _CausalLM(model, recipe)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    loader = DataLoader(
        _TokenStream(texts, encode, recipe.max_length),
        batch_size=recipe.batch_size,
        collate_fn=_pad(int(pad_id)),
    )
    started = time.time()
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # its device and logger hints mean nothing for this CPU job
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = L.Trainer(
                accelerator="cpu",
                devices=1,
                max_steps=recipe.steps,
                gradient_clip_val=1.0,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
            trainer.fit(module, loader)
    finally:
        lightning_log.setLevel(level)
        torch.set_num_threads(threads)
    window = max(1, min(20, len(module.losses) // 5))
    record = {
        "recipe": wanted,
        "loss_first_steps": round(sum(module.losses[:window]) / window, 4),
        "loss_last_steps": round(sum(module.losses[-window:]) / window, 4),
        "wall_seconds": round(time.time() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        atomic_write_text(staging / RECIPE_FILE, json.dumps(record, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out, record
