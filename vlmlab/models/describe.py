"""Parameter counts per group and forward FLOPs per token of an assembled model, without its weights.

FLOPs count the matrix multiplies (2 per multiply-add) of one forward pass, per token, with causal
self-attention over an average context of `context_length / 2`. Image tokenizers are counted as
2 x parameters per patch token (their own attention is left out: it is small at 196-256 patches); the towers of
an encoder set each on their own patches. An image
token is one the language model reads (the adapter's output): the tokenizer's and the adapter's FLOPs for one
image are spread over the adapter's tokens, so a connector that pools 4 patches into one token carries their
tokenizer cost (vlmlab.models.adapters: `flops_per_image`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from vlmlab.config import ModelConfig
from vlmlab.models.adapters import adapter_name
from vlmlab.models.tokenizers.encoder_set import EncoderSet
from vlmlab.models.vlm import PARAMETER_GROUPS, VisionLanguageModel, build_vlm


def build_on_meta(config: ModelConfig) -> VisionLanguageModel:
    """Assemble the model on the meta device: shapes only, no memory, no weight files read."""
    config = dataclasses.replace(config, backbone_weights=None, random_tokenizer=True, tokenizer_weights=None)
    with torch.device("meta"):
        return build_vlm(config)


def _matmul_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if p.dim() == 2 and "embed" not in name)


def describe(model: VisionLanguageModel, context_length: int = 2048) -> dict[str, Any]:
    groups = model.parameter_groups()
    params = {name: sum(p.numel() for _, p in groups[name]) for name in PARAMETER_GROUPS}
    cfg = model.lm.config
    attention_per_layer = 2 * context_length * cfg.num_attention_heads * cfg.head_dim  # QK^T + AV, causal
    layers = sum(_matmul_params(layer) for layer in model.lm.model.layers)
    decoder = 2 * layers + cfg.num_hidden_layers * attention_per_layer
    head = 2 * model.lm.lm_head.weight.numel()
    patches, tokens = model.image_tokenizer.num_tokens, model.features_per_image
    # each tower runs on its own patches (an encoder set's towers may have different grids)
    towers = list(getattr(model.image_tokenizer, "towers", [model.image_tokenizer]))
    tokenizer_per_image = sum(2 * _matmul_params(tower) * tower.num_tokens for tower in towers)
    adapter_per_image = model.adapter.flops_per_image()
    # the tokenizer and adapter cost of one image, per token the language model reads
    encoder = (tokenizer_per_image + adapter_per_image) / tokens
    text = decoder + head
    image = encoder + decoder  # image tokens are not scored: no vocabulary head
    if model.config.fusion == "cross_attention":
        xattn_layers = list(model.fusion.cross_attn_layers)
        per_query = sum(
            _matmul_params(x) - x.k_proj.weight.numel() - x.v_proj.weight.numel() for x in xattn_layers
        )
        text += 2 * per_query + len(xattn_layers) * 4 * tokens * cfg.num_attention_heads * cfg.head_dim
        image = encoder + sum(2 * (x.k_proj.weight.numel() + x.v_proj.weight.numel()) for x in xattn_layers)
    info = {
        "backbone": model.backbone_spec.name,
        "tokenizer": model.image_tokenizer.spec.name,
        "fusion": model.config.fusion,
        "adapter": adapter_name(model.adapter),
        "image_size": model.image_tokenizer.spec.image_size,  # the effective size (model.image_size or preset)
        "image_resize": model.image_tokenizer.spec.resize,
        "params": params,
        "params_total": sum(params.values()),
        "tokenizer_tokens_per_image": patches,  # what the image tokenizer gives the adapter
        "tokens_per_image": tokens,  # what the adapter gives the language model
        "sequence_positions_per_image": model.tokens_per_image,
        "context_length": context_length,
        "adapter_flops_per_image": int(adapter_per_image),
        "adapter_flops_per_image_token": int(adapter_per_image / tokens),
        "forward_flops_per_text_token": int(text),
        "forward_flops_per_image_token": int(image),
        "tiling": _tiling(model),
    }
    if isinstance(model.image_tokenizer, EncoderSet):
        info["encoder_fusion"] = model.image_tokenizer.rule
        info["encoders"] = [
            {
                "tokenizer": tower.spec.name,
                "image_size": tower.spec.image_size,
                "tokens_per_image": tower.num_tokens,
                "width": tower.embed_dim,
                "params": sum(p.numel() for p in tower.parameters()),
            }
            for tower in towers
        ]
        info["tokenizer_width"] = model.image_tokenizer.embed_dim
    return info


def _tiling(model: VisionLanguageModel) -> dict[str, Any] | None:
    """Sequence positions one image takes on each AnyRes grid (thumbnail, tiles, newline separators)."""
    plan = model.tiling_plan
    if plan is None:
        return None
    return {
        "tile_size": plan.tile_size,
        "positions_per_tile": plan.tokens_per_tile,
        "positions_per_image": {f"{rows}x{cols}": plan.cost((rows, cols)) for rows, cols in plan.grids},
        "thumbnail_only": plan.thumbnail_positions,
        "max_image_tokens": plan.max_image_tokens,
        "lines": plan.describe(),
    }


def format_description(info: dict[str, Any]) -> str:
    lines = [f"{info['fusion']}: {info['backbone']} + {info['tokenizer']}", "", "parameters per group:"]
    for name, count in info["params"].items():
        lines.append(f"  {name:<16} {count:>15,}")
    lines.append(f"  {'total':<16} {info['params_total']:>15,}")
    lines += [
        "",
        f"adapter {info['adapter']}: {info['tokenizer_tokens_per_image']} tokenizer tokens -> "
        f"{info['tokens_per_image']} image tokens, {info['params']['adapter']:,} parameters, "
        f"{info['adapter_flops_per_image_token'] / 1e6:.3f} MFLOP per image token",
        f"image: {info['image_size']} x {info['image_size']} px ({info['image_resize']}), "
        f"{info['tokenizer_tokens_per_image']} tokenizer tokens, {info['tokens_per_image']} tokens per image, "
        f"{info['sequence_positions_per_image']} sequence position(s)",
        f"forward FLOPs per text token  (context {info['context_length']}): "
        f"{info['forward_flops_per_text_token'] / 1e9:.3f} GFLOP",
        f"forward FLOPs per image token: {info['forward_flops_per_image_token'] / 1e9:.3f} GFLOP",
    ]
    if info.get("encoders"):
        lines += [
            "",
            f"encoders ({info['encoder_fusion']} fusion -> {info['tokenizer_tokens_per_image']} tokens "
            f"of width {info['tokenizer_width']}):",
        ]
        for tower in info["encoders"]:
            lines.append(
                f"  {tower['tokenizer']:<24} {tower['image_size']} px, {tower['tokens_per_image']} tokens of width "
                f"{tower['width']}, {tower['params']:,} parameters"
            )
    tiling = info.get("tiling")
    if tiling:
        lines += ["", f"tiling anyres ({tiling['tile_size']} px tiles), sequence positions per image:"]
        lines += [f"  {line}" for line in tiling["lines"]]
    return "\n".join(lines)
