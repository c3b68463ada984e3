"""What the discrete (vector-quantised) tokenizers share: finding their weights, loading them, keeping them frozen.

TiTok and VAR are text-blind tokenizers that the paper uses frozen (section 2.2: "the image tokenizer frozen to
normalize for the trainability of the discrete tokenizers"); the VLM only sees their token ids, through an
embedding layer. So every discrete tokenizer here
- holds exactly the parameters of its official release, under the same names, so the released file loads with
  `load_state_dict(strict=True)` and nothing is silently left at random;
- is frozen for good: no parameter requires grad, it stays in eval mode even when a parent module calls
  `train()`, and encoding runs under `no_grad` (the ids are integers, nothing could flow back anyway).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from vlmlab.errors import ConfigError
from vlmlab.models.provenance import weight_record
from vlmlab.models.tokenizers.base import ImageTokenizer, TokenizerSpec
from vlmlab.models.tokenizers.continuous import check_local_checkpoint, is_local_path

HUB_PREFIX = "hf://"
# File names a released model folder (e.g. a Hugging Face snapshot) may keep its weights under.
_FOLDER_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


def resolve_checkpoint(spec: TokenizerSpec, hub_filename: str) -> Path | None:
    """The local weight file for `spec.pretrained` (None: random initialisation).

    `pretrained` may be a local file (`.pth`, `.bin`, `.safetensors`, ...), a local folder holding the file,
    a Hugging Face repo id (`owner/name`, whose `hub_filename` is fetched), or `hf://owner/name/file` for any
    other file of a hub repo. Hub files need network access or a filled Hugging Face cache; a missing local
    file or a failed download is a `ConfigError` that says which file to fetch.
    """
    pretrained = spec.pretrained
    if not pretrained:
        return None
    if pretrained.startswith(HUB_PREFIX):
        parts = pretrained[len(HUB_PREFIX) :].split("/")
        if len(parts) < 3:
            raise ConfigError(
                f"Tokenizer {spec.name!r}: {pretrained!r} should read hf://owner/name/path/to/file in the repo."
            )
        return _download(spec, "/".join(parts[:2]), "/".join(parts[2:]))
    if is_local_path(pretrained) or Path(pretrained).expanduser().exists():
        check_local_checkpoint(spec)
        path = Path(pretrained).expanduser()
        if path.is_dir():
            for name in (hub_filename, *_FOLDER_WEIGHT_NAMES):
                if (path / name).is_file():
                    return path / name
            raise ConfigError(
                f"Tokenizer {spec.name!r}: folder {str(path)!r} holds none of "
                f"{', '.join(dict.fromkeys((hub_filename, *_FOLDER_WEIGHT_NAMES)))}."
            )
        return path
    return _download(spec, pretrained, hub_filename)


def _download(spec: TokenizerSpec, repo_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as error:  # offline, unknown repo, missing file: all mean "get the file yourself"
        raise ConfigError(
            f"Tokenizer {spec.name!r}: could not fetch {filename!r} from the Hugging Face repo {repo_id!r} "
            f"({type(error).__name__}: {error}). Without network access, download it elsewhere and set "
            "`pretrained` to the local file."
        ) from error


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain state dict from a `.safetensors` file or a `torch.save` file (`.pth`, `.bin`, `.pt`).

    Pickled files are opened with `weights_only=True`: a released checkpoint is tensors only, and this refuses
    to run code hidden in a tampered file.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(
            f"{str(path)!r} is not a plain weights file: loading it would run code (vlmlab loads tensors only)."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ConfigError(f"{str(path)!r} cannot be read ({str(error).splitlines()[0][:200]}).") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{str(path)!r} is not a plain state dict (name -> tensor) file.")
    return dict(state)


def nearest_code(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the codebook row closest (squared L2) to each row of `vectors` `[N, C]` -> LongTensor `[N]`.

    Uses |z|^2 + |e|^2 - 2 z.e, the expansion both official quantizers use, so ties break the same way.
    """
    vectors, codebook = vectors.float(), codebook.float()
    distances = (
        vectors.square().sum(1, keepdim=True) + codebook.square().sum(1) - 2 * (vectors @ codebook.t())
    )
    return distances.argmin(1)


def group_norm(channels: int) -> nn.GroupNorm:
    """The GroupNorm of the VQGAN-style conv nets in both releases (32 groups, eps 1e-6)."""
    if channels % 32:
        raise ConfigError(
            f"conv channels must be a multiple of 32 (GroupNorm with 32 groups), got {channels}."
        )
    return nn.GroupNorm(32, channels, eps=1e-6)


class FrozenDiscreteTokenizer(ImageTokenizer):
    """Base of the discrete tokenizers: `forward` = `encode`, always frozen and in eval mode.

    Subclasses build their official modules as direct children (so `state_dict()` is the release format), then
    call `_load_and_freeze`.
    """

    def _load_and_freeze(self, checkpoint: Path | None) -> None:
        if checkpoint is not None:
            state = load_state_dict_file(checkpoint)
            try:
                self.load_state_dict(state, strict=True)
            except RuntimeError as error:
                raise ConfigError(
                    f"Tokenizer {self.spec.name!r}: {str(checkpoint)!r} does not match architecture "
                    f"{self.spec.arch!r} (arch_kwargs {self.spec.arch_kwargs}): {error}"
                ) from error
            # exactly the file read (a hub download is a path in the cache's snapshots/<commit>/)
            self.base_weight_record = weight_record(str(self.spec.pretrained), [checkpoint])
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        nn.Module.train(self, False)

    def train(self, mode: bool = True) -> FrozenDiscreteTokenizer:
        """Stay in eval mode whatever `mode` is: the tokenizer is a fixed function of the image."""
        return nn.Module.train(self, False)

    def requires_grad_(self, requires_grad: bool = True) -> FrozenDiscreteTokenizer:
        """Stay frozen: a quantizer's argmin has no gradient, and the paper never trains these tokenizers."""
        return nn.Module.requires_grad_(self, False)

    def _input_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, token_ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Token ids `[batch, num_tokens]` (long) of preprocessed images `[batch, 3, H, W]`."""
        return self.encode(pixel_values)
