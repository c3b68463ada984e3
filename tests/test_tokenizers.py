"""Every registered image tokenizer: builds, documented token shape, real loading path round-trips."""

import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

from vlmlab.errors import ConfigError
from vlmlab.models.tokenizers import (
    build_image_transform,
    build_tokenizer,
    list_tokenizers,
    load_tokenizer_spec,
)

CONTINUOUS = [n for n in list_tokenizers() if load_tokenizer_spec(n).kind == "continuous"]
TINY = [n for n in CONTINUOUS if load_tokenizer_spec(n).pretrained is None]
RELEASED = [n for n in CONTINUOUS if load_tokenizer_spec(n).pretrained is not None]


def test_registry_covers_the_papers_continuous_families():
    families = {load_tokenizer_spec(n).family for n in RELEASED}
    assert {"clip", "siglip2", "aimv2", "dinov3"} <= families
    assert {load_tokenizer_spec(n).family for n in TINY} >= {"clip", "siglip2", "aimv2", "dinov3"}


@pytest.mark.parametrize("name", TINY)
def test_tiny_tokenizer_forward_backward_shape(name):
    tok = build_tokenizer(name)
    size = tok.spec.image_size
    out = tok(torch.randn(2, 3, size, size))
    assert out.shape == (2, tok.num_tokens, tok.embed_dim)
    out.square().mean().backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in tok.parameters() if p.requires_grad
    )


@pytest.mark.parametrize("name", RELEASED)
def test_released_architecture_token_shape_on_meta(name):
    """The real-size architecture builds (no weights) and yields (size / patch)^2 tokens."""
    spec = load_tokenizer_spec(name)
    with torch.device("meta"):
        tok = build_tokenizer(spec, pretrained=None)
        out = tok(torch.empty(1, 3, spec.image_size, spec.image_size))
    base = name.removesuffix("-penultimate")  # the same tower, features from the block before the last
    patch = {"clip-vit-b16": 16, "clip-vit-l14": 14, "dinov3-vitb16-hf": 16}.get(base) or int(
        spec.arch.split("patch")[1][:2]
    )
    assert tok.num_tokens == (spec.image_size // patch) ** 2
    assert out.shape == (1, tok.num_tokens, tok.embed_dim)


@pytest.mark.parametrize("name", [n for n in RELEASED if load_tokenizer_spec(n).library == "timm"])
def test_timm_preprocessing_matches_the_released_weights(name):
    spec = load_tokenizer_spec(name)
    released = timm.models.get_pretrained_cfg(f"{spec.arch}.{spec.pretrained}")
    assert tuple(spec.mean) == pytest.approx(released.mean)
    assert tuple(spec.std) == pytest.approx(released.std)
    assert spec.image_size == released.input_size[-1]
    assert spec.interpolation == released.interpolation


@pytest.mark.parametrize("name", [n for n in RELEASED if load_tokenizer_spec(n).library == "open_clip"])
def test_open_clip_preprocessing_matches_the_released_weights(name):
    spec = load_tokenizer_spec(name)
    released = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    assert tuple(spec.mean) == pytest.approx(released["mean"])
    assert tuple(spec.std) == pytest.approx(released["std"])


def test_open_clip_checkpoint_file_round_trip(tmp_path):
    spec = load_tokenizer_spec("clip-tiny")
    released = open_clip.create_model(spec.arch, pretrained=None, **spec.arch_kwargs).eval()
    path = tmp_path / "open_clip_model.safetensors"
    save_file(released.state_dict(), str(path))
    tok = build_tokenizer(spec, pretrained=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = released.visual.forward_intermediates(
        x, indices=1, normalize_intermediates=True, intermediates_only=True, output_fmt="NLC"
    )["image_intermediates"][0]
    torch.testing.assert_close(tok(x), expected)


@pytest.mark.parametrize("name", [n for n in TINY if load_tokenizer_spec(n).library == "timm"])
def test_timm_checkpoint_file_round_trip(name, tmp_path):
    spec = load_tokenizer_spec(name)
    released = timm.create_model(spec.arch, pretrained=False, num_classes=0, **spec.arch_kwargs).eval()
    path = tmp_path / "model.safetensors"
    save_file(released.state_dict(), str(path))
    tok = build_tokenizer(spec, pretrained=str(path)).eval()
    x = torch.randn(2, 3, spec.image_size, spec.image_size)
    # the documented tokens: patch tokens only (CLS/registers dropped), after the final norm
    expected = released.forward_features(x)[:, released.num_prefix_tokens :]
    torch.testing.assert_close(tok(x), expected)


@pytest.mark.parametrize("name", [n for n in TINY if load_tokenizer_spec(n).library == "transformers"])
def test_transformers_save_pretrained_round_trip(name, tmp_path):
    first = build_tokenizer(name).eval()
    first.model.save_pretrained(tmp_path)
    second = build_tokenizer(name, pretrained=str(tmp_path)).eval()
    x = torch.randn(2, 3, first.spec.image_size, first.spec.image_size)
    torch.testing.assert_close(second(x), first(x))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_tokenizer("dinov3-tiny", pretrained=str(tmp_path / "nope.safetensors"))


def test_unknown_tokenizer_names_the_choices():
    with pytest.raises(ConfigError, match="Did you mean 'clip-tiny'") as info:
        build_tokenizer("clip-tinny")
    assert "siglip2-tiny" in str(info.value)


@pytest.mark.parametrize("name", TINY)
def test_preprocessing_gives_the_tokenizer_input(name):
    from PIL import Image

    spec = load_tokenizer_spec(name)
    pixels = build_image_transform(spec)(Image.new("RGB", (100, 80), (255, 255, 255)))
    assert pixels.shape == (3, spec.image_size, spec.image_size)
    # white (1.0) normalised with the spec's own statistics
    expected = (1.0 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    torch.testing.assert_close(pixels[:, 0, 0], expected)
