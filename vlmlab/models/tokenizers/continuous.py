"""Continuous tokenizers through the libraries that ship them (open_clip, timm, transformers).

Token handling: every backend returns patch tokens only. Prefix tokens (CLS, and DINOv3's four register
tokens) are dropped, because the fusion architectures place one token per image patch and the paper's
adapters project patch features; the pooled CLS summary is not used by any of them.
"""

from __future__ import annotations

import copy
import inspect
import pickle
from pathlib import Path

import torch
from torch import nn

from vlmlab.config import check_multiple_of_patch
from vlmlab.errors import ConfigError
from vlmlab.models.provenance import cached_hub_file, pretrained_files, record_loaded
from vlmlab.models.tokenizers import TOKENIZER_BACKENDS
from vlmlab.models.tokenizers.base import ImageTokenizer, TokenizerSpec

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def is_local_path(pretrained: str | None) -> bool:
    return pretrained is not None and (
        pretrained.endswith(_CHECKPOINT_SUFFIXES) or pretrained.startswith(("/", "./", "../", "~"))
    )


def check_local_checkpoint(spec: TokenizerSpec) -> None:
    if is_local_path(spec.pretrained) and not Path(spec.pretrained).expanduser().exists():
        raise ConfigError(
            f"Tokenizer {spec.name!r}: checkpoint {spec.pretrained!r} does not exist. Point `pretrained` at the "
            "released weight file/folder, or set it to null for random initialisation."
        )


def _loading_failed(spec: TokenizerSpec, error: Exception) -> ConfigError:
    if isinstance(error, pickle.UnpicklingError):
        return ConfigError(
            f"Tokenizer {spec.name!r}: {spec.pretrained!r} is not a plain weights file: loading it would run "
            "code, and vlmlab loads tensors only (weights_only). Use the released checkpoint or safetensors."
        )
    text = " ".join(str(error).split())
    if len(text) > 400:  # e.g. the key list of a checkpoint of another architecture
        text = f"{text[:400]} ... ({len(text) - 400} more characters)"
    return ConfigError(
        f"Tokenizer {spec.name!r}: could not load pretrained weights {spec.pretrained!r} through "
        f"{spec.library} ({type(error).__name__}: {text}). Without network access, download the weights "
        "elsewhere and set `pretrained` to the local file or folder."
    )


def _layer_index(spec: TokenizerSpec, depth: int) -> int:
    index = spec.feature_layer if spec.feature_layer >= 0 else depth + spec.feature_layer
    if not 0 <= index < depth:
        raise ConfigError(
            f"Tokenizer {spec.name!r}: feature_layer {spec.feature_layer} is outside a {depth}-block model "
            f"(valid: {-depth}..{depth - 1})."
        )
    return index


def open_clip_weight_files(spec: TokenizerSpec) -> list[Path] | None:
    """The file `open_clip.create_model(spec.arch, pretrained=spec.pretrained)` loads its weights from."""
    import open_clip

    if spec.arch.startswith(("hf-hub:", "local-dir:")):
        return None  # weights named by the model name itself (no vlmlab preset does this): not traced here
    tag_config = open_clip.get_pretrained_cfg(spec.arch.replace("/", "-"), spec.pretrained)
    if not tag_config:  # not a tag: create_model only accepts an existing file then
        return [Path(spec.pretrained).expanduser()]
    # a tag: the resolver create_model itself used, which returns the cached (hub or url) file it just read
    path = open_clip.download_pretrained(tag_config)
    return [Path(path)] if path else None


def _safe_alternatives(filename: str) -> list[str]:
    """timm's order for hub weights: a safetensors twin of a pickled file first (timm.models._hub)."""
    if filename == "pytorch_model.bin":
        return ["model.safetensors", filename]
    if filename == "open_clip_pytorch_model.bin":
        return ["open_clip_model.safetensors", filename]
    return [filename[: -len(".bin")] + ".safetensors", filename] if filename.endswith(".bin") else [filename]


def timm_weight_files(pretrained_cfg: dict) -> list[Path] | None:
    """The file timm's `load_pretrained` reads for this pretrained config (the priority of its _builder.py)."""
    source = pretrained_cfg.get("source", "")
    hub_id, file = pretrained_cfg.get("hf_hub_id"), pretrained_cfg.get("file")
    if source == "local-dir":
        return None  # a folder timm searches itself (a `local-dir:` model name, unused by vlmlab's presets)
    if source != "hf-hub" and pretrained_cfg.get("state_dict"):
        return None  # weights handed over in memory: there is no file
    if source != "hf-hub" and file:  # pretrained_cfg_overlay=dict(file=...): a local checkpoint
        return [Path(file).expanduser()]
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        filename = pretrained_cfg.get("hf_hub_filename") or "pytorch_model.bin"
        path = cached_hub_file(repo, _safe_alternatives(filename), revision or None)
        return [path] if path else None
    url = pretrained_cfg.get("url")
    if url:  # torch.hub's cache, where timm's load_state_dict_from_url keeps the download
        from urllib.parse import urlparse

        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        return [cached] if cached.is_file() else None
    return None


def _open_clip_kwargs(spec: TokenizerSpec) -> dict:
    """The architecture overrides at the spec's size: a preset's own `vision_cfg` replaces open_clip's whole
    vision config (create_model's kwargs come last), so its `image_size` must follow `force_image_size`."""
    kwargs = copy.deepcopy(spec.arch_kwargs)
    if isinstance(kwargs.get("vision_cfg"), dict):
        kwargs["vision_cfg"]["image_size"] = spec.image_size
    return kwargs


class OpenClipTokenizer(ImageTokenizer):
    """The image tower of an open_clip model (e.g. OpenAI CLIP ViT-B/16)."""

    def __init__(self, spec: TokenizerSpec) -> None:
        super().__init__()
        import open_clip

        check_local_checkpoint(spec)
        self.spec = spec
        try:
            # open_clip moves the model to a device; keep it on the meta device when built there (describe)
            device = torch.empty(0).device
            # force_image_size builds the tower at the spec's size; loading weights of another size resizes
            # the position embedding grid (open_clip.model.resize_pos_embed, bicubic)
            clip = open_clip.create_model(
                spec.arch,
                pretrained=spec.pretrained,
                device=device,
                force_image_size=spec.image_size,
                **_open_clip_kwargs(spec),
            )
        except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as error:
            if spec.pretrained is None:
                raise
            raise _loading_failed(spec, error) from error
        if spec.pretrained is not None:
            self.base_weight_record = record_loaded(spec.pretrained, lambda: open_clip_weight_files(spec))
        self.visual = clip.visual  # the text tower is not needed by a VLM
        self.visual.output_tokens = False
        check_multiple_of_patch(spec.image_size, int(self.visual.patch_size[0]), spec.name)
        grid = self.visual.grid_size
        self.num_tokens = int(grid[0] * grid[1])
        self.embed_dim = int(self.visual.transformer.width)
        self._layer = _layer_index(spec, len(self.visual.transformer.resblocks))
        # drop the pooling head, projection and any blocks after the feature layer: unused weights would
        # inflate parameter counts and break DDP's unused-parameter check
        self.visual.prune_intermediate_layers([self._layer], prune_norm=spec.feature_layer != -1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(
            pixel_values,
            indices=[self._layer],
            normalize_intermediates=self.spec.feature_layer == -1,  # ln_post, as after the last block
            intermediates_only=True,
            output_fmt="NLC",
        )
        return out["image_intermediates"][0]  # [B, patches, width]; CLS dropped


class TimmTokenizer(ImageTokenizer):
    """A timm vision transformer (SigLIP 2, AIMv2, DINOv3, ...); `pretrained` is a tag or a local file."""

    def __init__(self, spec: TokenizerSpec) -> None:
        super().__init__()
        import timm

        check_local_checkpoint(spec)
        self.spec = spec
        # img_size builds the tower at the spec's size; timm's pretrained loading resamples the absolute
        # position embeddings to it (checkpoint_filter_fn -> timm.layers.resample_abs_pos_embed)
        kwargs = dict(num_classes=0, **{**spec.arch_kwargs, "img_size": spec.image_size})
        arch, pretrained = spec.arch, spec.pretrained is not None
        if is_local_path(spec.pretrained):
            kwargs["pretrained_cfg_overlay"] = {"file": str(Path(spec.pretrained).expanduser())}
        elif spec.pretrained:
            arch = f"{spec.arch}.{spec.pretrained}"
        try:
            self.model = timm.create_model(arch, pretrained=pretrained, **kwargs)
        except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as error:
            if not pretrained:
                raise
            raise _loading_failed(spec, error) from error
        if pretrained:
            cfg = dict(self.model.pretrained_cfg)
            self.base_weight_record = record_loaded(spec.pretrained, lambda: timm_weight_files(cfg))
        check_multiple_of_patch(spec.image_size, int(self.model.patch_embed.patch_size[0]), spec.name)
        grid = self.model.patch_embed.grid_size
        self.num_tokens = int(grid[0] * grid[1])
        self.embed_dim = int(self.model.num_features)
        self._layer = _layer_index(spec, len(self.model.blocks))
        self.model.prune_intermediate_layers([self._layer], prune_norm=spec.feature_layer != -1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_intermediates(
            pixel_values,
            indices=[self._layer],
            norm=self.spec.feature_layer == -1,
            output_fmt="NLC",
            intermediates_only=True,
        )
        return tokens[0]  # [B, patches, width]; prefix (CLS/register) tokens dropped by timm


class TransformersTokenizer(ImageTokenizer):
    """A transformers vision model (`arch` is its class name, e.g. CLIPVisionModel, DINOv3ViTModel)."""

    def __init__(self, spec: TokenizerSpec) -> None:
        super().__init__()
        import transformers

        check_local_checkpoint(spec)
        self.spec = spec
        model_class = getattr(transformers, spec.arch, None)
        if model_class is None or not issubclass(model_class, nn.Module):
            raise ConfigError(f"Tokenizer {spec.name!r}: transformers has no model class {spec.arch!r}.")
        if spec.pretrained:
            try:
                self.model = model_class.from_pretrained(spec.pretrained, **spec.arch_kwargs)
            except (OSError, ValueError, pickle.UnpicklingError) as error:
                raise _loading_failed(spec, error) from error
            self.base_weight_record = record_loaded(
                spec.pretrained, lambda: pretrained_files(spec.pretrained)
            )
        else:
            config = model_class.config_class(**spec.arch_kwargs)
            self.model = model_class(config)
        config = self.model.config
        patch = config.patch_size
        check_multiple_of_patch(spec.image_size, patch, spec.name)
        self._interpolate = self._position_rule(spec, config)
        self.num_tokens = int((spec.image_size // patch) ** 2)
        self.embed_dim = int(config.hidden_size)
        self._layer = _layer_index(spec, int(config.num_hidden_layers))
        for name, param in self.model.named_parameters():
            if "mask_token" in name:  # only used for masked-image pretraining, never at inference
                param.requires_grad_(False)

    def _position_rule(self, spec: TokenizerSpec, config: object) -> bool:
        """Whether forward interpolates the position embeddings: transformers keeps a tower at its config's
        size (its weights load unchanged) and resizes absolute embeddings per call (`interpolate_pos_encoding`,
        CLIP / SigLIP); rotary towers (DINOv3) place patches at any size; other towers cannot change size."""
        native = getattr(config, "image_size", spec.image_size)
        if native == spec.image_size or getattr(config, "rope_theta", None) is not None:
            return False
        if "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters:
            return True
        raise ConfigError(
            f"Tokenizer {spec.name!r}: transformers' {spec.arch} has no way to resize its position embeddings "
            f"(no interpolate_pos_encoding), so it only runs at its {native} px (valid model.image_size: null "
            f"or {native})."
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        extra = {"interpolate_pos_encoding": True} if self._interpolate else {}
        out = self.model(
            pixel_values=pixel_values, output_hidden_states=self.spec.feature_layer != -1, **extra
        )
        if self.spec.feature_layer == -1:
            states = out.last_hidden_state
        else:
            states = out.hidden_states[self._layer + 1]  # hidden_states[0] is the embedding output
        return states[:, states.shape[1] - self.num_tokens :]  # drop CLS / register tokens at the front


TOKENIZER_BACKENDS.add("open_clip", OpenClipTokenizer)
TOKENIZER_BACKENDS.add("timm", TimmTokenizer)
TOKENIZER_BACKENDS.add("transformers", TransformersTokenizer)
