"""Cross-Attention (Llama 3-V style): gated cross-attention layers after every k-th decoder layer.

The decoder's sequence holds one marker token per image (the backbone's image token id) where the image
appears; a text token attends to the tokens of every image whose marker is at or before it in its own
sample. Both gates are tanh(0) = 0 at initialisation, so the initial model is exactly the language model,
yet the gates themselves receive gradients from the first step.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm

from vlmlab.errors import ConfigError
from vlmlab.models.fusion.context import FusionContext, attention


class GatedCrossAttentionLayer(nn.Module):
    # entry points besides forward (a sharded layer gathers its weights for these too: train/sharding.py)
    fsdp_forward_methods = ("image_keys_values",)

    def __init__(self, config: Qwen3Config) -> None:
        super().__init__()
        hidden, head_dim = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            head_dim,
        )
        self.scaling = head_dim**-0.5
        self.input_layernorm = Qwen3RMSNorm(hidden, eps=config.rms_norm_eps)
        self.q_proj = nn.Linear(hidden, self.num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * head_dim, hidden, bias=False)
        self.q_norm = Qwen3RMSNorm(head_dim, eps=config.rms_norm_eps)
        self.k_norm = Qwen3RMSNorm(head_dim, eps=config.rms_norm_eps)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.post_attention_layernorm = Qwen3RMSNorm(hidden, eps=config.rms_norm_eps)
        self.mlp = Qwen3MLP(config)
        self.mlp_gate = nn.Parameter(torch.zeros(1))
        for module in (self.q_proj, self.k_proj, self.v_proj, self.o_proj, *self.mlp.children()):
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=config.initializer_range)

    def image_keys_values(self, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, M, D] image states -> keys, values [B, Hkv, M, hd] (cached across generation steps)."""
        batch, length, _ = bank.shape
        key = self.k_norm(self.k_proj(bank).view(batch, length, self.num_kv_heads, self.head_dim))
        value = self.v_proj(bank).view(batch, length, self.num_kv_heads, self.head_dim)
        return key.transpose(1, 2), value.transpose(1, 2)

    def forward(
        self,
        hidden: torch.Tensor,  # [B, T, D]
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor,  # [B, 1, T, M] additive
        sees_image: torch.Tensor,  # [B, T, 1]: 0 where a token has no image before it
    ) -> torch.Tensor:
        batch, length, _ = hidden.shape
        query = self.q_proj(self.input_layernorm(hidden)).view(batch, length, self.num_heads, self.head_dim)
        query = self.q_norm(query).transpose(1, 2)
        attended = self.o_proj(attention(query, key, value, mask, self.scaling, causal=False))
        hidden = hidden + self.attn_gate.tanh() * attended * sees_image
        mlp_out = self.mlp(self.post_attention_layernorm(hidden))
        return hidden + self.mlp_gate.tanh() * mlp_out * sees_image


class CrossAttentionFusion(nn.Module):
    name = "cross_attention"
    images_in_sequence = False  # one marker token per image; image tokens live in the cross-attention

    def __init__(self, lm: Qwen3ForCausalLM, cross_attention_every: int = 4, **_: object) -> None:
        super().__init__()
        num_layers = lm.config.num_hidden_layers
        if not 1 <= cross_attention_every <= num_layers:
            raise ConfigError(
                f"cross_attention_every={cross_attention_every} is impossible for a {num_layers}-layer "
                f"backbone (valid: 1..{num_layers})."
            )
        self.every = cross_attention_every
        count = num_layers // cross_attention_every
        self.cross_attn_layers = nn.ModuleList(GatedCrossAttentionLayer(lm.config) for _ in range(count))

    def forward(self, lm: Qwen3ForCausalLM, hidden: torch.Tensor, ctx: FusionContext) -> torch.Tensor:
        bank = ctx.extras.get("image_bank")  # [B, M, D] or None for a text-only batch
        cached = ctx.extras.setdefault("image_kv", {})
        for index, layer in enumerate(lm.model.layers):
            hidden = ctx.call_layer(layer, hidden)
            if bank is None or (index + 1) % self.every:
                continue
            xattn = self.cross_attn_layers[(index + 1) // self.every - 1]
            if index not in cached:
                cached[index] = xattn.image_keys_values(bank)
            key, value = cached[index]
            hidden = ctx.checkpointed(
                lambda h, x=xattn, k=key, v=value: x(
                    h, k, v, ctx.extras["image_mask"], ctx.extras["sees_image"]
                ),
                hidden,
            )
        return hidden


def image_bank_and_mask(
    features: torch.Tensor,  # [N_images, tokens, D], images in order of their markers (row-major)
    marker: torch.Tensor,  # [B, T] bool: positions of the image markers
    segment_ids: torch.Tensor,  # [B, T]
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather each row's images into a bank [B, M, D] and the mask of which tokens may see which images."""
    batch, length = marker.shape
    tokens, width = features.shape[1], features.shape[2]
    per_row = marker.sum(dim=1)
    if int(per_row.sum()) != features.shape[0]:
        raise ConfigError(
            f"The batch has {int(per_row.sum())} image markers but {features.shape[0]} images were given."
        )
    slots = int(per_row.max()) if batch else 0
    bank = features.new_zeros(batch, max(slots, 1) * tokens, width)
    # for each image slot: the marker position and segment it belongs to (-1 = empty slot)
    slot_position = torch.full((batch, max(slots, 1)), length, device=marker.device)
    slot_segment = torch.full((batch, max(slots, 1)), -2, device=marker.device, dtype=segment_ids.dtype)
    rows, positions = marker.nonzero(as_tuple=True)
    slot = torch.cumsum(marker.long(), dim=1)[rows, positions] - 1
    bank.view(batch, -1, tokens, width)[rows, slot] = features
    slot_position[rows, slot] = positions
    slot_segment[rows, slot] = segment_ids[rows, positions]
    token_index = torch.arange(length, device=marker.device)
    visible = (slot_segment[:, None, :] == segment_ids[:, :, None]) & (
        slot_position[:, None, :] <= token_index[None, :, None]
    )  # [B, T, slots]
    visible = visible.repeat_interleave(tokens, dim=2)  # [B, T, M]
    mask = torch.zeros(visible.shape, dtype=dtype, device=marker.device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    sees_image = visible.any(dim=2, keepdim=True).to(dtype)
    return bank, mask[:, None], sees_image
