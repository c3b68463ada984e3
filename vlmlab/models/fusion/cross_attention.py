"""Cross-Attention (Llama 3-V style): gated cross-attention layers inserted among the decoder layers.

The decoder's sequence holds one marker token per image (the backbone's image token id) where the image
appears; a text token attends to the tokens of every image whose marker is at or before it in its own
sample. Both gates are tanh(0) = 0 at initialisation, so the initial model is exactly the language model,
yet the gates themselves receive gradients from the first step.

Placement (`model.cross_attention_layout`, one layer per `cross_attention_every` = k decoder layers):
- `every` (default, the paper's "every four layers"): after decoder layers k, 2k, ...; on a 28-layer Qwen3
  with k = 4 the 7th sits after layer 28, right before the final norm.
- `llama32`: Llama 3.2-Vision's offset. Its 11B text model interleaves 8 cross-attention layers with the 32
  of Llama 3.1 8B at indices 3, 8, ..., 38 of 40: the first after k - 1 = 3 decoder layers, then every fifth
  layer of the combined stack, and a decoder layer after the last. Here: after decoder layers k - 1,
  2k - 1, ..., as many layers as `every` gives (N // k), the last always followed by a decoder layer.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RMSNorm

from vlmlab.config import CROSS_ATTENTION_LAYOUTS
from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.models.fusion.context import FusionContext, attention


def cross_attention_positions(num_layers: int, every: int, layout: str = "every") -> list[int]:
    """For each gated cross-attention layer in forward order, how many decoder layers run before it.

    A position p means "between decoder layer p - 1 and p (0-based)"; p = `num_layers` is after the last one,
    directly before the final norm. See the module docstring for the layouts.
    """
    if layout not in CROSS_ATTENTION_LAYOUTS:
        raise unknown_choice(
            "cross-attention layout (model.cross_attention_layout)", layout, CROSS_ATTENTION_LAYOUTS
        )
    if not 1 <= every <= num_layers:
        raise ConfigError(
            f"cross_attention_every={every} is impossible for a {num_layers}-layer "
            f"backbone (valid: 1..{num_layers})."
        )
    first = every if layout == "every" else every - 1
    # `every` may end on the last decoder layer; `llama32` never does (its last position is at most N - 1)
    return list(range(first, num_layers + 1 if layout == "every" else num_layers, every))


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

    def __init__(
        self,
        lm: Qwen3ForCausalLM,
        cross_attention_every: int = 4,
        cross_attention_layout: str = "every",
        **_: object,
    ) -> None:
        super().__init__()
        num_layers = lm.config.num_hidden_layers
        self.every, self.layout = cross_attention_every, cross_attention_layout
        self.positions = cross_attention_positions(num_layers, cross_attention_every, cross_attention_layout)
        # position -> which cross-attention layer runs there (the ModuleList is in forward order)
        self._at_position = {position: number for number, position in enumerate(self.positions)}
        self.cross_attn_layers = nn.ModuleList(GatedCrossAttentionLayer(lm.config) for _ in self.positions)

    def forward(self, lm: Qwen3ForCausalLM, hidden: torch.Tensor, ctx: FusionContext) -> torch.Tensor:
        bank = ctx.extras.get("image_bank")  # [B, M, D] or None for a text-only batch
        cached = ctx.extras.setdefault("image_kv", {})  # cross-attention layer number -> image keys, values

        def cross_attend(position: int, hidden: torch.Tensor) -> torch.Tensor:
            number = self._at_position.get(position)
            if bank is None or number is None:
                return hidden
            xattn = self.cross_attn_layers[number]
            if number not in cached:
                cached[number] = xattn.image_keys_values(bank)
            key, value = cached[number]
            return ctx.checkpointed(
                lambda h: xattn(h, key, value, ctx.extras["image_mask"], ctx.extras["sees_image"]), hidden
            )

        for index, layer in enumerate(lm.model.layers):
            hidden = cross_attend(index, hidden)
            hidden = ctx.call_layer(layer, hidden)
        return cross_attend(len(lm.model.layers), hidden)


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
