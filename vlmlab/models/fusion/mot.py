"""Mixture-of-Transformers: per-modality copies of every token-wise weight, one global self-attention.

Each decoder layer has a text copy (the backbone's own layer) and an image copy (initialised from it).
Norms, q/k/v/o projections, q/k norms and the MLP are applied with the weights of each token's own
modality; all tokens then meet in one causal self-attention. Each token passes through exactly one copy,
so the FLOPs per token equal the Joint-Decoder's.

Both copies are `MoTDecoderLayer`s: a Qwen3 decoder layer (same weights, same names, same forward) with
its two halves, `attention_inputs` and `attention_outputs`, as methods of the layer itself. The fusion only
ever calls those methods and `forward`, never a layer's submodules, so a sharded layer (FSDP2 registers the
two methods as forward methods, vlmlab/train/sharding.py) has its weights gathered whenever they are used.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, apply_rotary_pos_emb

from vlmlab.models.fusion.context import FusionContext


class MoTDecoderLayer(Qwen3DecoderLayer):
    """A Qwen3 decoder layer whose attention block can run split around a shared attention."""

    fsdp_forward_methods = ("attention_inputs", "attention_outputs")

    def attention_inputs(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, D] tokens of this modality -> [N, (heads + 2 kv_heads) * head_dim]: normed q, k and v."""
        attn = self.self_attn
        heads, kv_heads = attn.config.num_attention_heads, attn.config.num_key_value_heads
        x = self.input_layernorm(hidden)
        q = attn.q_norm(attn.q_proj(x).view(-1, heads, attn.head_dim)).flatten(1)
        k = attn.k_norm(attn.k_proj(x).view(-1, kv_heads, attn.head_dim)).flatten(1)
        return torch.cat([q, k, attn.v_proj(x)], dim=-1)

    def attention_outputs(self, hidden: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        """The rest of the layer for this modality's tokens: output projection, residual, MLP, residual."""
        hidden = hidden + self.self_attn.o_proj(mixed)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class MixtureOfTransformersFusion(nn.Module):
    name = "mot"
    images_in_sequence = True

    def __init__(self, lm: Qwen3ForCausalLM, **_: object) -> None:
        super().__init__()
        for layer in lm.model.layers:
            # the backbone's own (already loaded) layers gain the split methods: no copy, nothing else changes
            layer.__class__ = MoTDecoderLayer
        self.image_layers = nn.ModuleList(copy.deepcopy(layer) for layer in lm.model.layers)

    def reset_image_copy(self, lm: Qwen3ForCausalLM) -> None:
        """Copy the backbone's layers into the image transformer (the stage-2 hand-off from a Joint-Decoder)."""
        self.image_layers.load_state_dict(lm.model.layers.state_dict())

    def forward(self, lm: Qwen3ForCausalLM, hidden: torch.Tensor, ctx: FusionContext) -> torch.Tensor:
        if not bool(ctx.is_image.any()):  # text only: the text copy is exactly the backbone's layer
            for layer in lm.model.layers:
                hidden = ctx.call_layer(layer, hidden)
            return hidden
        flat_image = ctx.is_image.reshape(-1)
        routes = (torch.nonzero(~flat_image).squeeze(1), torch.nonzero(flat_image).squeeze(1))
        for text_layer, image_layer in zip(lm.model.layers, self.image_layers):
            hidden = ctx.checkpointed(
                lambda h, t=text_layer, i=image_layer: _mixed_layer((t, i), h, routes, ctx), hidden
            )
        return hidden


def _mixed_layer(
    layers: tuple[MoTDecoderLayer, MoTDecoderLayer],  # (text copy, image copy)
    hidden: torch.Tensor,
    routes: tuple[torch.Tensor, torch.Tensor],  # flat indices of the text and of the image tokens
    ctx: FusionContext,
) -> torch.Tensor:
    batch, length, width = hidden.shape
    attn = layers[0].self_attn
    heads, kv_heads, head_dim = (
        attn.config.num_attention_heads,
        attn.config.num_key_value_heads,
        attn.head_dim,
    )

    def routed(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Scatter each modality's rows back to their flat positions. -> [B * T, *]"""
        out = like.new_empty((batch * length, parts[0].shape[-1]))
        for part, index in zip(parts, routes):
            out[index] = part
        return out

    flat = hidden.reshape(batch * length, width)
    inputs = [flat.index_select(0, index) for index in routes]
    qkv = routed([layer.attention_inputs(x) for layer, x in zip(layers, inputs)], flat)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = q.view(batch, length, heads, head_dim).transpose(1, 2)
    k = k.view(batch, length, kv_heads, head_dim).transpose(1, 2)
    v = v.view(batch, length, kv_heads, head_dim).transpose(1, 2)
    cos, sin = ctx.position_embeddings
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    if ctx.cache is not None:
        k, v = ctx.cache.update(k, v, attn.layer_idx)
    mixed = ctx.self_attention(attn, q, k, v).reshape(batch * length, -1)
    outputs = [
        layer.attention_outputs(x, mixed.index_select(0, index))
        for layer, x, index in zip(layers, inputs, routes)
    ]
    return routed(outputs, flat).view(batch, length, width)
