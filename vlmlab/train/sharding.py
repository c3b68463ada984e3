"""Sharded training with FSDP2 (`torch.distributed.fsdp.fully_shard`), for every fusion.

One FSDP unit per decoder layer: the backbone's layers, MoT's image copies and the Cross-Attention layers
each gather their weights before they run and free them after, in forward and in backward; so does each
block of the image tokenizer (of every tower of an encoder set) and each block of a connector that has them
(the perceiver's resampler blocks, the C-Abstractor's convolution blocks: at the 0.6B backbone a perceiver
block holds about as many weights as a decoder layer, `Adapter.fsdp_units`); the embeddings, the patch
embedding, the rest of the adapter, the final norm and the head form the root unit. A unit's weights are
gathered around `forward` and around the methods a layer class lists in `fsdp_forward_methods` (MoT's split
attention halves, Cross-Attention's image keys/values), and the model's own `prefill` / `decode_step`
(cached generation), so validation and generation run on the sharded model.

Open-weight VLMs (vlmlab/models/open_weight.py) are cut where transformers cuts them: one unit per module of
a class the model lists in `_no_split_modules` (decoder layers, vision blocks), the rest in the root unit
(`shard_open_weight`).

Reached through `train.strategy: fsdp` (Lightning's ModelParallelStrategy, whose `configure_model` hook
calls `shard_model`). Checkpoints are gathered into one full file on rank 0: `last.ckpt` resumes on any
strategy with the same world size, and stage checkpoints hold plain tensors.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from vlmlab.errors import ConfigError
from vlmlab.models.fusion.cross_attention import GatedCrossAttentionLayer
from vlmlab.models.open_weight import OpenWeightVLM
from vlmlab.models.tokenizers.encoder_set import EncoderSet
from vlmlab.models.vlm import VisionLanguageModel

LAYER_UNITS = (Qwen3DecoderLayer, GatedCrossAttentionLayer)
MODEL_FORWARD_METHODS = ("prefill", "decode_step")


def shard_model(model: VisionLanguageModel, mesh: DeviceMesh, bf16: bool = False) -> list[str]:
    """Shard `model` in place over `mesh` (1-D, data parallel); -> the names of the FSDP units, root last.

    `bf16`: gather weights and compute in bfloat16, reduce gradients in float32 (the optimizer keeps float32
    shards), as in published FSDP recipes."""
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    options = {"mesh": mesh, **({"mp_policy": policy} if policy else {})}
    units = []
    for name, module in model.named_modules():
        if isinstance(module, LAYER_UNITS):
            _shard(module, options)
            units.append(name)
    for name, block in tokenizer_blocks(model.image_tokenizer):
        _shard(block, options)
        units.append(f"image_tokenizer.{name}")
    for name, block in model.adapter.fsdp_units():
        _shard(block, options)
        units.append(f"adapter.{name}")
    fully_shard(model, **options)
    for method in MODEL_FORWARD_METHODS:
        register_fsdp_forward_method(model, method)
    units.append("(root: embeddings, adapter, norm, head)")
    return units


def shard_open_weight(model: OpenWeightVLM, mesh: DeviceMesh, bf16: bool = False) -> list[str]:
    """Shard an open-weight VLM in place: one FSDP unit per module whose class its transformers model lists
    in `_no_split_modules` (its decoder layers and vision blocks: the units transformers itself never
    splits), the rest (embeddings, projector, norms, head) in the root unit; -> the units' names.
    Generation (`generate_batch`) gathers the root unit's weights like a forward does."""
    classes = set(getattr(model.hf, "_no_split_modules", None) or ())
    if not classes:
        raise ConfigError(
            f"{type(model.hf).__name__} names no `_no_split_modules` (its layer classes), so vlmlab cannot "
            "tell where to cut FSDP units: train it with train.strategy auto or ddp."
        )
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    options = {"mesh": mesh, **({"mp_policy": policy} if policy else {})}
    units = []
    for name, module in model.hf.named_modules():
        inside = any(name.startswith(f"{unit}.") for unit in units)
        if type(module).__name__ in classes and not inside and any(True for _ in module.parameters()):
            fully_shard(module, **options)
            units.append(name)
    fully_shard(model, **options)
    register_fsdp_forward_method(model, "generate_batch")
    return [*(f"hf.{unit}" for unit in units), "(root: embeddings, projector, norms, head)"]


def tokenizer_blocks(tokenizer: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks of an image tokenizer, whatever library built it (open_clip, timm,
    transformers, TiTok, VAR): the members of every outermost list of two or more same-type modules (a
    ModuleList, or the nn.Sequential timm keeps its ViT blocks in: SigLIP 2, AIMv2); for an encoder set, each
    tower's blocks (`towers.<i>.<block>`), never whole towers."""
    if isinstance(tokenizer, EncoderSet):
        return [
            (f"towers.{i}.{name}", block)
            for i, tower in enumerate(tokenizer.towers)
            for name, block in tokenizer_blocks(tower)
        ]
    lists = [
        (name, module)
        for name, module in tokenizer.named_modules()
        if isinstance(module, nn.ModuleList | nn.Sequential)
        and len(module) > 1
        and len({type(child) for child in module}) == 1
        and any(p.numel() for p in module.parameters())
    ]
    outermost = [(n, m) for n, m in lists if not any(n.startswith(f"{other}.") for other, _ in lists)]
    return [(f"{name}.{index}", block) for name, blocks in outermost for index, block in enumerate(blocks)]


def _shard(module: nn.Module, options: dict) -> None:
    fully_shard(module, **options)
    for method in getattr(module, "fsdp_forward_methods", ()):
        register_fsdp_forward_method(module, method)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded tensor (DTensor), or the tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


__all__ = ["shard_model", "shard_open_weight", "local_tensor", "LAYER_UNITS"]
