"""Load a finished stage run (its config and checkpoint chain) for evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlmlab.config import ExperimentConfig, load_config
from vlmlab.data.chat_encode import ChatEncoder
from vlmlab.data.encode import SampleEncoder
from vlmlab.data.synthetic.generate import DEFAULT_IMAGE_SIZE
from vlmlab.data.text_tokenizer import load_text_tokenizer
from vlmlab.data.tiling import ImageTiler
from vlmlab.errors import ConfigError
from vlmlab.models.checkpoint import META, load_stage_checkpoint, resolve_checkpoint
from vlmlab.models.open_weight import OpenWeightVLM, load_open_weight
from vlmlab.models.tokenizers.preprocess import build_tile_transform
from vlmlab.models.vlm import VisionLanguageModel, build_vlm


def synthetic_image_size(model: VisionLanguageModel | OpenWeightVLM) -> int:
    """The size synthetic images are drawn at for this model: its image tokenizer's input size, or for an
    open-weight model the generator's default (its processor resizes as it was trained to)."""
    if isinstance(model, OpenWeightVLM):
        return DEFAULT_IMAGE_SIZE
    return model.image_tokenizer.spec.image_size


def text_side(
    config: ExperimentConfig, model: VisionLanguageModel | OpenWeightVLM, max_length: int | None = None
) -> tuple[Any, SampleEncoder | ChatEncoder]:
    """The run's text tokenizer and the encoder that turns samples into the model's batch contract (an
    open-weight model's: its own processor and chat template)."""
    if isinstance(model, OpenWeightVLM):
        encoder = ChatEncoder(
            model.processor, max_length or config.data.max_length, image_size=synthetic_image_size(model)
        )
        return model.tokenizer, encoder
    spec = model.backbone_spec
    tokenizer = load_text_tokenizer(config.data.text_tokenizer, spec.vocab_size, spec.image_token_id)
    plan, image_spec = model.tiling_plan, model.image_tokenizer.spec
    # tiled: tokens_per_image counts one tile's placeholders, and the tiler cuts and normalises the tiles
    tiler = (
        None if plan is None else ImageTiler(plan, build_tile_transform(image_spec), image_spec.interpolation)
    )
    encoder = SampleEncoder(
        tokenizer,
        model.image_tokenizer.image_transform(),  # an encoder set's: each tower's own view, stacked
        tokens_per_image=model.tokens_per_image,
        image_token_id=spec.image_token_id,
        max_length=max_length or config.data.max_length,
        tiler=tiler,
    )
    return tokenizer, encoder


def load_run(run_dir: str | Path) -> tuple[ExperimentConfig, VisionLanguageModel | OpenWeightVLM]:
    """The run's resolved config and its model with the checkpoint chain applied (best, else final); an
    open-weight run's saved model folder (best, else final; an evaluation-only run: the base model)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise ConfigError(f"{str(run_dir)!r} is not a vlmlab run folder (no config.yaml).")
    config = load_config(ExperimentConfig, [config_path])
    if config.model.open_weight:
        saved = [run_dir / name for name in ("best", "final") if (run_dir / name / "config.json").exists()]
        if not saved and config.train.method != "eval":
            raise ConfigError(
                f"{str(run_dir)!r} holds no trained model (best/ or final/): is the run finished?"
            )
        return config, load_open_weight(config.model, str(saved[0]) if saved else None).eval()
    if not any((run_dir / name / META).exists() for name in ("best", "final")):  # said before building
        training = " (it is still training, or was stopped: checkpoints/last.ckpt is only its resume state)"
        raise ConfigError(
            f"{str(run_dir)!r} holds no trained model yet (best/ or final/){training if (run_dir / 'checkpoints').exists() else ''}: "
            "evaluate it once it has finished."
        )
    checkpoint = resolve_checkpoint(run_dir)
    torch.manual_seed(config.train.seed)
    model = build_vlm(config.model)
    load_stage_checkpoint(model, checkpoint)
    return config, model.eval()
