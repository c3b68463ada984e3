"""`train.compile: true`: torch.compile per block, as torchtitan compiles a decoder layer at a time.

The units are the blocks FSDP shards (vlmlab/train/sharding.py): every decoder layer (the backbone's, MoT's
image copies: their split-attention methods too), every gated cross-attention layer (and its image
keys/values), every block of the image tokenizer (each tower of an encoder set), and the adapter (its blocks
where it has them). What lies between the blocks stays eager: building the attention mask from the packed
segments, MoT's routing of tokens to their modality (data-dependent sizes), gathering the cross-attention
image bank, the chunked loss. That keeps every compiled region free of data-dependent Python and host syncs,
so each block compiles to one graph; identical blocks share it (dynamo inlines nn.Modules and treats their
weights as inputs), so compile time does not grow with depth. Shapes that vary from batch to batch (padded
lengths without packing, the number of images, MoT's tokens per modality) make a block recompile once with
dynamic sizes (dynamo's automatic dynamic shapes), not once per shape.

Compiled before FSDP wraps the blocks (torchtitan's order), and inside activation checkpointing's recompute,
so it composes with `train.strategy: fsdp` and `train.gradient_checkpointing`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from vlmlab.models.fusion.cross_attention import GatedCrossAttentionLayer
from vlmlab.models.open_weight import OpenWeightVLM
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.train.sharding import tokenizer_blocks

CACHE_ARGUMENTS = ("past_key_values", "past_key_value", "cache")  # transformers' names, old and new


def compile_blocks(model: VisionLanguageModel | OpenWeightVLM) -> list[str]:
    """Compile `model`'s blocks in place (parameter names unchanged); -> the compiled units' names.

    An open-weight VLM's blocks are the modules of the classes its transformers model lists in
    `_no_split_modules` (its decoder layers and vision blocks), as for FSDP."""
    if isinstance(model, OpenWeightVLM):
        classes = set(getattr(model.hf, "_no_split_modules", None) or ())
        units = [
            f"hf.{name}" for name, module in model.hf.named_modules() if type(module).__name__ in classes
        ]
    else:
        layers = (Qwen3DecoderLayer, GatedCrossAttentionLayer)
        units = [name for name, module in model.named_modules() if isinstance(module, layers)]
        units += [f"image_tokenizer.{name}" for name, _ in tokenizer_blocks(model.image_tokenizer)]
        adapter_blocks = model.adapter.fsdp_units()
        units += [f"adapter.{name}" for name, _ in adapter_blocks] if adapter_blocks else ["adapter"]
    units = [name for name in units if not any(name.startswith(f"{other}.") for other in units)]
    for name in units:
        _compile(model.get_submodule(name))
    return units


def _compile(module: nn.Module) -> None:
    # the instance's `forward` shadows the class's: nn.Module's __call__ (its hooks, FSDP's gathering) stays
    # eager around the compiled body. A layer's other entry points are the ones it declares for FSDP
    # (MoT's split attention halves, the cross-attention's image keys / values): compiled the same way.
    for method in ("forward", *getattr(module, "fsdp_forward_methods", ())):
        setattr(module, method, _compiled(getattr(module, method)))


def _compiled(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` compiled, except when a decoder layer is handed a KV cache (generation during validation):
    the cache's per-layer bookkeeping would recompile the graph for every layer index, and decoding one
    token at a time gains nothing from it."""
    compiled = torch.compile(method)

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        if any(kwargs.get(name) is not None for name in CACHE_ARGUMENTS):
            return method(*args, **kwargs)
        return compiled(*args, **kwargs)

    return run


def compile_counters() -> dict[str, Any]:
    """What dynamo did in this process: graph breaks (by reason), graphs compiled, recompilations."""
    from torch._dynamo.utils import counters

    breaks = dict(counters["graph_break"])
    return {
        "graph_breaks": sum(breaks.values()),
        "graph_break_reasons": {reason[:200]: count for reason, count in breaks.items()},
        "graphs": int(counters["stats"]["unique_graphs"]),
        "frames": int(counters["frames"]["ok"]),
    }


__all__ = ["compile_blocks", "compile_counters"]
