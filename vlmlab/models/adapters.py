"""Adapters (connectors) map image tokenizer outputs to the language model's width (paper, section 2.2) and
decide how many tokens an image becomes: the connector axis of the design-space studies (MM1, Idefics2,
Idefics3). `model.adapter` picks one (the names are declared in vlmlab.config.ADAPTER_NAMES):

- `mlp`: two-layer MLP for continuous tokenizers in Joint-Decoder and Mixture-of-Transformers.
- `linear`: dimensionality matching for continuous tokenizers in Cross-Attention (as Llama 3-V).
- `embedding`: an embedding table for discrete tokenizers (TiTok, VAR) in every fusion, and the only adapter
  they take: their output is token ids, not a grid of patch features.
- `pixel_shuffle`: space-to-depth over the square patch grid, each r x r block of patches one token r^2 times
  wider (r = `model.pixel_shuffle_ratio`), then the MLP (Idefics3, SmolVLM, InternVL): grid^2 / r^2 tokens.
- `perceiver`: a gated-MLP projection to the language model's width, then a perceiver resampler whose
  `model.adapter_tokens` learned latents cross-attend to the patches (Idefics2): that many tokens.
- `avgpool`: adaptive average pooling of the patch grid to a side x side grid (`model.adapter_tokens` =
  side^2), then the MLP (MM1's average-pooling connector): side^2 tokens.
- `c_abstractor`: Honeybee's C-Abstractor (Cha et al., CVPR 2024; also in MM1's comparison): residual
  convolution blocks on the patch grid, adaptive average pooling to side x side (`model.adapter_tokens`),
  more blocks, then an MLP readout: side^2 tokens that keep local context.

`mlp`, `linear` and `embedding` keep the tokenizer's token count. Every adapter says how many tokens it gives
one image (`num_tokens`): the placeholder positions an image takes in the sequence (VisionLanguageModel.
tokens_per_image) or the image bank Cross-Attention reads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from vlmlab.config import PIXEL_SHUFFLE_RATIOS
from vlmlab.errors import ConfigError
from vlmlab.registry import Registry

# Idefics2's resampler depth (resampler_depth: 3); its blocks' MLPs are 4 x the width wide, as there
PERCEIVER_DEPTH = 3
PERCEIVER_MLP_RATIO = 4
# Honeybee's C-Abstractor: 3 RegNet bottleneck blocks before and 3 after the pooling (its `depth: 3`), a
# squeeze-excitation a quarter of the block's input width (timm's RegNet default), a 2-layer readout
C_ABSTRACTOR_DEPTH = 3
C_ABSTRACTOR_SE_RATIO = 0.25


@dataclass(frozen=True)
class AdapterShape:
    """What an adapter is built for: one image's tokenizer output, the language model, the config's keys."""

    in_dim: int  # the tokenizer's feature width; for a discrete tokenizer its codebook size
    in_tokens: int  # tokens the image tokenizer gives one image (for a ViT a row-major square patch grid)
    out_dim: int  # the language model's width
    hidden_dim: int | None = None  # model.adapter_hidden: the MLP's (or projection's) width; None = out_dim
    tokens: int = 64  # model.adapter_tokens: the perceiver's latents, avgpool's output tokens
    ratio: int = 2  # model.pixel_shuffle_ratio
    # the perceiver's attention: the language model's own heads (Idefics2 picked 16 x 96 with 4 key-value
    # heads at Mistral 7B's width; following the backbone keeps one rule for every size)
    heads: int = 1
    kv_heads: int = 1
    head_dim: int | None = None  # None = out_dim // heads
    norm_eps: float = 1e-6
    tokenizer: str = "the image tokenizer"  # its name, for errors

    def grid_side(self, adapter: str) -> int:
        """The side of the square patch grid that `adapter` rearranges; ConfigError where there is none."""
        side = math.isqrt(self.in_tokens)
        if side * side != self.in_tokens:
            raise ConfigError(
                f"Adapter {adapter!r} needs a square patch grid; {self.tokenizer} gives {self.in_tokens} tokens "
                "per image (use mlp, linear or perceiver)."
            )
        return side


class Adapter(nn.Module):
    """Base class: one image's tokenizer output [images, in_tokens, in_dim] (token ids [images, in_tokens]
    for `embedding`) -> [images, num_tokens, out_dim]. Subclasses set `num_tokens` in `__init__`."""

    num_tokens: int  # tokens the adapter gives one image

    def fsdp_units(self) -> list[tuple[str, nn.Module]]:
        """(name, block) of the blocks FSDP shards as units of their own (vlmlab/train/sharding.py): an
        adapter with stacked blocks of a size near a decoder layer's (the perceiver's, the C-Abstractor's)
        lists them, so its weights are never all gathered at once; the rest stays in the root unit."""
        return []

    def flops_per_image(self) -> int:
        """Forward FLOPs (2 per multiply-add) of the adapter's matrix multiplies for one image. A token-wise
        map runs its weights once per output token; pooling, norms and activations are left out (small)."""
        return 2 * linear_weights(self) * self.num_tokens


def linear_weights(module: nn.Module) -> int:
    """Multiply-adds per token of every nn.Linear in `module` (an embedding lookup does none)."""
    return sum(layer.weight.numel() for layer in module.modules() if isinstance(layer, nn.Linear))


ADAPTERS: Registry[type[Adapter]] = Registry("adapter")


@ADAPTERS.register("mlp")
class MLPAdapter(Adapter):
    """Linear, exact GELU, linear, token by token (LLaVA's projector)."""

    def __init__(self, shape: AdapterShape) -> None:
        super().__init__()
        hidden_dim = shape.hidden_dim or shape.out_dim
        self.num_tokens = shape.in_tokens
        self.fc1 = nn.Linear(shape.in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, shape.out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # [..., in_dim] -> [..., out_dim]
        return self.fc2(self.act(self.fc1(features)))


@ADAPTERS.register("linear")
class LinearAdapter(Adapter):
    def __init__(self, shape: AdapterShape) -> None:
        super().__init__()
        self.num_tokens = shape.in_tokens
        self.proj = nn.Linear(shape.in_dim, shape.out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


@ADAPTERS.register("embedding")
class EmbeddingAdapter(Adapter):
    """Discrete token ids -> vectors; `in_dim` is the codebook size."""

    def __init__(self, shape: AdapterShape) -> None:
        super().__init__()
        self.num_tokens = shape.in_tokens
        self.embed = nn.Embedding(shape.in_dim, shape.out_dim)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:  # [B, N] long -> [B, N, out_dim]
        return self.embed(token_ids)


def space_to_depth(features: torch.Tensor, ratio: int) -> torch.Tensor:
    """Row-major patches [B, side * side, D] -> [B, (side / ratio)^2, ratio^2 * D]: each ratio x ratio block
    of patches becomes one token, its channels ordered (row in the block, column in the block, feature) and
    the blocks row-major, as Idefics3's connector orders them (so its projector weights would load)."""
    batch, tokens, dim = features.shape
    blocks = math.isqrt(tokens) // ratio
    grid = features.reshape(batch, blocks, ratio, blocks, ratio, dim)  # block row, row in it, block col, ...
    grid = grid.permute(0, 1, 3, 2, 4, 5)  # block row, block column, row in block, column in block, feature
    return grid.reshape(batch, blocks * blocks, ratio * ratio * dim)


@ADAPTERS.register("pixel_shuffle")
class PixelShuffleAdapter(Adapter):
    """Space-to-depth by `model.pixel_shuffle_ratio`, then the MLP: ratio^2 times fewer, wider tokens, with no
    patch dropped (Idefics3, SmolVLM)."""

    def __init__(self, shape: AdapterShape) -> None:
        super().__init__()
        side = shape.grid_side("pixel_shuffle")
        if side % shape.ratio:
            valid = [str(ratio) for ratio in PIXEL_SHUFFLE_RATIOS if side % ratio == 0]
            raise ConfigError(
                f"model.pixel_shuffle_ratio={shape.ratio} does not divide the {side} x {side} patch grid of "
                f"{shape.tokenizer} (valid here: {', '.join(valid) or 'none; use avgpool or perceiver'})."
            )
        self.ratio = shape.ratio
        self.num_tokens = (side // shape.ratio) ** 2
        wider = dataclasses.replace(shape, in_dim=shape.in_dim * shape.ratio**2, in_tokens=self.num_tokens)
        self.mlp = MLPAdapter(wider)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(space_to_depth(features, self.ratio))


def square_tokens(shape: AdapterShape, adapter: str) -> tuple[int, int]:
    """(the patch grid's side, the pooled grid's side) for a connector that pools the square patch grid to
    `model.adapter_tokens` = side^2 tokens; ConfigError where it cannot."""
    side = shape.grid_side(adapter)
    out_side = math.isqrt(shape.tokens)
    if out_side**2 != shape.tokens or out_side > side:
        valid = ", ".join(str(n * n) for n in range(1, side + 1))
        raise ConfigError(
            f"model.adapter_tokens={shape.tokens} cannot be pooled from the {side} x {side} patch grid of "
            f"{shape.tokenizer}: {adapter} needs a square no larger than the grid (valid here: {valid})."
        )
    return side, out_side


def patch_grid(features: torch.Tensor) -> torch.Tensor:
    """Row-major patches [B, side * side, D] -> the image's grid [B, D, side, side]."""
    batch, tokens, dim = features.shape
    side = math.isqrt(tokens)
    return features.transpose(1, 2).reshape(batch, dim, side, side)


@ADAPTERS.register("avgpool")
class AvgPoolAdapter(Adapter):
    """Adaptive average pooling of the patch grid to side x side (`model.adapter_tokens` = side^2), then the
    MLP (MM1). Pooling comes first, so the MLP runs on the pooled tokens only."""

    def __init__(self, shape: AdapterShape) -> None:
        super().__init__()
        _, self.out_side = square_tokens(shape, "avgpool")
        self.num_tokens = shape.tokens
        self.mlp = MLPAdapter(dataclasses.replace(shape, in_tokens=self.num_tokens))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(patch_grid(features), self.out_side)  # [B, D, out_side, out_side]
        return self.mlp(pooled.flatten(2).transpose(1, 2))


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) without biases: Idefics2's projection and its perceiver blocks' MLP."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(in_dim, hidden_dim, bias=False)
        self.up = nn.Linear(in_dim, hidden_dim, bias=False)
        self.down = nn.Linear(hidden_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class PerceiverAttention(nn.Module):
    """The latents query the patches and themselves (keys and values over [context; latents], as Flamingo's
    and Idefics2's resamplers), grouped-query heads, no mask: every image has all its patches."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.query = nn.Linear(dim, heads * head_dim, bias=False)
        self.key = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.value = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, count, _ = latents.shape
        both = torch.cat([context, latents], dim=1)
        queries = self.query(latents).view(batch, count, self.heads, self.head_dim).transpose(1, 2)
        keys = self.key(both).view(batch, -1, self.kv_heads, self.head_dim).transpose(1, 2)
        values = self.value(both).view(batch, -1, self.kv_heads, self.head_dim).transpose(1, 2)
        attended = F.scaled_dot_product_attention(
            queries, keys, values, enable_gqa=self.heads != self.kv_heads
        )
        return self.out(attended.transpose(1, 2).reshape(batch, count, self.heads * self.head_dim))


class PerceiverBlock(nn.Module):
    """Pre-norm residual cross-attention then gated MLP, on the latents (the context is only read)."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.latent_norm = nn.RMSNorm(dim, eps=eps)
        self.context_norm = nn.RMSNorm(dim, eps=eps)
        self.attention = PerceiverAttention(dim, heads, kv_heads, head_dim)
        self.mlp_norm = nn.RMSNorm(dim, eps=eps)
        self.mlp = GatedMLP(dim, PERCEIVER_MLP_RATIO * dim, dim)

    def forward(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        latents = latents + self.attention(self.latent_norm(latents), self.context_norm(context))
        return latents + self.mlp(self.mlp_norm(latents))


@ADAPTERS.register("perceiver")
class PerceiverAdapter(Adapter):
    """Idefics2's connector: a gated-MLP projection of every patch to the language model's width, then a
    perceiver resampler of PERCEIVER_DEPTH blocks whose `model.adapter_tokens` learned latents become the
    image's tokens, whatever the patch count. Its parameters map one to one onto transformers'
    Idefics2Connector (projection -> modality_projection, the rest -> perceiver_resampler)."""

    def __init__(self, shape: AdapterShape) -> None:
        super().__init__()
        dim = shape.out_dim
        head_dim = shape.head_dim or dim // shape.heads
        if shape.heads % shape.kv_heads:
            raise ConfigError(
                f"The perceiver's {shape.heads} attention heads do not share {shape.kv_heads} key-value heads "
                "evenly (the backbone's numbers)."
            )
        self.num_tokens = shape.tokens
        self.in_tokens = shape.in_tokens
        self.projection = GatedMLP(shape.in_dim, shape.hidden_dim or dim, dim)
        # distinct random latents: identical ones (Idefics2's initial value, overwritten by its pretrained
        # weights) would give identical queries, outputs and gradients, so the image would stay one token
        self.latents = nn.Parameter(torch.randn(shape.tokens, dim))
        self.blocks = nn.ModuleList(
            PerceiverBlock(dim, shape.heads, shape.kv_heads, head_dim, shape.norm_eps)
            for _ in range(PERCEIVER_DEPTH)
        )
        self.norm = nn.RMSNorm(dim, eps=shape.norm_eps)

    def fsdp_units(self) -> list[tuple[str, nn.Module]]:
        return [(f"blocks.{index}", block) for index, block in enumerate(self.blocks)]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        context = self.projection(features)
        latents = self.latents.to(context.dtype).expand(features.shape[0], -1, -1)
        for block in self.blocks:
            latents = block(latents, context)
        return self.norm(latents)

    def flops_per_image(self) -> int:
        latents, patches = self.num_tokens, self.in_tokens
        multiply_adds = linear_weights(self.projection) * patches  # every patch is projected
        for block in self.blocks:
            attention = block.attention
            keys = patches + latents  # keys and values over [context; latents]
            multiply_adds += (attention.query.weight.numel() + attention.out.weight.numel()) * latents
            multiply_adds += (attention.key.weight.numel() + attention.value.weight.numel()) * keys
            multiply_adds += 2 * latents * keys * attention.heads * attention.head_dim  # QK^T and AV
            multiply_adds += linear_weights(block.mlp) * latents
        return 2 * multiply_adds


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of [B, C, H, W] (Honeybee's choice for its blocks, through timm): no
    running statistics, so a step does not depend on the batch's other images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNorm(nn.Sequential):
    """Bias-free convolution, then LayerNorm2d with eps 1e-5 (timm's LayerNormAct2d, which Honeybee's
    blocks get when they ask for LayerNorm2d)."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int = 1, groups: int = 1) -> None:
        conv = nn.Conv2d(in_dim, out_dim, kernel, padding=kernel // 2, groups=groups, bias=False)
        super().__init__(conv, LayerNorm2d(out_dim, eps=1e-5))


class SqueezeExcite(nn.Module):
    """Channel gates from the grid's mean: x * sigmoid(up(silu(down(mean(x)))))."""

    def __init__(self, dim: int, reduced: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(dim, reduced, 1)
        self.up = nn.Conv2d(reduced, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.up(F.silu(self.down(x.mean((2, 3), keepdim=True)))))


class RegNetBottleneck(nn.Module):
    """RegNet's bottleneck (bottleneck ratio 1, group width 1): 1x1 conv, depthwise 3x3 conv, squeeze-excite,
    1x1 conv, each conv normed, SiLU after the first two and after the residual sum; the shortcut is a normed
    1x1 conv where the width changes, else the input."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_dim, out_dim)
        self.conv2 = ConvNorm(out_dim, out_dim, kernel=3, groups=out_dim)
        self.se = SqueezeExcite(out_dim, round(in_dim * C_ABSTRACTOR_SE_RATIO))
        self.conv3 = ConvNorm(out_dim, out_dim)
        self.shortcut = ConvNorm(in_dim, out_dim) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, in_dim, H, W] -> [B, out_dim, H, W]
        y = self.se(F.silu(self.conv2(F.silu(self.conv1(x)))))
        return F.silu(self.conv3(y) + self.shortcut(x))

    def multiply_adds(self, positions: int) -> int:
        """Multiply-adds over a grid of `positions` (the squeeze-excite runs once, on the grid's mean)."""
        convs = [self.conv1[0], self.conv2[0], self.conv3[0]]
        if isinstance(self.shortcut, ConvNorm):
            convs.append(self.shortcut[0])
        # a convolution's weight is out x (in / groups) x k x k: one multiply-add per weight per position
        return positions * sum(c.weight.numel() for c in convs) + conv_weights(self.se)


def conv_weights(module: nn.Module) -> int:
    """Multiply-adds of the convolutions of `module` at one position (one per weight)."""
    return sum(layer.weight.numel() for layer in module.modules() if isinstance(layer, nn.Conv2d))


@ADAPTERS.register("c_abstractor")
class CAbstractorAdapter(Adapter):
    """Honeybee's C-Abstractor (Cha et al., "Honeybee: Locality-enhanced Projector for Multimodal LLM", CVPR
    2024, section 3.2 and figure 4; one of the connectors MM1 compares): C_ABSTRACTOR_DEPTH residual blocks on
    the tokenizer's patch grid (tokenizer width -> the hidden width), adaptive average pooling to side x side
    (`model.adapter_tokens` = side^2), C_ABSTRACTOR_DEPTH more blocks at the hidden width, then a readout MLP
    (linear, SiLU, linear) to the language model's width: side^2 tokens, each summarising its neighbourhood.

    Matched to Honeybee's description and configuration: the blocks are timm's RegNet bottleneck as Honeybee
    builds them (bottleneck ratio 1, depthwise 3x3, squeeze-excitation of a quarter of the block's input width,
    LayerNorm over channels, SiLU), depth 3 on each side of the pooling, a 2-layer readout with SiLU; a test
    loads the same weights into timm's RegStage and compares. Simplified: no learned positional embedding is
    added to the patches before the first block (Honeybee adds one; the image tokenizer already carries
    positions, and the convolutions see the layout), no stochastic depth, and the hidden width is
    `model.adapter_hidden` (None = the language model's width; Honeybee fixed 1024 for 7B/13B models)."""

    def __init__(self, shape: AdapterShape) -> None:
        super().__init__()
        _, self.out_side = square_tokens(shape, "c_abstractor")
        self.in_tokens = shape.in_tokens
        self.num_tokens = shape.tokens
        hidden = shape.hidden_dim or shape.out_dim
        widths = [shape.in_dim] + [hidden] * C_ABSTRACTOR_DEPTH
        self.before = nn.Sequential(*(RegNetBottleneck(i, o) for i, o in zip(widths, widths[1:])))
        self.after = nn.Sequential(*(RegNetBottleneck(hidden, hidden) for _ in range(C_ABSTRACTOR_DEPTH)))
        self.readout = nn.Sequential(
            nn.Linear(hidden, shape.out_dim), nn.SiLU(), nn.Linear(shape.out_dim, shape.out_dim)
        )

    def fsdp_units(self) -> list[tuple[str, nn.Module]]:
        return [
            (f"{name}.{index}", block)
            for name in ("before", "after")
            for index, block in enumerate(self.get_submodule(name))
        ]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        grid = self.before(patch_grid(features))  # [B, hidden, side, side]
        pooled = self.after(F.adaptive_avg_pool2d(grid, self.out_side))  # [B, hidden, out_side, out_side]
        return self.readout(pooled.flatten(2).transpose(1, 2))  # [B, side^2, out_dim]

    def flops_per_image(self) -> int:
        multiply_adds = sum(block.multiply_adds(self.in_tokens) for block in self.before)
        multiply_adds += sum(block.multiply_adds(self.num_tokens) for block in self.after)
        multiply_adds += linear_weights(self.readout) * self.num_tokens
        return 2 * multiply_adds


def default_adapter(discrete: bool, fusion: str) -> str:
    if discrete:
        return "embedding"
    return "linear" if fusion == "cross_attention" else "mlp"


def adapter_name(adapter: nn.Module) -> str:
    """The `model.adapter` name of a built adapter (its class's registry name)."""
    return next((name for name in ADAPTERS if ADAPTERS.get(name) is type(adapter)), type(adapter).__name__)


def build_adapter(name: str, discrete: bool, shape: AdapterShape) -> Adapter:
    adapter_class = ADAPTERS.get(name)
    if discrete != (name == "embedding"):
        kind = "discrete" if discrete else "continuous"
        valid = "embedding" if discrete else ", ".join(n for n in ADAPTERS if n != "embedding")
        raise ConfigError(
            f"Adapter {name!r} cannot take a {kind} tokenizer's output ({shape.tokenizer}); use {valid}."
        )
    return adapter_class(shape)
