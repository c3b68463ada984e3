"""What every decoder layer of every fusion needs to know about the batch, computed once per forward.

Attention masks follow one rule for all fusions: a token sees earlier tokens of its own sample (its
segment) only; padding has segment id -1. How that rule reaches the kernel depends on the attention
implementation the backbone was built with (`model.attn_implementation`), and is the same for the
Joint-Decoder's and MoT's self-attention:
- `sdpa`: no mask when every row is one sample followed by padding (PyTorch's fused causal kernels),
  else a dense additive [B, 1, Tq, Tk] block-causal mask (the CPU fallback);
- `eager`: always the dense mask (eager attention has no causal switch of its own);
- `flash_attention_2` / `_3`: never a dense mask: packed rows become variable-length sequences
  (`cu_seq_lens` over the flattened batch, one per segment, padding runs included) for flash's varlen
  kernel; generation (one left-padded prompt per row) passes the [B, Tk] padding mask flash unpads with;
- `flex_attention`: a FlexAttention BlockMask of the same rule (document masking), built from the segments.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, eager_attention_forward


def positions_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position ids that restart at 0 at the start of every segment (packed samples). [B, T] -> [B, T]."""
    batch, length = segment_ids.shape
    index = torch.arange(length, device=segment_ids.device).expand(batch, length)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return (index - start_index).clamp_min(0)


def needs_block_mask(segment_ids: torch.Tensor) -> bool:
    """False when every row is one sample followed only by padding: then causal masking suffices."""
    real = segment_ids >= 0
    packed = (segment_ids > 0).any()
    # padding strictly after the real tokens <=> real is non-increasing along the row
    right_padded = bool((real[:, 1:] <= real[:, :-1]).all())
    return bool(packed) or not right_padded


def block_causal_mask(segment_ids: torch.Tensor, query_length: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [B, 1, Tq, Tk] for the last `query_length` positions attending to all Tk positions."""
    key_length = segment_ids.shape[1]
    device = segment_ids.device
    key_index = torch.arange(key_length, device=device)
    query_index = key_index[key_length - query_length :]
    seg_q = segment_ids[:, key_length - query_length :, None]
    seg_k = segment_ids[:, None, :]
    allowed = (seg_q == seg_k) & (seg_k >= 0) & (key_index[None, None, :] <= query_index[None, :, None])
    allowed |= key_index[None, None, :] == query_index[None, :, None]  # padding sees itself: no NaN rows
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


# transformers renamed the decoder layers' cache argument (`past_key_values` goes away in 5.40)
_CACHE_ARGUMENT = (
    "cache" if "cache" in inspect.signature(Qwen3DecoderLayer.forward).parameters else "past_key_values"
)

# how each attention implementation is told what a query may see (see the module docstring)
MASK_LAYOUTS = {
    "eager": "dense",
    "sdpa": "dense_or_causal",
    "flash_attention_2": "varlen",
    "flash_attention_3": "varlen",
    "flex_attention": "block",
}


def attention_masking(
    implementation: str, segment_ids: torch.Tensor, query_length: int, dtype: torch.dtype, generating: bool
) -> tuple[object | None, dict]:
    """(attention_mask, extra attention kwargs) for the last `query_length` positions of `segment_ids`."""
    layout = MASK_LAYOUTS.get(implementation, "dense")
    isolate = needs_block_mask(segment_ids)
    if layout == "dense" or (layout == "dense_or_causal" and isolate):
        return block_causal_mask(segment_ids, query_length, dtype), {}
    if layout == "block":
        return document_block_mask(segment_ids, query_length), {}
    if layout == "varlen" and isolate:
        if generating:  # one prompt per row, left-padded: flash unpads with the key padding mask
            return (segment_ids >= 0).to(torch.int32), {}
        return None, varlen_lengths(segment_ids)
    return None, {}


def varlen_lengths(segment_ids: torch.Tensor) -> dict[str, torch.Tensor | int]:
    """Flash's variable-length kwargs: every run of one segment id within a row is one sequence of the
    flattened [B * T] batch (so padding runs are sequences of their own and see nothing real)."""
    batch, length = segment_ids.shape
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    offsets = torch.nonzero(starts.reshape(-1)).squeeze(1)
    total = torch.tensor([batch * length], device=segment_ids.device)
    cu_seq_lens = torch.cat([offsets, total]).to(torch.int32)
    longest = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
    return dict(
        cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens, max_length_q=longest, max_length_k=longest
    )


def document_block_mask(segment_ids: torch.Tensor, query_length: int) -> object:
    """The block-causal rule as a FlexAttention BlockMask (no dense [T, T] tensor)."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, key_length = segment_ids.shape
    offset = key_length - query_length

    def allowed(b, h, q, kv):
        query = q + offset
        same = (segment_ids[b, query] == segment_ids[b, kv]) & (segment_ids[b, kv] >= 0) & (kv <= query)
        return same | (kv == query)  # padding sees itself: no empty rows

    return create_block_mask(allowed, batch, None, query_length, key_length, device=segment_ids.device)


@dataclass
class FusionContext:
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # rotary (cos, sin), [B, T, head_dim] each
    position_ids: torch.Tensor  # [B, T]
    attn_mask: object | None  # what the attention implementation takes (attention_masking), None: causal
    is_image: torch.Tensor  # [B, T] bool: which positions hold image tokens (Joint-Decoder / MoT)
    cache: object | None = None  # a transformers Cache during generation
    gradient_checkpointing: bool = False
    extras: dict = field(default_factory=dict)  # fusion-specific state (cross-attention image bank)
    attention_kwargs: dict = field(default_factory=dict)  # flash varlen lengths (attention_masking)

    def call_layer(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Run one transformers Qwen3 decoder layer on the whole sequence."""
        kwargs = dict(
            attention_mask=self.attn_mask,
            position_embeddings=self.position_embeddings,
            position_ids=self.position_ids,
            **{_CACHE_ARGUMENT: self.cache},
            use_cache=self.cache is not None,
            **self.attention_kwargs,
        )
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(lambda h: layer(h, **kwargs), hidden, use_reentrant=False)
        return layer(hidden, **kwargs)

    def self_attention(
        self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> torch.Tensor:
        """Causal self-attention through the backbone's own attention implementation, exactly as its
        decoder layers call it (MoT, whose q/k/v come from two modality copies). -> [B, Tq, H * hd]"""
        implementation = module.config._attn_implementation
        function = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        out, _ = function(
            module,
            query,
            key,
            value,
            self.attn_mask,
            dropout=0.0,
            scaling=module.scaling,
            position_ids=self.position_ids,
            **self.attention_kwargs,
        )
        return out.reshape(query.shape[0], query.shape[2], -1)

    def checkpointed(self, function, *args: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(function, *args, use_reentrant=False)
        return function(*args)


def attention(  # the Cross-Attention layers' image attention: its mask is [Tq, image tokens], never [T, T]
    query: torch.Tensor,  # [B, H, Tq, hd]
    key: torch.Tensor,  # [B, Hkv, Tk, hd]
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    causal: bool,
) -> torch.Tensor:
    """Grouped-query attention through PyTorch's fused kernel; returns [B, Tq, H * hd]."""
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, is_causal=causal and mask is None, scale=scale, enable_gqa=True
    )
    batch, heads, length, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, length, heads * head_dim)
