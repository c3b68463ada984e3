"""Image tokenizer registry: names are the presets in `vlmlab/presets/tokenizer/`, builders are per library.

build_tokenizer("siglip2-b16-224")              # the real SigLIP 2 ViT-B/16 (weights if reachable)
build_tokenizer("clip-tiny", pretrained=None)   # a tiny random CLIP ViT for tests
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vlmlab import presets
from vlmlab.config import read_yaml_file
from vlmlab.models.tokenizers.base import ImageTokenizer, TokenizerSpec
from vlmlab.models.tokenizers.preprocess import build_image_transform
from vlmlab.registry import Registry

# library name -> function(spec) -> ImageTokenizer
TOKENIZER_BACKENDS: Registry[Callable[[TokenizerSpec], ImageTokenizer]] = Registry("tokenizer library")


def list_tokenizers() -> list[str]:
    return presets.preset_names("tokenizer")


def load_tokenizer_spec(name_or_path: str | Path | dict[str, Any]) -> TokenizerSpec:
    """A registered name, a path to a YAML file, or an inline mapping."""
    if isinstance(name_or_path, dict):
        return TokenizerSpec.from_dict(dict(name_or_path))
    path = presets.resolve("tokenizer", name_or_path)
    data = OmegaConf.to_container(read_yaml_file(path), resolve=True)
    return TokenizerSpec.from_dict(data, source=str(path))


def build_tokenizer(spec: str | Path | dict | TokenizerSpec, **overrides: Any) -> ImageTokenizer:
    """Build a tokenizer from a name/spec; `overrides` replace spec fields (e.g. `pretrained=path`)."""
    if not isinstance(spec, TokenizerSpec):
        spec = load_tokenizer_spec(spec)
    if overrides:
        spec = spec.replace(**overrides)
    _load_backends()
    return TOKENIZER_BACKENDS.get(spec.library)(spec)


def _load_backends() -> None:
    # Imported lazily so that `import vlmlab.models` stays cheap and each backend registers itself once.
    from vlmlab.models.tokenizers import continuous, titok, var  # noqa: F401


__all__ = [
    "ImageTokenizer",
    "TokenizerSpec",
    "TOKENIZER_BACKENDS",
    "build_image_transform",
    "build_tokenizer",
    "list_tokenizers",
    "load_tokenizer_spec",
]
