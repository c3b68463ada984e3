"""A vlmlab vision-language model as a transformers model (remote code written by `vlmlab export`).

This file needs the vlmlab package installed (the project's repository, `pip install -e .`): it builds the
model with vlmlab's own code (image tokenizer, adapter, fusion over the Qwen3 backbone), so the loaded model
computes exactly what vlmlab computes; the weights are the folder's safetensors.

    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)  # a LlavaProcessor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=image, return_tensors="pt")
    logits = model(**inputs).logits
    answer = model.generate(**inputs, max_new_tokens=32)[0, inputs["input_ids"].shape[1]:]

Inputs follow vlmlab's batch contract (vlmlab/models/vlm.py): `input_ids` hold the image token id
`config.tokens_per_image` times where each image sits (once for Cross-Attention, a marker), `pixel_values`
[N, 3, H, W] the images in order. Padding comes as `attention_mask` (0 on padding) or vlmlab's `segment_ids`.
`generate` is vlmlab's greedy decoding with its key-value cache (left-padded prompts; no sampling, no beams);
the stop token ends a row and is not included in its output.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_vlmlab import VlmlabConfig

try:
    from vlmlab.config import ModelConfig
    from vlmlab.models.backbone import ATTENTION_IMPLEMENTATIONS
    from vlmlab.models.generation import greedy_generate
    from vlmlab.models.vlm import build_vlm
except ImportError as error:  # pragma: no cover - exercised only without vlmlab
    raise ImportError(
        "This model folder was written by `vlmlab export` in the remote-code format: its modeling code builds "
        "the model with the vlmlab package, which cannot be imported here "
        f"({error}). Install vlmlab (its repository: pip install -e .) in this environment."
    ) from error

# generate() options that greedy decoding does not use (harnesses pass them with their defaults)
_IGNORED_GENERATE_OPTIONS = {
    "temperature",
    "top_p",
    "top_k",
    "generation_config",
    "return_dict_in_generate",
    "output_scores",
    "image_sizes",
    "min_new_tokens",
    "repetition_penalty",
}


def model_config(fields: dict) -> ModelConfig:
    """vlmlab's ModelConfig from the exported mapping; no base weights are read (the folder holds them all)."""
    known = {field.name for field in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"This folder was exported by a vlmlab with model field(s) {', '.join(unknown)} that the installed "
            "vlmlab lacks; install the vlmlab version that exported it."
        )
    values = dict(fields)
    values.update(backbone_weights=None, tokenizer_weights=None, random_tokenizer=True)
    values["gradient_checkpointing"] = False
    return ModelConfig(**values)


class VlmlabForConditionalGeneration(PreTrainedModel):
    config_class = VlmlabConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, config: VlmlabConfig) -> None:
        super().__init__(config)
        fields = dict(config.vlmlab_model)
        implementation = getattr(config, "_attn_implementation", None)
        if implementation in ATTENTION_IMPLEMENTATIONS:
            fields["attn_implementation"] = implementation
        self.model = build_vlm(model_config(fields))
        # Every buffer is stored in the folder (rotary frequencies, tokenizer tables), so loading never has to
        # recompute one: non-persistent buffers would otherwise be left uninitialised by meta-device loading.
        for module in self.model.modules():
            module._non_persistent_buffers_set.clear()
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing to initialise: every parameter and buffer is read from the folder's safetensors."""

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.lm.get_input_embeddings()

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.model.lm.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits [B, T, V] (and the loss with `labels`: position t's logits predict labels[t + 1])."""
        kwargs.pop("use_cache", None)
        kwargs.pop("image_sizes", None)
        if kwargs:
            raise TypeError(f"vlmlab's forward takes no {', '.join(sorted(kwargs))}.")
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.dtype)
        out = self.model(
            input_ids,
            pixel_values=pixel_values,
            labels=labels,
            segment_ids=segment_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
        )
        if return_dict is False:
            return (out.loss, out.logits) if out.loss is not None else (out.logits,)
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        do_sample: bool = False,
        num_beams: int = 1,
        use_cache: bool = True,
        **kwargs,
    ) -> torch.LongTensor:
        """Greedy decoding: [B, T + new] (the prompts, then each row's tokens, padded with the pad id)."""
        unknown = sorted(set(kwargs) - _IGNORED_GENERATE_OPTIONS)
        if unknown:
            raise TypeError(f"vlmlab's generate takes no {', '.join(unknown)}.")
        if do_sample or num_beams != 1:
            raise ValueError("vlmlab's generate decodes greedily: do_sample=False and num_beams=1 only.")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        real = attention_mask.bool()
        if bool((real[:, 1:] < real[:, :-1]).any()):
            raise ValueError("generate needs left-padded prompts (attention_mask 0 only before the prompt).")
        stop = self.config.eos_token_id if eos_token_id is None else eos_token_id
        stop = [stop] if isinstance(stop, int) else list(stop or [])
        pad = self.config.pad_token_id if pad_token_id is None else pad_token_id
        pad = stop[0] if pad is None and stop else (pad or 0)
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.dtype)
        rows = greedy_generate(
            self.model,
            input_ids,
            torch.where(real, 0, -1),
            pixel_values,
            max_new_tokens or 32,
            stop,
            use_cache=use_cache,
        )
        new = input_ids.new_full((input_ids.shape[0], max((len(row) for row in rows), default=0)), pad)
        for index, row in enumerate(rows):
            new[index, : len(row)] = torch.tensor(row, dtype=new.dtype)
        return torch.cat([input_ids, new], dim=1)


__all__ = ["VlmlabForConditionalGeneration"]
