"""Qwen3 language backbones through transformers, from presets in `vlmlab/presets/backbone/`.

As in the design-space paper (section 2.1), the input embedding and the output head are untied even when
the released checkpoint ties them; the head starts as a copy of the embedding.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from transformers import Qwen3Config, Qwen3ForCausalLM

from vlmlab import presets
from vlmlab.config import read_yaml_file
from vlmlab.errors import ConfigError, unknown_choice, unpickling_refusal
from vlmlab.models.provenance import pretrained_files, record_loaded

ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flex_attention")


@dataclass
class BackboneSpec:
    """The architecture numbers of one Qwen3 size (exactly the fields of its official config.json)."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    image_token_id: int  # placeholder id marking where image tokens sit in the sequence
    hf_id: str | None = None  # where the released weights live on the hub

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> BackboneSpec:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise unknown_choice(f"backbone field (in {source})", unknown[0], names)
        try:
            return cls(**data)
        except TypeError as error:
            raise ConfigError(f"Backbone spec {source} is incomplete: {error}") from error

    def to_hf_config(self, attn_implementation: str = "sdpa") -> Qwen3Config:
        if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise unknown_choice("attention implementation", attn_implementation, ATTENTION_IMPLEMENTATIONS)
        if not 0 <= self.image_token_id < self.vocab_size:
            raise ConfigError(
                f"Backbone {self.name!r}: image_token_id {self.image_token_id} is outside the vocabulary "
                f"(0..{self.vocab_size - 1})."
            )
        config = Qwen3Config(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=False,  # untied in every vlmlab model (paper, section 2.1)
        )
        config._attn_implementation = attn_implementation
        return config


def list_backbones() -> list[str]:
    return presets.preset_names("backbone")


def load_backbone_spec(name_or_path: str | Path | dict[str, Any]) -> BackboneSpec:
    if isinstance(name_or_path, dict):
        return BackboneSpec.from_dict(dict(name_or_path))
    path = presets.resolve("backbone", name_or_path)
    return BackboneSpec.from_dict(OmegaConf.to_container(read_yaml_file(path), resolve=True), str(path))


def untie_head(model: Qwen3ForCausalLM) -> None:
    """Give the output head its own parameter, initialised as a copy of the input embedding."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if head.weight is embedding or head.weight.data_ptr() == embedding.data_ptr():
        head.weight = torch.nn.Parameter(embedding.detach().clone())
    else:
        with torch.no_grad():
            head.weight.copy_(embedding)
    model.config.tie_word_embeddings = False


def build_backbone(
    spec: BackboneSpec | str | dict,
    weights: str | None = None,
    attn_implementation: str = "sdpa",
) -> Qwen3ForCausalLM:
    """A Qwen3ForCausalLM with an untied head: from `weights` (local folder or hub id) or random init.

    `model.base_weight_record` says what was loaded (vlmlab/models/provenance.py; None for random init).
    """
    if not isinstance(spec, BackboneSpec):
        spec = load_backbone_spec(spec)
    config = spec.to_hf_config(attn_implementation)
    if weights is None:
        model = Qwen3ForCausalLM(config)
        untie_head(model)
        model.base_weight_record = None
        return model
    local = Path(weights).expanduser()
    if weights.startswith(("/", ".", "~")) and not local.exists():
        raise ConfigError(
            f"Backbone weights {weights!r} do not exist (expected a folder from save_pretrained)."
        )
    try:
        saved = Qwen3Config.from_pretrained(weights)
        _check_architecture(spec, saved, weights)
        # a tied file has no lm_head entry: load it tied (not "missing, newly initialised"), then untie below
        config.tie_word_embeddings = saved.tie_word_embeddings
        with warnings.catch_warnings():  # a refused pickle's protocol warning would come before its one line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            model = Qwen3ForCausalLM.from_pretrained(
                weights, config=config, attn_implementation=attn_implementation, dtype=torch.float32
            )
    except pickle.UnpicklingError as error:  # torch.load(weights_only=True) refused a pickle that runs code
        files = [str(path) for path in sorted(local.glob("*.bin"))] if local.is_dir() else [weights]
        raise ConfigError(
            f"Backbone weights file {', '.join(files)} is not plain tensors: loading it would run code "
            f"({unpickling_refusal(error)}); vlmlab loads tensors only. Use safetensors files (save_pretrained's "
            "default)."
        ) from None
    except OSError as error:
        raise ConfigError(
            f"Could not load backbone weights {weights!r} ({error}). Without network access, point "
            "`model.backbone_weights` at a local folder holding config.json and the safetensors files."
        ) from error
    if saved.tie_word_embeddings:
        untie_head(model)  # the checkpoint has no separate head: start it as a copy of the embedding
    # the local folder's weight files, or those of the hub snapshot from_pretrained just used (its commit)
    model.base_weight_record = record_loaded(weights, lambda: pretrained_files(weights))
    return model


def _check_architecture(spec: BackboneSpec, saved: Qwen3Config, weights: str) -> None:
    for field in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
    ):
        if getattr(saved, field) != getattr(spec, field):
            raise ConfigError(
                f"Backbone weights {weights!r} have {field}={getattr(saved, field)} but preset {spec.name!r} "
                f"says {getattr(spec, field)}: choose the preset that matches the checkpoint."
            )
