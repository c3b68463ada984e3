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

`generate` is transformers' own (`GenerationMixin`): every `GenerationConfig` option that a decoder-only
transformers model honours works here too (greedy, sampling, beams, `num_return_sequences`,
`return_dict_in_generate` with `output_scores` / `output_logits`, logits processors, stopping criteria).
The model supplies what that loop needs: `forward` with a key-value `cache` (the prompt and its images are
encoded once, then one token per step, through vlmlab's own `prefill` / `decode_step`), and the expansion of
`pixel_values` for beams and multiple return sequences (row by row: a prompt may hold several images).
Prompts are left-padded when batched, as for any decoder-only model; the exported `generation_config.json`
stops at vlmlab's stop tokens and never generates the image placeholder id (`suppress_tokens`).
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_vlmlab import VlmlabConfig

try:
    from vlmlab.config import ModelConfig
    from vlmlab.models.backbone import ATTENTION_IMPLEMENTATIONS
    from vlmlab.models.vlm import build_vlm
except ImportError as error:  # pragma: no cover - exercised only without vlmlab
    raise ImportError(
        "This model folder was written by `vlmlab export` in the remote-code format: its modeling code builds "
        "the model with the vlmlab package, which cannot be imported here "
        f"({error}). Install vlmlab (its repository: pip install -e .) in this environment."
    ) from error

# forward() arguments transformers' generate or harnesses pass that carry nothing for this model
_UNUSED_FORWARD_ARGUMENTS = ("image_sizes", "output_attentions", "output_hidden_states")
_EXTRAS = "vlmlab_extras"  # the cache attribute holding what decoding needs besides keys / values


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


def _keep(logits: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """transformers' `logits_to_keep`: 0 keeps every position, n the last n, a tensor those indices."""
    if isinstance(logits_to_keep, int):
        return logits[:, -logits_to_keep:] if logits_to_keep else logits
    return logits[:, logits_to_keep]


class VlmlabForConditionalGeneration(PreTrainedModel, GenerationMixin):
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
        # the key-value cache transformers' generate builds from this config has the language model's layers
        # (vlmlab's own decoding builds it from the backbone's config: the same layers, the same layer types)
        text = self.model.lm.config
        config.num_hidden_layers = text.num_hidden_layers
        config.layer_types = list(
            getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
        )
        config.sliding_window = getattr(text, "sliding_window", None)
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
        cache: object | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits [B, T, V] (and the loss with `labels`: position t's logits predict labels[t + 1]).

        With a `cache` (a transformers `Cache`, as `generate` passes it), an empty cache is filled with the
        (left-padded) prompts and their images; a filled one takes the next token of each row, `attention_mask`
        covering the whole sequence so far. The cache is returned as the output's `cache`."""
        cache = kwargs.pop("past_key_values", cache)  # transformers' name for it before 5.x
        for name in _UNUSED_FORWARD_ARGUMENTS:
            if kwargs.pop(name, None) and name != "image_sizes":
                raise ValueError(f"vlmlab's model returns no per-layer {name.removeprefix('output_')}.")
        if kwargs:
            raise TypeError(f"vlmlab's forward takes no {', '.join(sorted(kwargs))}.")
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.dtype)
        if cache is None:
            out = self.model(
                input_ids,
                pixel_values=pixel_values,
                labels=labels,
                segment_ids=segment_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
            )
            loss, logits = out.loss, _keep(out.logits, logits_to_keep)
        else:
            if labels is not None or segment_ids is not None:
                raise ValueError(
                    "vlmlab's cached forward takes left-padded prompts with an attention_mask (no labels or "
                    "segment_ids: those are for training's packed rows)."
                )
            logits = self._cached(input_ids, pixel_values, attention_mask, position_ids, cache)
            loss, logits = None, _keep(logits, logits_to_keep)
        output = CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)
        return output.to_tuple() if return_dict is False else output

    def _cached(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: object,
    ) -> torch.Tensor:
        """Logits of `input_ids` continuing what `cache` holds (nothing: the prompts), filling the cache."""
        past = cache.get_seq_length()
        if attention_mask is None:
            attention_mask = torch.ones(
                input_ids.shape[0], past + input_ids.shape[1], dtype=torch.long, device=input_ids.device
            )
        real = attention_mask.bool()
        if bool((real[:, 1:] < real[:, :-1]).any()):
            raise ValueError(
                "generation needs left-padded prompts (attention_mask 0 only before the prompt)."
            )
        segments = torch.where(real, 0, -1)
        if past == 0:
            logits, _, extras = self.model.prefill(
                input_ids, segments, pixel_values, cache, all_logits=True, position_ids=position_ids
            )
            setattr(cache, _EXTRAS, extras)
            return logits
        if input_ids.shape[1] != 1 or not hasattr(cache, _EXTRAS):
            raise ValueError(
                "vlmlab's cached forward continues a cache it filled itself, one new token per row at a time "
                f"(got {input_ids.shape[1]} tokens after {past} cached)."
            )
        # the new token's position: prompt positions count the row's real tokens from 0 (vlmlab's decoding)
        positions = real.sum(dim=1, keepdim=True) - 1 if position_ids is None else position_ids[:, -1:]
        step = self.model.decode_step(input_ids[:, 0], positions, segments, cache, getattr(cache, _EXTRAS))
        return step[:, None]

    def _expand_inputs_for_generation(
        self,
        expand_size: int = 1,
        is_encoder_decoder: bool = False,
        input_ids: torch.LongTensor | None = None,
        **model_kwargs,
    ) -> tuple[torch.LongTensor, dict]:
        """transformers repeats every tensor row by row for beams / return sequences; `pixel_values` holds
        images, not rows (a row may have several, or none): repeat each row's images with its row."""
        pixels = model_kwargs.pop("pixel_values", None)
        if expand_size != 1 and pixels is not None and input_ids is not None:
            per_image = int(self.config.tokens_per_image)
            counts = ((input_ids == self.config.image_token_id).sum(dim=1) // per_image).tolist()
            if sum(counts) == pixels.shape[0]:  # else the forward names the mismatch
                starts = [sum(counts[:row]) for row in range(len(counts))]
                order = [
                    index
                    for start, count in zip(starts, counts)
                    for _ in range(expand_size)
                    for index in range(start, start + count)
                ]
                pixels = pixels[torch.tensor(order, dtype=torch.long, device=pixels.device)]
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        if pixels is not None:
            model_kwargs["pixel_values"] = pixels
        return input_ids, model_kwargs


__all__ = ["VlmlabForConditionalGeneration"]
