"""Model FLOPs of a training step, counted from the model and the batch's real shape (for MFU and TFLOP/s).

What is counted is what the model computes on real tokens, as MFU is defined (PaLM, torchtitan): matrix
products only (norms, activations and softmaxes are not), padding excluded, activation checkpointing's
recomputation excluded. Its parts:

- the image tokenizer and connector, per image (or tile), forward and backward as the groups train now:
  counted once with torch's FlopCounterMode on a copy of the model on the meta device (every tower library,
  encoder sets, discrete encoders alike; a LoRA adapter on a tower is left out of this count);
- each decoder layer: 2 x its matrix parameters per token (LoRA adapters included), and self-attention 4 x
  heads x head_dim x L^2 per sample of length L (the full square, as FlopCounterMode and torchtitan count it;
  packed samples attend only within themselves, so it is the sum over samples, not over rows);
- Cross-Attention's layers: their projections and MLP per token, keys / values per image token of the row's
  bank, and attention of each row's tokens over its bank;
- the vocabulary head on the scored tokens only (vlmlab/models/loss.py runs it on nothing else).

The backward pass is counted from what actually needs a gradient, as autograd computes it: a weight's
gradient (2 x its forward product) where it trains, the input's gradient (2 x again) where anything before the
product trains; attention's backward is twice its forward where gradients flow through it. A frozen tower
costs its forward only; layers before the first trainable one cost no backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from vlmlab.config import ModelConfig

# torch's counter has formulas for the GPU attention kernels but not for the CPU one that sdpa runs here, nor
# for the in-place addmm_ (the chunked loss accumulates the head's gradient with it): give it theirs, so that
# a counter on this CPU sees what runs as it would on a GPU
_aten = torch.ops.aten
if _aten.addmm_.default not in flop_counter.flop_registry:
    flop_counter.register_flop_formula(_aten.addmm_)(
        lambda self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs: flop_counter.mm_flop(
            a_shape, b_shape
        )
    )
if _aten._scaled_dot_product_flash_attention_for_cpu.default not in flop_counter.flop_registry:
    flop_counter.register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu)(
        lambda query, key, value, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(
            query, key, value
        )
    )
    flop_counter.register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu_backward)(
        lambda grad_out, query, key, value, *args, out_shape=None, **kwargs: (
            flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)
        )
    )


@dataclass(frozen=True)
class BatchShape:
    """The shape of one micro-batch that the FLOPs depend on, counted on the CPU when it was collated (no
    device sync): real tokens, the sum of squared sample lengths, the images (tiles) of each row, scored
    tokens, and the image tokens among the real tokens (MoT routes them through its image layers)."""

    tokens: int
    square_lengths: int
    images_per_row: tuple[int, ...]
    scored: int

    @property
    def images(self) -> int:
        return sum(self.images_per_row)


@dataclass(frozen=True)
class _Linear:
    """Matrix parameters of one part: all of them, and those that train."""

    total: int
    trained: int

    @classmethod
    def of(cls, module: nn.Module) -> _Linear:
        params = [(name, p) for name, p in module.named_parameters() if p.dim() == 2 and "embed" not in name]
        return cls(sum(p.numel() for _, p in params), sum(p.numel() for _, p in params if p.requires_grad))


@dataclass
class FlopModel:
    """Per-step FLOPs of one model as its groups train now (build it after freezing)."""

    fusion: str
    layers: list[_Linear]  # decoder layers, forward order
    image_layers: list[_Linear]  # MoT's image copies (empty otherwise)
    cross_layers: dict[int, _Linear]  # Cross-Attention: decoder layers run before it -> its layer
    cross_kv: list[_Linear]  # Cross-Attention: the k / v projections (per bank token)
    attention_width: int  # heads x head_dim of the self-attention
    tokens_per_image: int  # the connector's tokens of one image (tile)
    head: _Linear
    image_step: float  # per image (tile): tokenizer and connector, forward and backward
    adapter_trains: bool
    notes: list[str] = field(default_factory=list)

    def step(self, shape: BatchShape) -> float:
        """Forward + backward FLOPs of one micro-batch of this shape."""
        images = shape.images
        flops = images * self.image_step
        # gradients reach the sequence from the images where they sit in it; Cross-Attention's reach it only
        # from its first cross layer on (its image bank feeds only those layers)
        upstream = self.adapter_trains and self.fusion != "cross_attention"
        image_tokens = images * self.tokens_per_image if self.fusion != "cross_attention" else 0
        text_tokens = shape.tokens - image_tokens
        width, squares = self.attention_width, shape.square_lengths
        bank = max(shape.images_per_row, default=0) * self.tokens_per_image  # CA: each row's image bank
        rows = len(shape.images_per_row)
        for index, layer in enumerate(self.layers):
            cross = self.cross_layers.get(index)
            if cross is not None and bank:
                flops += self._cross(index, cross, shape.tokens, bank, rows)
                upstream = upstream or cross.trained > 0 or self.cross_kv[self._number(index)].trained > 0
            if self.fusion == "mot":  # text tokens through the text layer, image tokens through its copy
                parts = [(layer, text_tokens), (self.image_layers[index], image_tokens)]
            else:
                parts = [(layer, shape.tokens)]
            for part, tokens in parts:
                flops += 2 * part.total * tokens * (1 + (1 if upstream else 0))
                flops += 2 * part.trained * tokens
            flops += 4 * width * squares * (1 + (2 if upstream else 0))
            upstream = (
                upstream
                or layer.trained > 0
                or (self.fusion == "mot" and self.image_layers[index].trained > 0)
            )
        last = self.cross_layers.get(len(self.layers))
        if last is not None and bank:
            flops += self._cross(len(self.layers), last, shape.tokens, bank, rows)
            upstream = True
        # the head on the scored tokens: the input gradient whenever anything before it trains
        flops += 2 * self.head.total * shape.scored * (1 + (1 if upstream else 0))
        flops += 2 * self.head.trained * shape.scored
        return flops

    def _number(self, position: int) -> int:
        return sorted(self.cross_layers).index(position)

    def _cross(self, position: int, layer: _Linear, tokens: int, bank: int, rows: int) -> float:
        """One gated cross-attention layer: its layer's products per token (q, o, MLP), k / v per bank token
        of every row, attention of the row's tokens over its bank. Its parameters always train, so gradients
        flow from it on; its input gradient is counted where the layers before it let gradients through."""
        kv = self.cross_kv[self._number(position)]
        per_token = layer.total - kv.total
        forward = (
            2 * per_token * tokens + 2 * kv.total * bank * rows + 4 * self.attention_width * tokens * bank
        )
        # weight gradients (all train), input gradients of the queries' side and of the bank (the adapter
        # trains) and attention's backward: about twice the forward, and the weight side once more
        return forward + 2 * forward


def batch_shape(batch: dict) -> BatchShape:
    """The BatchShape a collated batch carries (vlmlab/data/collate.py `shape`)."""
    shape = batch["shape"]
    return BatchShape(
        tokens=int(shape["tokens"]),
        square_lengths=int(shape["square_lengths"]),
        images_per_row=tuple(int(n) for n in shape["images_per_row"]),
        scored=int(shape["scored"]),
    )


def flop_model(model: nn.Module, config: ModelConfig) -> FlopModel:
    """The FLOP accounting of `model` (a VisionLanguageModel, after freezing)."""
    from vlmlab.models.describe import build_on_meta

    lm_config = model.lm.config
    fusion = config.fusion
    cross_layers, cross_kv = {}, []
    if fusion == "cross_attention":
        for position, layer in zip(model.fusion.positions, model.fusion.cross_attn_layers, strict=True):
            cross_layers[position] = _Linear.of(layer)
            cross_kv.append(
                _Linear(
                    layer.k_proj.weight.numel() + layer.v_proj.weight.numel(),
                    sum(p.numel() for p in (layer.k_proj.weight, layer.v_proj.weight) if p.requires_grad),
                )
            )
    image_step = _image_flops(build_on_meta(config), model)
    return FlopModel(
        fusion=fusion,
        layers=[_Linear.of(layer) for layer in model.lm.model.layers],
        image_layers=[_Linear.of(layer) for layer in model.fusion.image_layers] if fusion == "mot" else [],
        cross_layers=cross_layers,
        cross_kv=cross_kv,
        attention_width=lm_config.num_attention_heads * lm_config.head_dim,
        tokens_per_image=model.features_per_image,
        head=_Linear.of(model.lm.lm_head),
        image_step=image_step,
        adapter_trains=any(p.requires_grad for p in model.adapter.parameters()),
    )


def _image_flops(meta_model: nn.Module, model: nn.Module) -> float:
    """FLOPs of one image through the tokenizer and the connector, forward and, for what trains in `model`,
    backward: a meta copy with the same parameters trainable, counted by FlopCounterMode."""
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    for name, param in meta_model.named_parameters():
        param.requires_grad_(name in trainable)
    tokenizer = meta_model.image_tokenizer
    channels = 3 * len(getattr(tokenizer, "towers", [tokenizer]))
    size = tokenizer.spec.image_size
    pixels = torch.empty(1, channels, size, size, device="meta")
    with FlopCounterMode(display=False) as counter:
        features = meta_model.image_features(pixels)
        if features.requires_grad:
            features.sum().backward()
    return float(counter.get_total_flops())


__all__ = ["BatchShape", "FlopModel", "batch_shape", "flop_model"]
