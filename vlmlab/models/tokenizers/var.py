"""VAR's multi-scale VQ-VAE (Tian et al., 2024): an image as residual token maps from coarse to fine.

A VQGAN-style conv encoder (16x downsampling) gives a latent map `f` of `pn_K x pn_K` vectors (32 wide). The
quantizer explains `f` scale by scale: at scale k it area-downsamples what is still unexplained to
`pn_k x pn_k`, picks the nearest codebook entry (4096 entries, plain L2) per position, upsamples those entries
back (bicubic), refines them with a shared 3x3 conv "phi", and subtracts them from the residual.

Token order (`forward`/`encode` output, `[batch, sum(pn_k^2)]`): scale by scale, coarse to fine, each scale
row-major (row 0 left to right, then row 1, ...). For the released VAE (patch numbers 1, 2, 3, 4, 5, 6, 8, 10,
13, 16) that is 1 + 4 + 9 + 16 + 25 + 36 + 64 + 100 + 169 + 256 = 680 tokens; `split_scales` cuts it back.

The module tree and parameter names follow the official `VQVAE` (encoder, decoder, quant_conv,
post_quant_conv, quantize.{embedding, quant_resi.qresi_ls, ema_vocab_hit_SV}), so the released
`vae_ch160v4096z32.pth` (Hugging Face `FoundationVision/var`) loads with `strict=True`.

Input: 256 px images in [-1, 1] (mean 0.5, std 0.5). `build_image_transform` reproduces the official
evaluation transform bit for bit: the PIL image's short side to round(1.125 x 256) = 288 px (Lanczos), the
256 px centre crop, `ToTensor`, x * 2 - 1 (other image sizes scale by the same 1.125). `decode` returns images
in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.models.tokenizers import TOKENIZER_BACKENDS
from vlmlab.models.tokenizers.base import TokenizerSpec
from vlmlab.models.tokenizers.vq import FrozenDiscreteTokenizer, group_norm, nearest_code, resolve_checkpoint


@dataclass(frozen=True)
class VARConfig:
    """Architecture of one VAR VQ-VAE (defaults: the released `vae_ch160v4096z32`)."""

    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    vocab_size: int = 4096
    z_channels: int = 32  # codebook entry width (official name: Cvae)
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    quant_resi: float = 0.5  # phi(h) = (1 - r) h + r conv(h)
    share_quant_resi: int = 4  # number of phi convs shared across the scales
    quant_conv_ks: int = 3


VAR_VARIANTS: dict[str, VARConfig] = {"var_vqvae_ch160v4096z32": VARConfig()}

# what `pretrained: FoundationVision/var` fetches from the hub
HUB_FILENAME = "vae_ch160v4096z32.pth"


def var_config(arch: str, **overrides: object) -> VARConfig:
    """The released configuration `arch`, with `overrides` (a spec's `arch_kwargs`) applied."""
    if arch not in VAR_VARIANTS:
        raise unknown_choice("VAR VQ-VAE variant", arch, VAR_VARIANTS)
    names = [f.name for f in fields(VARConfig)]
    for key in overrides:
        if key not in names:
            raise unknown_choice(f"VAR arch_kwargs key (variant {arch!r})", key, names)
    for key in ("ch_mult", "patch_nums"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])  # YAML gives lists
    base = VAR_VARIANTS[arch]
    return VARConfig(**{name: overrides.get(name, getattr(base, name)) for name in names})


class _ResBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.norm1 = group_norm(channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm2 = group_norm(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class _SelfAttention(nn.Module):
    """Single-head self-attention over all positions of a feature map, with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(batch, 3, channels, height * width).unbind(1)
        weights = torch.bmm(q.transpose(1, 2), k).mul_(channels**-0.5).softmax(dim=2)  # [B, query, key]
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(batch, channels, height, width)
        return x + self.proj_out(out)


class _Resample(nn.Module):
    """2x down (asymmetric pad + stride-2 conv) or 2x up (nearest + conv); the conv is `.conv`."""

    def __init__(self, channels: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv = nn.Conv2d(channels, channels, 3, stride=2 if down else 1, padding=0 if down else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: residual blocks, each followed by attention at the deepest level."""

    def __init__(self, widths: list[int], attention: bool, resample: str | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(_ResBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.attn = (
            nn.ModuleList(_SelfAttention(widths[-1]) for _ in self.block) if attention else nn.ModuleList()
        )
        if resample == "down":
            self.downsample = _Resample(widths[-1], down=True)
        elif resample == "up":
            self.upsample = _Resample(widths[-1], down=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        for name in ("downsample", "upsample"):
            if hasattr(self, name):
                x = getattr(self, name)(x)
        return x


class _Middle(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = _ResBlock(channels, channels)
        self.attn_1 = _SelfAttention(channels)
        self.block_2 = _ResBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class VAREncoder(nn.Module):
    """Image `[B, 3, H, W]` -> latent `[B, z_channels, H / 2^(levels-1), W / 2^(levels-1)]`."""

    def __init__(self, config: VARConfig) -> None:
        super().__init__()
        ch, mult, last = config.ch, config.ch_mult, len(config.ch_mult) - 1
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        widths_in = (1, *mult)
        self.down = nn.ModuleList(
            _Level(
                [ch * widths_in[i]] + [ch * mult[i]] * config.num_res_blocks,
                attention=i == last,
                resample="down" if i != last else None,
            )
            for i in range(len(mult))
        )
        self.mid = _Middle(ch * mult[-1])
        self.norm_out = group_norm(ch * mult[-1])
        self.conv_out = nn.Conv2d(ch * mult[-1], config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(self.mid(x))))


class VARDecoder(nn.Module):
    """Latent `[B, z_channels, h, w]` -> image `[B, 3, h * 2^(levels-1), w * 2^(levels-1)]` (unclamped)."""

    def __init__(self, config: VARConfig) -> None:
        super().__init__()
        ch, mult, last = config.ch, config.ch_mult, len(config.ch_mult) - 1
        self.conv_in = nn.Conv2d(config.z_channels, ch * mult[-1], 3, padding=1)
        self.mid = _Middle(ch * mult[-1])
        # up[i] works at level i (0 = full resolution); the forward pass runs from the deepest level up
        self.up = nn.ModuleList(
            _Level(
                [ch * mult[min(i + 1, last)]] + [ch * mult[i]] * (config.num_res_blocks + 1),
                attention=i == last,
                resample="up" if i != 0 else None,
            )
            for i in range(len(mult))
        )
        self.norm_out = group_norm(ch * mult[0])
        self.conv_out = nn.Conv2d(ch * mult[0], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class _Phi(nn.Conv2d):
    """phi(h) = (1 - r) h + r conv3x3(h): the refinement applied to each scale's upsampled entries."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, 3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


class _SharedPhis(nn.Module):
    """`share_quant_resi` phi convs; scale k of K uses the one whose tick is nearest to k / (K - 1)."""

    def __init__(self, config: VARConfig) -> None:
        super().__init__()
        count = config.share_quant_resi
        self.qresi_ls = nn.ModuleList(_Phi(config.z_channels, config.quant_resi) for _ in range(count))
        # The release's ticks: evenly spaced, 1/(3K) from the ends for K = 4 (else 1/(2K)). Some scales lie
        # exactly halfway between two ticks; computing in float64 numpy as the release does picks the same one.
        margin = 1 / 3 / count if count == 4 else 1 / 2 / count
        ticks = np.linspace(margin, 1 - margin, count)
        scales = len(config.patch_nums)
        self.choice = [int(np.argmin(np.abs(ticks - k / (scales - 1)))) for k in range(scales)]

    def forward(self, h: torch.Tensor, scale: int) -> torch.Tensor:
        return self.qresi_ls[self.choice[scale]](h)


class MultiScaleQuantizer(nn.Module):
    """Residual quantisation of a latent map over `patch_nums` scales (coarse to fine)."""

    def __init__(self, config: VARConfig) -> None:
        super().__init__()
        self.patch_nums = config.patch_nums
        self.embedding = nn.Embedding(config.vocab_size, config.z_channels)
        self.quant_resi = _SharedPhis(config)
        # codebook-usage statistics of VAE training; kept only because the released file contains them
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(config.patch_nums), config.vocab_size))

    def _upsampled(self, entries: torch.Tensor, scale: int, size: int, contiguous: bool) -> torch.Tensor:
        """Scale `scale`'s entries `[B, C, pn, pn]` at the full latent size, refined by phi.

        The entries arrive as a channels-last view of the embedding lookup. The official encoder
        (`f_to_idxBl_or_fhat`) makes the upsampled map contiguous before phi, its decoder (`embed_to_fhat`)
        does not; the conv then runs a different kernel and rounds differently (about 1e-6 on the released
        VAE), enough to flip an id at a near-tie. `contiguous` picks which of the two this call reproduces.
        """
        if scale != len(self.patch_nums) - 1:
            entries = F.interpolate(entries, size=(size, size), mode="bicubic")
        if contiguous:
            entries = entries.contiguous()
        return self.quant_resi(entries, scale)

    def ids(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """Latent `[B, C, H, W]` -> one id tensor `[B, pn * pn]` (row-major) per scale."""
        batch, channels, size, _ = latent.shape
        residual = latent.float().clone()
        codebook = self.embedding.weight.float()
        per_scale = []
        for scale, pn in enumerate(self.patch_nums):
            target = (
                residual
                if scale == len(self.patch_nums) - 1
                else F.interpolate(residual, size=(pn, pn), mode="area")
            )
            ids = nearest_code(target.permute(0, 2, 3, 1).reshape(-1, channels), codebook).reshape(
                batch, pn * pn
            )
            entries = F.embedding(ids, codebook).transpose(1, 2).reshape(batch, channels, pn, pn)
            residual = residual - self._upsampled(entries, scale, size, contiguous=True)
            per_scale.append(ids)
        return per_scale

    def latent(self, per_scale: list[torch.Tensor]) -> torch.Tensor:
        """Per-scale ids -> the quantised latent `[B, C, pn_K, pn_K]` (sum of all scales' contributions)."""
        size, total = self.patch_nums[-1], None
        for scale, (pn, ids) in enumerate(zip(self.patch_nums, per_scale)):
            entries = self.embedding(ids).transpose(1, 2).reshape(ids.shape[0], -1, pn, pn)
            contribution = self._upsampled(entries, scale, size, contiguous=False)
            total = contribution if total is None else total + contribution
        return total


class VARTokenizer(FrozenDiscreteTokenizer):
    """VAR's VQ-VAE as a vlmlab tokenizer: `forward(pixels in [-1, 1]) -> ids [B, sum(pn^2)]` (680 released).

    Its `state_dict()` is the official `VQVAE` format (no prefix), so `vae_ch160v4096z32.pth` loads strictly.
    """

    def __init__(self, spec: TokenizerSpec) -> None:
        super().__init__()
        self.spec = spec
        config = var_config(spec.arch, **spec.arch_kwargs)
        self.config = config
        latent_size = spec.image_size // 2 ** (len(config.ch_mult) - 1)
        pns = config.patch_nums
        if latent_size * 2 ** (len(config.ch_mult) - 1) != spec.image_size or pns[-1] != latent_size:
            raise ConfigError(
                f"Tokenizer {spec.name!r}: the last patch number ({pns[-1]}) must equal image_size "
                f"({spec.image_size}) / {2 ** (len(config.ch_mult) - 1)} (the encoder's downsampling)."
            )
        if len(pns) < 2 or any(a >= b for a, b in zip(pns[:-1], pns[1:])):
            raise ConfigError(
                f"Tokenizer {spec.name!r}: patch_nums must be >= 2 increasing sizes, got {pns}."
            )
        if config.share_quant_resi < 2:
            raise ConfigError(
                f"Tokenizer {spec.name!r}: only the released partially shared phi layout (share_quant_resi >= 2) "
                f"is implemented, got {config.share_quant_resi}."
            )
        checkpoint = resolve_checkpoint(spec, HUB_FILENAME)  # fail on a bad path before building anything
        self.num_tokens = sum(pn * pn for pn in pns)
        self.embed_dim = config.z_channels
        self.codebook_size = config.vocab_size

        self.encoder = VAREncoder(config)
        self.decoder = VARDecoder(config)
        self.quantize = MultiScaleQuantizer(config)
        padding = config.quant_conv_ks // 2
        self.quant_conv = nn.Conv2d(
            config.z_channels, config.z_channels, config.quant_conv_ks, padding=padding
        )
        self.post_quant_conv = nn.Conv2d(
            config.z_channels, config.z_channels, config.quant_conv_ks, padding=padding
        )
        self._load_and_freeze(checkpoint)

    def scale_sizes(self) -> list[int]:
        """Tokens per scale, coarse to fine (pn^2 each): the blocks of the flattened id sequence."""
        return [pn * pn for pn in self.config.patch_nums]

    def split_scales(self, token_ids: torch.Tensor) -> list[torch.Tensor]:
        """Flattened ids `[B, num_tokens]` -> one `[B, pn * pn]` (row-major) per scale, coarse to fine."""
        return list(token_ids.split(self.scale_sizes(), dim=1))

    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Preprocessed images `[B, 3, H, W]` in [-1, 1] -> token ids `[B, num_tokens]` (long), coarse to fine."""
        latent = self.quant_conv(self.encoder(pixel_values.to(self._input_dtype())))
        return torch.cat(self.quantize.ids(latent), dim=1)

    @torch.no_grad()
    def decode(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids `[B, num_tokens]` -> reconstructed images `[B, 3, H, W]`, clamped to [-1, 1]."""
        latent = self.quantize.latent(self.split_scales(token_ids.long())).to(self._input_dtype())
        return self.decoder(self.post_quant_conv(latent)).clamp(-1.0, 1.0)


TOKENIZER_BACKENDS.add("var", VARTokenizer)
