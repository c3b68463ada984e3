"""Config schemas and loading: YAML files + `key=value` overrides, validated against dataclass schemas.

Unknown keys are rejected with the closest valid key suggested, so a typo never silently becomes a default.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vlmlab import presets
from vlmlab.errors import ConfigError, closest, unknown_choice
from vlmlab.tiling import DEFAULT_TILE_GRIDS, TILING_MODES, check_grids


@dataclass(frozen=True)
class FusionName:
    """How the paper and vlmlab name a fusion architecture (Figure 1): in tables and in run ids."""

    display: str
    short: str


# The fusion architectures, declared once: config checks, the models' registry (vlmlab.models.fusion: one class
# per name), the sweep's run ids and the tables all read this. Torch-free, so loading a config stays cheap.
FUSIONS = {
    "joint_decoder": FusionName("Joint-Decoder", "jd"),
    "cross_attention": FusionName("Cross-Attention", "xattn"),
    "mot": FusionName("MoT", "mot"),
}
FUSION_NAMES = tuple(FUSIONS)
# how a run is trained: vlmlab.train.run picks its loop by this (auto = Lightning's choice for the machine)
STRATEGIES = ("auto", "ddp", "fsdp")
# where the gated cross-attention layers sit among the decoder layers (vlmlab/models/fusion/cross_attention.py)
CROSS_ATTENTION_LAYOUTS = ("every", "llama32")
TRAIN_METHODS = ("sft", "grpo", "eval")
# Lightning's precision settings (its `_PRECISION_INPUT_STR`, checked by a test), refused on load instead of
# by the Trainer after the model is built
PRECISIONS = (
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "32",
    "16",
    "bf16",
    "64",
)
# the accelerators a Trainer takes by name on the machines vlmlab runs on
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
# the parameter groups `optim.lr` gives rates to (vlmlab.recipes: the groups a freezing recipe names)
LR_GROUPS = ("adapter", "image_tokenizer", "cross_attention", "language_model", "mot_image")
# the settings `data.lomo` may hold: the fields of vlmlab.data.lomo.LomoConfig (checked by a test), named
# here so that a misspelled one stops the config on load, torch-free
LOMO_KEYS = (
    "rewrite_ratio",
    "position",
    "distortion",
    "distortion_weights",
    "distortion_params",
    "font_size",
    "line_height",
    "math_font_size",
    "max_width",
    "render_math",
    "math_engine",
    "max_whole_sentences",
    "image_text_ratio",
    "seed",
    "prompt_key",
)
# the loss over the vocabulary head (vlmlab/models/loss.py): auto = liger on CUDA when installed, else chunked
LOSS_IMPLS = ("auto", "dense", "chunked", "liger")
# The adapters (connectors, paper section 2.2, and the design-space studies' connectors) `model.adapter` names
# besides `auto`; the models' registry (vlmlab.models.adapters.ADAPTERS) holds one class per name, checked by
# a test. Declared here, torch-free, so a misspelled adapter stops a config (and a sweep's expansion) on load.
ADAPTER_NAMES = ("mlp", "linear", "embedding", "pixel_shuffle", "perceiver", "avgpool", "c_abstractor")
# the adapters whose image-token count is `model.adapter_tokens` (the others keep the tokenizer's count, or
# divide it by pixel_shuffle_ratio squared)
TOKEN_COUNT_ADAPTERS = ("perceiver", "avgpool", "c_abstractor")
# Idefics3 shuffles by 2, SmolVLM by 4 (and 3 at some sizes); 1 would be the plain MLP
PIXEL_SHUFFLE_RATIOS = (2, 3, 4)
# How an image becomes the tokenizer's square input (vlmlab.models.tokenizers.preprocess; Prismatic VLMs,
# Karamcheti et al. 2024, section 4.3): crop = resize the short side and centre-crop (the released towers'
# evaluation transform, vlmlab's default), resize = squash to the square ignoring the aspect ratio, letterbox =
# pad to a square with the normalisation mean colour, then resize.
IMAGE_RESIZE_RULES = ("crop", "resize", "letterbox")
# How the features of several image encoders (`model.tokenizer` as a list; vlmlab/models/tokenizers/encoder_set.py)
# become one sequence per image: channel = concatenate the widths of towers on the same patch grid (Prismatic's
# fused DINOv2 + SigLIP, Eagle), tokens = each tower's tokens in turn (Cambrian-1's towers side by side; equal
# widths), resample = every grid resampled to the first tower's, then channel
ENCODER_FUSIONS = ("channel", "tokens", "resample")
# what `model.encoder_freeze` may say of each tower: follow the recipe's image_tokenizer state, or stay frozen
ENCODER_FREEZE_STATES = ("recipe", "frozen")


@dataclass
class ModelConfig:
    """Which (backbone, image tokenizer, fusion) combination to assemble (paper, sections 2.1-2.2)."""

    backbone: str = "qwen3-tiny"  # preset name in vlmlab/presets/backbone/ or a YAML path
    backbone_weights: str | None = None  # local folder or hub id for from_pretrained; None = random init
    # preset name in vlmlab/presets/tokenizer/ or a YAML path; or a list of two or more continuous ones, the
    # towers of one image encoder set (e.g. [dinov3-vitl16, siglip2-so400m-p16-256]), fused by encoder_fusion
    tokenizer: Any = "clip-tiny"
    # a list's fusion rule (ENCODER_FUSIONS above); not used by a single tokenizer
    encoder_fusion: str = "channel"
    # per tower of a list, `recipe` (the freezing recipe's image_tokenizer state) or `frozen`; [] = all recipe
    encoder_freeze: list[str] = field(default_factory=list)
    tokenizer_weights: str | None = None  # overrides the preset's `pretrained` (a file or a library tag)
    random_tokenizer: bool = False  # ignore the preset's `pretrained`: random init (tests, offline runs)
    fusion: str = "joint_decoder"  # joint_decoder | cross_attention | mot
    cross_attention_every: int = 4  # one gated cross-attention layer per k decoder layers
    # every: after every k-th decoder layer (the paper); llama32: Llama 3.2-Vision's offset, the first after
    # k - 1 decoder layers and a decoder layer after the last (k = 4 on 32 layers: its indices 3, 8, ..., 38)
    cross_attention_layout: str = "every"
    # auto (mlp; linear for Cross-Attention; embedding for discrete tokenizers) | mlp | linear | embedding |
    # pixel_shuffle | perceiver | avgpool | c_abstractor (vlmlab/models/adapters.py)
    adapter: str = "auto"
    adapter_hidden: int | None = None  # the adapter's MLP hidden width; None = the backbone's hidden size
    # image tokens one image becomes out of `perceiver` (its learned latents; Idefics2: 64), `avgpool` and
    # `c_abstractor` (a square grid; MM1: 64 or 144); not used by the other adapters
    adapter_tokens: int = 64
    # pixel_shuffle: each ratio x ratio block of patches becomes one token ratio^2 times wider, so an image
    # costs ratio^2 times fewer tokens (the patch grid's side must divide by it); not used by the others
    pixel_shuffle_ratio: int = 2
    # AnyRes tiling (LLaVA-NeXT; vlmlab/tiling.py): none | anyres. anyres: each image becomes a thumbnail and
    # the tiles of the grid among `tile_grids` ([rows, cols], tiles of the tokenizer's input size) that keeps
    # the most of its pixels, separated by newline tokens; `max_image_tokens` caps the sequence positions a
    # sample's images take (split evenly among them; fewer tiles, else thumbnails only; null = no cap)
    tiling: str = "none"
    tile_grids: list[list[int]] = field(default_factory=lambda: [list(grid) for grid in DEFAULT_TILE_GRIDS])
    max_image_tokens: int | None = None
    # the tokenizer's input side in pixels; None = its preset's. A continuous tower is built at this size with
    # its absolute position embeddings resized the way its library does (vlmlab.models.tokenizers.continuous);
    # a multiple of the patch size. Discrete tokenizers (TiTok, VAR) only run at their own size.
    image_size: int | None = None
    image_resize: str = "crop"  # crop | resize | letterbox (IMAGE_RESIZE_RULES above)
    attn_implementation: str = "sdpa"  # eager | sdpa | flash_attention_2
    gradient_checkpointing: bool = False
    # An open-weight VLM (Hugging Face image-text-to-text model: local folder or hub id) trained and evaluated
    # as it is, through its own processor and chat template (vlmlab/models/open_weight.py, paper Appendix B);
    # when set, backbone / tokenizer / fusion / adapter above are not used.
    open_weight: str | None = None
    # Open-weight models (as written in `open_weight`) whose own repository code may run (transformers'
    # trust_remote_code, e.g. Kimi-VL); naming them keeps any other model from running downloaded code.
    trust_remote_code: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # checked on loading, so a sweep's expansion (which loads every stage config and axis value) stops
        # at a misspelled name instead of a run failing when it builds its model
        if self.fusion not in FUSIONS:
            raise unknown_choice("fusion architecture", self.fusion, FUSION_NAMES)
        for kind, value in (("backbone", self.backbone), *(("tokenizer", t) for t in self.towers)):
            if isinstance(value, str):  # a shipped preset's name or a YAML file (an inline spec is a mapping)
                presets.resolve(kind, value)
        if self.cross_attention_layout not in CROSS_ATTENTION_LAYOUTS:
            raise unknown_choice(
                "cross-attention layout (model.cross_attention_layout)",
                self.cross_attention_layout,
                CROSS_ATTENTION_LAYOUTS,
            )
        self._check_encoders()
        self._check_adapter()
        self._check_tiling()
        self._check_image()

    @property
    def towers(self) -> list[Any]:
        """The tokenizer presets this model encodes images with: one, or a list's towers in order."""
        return list(self.tokenizer) if isinstance(self.tokenizer, list | tuple) else [self.tokenizer]

    @property
    def is_encoder_set(self) -> bool:
        return isinstance(self.tokenizer, list | tuple)

    def _check_encoders(self) -> None:
        """A list of tokenizers (several encoders at once): what the presets alone tell; the towers' real
        grids and widths are checked again when the set is built (vlmlab.models.tokenizers.encoder_set)."""
        if self.encoder_fusion not in ENCODER_FUSIONS:
            raise unknown_choice(
                "encoder fusion rule (model.encoder_fusion)", self.encoder_fusion, ENCODER_FUSIONS
            )
        if not self.is_encoder_set:
            if self.encoder_freeze:
                raise ConfigError(
                    f"model.encoder_freeze={self.encoder_freeze} names states per tower, but model.tokenizer "
                    f"is one tokenizer ({self.tokenizer}); valid: [] (the recipe decides), or a list of tokenizers."
                )
            return
        names = [str(tokenizer_preset(t).get("name", t)) for t in self.towers]
        if len(names) < 2:
            raise ConfigError(
                f"model.tokenizer={names} lists one tower; write it as a name (model.tokenizer={names[0]}) "
                "or list two or more."
            )
        for tower, name in zip(self.towers, names, strict=True):
            if tokenizer_preset(tower).get("kind") == "discrete":
                raise ConfigError(
                    f"model.tokenizer lists the discrete tokenizer {name!r}: an encoder set fuses patch "
                    "features, and token ids have none (valid: continuous towers only, e.g. CLIP, SigLIP 2, "
                    "AIMv2, DINOv3)."
                )
        if self.tiling != "none":
            raise ConfigError(
                f"model.tiling={self.tiling} with several encoders ({' + '.join(names)}) is not supported: "
                "a tile is one tower's input (valid with a list of tokenizers: none)."
            )
        if self.tokenizer_weights is not None:
            raise ConfigError(
                f"model.tokenizer_weights={self.tokenizer_weights!r} names one tower's weights, but model.tokenizer "
                f"lists {len(names)} ({' + '.join(names)}); set each tower's `pretrained` in its preset file "
                "(valid here: null)."
            )
        if self.encoder_freeze and len(self.encoder_freeze) != len(names):
            raise ConfigError(
                f"model.encoder_freeze={self.encoder_freeze} has {len(self.encoder_freeze)} state(s) for "
                f"{len(names)} towers ({' + '.join(names)}); give one per tower, or [] for the recipe's."
            )
        for state in self.encoder_freeze:
            if state not in ENCODER_FREEZE_STATES:
                raise unknown_choice(
                    "encoder freezing state (model.encoder_freeze)", state, ENCODER_FREEZE_STATES
                )
        if self.encoder_fusion == "channel":
            grids = {name: self._preset_grid(tower) for tower, name in zip(self.towers, names, strict=True)}
            if None not in grids.values() and len(set(grids.values())) > 1:
                found = ", ".join(f"{name} {side}x{side}" for name, side in grids.items())
                raise ConfigError(
                    f"model.encoder_fusion=channel concatenates features patch by patch, but the towers' "
                    f"patch grids differ ({found}); valid here: tokens or resample."
                )

    def _preset_grid(self, tower: Any) -> int | None:
        """The side of a tower's patch grid at this model's size, where its preset states the patch size."""
        preset = tokenizer_preset(tower)
        patch = preset_patch_size(preset)
        size = self.image_size or preset.get("image_size")
        return size // patch if patch and isinstance(size, int) else None

    def _check_tiling(self) -> None:
        """The tiling settings; the budget against the tokenizer's real token count is checked again when
        the model is built (vlmlab.models.vlm), this is what the config alone tells."""
        if self.tiling not in TILING_MODES:
            raise unknown_choice("tiling (model.tiling)", self.tiling, TILING_MODES)
        if self.open_weight and self.tiling != "none":
            raise ConfigError(
                f"model.tiling={self.tiling} tiles the input of vlmlab's own image tokenizers; the open-weight "
                f"model {self.open_weight!r} takes its processor's (valid here: none)."
            )
        check_grids(self.tile_grids)
        if self.max_image_tokens is None:
            return
        # a thumbnail costs its tile's tokens and a separator: at least 2, or adapter_tokens + 1 where the
        # connector sets the count
        least = (self.adapter_tokens if self.adapter in TOKEN_COUNT_ADAPTERS else 1) + 1
        if self.max_image_tokens < least:
            raise ConfigError(
                f"model.max_image_tokens={self.max_image_tokens} cannot hold even one image's thumbnail "
                f"(at least {least} positions); valid: {least} or more, or null for no budget."
            )

    def _check_image(self) -> None:
        """The resolution and the resize rule, before anything is built: a size that is no multiple of the
        preset's patch size (when the preset states it; else the tokenizer refuses at build), or another size
        for a discrete tokenizer, stops the config on load."""
        if self.image_resize not in IMAGE_RESIZE_RULES:
            raise unknown_choice(
                "image resize rule (model.image_resize)", self.image_resize, IMAGE_RESIZE_RULES
            )
        if self.tiling != "none" and self.image_resize != "crop":
            # a tiled image is framed by the tiling rule itself (vlmlab/data/tiling.py): another rule would
            # be silently ignored, and a sweep over rules would train identical runs under different names
            raise ConfigError(
                f"model.image_resize={self.image_resize} frames untiled images; with model.tiling="
                f"{self.tiling} the thumbnail is resized to the tile and the tiles keep the aspect ratio on "
                "padding (LLaVA-NeXT's rule), so no other rule applies (valid here: crop, the default)."
            )
        if self.open_weight and (self.image_size is not None or self.image_resize != "crop"):
            raise ConfigError(
                "model.image_size / model.image_resize set the input of vlmlab's own image tokenizers; the "
                f"open-weight model {self.open_weight!r} takes its processor's (valid here: null / crop)."
            )
        if self.image_size is None:
            return
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise ConfigError(
                f"model.image_size={self.image_size!r} is not a size in pixels (valid: an integer >= 1)."
            )
        for tower in self.towers:  # a list's towers all take this size
            preset = tokenizer_preset(tower)
            if preset.get("kind") == "discrete" and self.image_size != preset.get("image_size"):
                raise ConfigError(
                    f"model.image_size={self.image_size}: the discrete tokenizer {preset.get('name')!r} only runs "
                    f"at its own {preset.get('image_size')} px (its codes are a fixed grid; valid: null or "
                    f"{preset.get('image_size')})."
                )
            patch = preset_patch_size(preset)
            if patch is not None:
                check_multiple_of_patch(self.image_size, patch, str(preset.get("name")))

    def _check_adapter(self) -> None:
        """The connector's settings; what depends on the tokenizer's patch grid is checked when the model is
        built (vlmlab.models.adapters)."""
        if self.adapter != "auto" and self.adapter not in ADAPTER_NAMES:
            raise unknown_choice("adapter", self.adapter, ("auto", *ADAPTER_NAMES))
        if self.pixel_shuffle_ratio not in PIXEL_SHUFFLE_RATIOS:
            raise unknown_choice(
                "pixel-shuffle ratio (model.pixel_shuffle_ratio)",
                self.pixel_shuffle_ratio,
                PIXEL_SHUFFLE_RATIOS,
            )
        if self.adapter_tokens < 1:
            raise ConfigError(
                f"model.adapter_tokens={self.adapter_tokens} is impossible: an image needs at least one token "
                "(valid: 1 or more)."
            )
        if self.adapter != "auto" and isinstance(self.tokenizer, str | list | tuple):
            # token ids (TiTok, VAR) have no patch features to project, pool or resample, and patch features
            # no ids to look up: refused here, not when the model is built (an inline tokenizer spec is
            # checked there, vlmlab.models.adapters.build_adapter)
            discrete = any(_tokenizer_kind(t) == "discrete" for t in self.towers if isinstance(t, str))
            if discrete != (self.adapter == "embedding"):
                valid = "embedding" if discrete else ", ".join(n for n in ADAPTER_NAMES if n != "embedding")
                raise ConfigError(
                    f"Adapter {self.adapter!r} cannot take a {'discrete' if discrete else 'continuous'} "
                    f"tokenizer's output ({' + '.join(map(str, self.towers))}); use {valid} (or auto)."
                )
        side = math.isqrt(self.adapter_tokens)
        if self.adapter in ("avgpool", "c_abstractor") and side * side != self.adapter_tokens:
            nearest = sorted({max(side, 1) ** 2, (side + 1) ** 2})
            raise ConfigError(
                f"model.adapter_tokens={self.adapter_tokens} is not a square number: {self.adapter} pools the patch "
                f"grid to a side x side grid (valid: a square, e.g. {' or '.join(map(str, nearest))})."
            )


def tokenizer_preset(tokenizer: str | dict[str, Any]) -> dict[str, Any]:
    """A tokenizer preset (a shipped name, a YAML path or an inline mapping) as a plain mapping, torch-free."""
    if isinstance(tokenizer, str):
        tokenizer = read_yaml_file(presets.resolve("tokenizer", tokenizer))
    if isinstance(tokenizer, DictConfig):
        tokenizer = OmegaConf.to_container(tokenizer, resolve=True)
    return dict(tokenizer)


# the patch size in a library's architecture name: open_clip `ViT-B-16`, timm `vit_base_patch16_siglip_224`
_PATCH_IN_ARCH = (re.compile(r"^ViT-[A-Za-z]+-(\d+)"), re.compile(r"patch(\d+)"))


def preset_patch_size(preset: dict[str, Any]) -> int | None:
    """The patch side a continuous tokenizer preset builds with, where the preset states it: its architecture
    overrides (`patch_size`, open_clip's `vision_cfg.patch_size`) or the architecture's name; else None."""
    kwargs = preset.get("arch_kwargs") or {}
    for value in (kwargs.get("patch_size"), (kwargs.get("vision_cfg") or {}).get("patch_size")):
        if isinstance(value, int):
            return value
    for pattern in _PATCH_IN_ARCH:
        match = pattern.search(str(preset.get("arch", "")))
        if match:
            return int(match.group(1))
    return None


def check_multiple_of_patch(size: int, patch: int, tokenizer: str) -> None:
    """One line for a size the patch grid cannot tile, naming the nearest sizes that can."""
    if size % patch:
        below = max(size // patch, 1) * patch
        raise ConfigError(
            f"model.image_size={size} is not a multiple of tokenizer {tokenizer!r}'s {patch} px patches "
            f"(valid neighbours: {below} or {below + patch})."
        )


@dataclass
class DataSourceConfig:
    """One training or validation source. Sample schema: vlmlab/data/README.md."""

    name: str = ""  # shown in logs and validation metric names
    kind: str = "synthetic"  # synthetic | webdataset | llava | hf | vqa (vlmlab/data/sources/)
    # webdataset: shards as a file, URL (pipe:, http(s)://), brace pattern (/data/coyo-{00000..06999}.tar),
    # directory, or the manifest `vlmlab data index` writes (gives epoch sizes)
    path: str | None = None
    weight: float = 1.0  # relative sampling weight in the training mixture
    task: str = "spatialmap"  # synthetic: spatialmap | grid | ring
    mode: str = "vqa"  # synthetic: caption (stage 1) | vqa (image question) | tqa (text-only question)
    split: str = "train"  # synthetic: train | test | ood; hf / vqa: the dataset's split
    num_samples: int | None = None  # synthetic: a fixed split of this many samples; None = fresh stream
    difficulty: dict[str, Any] = field(default_factory=dict)  # synthetic generator knobs
    image_size: int | None = None  # synthetic: rendered size; None = the tokenizer's input size
    response: str = "answer"  # synthetic: train on the short answer or the worked "solution"
    seed: int = 0  # synthetic: generator seed of a fixed split
    # webdataset (img2dataset layout): the JSON field holding the caption when a sample has no .txt member
    caption_field: str = "caption"
    instruction: str = ""  # the user text of caption samples ("" = "Describe the image.")
    # llava: folder of the image paths (default: the JSON's); hf: folder of documents' image paths; vqa: extra
    image_root: str | None = None
    system: str = ""  # llava / hf conversations: a system turn for samples that have none
    fields: dict[str, str] = field(
        default_factory=dict
    )  # hf: part -> column (id, image, images, messages, texts, question, answer, options, caption)
    streaming: bool = False  # hf: read through datasets' IterableDataset (parquet files or the hub)
    benchmark: str | None = None  # vqa: coco_captions | vqav2 | docvqa | textvqa | chartqa | aokvqa
    # keys below came after runs were hashed: at their defaults they leave run ids unchanged
    subset: str | None = None  # hf: the dataset's config name in a hub snapshot (The Cauldron's "ai2d", ...)
    # interleaved documents: cut before the (max_images + 1)-th image; None = no cap
    max_images: int | None = None

    def __post_init__(self) -> None:
        if self.max_images is not None and (isinstance(self.max_images, bool) or self.max_images < 1):
            raise ConfigError(
                f"data source {self.name or self.path or self.kind!r}: max_images must be an integer >= 1 "
                f"(or null: no cap), got {self.max_images!r}."
            )

    def check(self, where: str) -> None:
        """The values alone can tell (`where`: its place in the config, e.g. data.train.0); what needs the
        files is checked when the source is opened (vlmlab.data.sources)."""
        if not _is_number(self.weight) or not math.isfinite(self.weight) or self.weight <= 0:
            raise ConfigError(
                f"{where}.weight={self.weight!r} is no sampling weight (valid: a finite number > 0; leave the "
                "source out to not sample it)."
            )
        if self.image_size is not None and (not _is_int(self.image_size) or self.image_size < 1):
            raise ConfigError(
                f"{where}.image_size={self.image_size!r} is not a size in pixels (valid: an integer >= 1, or "
                "null for the tokenizer's input size)."
            )
        if self.num_samples is not None and (not _is_int(self.num_samples) or self.num_samples < 1):
            raise ConfigError(
                f"{where}.num_samples={self.num_samples!r} is not a sample count (valid: an integer >= 1, or "
                "null for a fresh stream)."
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class DataConfig:
    text_tokenizer: str = "tiny"  # "tiny" (built offline by vlmlab), a local folder, or a hub id
    train: list[DataSourceConfig] = field(default_factory=list)
    val: list[DataSourceConfig] = field(default_factory=list)
    max_length: int = 256  # tokens per row (packed or padded)
    packing: bool = True
    micro_batch_size: int = 8  # rows per device per forward
    num_workers: int = 0  # loader workers per rank; a resume needs the same number (vlmlab/data/stream.py)
    max_bad_fraction: float = 1e-3  # more bad samples than this share of a source stops the run
    val_samples: int = 200  # per validation source
    # tokens generated per validation / transfer-evaluation answer: vlmlab's models answer "Final answer: X"
    # at once; open-weight instruct models reason first and need hundreds
    val_max_new_tokens: int = 16
    lomo: dict[str, Any] = field(default_factory=dict)  # LoMo transform settings for text-only samples

    def __post_init__(self) -> None:
        if not _is_number(self.max_bad_fraction) or not 0 <= self.max_bad_fraction <= 1:
            raise ConfigError(
                f"data.max_bad_fraction={self.max_bad_fraction!r} is not a share of samples (valid: a number in "
                "[0, 1]; 0 stops at the first bad samples beyond a handful)."
            )
        for part in ("train", "val"):
            for index, source in enumerate(getattr(self, part)):
                source.check(f"data.{part}.{index}")
        for key in self.lomo:
            if key not in LOMO_KEYS:
                raise unknown_choice("LoMo setting (data.lomo)", key, LOMO_KEYS)


@dataclass
class OptimConfig:
    """AdamW with per-group learning rates, linear warmup then cosine decay (paper, Appendix D)."""

    lr: dict[str, float] = field(
        default_factory=lambda: {
            "adapter": 2e-4,
            "image_tokenizer": 6e-6,
            "cross_attention": 2e-4,
            "language_model": 5e-5,
            "mot_image": 5e-5,
        }
    )
    # per tower of a list of tokenizers (model.tokenizer), its peak learning rate; null (or []) =
    # lr.image_tokenizer. Each tower is its own optimizer group (`image_tokenizer.<i>`) either way.
    encoder_lr: list[float | None] = field(default_factory=list)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of each group's maximum
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        for group in self.lr:
            if group not in LR_GROUPS:
                raise unknown_choice("learning-rate group (optim.lr)", group, LR_GROUPS)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(
                f"optim.min_lr_ratio={self.min_lr_ratio!r} is not a fraction of the peak rate (valid: a number "
                "in [0, 1]; 0 decays to zero, 1 keeps the rate constant)."
            )


# Where a run's metrics go (vlmlab/train/tracking.py): csv and tensorboard files in the run folder, and the
# experiment trackers MLflow and Weights & Biases (optional: `pip install 'vlmlab[tracking]'`)
LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")


@dataclass
class TrackingSettings:
    """Where the trackers of `train.loggers` log. Unset values fall back to the libraries' own environment
    variables (MLFLOW_TRACKING_URI, WANDB_PROJECT, WANDB_ENTITY, WANDB_MODE), so one config serves a laptop
    and a cluster. None of this changes what a run learns (not part of run ids)."""

    uri: str | None = None  # MLflow tracking URI (http://host:5000, file:...); None = MLFLOW_TRACKING_URI
    project: str | None = None  # W&B project; None = WANDB_PROJECT, else "vlmlab"
    entity: str | None = None  # W&B entity (team or user); None = WANDB_ENTITY / the logged-in default
    # MLflow experiment / W&B group; None = the sweep's name (sweep_run.json), else "vlmlab"
    experiment: str | None = None
    # a tracker that fails is tried again after this many seconds; meanwhile metrics wait on disk
    retry_seconds: float = 30.0

    def __post_init__(self) -> None:
        if not self.retry_seconds > 0:
            raise ConfigError(
                f"train.tracking.retry_seconds={self.retry_seconds!r} must be positive (valid: e.g. 30)."
            )


# What happens to a parent stage's LoRA adapters when a stage starts (vlmlab.models.lora.hand_off): carry = the
# same adapters keep training where this stage trains that group through LoRA too (the update stays of rank
# r); merge = fold them into the base weights (peft's merge_and_unload) and start fresh adapters. A group that
# is frozen or fully trainable in the new stage always has its adapters merged.
LORA_HANDOFFS = ("carry", "merge")
# the groups `train.lora.target_modules` may name (vlmlab.recipes.LORA_GROUPS, kept torch- and import-free here)
LORA_TARGET_GROUPS = ("image_tokenizer", "language_model")
# Qwen3's attention and MLP projections: HF m4 / LLaMA-Factory adapt every linear layer of the decoder
# (all-linear); `all-linear` picks every nn.Linear of a group (a vision tower's names differ by library)
# except the output head and the projections nn.MultiheadAttention calls by weight (open_clip's)
DEFAULT_LORA_TARGETS = {
    "language_model": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "image_tokenizer": ["all-linear"],
}


@dataclass
class LoraSettings:
    """LoRA adapters (peft) of the groups a freezing recipe puts in the `lora` state (vlmlab.models.lora).

    Defaults are LLaMA-Factory's (rank 8, alpha 2 x rank, no dropout) on every projection of the decoder. The
    adapters train at the group's learning rate (optim.lr.<group>)."""

    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter's input
    # per group: module names (the last part of a module path, e.g. q_proj) or `all-linear`
    target_modules: dict[str, list[str]] = field(
        default_factory=lambda: {group: list(names) for group, names in DEFAULT_LORA_TARGETS.items()}
    )
    dora: bool = False  # weight-decomposed LoRA (Liu et al. 2024; Idefics2's instruction tuning)
    handoff: str = "carry"  # carry | merge (LORA_HANDOFFS above)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"train.lora.rank={self.rank!r} is not a rank (valid: an integer >= 1).")
        if not self.alpha > 0:
            raise ConfigError(
                f"train.lora.alpha={self.alpha!r} must be positive (the update's scale alpha/rank)."
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(
                f"train.lora.dropout={self.dropout!r} is not a probability (valid: 0 <= p < 1)."
            )
        if self.handoff not in LORA_HANDOFFS:
            raise unknown_choice("LoRA hand-off (train.lora.handoff)", self.handoff, LORA_HANDOFFS)
        for group, names in self.target_modules.items():
            if group not in LORA_TARGET_GROUPS:
                raise unknown_choice("group of train.lora.target_modules", group, LORA_TARGET_GROUPS)
            if not names or any(not isinstance(n, str) or not n or "." in n for n in names):
                raise ConfigError(
                    f"train.lora.target_modules.{group}={list(names)!r} must list module names (the last part of "
                    "a module path, e.g. q_proj) or all-linear."
                )

    def targets(self, group: str) -> list[str]:
        return list(self.target_modules.get(group) or DEFAULT_LORA_TARGETS[group])

    def describe(self) -> str:
        return f"r={self.rank} alpha={self.alpha:g}" + (" dora" if self.dora else "")


@dataclass
class TrainConfig:
    stage: int = 1  # 1 caption pretraining | 2 VQA fine-tuning | 3 reasoning transfer
    freeze: str = "all-frozen"  # a recipe in vlmlab/presets/freeze/ (Table 2)
    init_from: str | None = None  # the parent stage's run folder or checkpoint file
    max_steps: int = 100  # optimizer steps
    schedule_steps: int | None = None  # length of the cosine schedule; None = max_steps
    global_batch_size: int = 8  # rows per optimizer step, reached by gradient accumulation
    val_every_n_steps: int | None = None  # None = at the end only
    checkpoint_every_n_steps: int = 50
    select_best: bool = False  # keep the checkpoint with the best mean validation accuracy
    seed: int = 0
    deterministic: bool = False
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp (FSDP2, vlmlab/train/sharding.py)
    precision: str = "32-true"  # 32-true | bf16-mixed
    output_dir: str = "runs/default"
    keep_resume_state: bool = False  # keep checkpoints/last.ckpt (optimizer state) after the run is done
    log_every_n_steps: int = 10
    # sft: next-token loss on the data stream (Lightning) | grpo: reinforcement learning with the binary
    # final-answer reward (TRL's GRPOTrainer, vlmlab/train/grpo.py; settings under `rl`) | eval: no training,
    # the starting weights are evaluated (the "Base" columns of Tables 8-11)
    method: str = "sft"
    # after the run, the transfer protocol (vlmlab.scoring.transfer: both modalities, InD and OOD) on the
    # synthetic task(s) the run trained on, this many samples per setting, into eval.json; 0 = not run
    transfer_eval_samples: int = 0
    # how the loss over the vocabulary is computed (vlmlab/models/loss.py): auto | dense | chunked | liger.
    # Every choice is exact (the same loss and gradients up to float summation order), so it is not part of
    # a run's identity and may change on resume.
    loss_impl: str = "auto"
    # torch.compile the model's blocks (vlmlab/train/compile.py): decoder and cross-attention layers, the
    # image tokenizer's blocks, the adapter. Exact up to float rounding, so not part of a run's identity either.
    compile: bool = False
    # the adapters of groups a recipe trains through LoRA (`lora` in vlmlab/presets/freeze/); unused otherwise
    lora: LoraSettings = field(default_factory=LoraSettings)
    # where metrics go (LOGGERS above): the CSV log is the local record, the trackers are for comparing runs
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise unknown_choice("precision (train.precision)", self.precision, PRECISIONS)
        if self.accelerator not in ACCELERATORS:
            raise unknown_choice("accelerator (train.accelerator)", self.accelerator, ACCELERATORS)
        if (
            _is_int(self.schedule_steps)
            and _is_int(self.max_steps)
            and 0 < self.schedule_steps < self.max_steps
        ):
            raise ConfigError(
                f"train.schedule_steps={self.schedule_steps} ends the learning-rate schedule before "
                f"train.max_steps={self.max_steps}; the steps after it would run past the cosine's end (valid: "
                f"{self.max_steps} or more, or null for max_steps)."
            )
        for name in self.loggers:
            if name not in LOGGERS:
                raise unknown_choice("logger (train.loggers)", name, LOGGERS)
        if len(set(self.loggers)) != len(self.loggers):
            raise ConfigError(f"train.loggers={list(self.loggers)} names a logger twice (valid: each once).")
        if self.loss_impl not in LOSS_IMPLS:
            raise unknown_choice("loss implementation (train.loss_impl)", self.loss_impl, LOSS_IMPLS)
        if self.method not in TRAIN_METHODS:
            raise unknown_choice("training method (train.method)", self.method, TRAIN_METHODS)
        if self.strategy not in STRATEGIES:
            raise unknown_choice("strategy", self.strategy, STRATEGIES)
        presets.resolve("freeze", self.freeze)  # a shipped recipe's name or a recipe file


@dataclass
class RLConfig:
    """GRPO (train.method: grpo), paper Appendix D.4 Table 15. The paper's batch sizes count prompts (verl):
    `prompts_per_step` prompts are rolled out `num_generations` times each and their completions make one
    optimizer step, so every step is on-policy."""

    lr: float = 1.0e-6  # constant, AdamW with optim.betas, no warmup
    epochs: int = 15  # passes over the training prompts (data.train's fixed split)
    prompts_per_step: int = 128  # training batch = rollout batch (Table 15)
    num_generations: int = 5  # samples per prompt
    kl_coef: float = 1.0e-3  # beta of the KL penalty to the starting model
    temperature: float = 1.0  # sampling temperature of the rollouts
    max_completion_length: int = 256  # tokens per sampled completion
    micro_batch_size: int = 8  # completions per device per forward/backward
    max_steps: int | None = None  # stop after this many optimizer steps (None: the epochs decide)
    eval_every_n_steps: int | None = None  # validation (data.val) for the best checkpoint; None = per epoch
    use_vllm: bool = False  # generate the rollouts with vLLM (GPU only; TRL's colocate mode)


# the synthetic tasks of the transfer protocol (vlmlab/scoring/transfer.py: TASKS)
SYNTHETIC_TASKS = ("spatialmap", "grid", "ring")


@dataclass
class EvalSettings:
    """Evaluation of intermediate checkpoints off the training path (vlmlab/eval/checkpoints.py).

    Every `every_n_checkpoints`-th resume checkpoint (`train.checkpoint_every_n_steps` apart) is held for a
    separate process (`vlmlab eval --checkpoints RUN --follow`, which `vlmlab sweep` starts beside each run:
    a process locally, a job of the DAG on Slurm) that scores it and logs the results at its step, while
    training goes on. Not part of run ids: it changes what is measured, not what is learned."""

    every_n_checkpoints: int = 0  # 0 = off
    transfer_samples: int = 0  # the transfer protocol (VQA / TQA x test / OOD), samples per cell
    tasks: list[str] = field(
        default_factory=list
    )  # its synthetic tasks; [] = those the run trains on, else all
    benchmarks: dict[str, str] = field(default_factory=dict)  # `vlmlab eval --benchmark`: name -> folder
    benchmark_limit: int | None = None  # first N items of each benchmark
    device: str | None = None  # where the evaluator runs (e.g. cuda:1); None = cpu

    def __post_init__(self) -> None:
        for name in ("every_n_checkpoints", "transfer_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"eval.{name}={value!r} is not a count (valid: an integer >= 0, 0 = off).")
        for task in self.tasks:
            if task not in SYNTHETIC_TASKS:
                raise unknown_choice("synthetic task (eval.tasks)", task, SYNTHETIC_TASKS)
        if self.every_n_checkpoints and not (self.transfer_samples or self.benchmarks):
            raise ConfigError(
                f"eval.every_n_checkpoints={self.every_n_checkpoints} holds checkpoints for evaluation but "
                "names nothing to evaluate (valid: set eval.transfer_samples or eval.benchmarks too)."
            )


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        if self.eval.every_n_checkpoints and self.model.open_weight:
            raise ConfigError(
                f"eval.every_n_checkpoints={self.eval.every_n_checkpoints}: checkpoint evaluation during "
                f"training covers vlmlab's own models, not the open-weight {self.model.open_weight!r} "
                "(valid here: 0; evaluate its final model with `vlmlab eval`)."
            )
        towers = len(self.model.towers) if self.model.is_encoder_set else 0
        if self.optim.encoder_lr and len(self.optim.encoder_lr) != towers:
            raise ConfigError(
                f"optim.encoder_lr={self.optim.encoder_lr} gives {len(self.optim.encoder_lr)} rate(s), but "
                f"model.tokenizer has {towers or 'no list of'} towers; give one per tower (null: "
                "optim.lr.image_tokenizer), or []."
            )
        for rate in self.optim.encoder_lr:
            if rate is not None and rate <= 0:
                raise ConfigError(
                    f"optim.encoder_lr={self.optim.encoder_lr}: {rate} is no learning rate (valid: a positive "
                    "number, or null for optim.lr.image_tokenizer; freeze a tower with model.encoder_freeze)."
                )


def check_keys(data: Any, schema: type, where: str = "") -> None:
    """Raise on the first key of `data` that `schema` (a dataclass) lacks, naming the closest valid key."""
    if not isinstance(data, dict):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            hint = closest(str(key), fields)
            did_you_mean = f" Did you mean {(where + '.' if where else '') + hint!r}?" if hint else ""
            raise ConfigError(
                f"Unknown config key {path!r}.{did_you_mean} Valid keys here: {', '.join(fields)}."
            )
        field_type = fields[key].type
        _check_container(path, value, field_type)
        nested = _dataclass_of(field_type)
        if nested is not None:
            check_keys(value, nested, path)
        elif isinstance(field_type, str) and field_type.startswith("list[") and isinstance(value, list):
            item_schema = _dataclass_of(field_type[5:-1])
            for index, item in enumerate(value if item_schema else []):
                check_keys(item, item_schema, f"{path}[{index}]")


def _check_container(path: str, value: Any, field_type: Any) -> None:
    """A mapping where the schema has a list, or the other way round (OmegaConf would say "Cannot merge
    incompatible container types" naming neither key nor value)."""
    if (
        isinstance(value, str) and "${" in value
    ):  # an interpolation (a sweep's `${vars.*}`): checked once resolved
        return
    text = field_type if isinstance(field_type, str) else getattr(field_type, "__name__", "")
    wants_mapping = text.startswith("dict") or _dataclass_of(field_type) is not None
    wants_list = text.startswith("list")
    if wants_mapping and isinstance(value, list):
        raise ConfigError(f"{path}={value!r} is a list, but {path} is a mapping (key: value, e.g. {{...}}).")
    if wants_list and isinstance(value, dict):
        raise ConfigError(f"{path}={value!r} is a mapping, but {path} is a list ([...]).")
    if (wants_mapping or wants_list) and value is not None and not isinstance(value, dict | list):
        kind = "a mapping (key: value)" if wants_mapping else "a list ([...])"
        raise ConfigError(f"{path}={value!r} has the wrong type: expected {kind}.")


def _dataclass_of(field_type: Any) -> type | None:
    if isinstance(field_type, str):
        return _SCHEMAS.get(field_type)
    return field_type if dataclasses.is_dataclass(field_type) else None


_SCHEMAS: dict[str, type] = {
    "DataSourceConfig": DataSourceConfig,
    "ModelConfig": ModelConfig,
    "DataConfig": DataConfig,
    "OptimConfig": OptimConfig,
    "TrainConfig": TrainConfig,
    "LoraSettings": LoraSettings,
    "TrackingSettings": TrackingSettings,
    "EvalSettings": EvalSettings,
    "RLConfig": RLConfig,
    "ExperimentConfig": ExperimentConfig,
}


def register_schema(schema: type) -> type:
    """Let nested dataclass fields written as strings (from __future__ annotations) be resolved."""
    _SCHEMAS[schema.__name__] = schema
    return schema


def load_config(schema: type, sources: list[str | Path | dict] = (), overrides: list[str] = ()) -> Any:
    """Merge YAML files / dicts and `a.b=value` overrides onto `schema`'s defaults; return a dataclass."""
    merged = OmegaConf.structured(schema)
    for source in sources:
        data = source if isinstance(source, dict) else _read_yaml(source)
        check_keys(data, schema)
        try:
            merged = OmegaConf.merge(merged, data)
        except Exception as error:  # omegaconf's validation errors name the key and the bad value
            raise ConfigError(_value_error(error, source if not isinstance(source, dict) else None)) from None
    for key, value in _parse_overrides(overrides):
        _check_path(key, schema, value)
        parts = key.split(".")
        for number, part in enumerate(parts[1:], start=1):
            container = OmegaConf.select(merged, ".".join(parts[:number]))
            if OmegaConf.is_list(container) and int(part) >= len(container):
                raise ConfigError(
                    f"Override {key!r}: {'.'.join(parts[:number])} has {len(container)} item(s) "
                    f"(indices 0-{len(container) - 1}); add items in a YAML file."
                )
        try:  # a path, so list items are addressed by index: data.train.0.path=/data/x
            OmegaConf.update(merged, key, value, merge=True)
        except Exception as error:
            raise ConfigError(_value_error(error, None, key, value)) from None
    try:
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(_value_error(error, None)) from None


# what OmegaConf's conversion messages call the types a schema field expects
_EXPECTED = {
    "Integer": "an integer",
    "Float": "a number",
    "Boolean": "true or false",
    "valid bool": "true or false",
    "String": "a string",
}


def _value_error(error: Exception, source: Any, key: str | None = None, value: Any = None) -> str:
    """One line for a value OmegaConf cannot take: the key, the value and the expected type, without the
    full_key / reference_type / object_type lines OmegaConf appends."""
    key = key or getattr(error, "full_key", None) or "?"
    if value is None:
        value = getattr(error, "value", None)
    reason = (str(getattr(error, "msg", "") or error).strip().splitlines() or ["invalid"])[0]
    expected = next((text for word, text in _EXPECTED.items() if word in reason), None)
    where = f" (in {source})" if source else ""
    if expected:
        return f"{key}={value!r}{where} has the wrong type: expected {expected}."
    return f"{key}={value!r}{where} is not valid: {reason}"


@functools.cache  # a sweep's expansion loads the same presets many times
def _tokenizer_kind(name: str) -> str:
    """`continuous` or `discrete`, as the tokenizer preset (a shipped name or a YAML path) declares."""
    spec = read_yaml_file(presets.resolve("tokenizer", name))
    return str(spec.get("kind", "continuous")) if isinstance(spec, DictConfig) else "continuous"


def read_yaml_file(path: str | Path) -> Any:
    """OmegaConf.load with one-line errors: a missing file, a folder, or YAML that does not parse. A path
    that does not exist may name a shipped preset as `<kind>/<name>` (`model/tiny`, `stages/stage1`)."""
    path = presets.resolve_config_file(path)
    if not path.exists():
        hint = ""
        if "." in path.name and "/" not in str(path) and not path.suffix.startswith((".yaml", ".yml")):
            hint = f" (an override needs a value: {path}=...)"
        raise ConfigError(f"Config file {str(path)!r} does not exist{hint}.")
    if path.is_dir():
        raise ConfigError(f"Config file {str(path)!r} is a folder, not a YAML file.")
    try:
        return OmegaConf.load(path)
    except UnicodeDecodeError as error:
        raise ConfigError(f"Config file {str(path)!r} is not text ({error}).") from None
    except Exception as error:  # yaml's scanner / parser errors carry the line and column
        detail = " ".join(str(error).split())[:300]
        raise ConfigError(f"Config file {str(path)!r} is not valid YAML: {detail}") from None


def _read_yaml(path: str | Path) -> dict:
    loaded = read_yaml_file(path)
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"Config file {str(path)!r} must hold a mapping at the top level.")
    return OmegaConf.to_container(loaded, resolve=False)


def _parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`key=value` strings -> (dotted key, YAML-parsed value) pairs, in order."""
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} must look like key=value (e.g. model.fusion=mot).")
        key = item.split("=", 1)[0]
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"Override {item!r} has an empty key part (write e.g. train.max_steps=100).")
        try:
            parsed = OmegaConf.from_dotlist([item])
        except Exception as error:
            raise ConfigError(
                f"Override {item!r} is not valid: {' '.join(str(error).split())[:200]}"
            ) from None
        value = OmegaConf.select(parsed, key)
        pairs.append((key, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value))
    return pairs


def _check_path(key: str, schema: type, value: Any = None) -> None:
    """Raise on the first part of a dotted override key that `schema` lacks (list items by index), or on a
    `value` of the wrong kind of container for it."""
    current: Any = schema
    where = ""
    parts = key.split(".")
    for number, part in enumerate(parts):
        if current is None:
            return  # inside a free-form dict (e.g. data.lomo.*, optim.lr.*)
        if isinstance(current, tuple):  # a list of dataclasses: the part must be an index
            if not part.isdigit():
                raise ConfigError(
                    f"Override key {key!r}: {where} is a list; address its items by index ({where}.0)."
                )
            current, where = current[1], f"{where}.{part}"
            continue
        check_keys({part: value if number == len(parts) - 1 else None}, current, where)
        field_type = {f.name: f.type for f in dataclasses.fields(current)}[part]
        where = f"{where}.{part}" if where else part
        nested = _dataclass_of(field_type)
        if nested is not None:
            current = nested
        elif (
            isinstance(field_type, str) and field_type.startswith("list[") and _dataclass_of(field_type[5:-1])
        ):
            current = ("list", _dataclass_of(field_type[5:-1]))
        else:
            current = None
            if number < len(parts) - 1 and not (
                isinstance(field_type, str) and field_type.startswith("dict")
            ):
                raise ConfigError(
                    f"Override key {key!r}: {where} is a value, it has no {parts[number + 1]!r}."
                )


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


__all__ = [
    "DataConfig",
    "DataSourceConfig",
    "ExperimentConfig",
    "OptimConfig",
    "TrainConfig",
    "ModelConfig",
    "ADAPTER_NAMES",
    "ENCODER_FREEZE_STATES",
    "ENCODER_FUSIONS",
    "DEFAULT_LORA_TARGETS",
    "LORA_HANDOFFS",
    "LoraSettings",
    "LOGGERS",
    "TrackingSettings",
    "EvalSettings",
    "SYNTHETIC_TASKS",
    "CROSS_ATTENTION_LAYOUTS",
    "FUSIONS",
    "FUSION_NAMES",
    "FusionName",
    "PIXEL_SHUFFLE_RATIOS",
    "STRATEGIES",
    "TOKEN_COUNT_ADAPTERS",
    "TRAIN_METHODS",
    "ACCELERATORS",
    "LOMO_KEYS",
    "LR_GROUPS",
    "PRECISIONS",
    "check_keys",
    "load_config",
    "read_yaml_file",
    "register_schema",
    "to_dict",
    "field",
]
