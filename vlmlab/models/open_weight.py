"""Open-weight VLMs (Hugging Face image-text-to-text models) as the model of a run (paper, Appendix B).

`load_open_weight(config)` loads `model.open_weight` (a local folder or a hub id) with
`AutoModelForImageTextToText` and `AutoProcessor`: Qwen2.5-VL, Gemma 3, InternVL 3, Qwen3-VL, LLaVA, ... from
transformers, and models whose repository ships its own code (Kimi-VL) when `model.trust_remote_code` names
them. `OpenWeightVLM` gives such a model the interface vlmlab's training and evaluation use:

* `parameter_groups()`: the vision tower as `image_tokenizer`, the projector as `adapter` and the language
  model (embeddings, decoder, head) as `language_model`, so the freezing recipes of vlmlab/presets/freeze/ and the
  per-group learning rates mean the same thing as for vlmlab's own models; a parameter outside the known
  module names is an error naming it, never silently trained or frozen;
* `forward(**batch)`: the batch of `vlmlab.data.chat_encode.collate_chat` (the processor's own tensors) ->
  the model's next-token loss over the labelled (answer) tokens;
* `generate_batch(batch, ...)`: greedy answers with transformers' `generate`, for validation and the
  transfer evaluation (`vlmlab.scoring.accuracy`);
* `save(folder, state)`: `save_pretrained` of the model and its processor: a checkpoint any HF tool (vLLM,
  lmms-eval, transformers) loads as it is.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmlab.config import ModelConfig
from vlmlab.errors import ConfigError, unpickling_refusal
from vlmlab.files import atomic_write_text, fsync_file, replace_folder, shareable, writing
from vlmlab.models.lora import lora_adapters, merge_all

log = logging.getLogger("vlmlab.models")

# Module names (below the optional `model.` of transformers' wrappers) -> vlmlab parameter group. The
# projector names come first: Qwen2.5-VL keeps its projector (`merger`) inside the vision tower.
GROUP_PREFIXES = (
    ("visual.merger.", "adapter"),  # Qwen2-VL, Qwen2.5-VL, Qwen3-VL
    ("multi_modal_projector.", "adapter"),  # Gemma 3, InternVL, LLaVA, Kimi-VL
    ("mm_projector.", "adapter"),
    ("visual.", "image_tokenizer"),
    ("vision_tower.", "image_tokenizer"),
    ("vision_model.", "image_tokenizer"),
    ("language_model.", "language_model"),
    ("lm_head.", "language_model"),
)
GROUPS = ("image_tokenizer", "adapter", "language_model")
LOADING_PROBLEMS = ("missing_keys", "unexpected_keys", "mismatched_keys")
# transformers keeps Qwen3-VL's deepstack mergers inside `visual` as well: they project vision features too
_ADAPTER_INSIDE_VISION = ("deepstack_merger_list.",)


def parameter_group(name: str) -> str:
    """The vlmlab group of one HF parameter name (e.g. `model.visual.blocks.0.attn.qkv.weight`)."""
    bare = name.removeprefix("model.")
    for inner in _ADAPTER_INSIDE_VISION:
        if bare.startswith(f"visual.{inner}"):
            return "adapter"
    for prefix, group in GROUP_PREFIXES:
        if bare.startswith(prefix):
            return group
    known = ", ".join(prefix.rstrip(".") for prefix, _ in GROUP_PREFIXES)
    raise ConfigError(
        f"Parameter {name!r} belongs to no vision tower / projector / language model module vlmlab knows "
        f"({known}); add the module's name to vlmlab.models.open_weight.GROUP_PREFIXES."
    )


@dataclass
class OpenWeightOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor | None


class OpenWeightVLM(nn.Module):
    """A HF image-text-to-text model with vlmlab's training / evaluation interface (module docstring)."""

    def __init__(self, model: nn.Module, processor: Any, source: str, base_weights: dict[str, Any]) -> None:
        super().__init__()
        self.hf = model
        self.processor = processor
        self.source = source
        self.base_weights = base_weights
        groups = {name: parameter_group(name) for name, _ in model.named_parameters()}  # fails early
        self._groups = groups

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {group: [] for group in GROUPS}
        for name, param in self.hf.named_parameters():
            # by prefix, not the names seen at load: LoRA layers (vlmlab.models.lora) rename what they wrap
            groups[self._groups.get(name) or parameter_group(name)].append((f"hf.{name}", param))
        return groups

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        return_logits: bool = True,
        **processor_tensors: torch.Tensor,
    ) -> OpenWeightOutput:
        """Next-token loss (labels aligned with the ids, -100 off the answers: transformers' convention).

        `segment_ids` (0 on tokens, -1 on padding) stands for the attention mask when none is given; there
        are no packed rows here (vlmlab.data.chat_encode), and position ids are the model's own."""
        if attention_mask is None and segment_ids is not None:
            attention_mask = segment_ids.ge(0).long()
        processor_tensors.pop("position_ids", None)
        processor_tensors.pop("num_real_tokens", None)
        if pixel_values is not None and pixel_values.numel():
            processor_tensors["pixel_values"] = pixel_values
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **processor_tensors)
        return OpenWeightOutput(loss=out.loss, logits=out.logits if return_logits else None)

    def stop_ids(self, extra: list[int]) -> list[int]:
        """End-of-turn ids: the given ones plus the model's generation config's EOS ids."""
        eos = getattr(getattr(self.hf, "generation_config", None), "eos_token_id", None)
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        return sorted({int(i) for i in [*extra, *eos] if i is not None})

    @torch.no_grad()
    def generate_batch(
        self, batch: dict[str, torch.Tensor], max_new_tokens: int, stop_ids: list[int], synced: bool = False
    ) -> list[list[int]]:
        """Greedy continuations of left-padded prompts (`collate_chat(..., left_pad=True)`), each cut at its
        first stop id (not included). `synced`: every process keeps stepping until all are done (a sharded
        model runs a collective in every forward)."""
        was_training = self.training
        self.eval()
        device = next(self.hf.parameters()).device
        inputs = {
            key: value.to(device)
            for key, value in batch.items()
            if isinstance(value, torch.Tensor) and key not in ("segment_ids", "labels")
        }
        if "pixel_values" in inputs and inputs["pixel_values"].numel() == 0:
            del inputs["pixel_values"]
        stops = self.stop_ids(stop_ids)
        pad = self.tokenizer.pad_token_id
        output = self.hf.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=pad if pad is not None else stops[0],
            synced_gpus=synced,
        )
        self.train(was_training)
        prompt_length = inputs["input_ids"].shape[1]
        results = []
        for row in output[:, prompt_length:].tolist():
            cut = next((i for i, token in enumerate(row) if token in stops), len(row))
            results.append(row[:cut])
        return results

    def save(
        self,
        folder: Path,
        config: dict[str, Any],
        metrics: dict[str, float] | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """`save_pretrained` of the model (with `state`: the gathered weights of a sharded run) and its
        processor, plus vlmlab's meta.json (run config, metrics, what it started from); written to a
        temporary folder renamed into place, so a kill never leaves half a checkpoint."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with writing(folder):  # a full disk names the checkpoint folder, and leaves no partial one behind
            tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
            try:
                shareable(tmp, folder=True)
                weights = None if state is None else {k.removeprefix("hf."): v for k, v in state.items()}
                hf = self.hf
                if lora_adapters(self):
                    # what any HF tool loads is the plain architecture: the adapters merged, into a copy, since
                    # training goes on with them (a best/ checkpoint is written mid-run)
                    merged = copy.deepcopy(self)
                    merge_all(merged)
                    hf = merged.hf
                hf.save_pretrained(tmp, state_dict=weights)
                self.processor.save_pretrained(tmp)
                meta = {
                    "open_weight": self.source,
                    "base_weights": self.base_weights,
                    "trained": sorted(n for n, p in self.named_parameters() if p.requires_grad),
                    "lora": lora_adapters(
                        self
                    ),  # trained through these adapters, merged into the saved weights
                    "config": config,
                    "metrics": metrics or {},
                }
                atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2))
                for path in tmp.glob("*.safetensors"):
                    fsync_file(path)
                replace_folder(tmp, folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return folder


def trusted(config: ModelConfig) -> bool:
    """Whether the model's own repository code may run: only when `trust_remote_code` names it."""
    return config.open_weight in set(config.trust_remote_code)


def load_open_weight(config: ModelConfig, source: str | None = None) -> OpenWeightVLM:
    """The open-weight model of `config` (or the checkpoint folder `source`, saved by `OpenWeightVLM.save`)
    with its processor; one clear error when the folder or id holds no image-text-to-text model."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    where = source or config.open_weight
    if not where:
        raise ConfigError(
            "model.open_weight is not set: name a HF image-text-to-text model (folder or hub id)."
        )
    remote = trusted(config)
    try:
        processor = AutoProcessor.from_pretrained(where, trust_remote_code=remote)
        model, loading = AutoModelForImageTextToText.from_pretrained(
            where,
            trust_remote_code=remote,
            attn_implementation=config.attn_implementation,
            dtype=torch.float32,
            output_loading_info=True,
        )
    except Exception as error:  # noqa: BLE001 (missing files, bad configs, code errors: one line each)
        first = (
            str(error).strip().splitlines()[0][:300].rstrip(". ")
            if str(error).strip()
            else type(error).__name__
        )
        hint = ""
        if isinstance(error, pickle.UnpicklingError):  # torch.load(weights_only=True) refused a pickle
            local = Path(where).expanduser()
            files = sorted(str(p) for p in local.glob("*.bin")) if local.is_dir() else [where]
            first = f"{', '.join(files)} would run code when loaded ({unpickling_refusal(error)})"
            hint = " vlmlab loads tensors only: use safetensors files."
        if "trust_remote_code" in str(error) and not remote:
            hint = f" Its repository ships its own code: list {where!r} in model.trust_remote_code to run it."
        raise ConfigError(f"Cannot load open-weight model {where!r}: {first}.{hint}") from None
    # strict: a weight the files lack would silently start random, one the model lacks would be dropped
    wrong = {kind: sorted(map(str, loading.get(kind) or [])) for kind in LOADING_PROBLEMS}
    if any(wrong.values()):
        detail = "; ".join(
            f"{kind.split('_')[0]}: {', '.join(keys[:3])}" for kind, keys in wrong.items() if keys
        )
        raise ConfigError(
            f"Open-weight model {where!r} does not load strictly ({detail}): its files do not match its "
            "architecture (a partial download, or code of another revision)."
        )
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return OpenWeightVLM(model, processor, str(where), base_weights=_provenance(where, model))


def _provenance(where: str | Path, model: nn.Module) -> dict[str, Any]:
    """What the run starts from: the folder or id, the hub revision when known, and a hash of the config."""
    config = getattr(model, "config", None)
    text = json.dumps(config.to_dict() if config is not None else {}, sort_keys=True, default=str)
    return {
        "open_weight": str(where),
        "revision": getattr(config, "_commit_hash", None),
        "architecture": type(model).__name__,
        "config_sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
    }


__all__ = ["GROUPS", "OpenWeightVLM", "load_open_weight", "parameter_group", "trusted"]
