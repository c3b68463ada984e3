"""TiTok and VAR tokenizers: checkpoint format, agreement with the official code, token ids, freezing.

The independent truths here:
- tests/fixtures/*_state_dict.json: `{parameter name: shape}` of the OFFICIAL models built with the released
  configs (bytedance/1d-tokenizer @ 942a96fb, modeling/titok.py with configs/infer/TiTok/titok_{l32,b64,s128}.yaml;
  FoundationVision/VAR @ 78b95394, models/vqvae.py VQVAE(vocab_size=4096, z_channels=32, ch=160,
  share_quant_resi=4, v_patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16))), dumped on the meta device;
- OFFICIAL_*_IDS below: token ids the official code computed for `_fill_deterministic` weights and a seeded
  image (same recipe as in the tests; official TiTok `encode(x)[1]["min_encoding_indices"]`, official VAR
  `torch.cat(vae.img_to_idxBl(x), 1)`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmlab.errors import ConfigError
from vlmlab.models.tokenizers import (
    TOKENIZER_BACKENDS,
    build_image_transform,
    build_tokenizer,
    list_tokenizers,
    load_tokenizer_spec,
)
from vlmlab.models.tokenizers.vq import nearest_code

FIXTURES = Path(__file__).parent / "fixtures"

# (registered tokenizer, fixture, tokens per image)
RELEASED = [
    ("titok-l32", "titok_l32_state_dict.json", 32),
    ("titok-b64", "titok_b64_state_dict.json", 64),
    ("titok-s128", "titok_s128_state_dict.json", 128),
    ("var-d16-vae", "var_vqvae_state_dict.json", 680),
]
TINY = ["titok-tiny", "var-tiny"]

# fmt: off
OFFICIAL_TITOK_S128_IDS = [
    [1563, 475, 543, 3766, 2041, 1505, 1789, 1717, 3611, 463, 3954, 2248, 2858, 530, 3745, 485, 3688, 1304, 900,
     2553, 2585, 3902, 1119, 2261, 3671, 104, 883, 1384, 1888, 2362, 913, 1616, 2568, 4056, 47, 2458, 3594, 2789,
     925, 3803, 613, 4088, 645, 981, 742, 1905, 1913, 883, 963, 1505, 512, 1700, 249, 4056, 3831, 1457, 3177, 2043,
     913, 616, 458, 874, 2189, 3429, 8, 3359, 3167, 3779, 900, 3778, 888, 3167, 3410, 1619, 1858, 568, 3270, 3381,
     3261, 1139, 3446, 1419, 442, 361, 2970, 783, 307, 3847, 3601, 2771, 47, 322, 1218, 243, 2813, 2430, 1818, 1450,
     921, 3927, 2433, 1383, 3342, 3167, 1855, 3590, 2804, 2347, 2914, 3616, 2605, 103, 1725, 1273, 623, 1913, 3449,
     2543, 3762, 1849, 1792, 1770, 3923, 3421, 1789, 1533, 2515, 1956],
    [1563, 475, 543, 3766, 2041, 1505, 1789, 1717, 3611, 463, 3954, 2248, 2858, 1511, 3745, 485, 3688, 1304, 900,
     2553, 2585, 3902, 1119, 2261, 137, 104, 883, 1384, 1888, 499, 913, 1688, 2568, 4056, 47, 2458, 3594, 3167, 925,
     3803, 613, 4088, 645, 981, 742, 1905, 1913, 883, 963, 1505, 512, 1700, 249, 4056, 3831, 1457, 1850, 2043, 913,
     616, 458, 874, 2189, 3429, 8, 3359, 3167, 3100, 900, 775, 888, 3167, 3410, 1619, 1858, 568, 3270, 3381, 3261,
     1139, 3446, 1419, 3426, 361, 2970, 1792, 307, 3847, 3601, 2771, 47, 322, 1218, 243, 2813, 2793, 1818, 1450, 921,
     3927, 2433, 1925, 3342, 3167, 1855, 1939, 2804, 1563, 2914, 3616, 2605, 103, 1725, 1273, 623, 1913, 3449, 2543,
     3762, 1849, 1792, 1770, 3923, 3421, 1789, 1533, 2515, 3381],
]
# official VQVAE(vocab_size=64, z_channels=8, ch=32, v_patch_nums=(1, 2, 4)) = vlmlab/presets/tokenizer/var-tiny.yaml
OFFICIAL_VAR_TINY_IDS = [
    [63, 33, 20, 63, 36, 19, 32, 42, 59, 63, 33, 32, 14, 32, 47, 39, 44, 5, 39, 40, 7],
    [40, 20, 37, 57, 39, 27, 40, 6, 49, 34, 40, 31, 36, 18, 41, 14, 61, 7, 42, 14, 36],
]
# fmt: on


def _fill_deterministic(module: torch.nn.Module, seed: int = 0) -> None:
    """Weights that both implementations can reproduce: a seeded draw per tensor, in sorted-name order."""
    generator = torch.Generator().manual_seed(seed)
    state = module.state_dict()
    with torch.no_grad():
        for name in sorted(state):
            tensor = state[name]
            if tensor.ndim == 1 and name.endswith(".weight"):  # norm scales
                value = 1 + 0.1 * torch.randn(tensor.shape, generator=generator)
            elif tensor.ndim >= 2:  # fan-in scaled
                value = torch.randn(tensor.shape, generator=generator) * tensor[0].numel() ** -0.5
            else:
                value = 0.02 * torch.randn(tensor.shape, generator=generator)
            tensor.copy_(value)


def _image(name: str, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """A seeded random image batch in the tokenizer's preprocessed range ([0, 1] TiTok, [-1, 1] VAR)."""
    spec = load_tokenizer_spec(name)
    x = torch.rand(batch, 3, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(seed))
    return (x - torch.tensor(spec.mean).view(3, 1, 1)) / torch.tensor(spec.std).view(3, 1, 1)


@pytest.fixture(scope="module")
def tiny() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: build_tokenizer(name) for name in TINY}


@pytest.mark.parametrize(("name", "fixture", "num_tokens"), RELEASED)
def test_released_variants_have_the_official_parameter_names_and_shapes(
    name: str, fixture: str, num_tokens: int
) -> None:
    official = json.loads((FIXTURES / fixture).read_text())
    with torch.device("meta"):
        tokenizer = build_tokenizer(name, pretrained=None)
    ours = {key: list(value.shape) for key, value in tokenizer.state_dict().items()}
    assert sorted(set(official) - set(ours)) == []  # missing keys
    assert sorted(set(ours) - set(official)) == []  # unexpected keys
    assert ours == official
    assert tokenizer.num_tokens == num_tokens
    assert tokenizer.codebook_size == 4096
    assert tokenizer.is_discrete


def test_titok_s128_gives_the_official_ids() -> None:
    with torch.device("meta"):  # skip the random initialisation: every tensor is filled below
        tokenizer = build_tokenizer("titok-s128", pretrained=None)
    tokenizer.to_empty(device="cpu")
    _fill_deterministic(tokenizer)
    assert tokenizer(_image("titok-s128")).tolist() == OFFICIAL_TITOK_S128_IDS


def test_var_gives_the_official_ids() -> None:
    tokenizer = build_tokenizer("var-tiny")
    _fill_deterministic(tokenizer)
    assert tokenizer(_image("var-tiny")).tolist() == OFFICIAL_VAR_TINY_IDS


@pytest.mark.parametrize(
    ("name", "filename"),
    [
        ("titok-tiny", "pytorch_model.bin"),
        ("titok-tiny", "model.safetensors"),
        ("var-tiny", "vae_ch160v4096z32.pth"),
    ],
)
def test_checkpoint_file_loads_strictly_through_pretrained(
    tiny: dict, tmp_path: Path, name: str, filename: str
) -> None:
    original = tiny[name]
    state = original.state_dict()
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save(state, path)
    for pretrained in (path, tmp_path):  # the file, and the folder holding it
        torch.manual_seed(123)  # a different random init, overwritten by the checkpoint
        loaded = build_tokenizer(name, pretrained=str(pretrained))
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, state[key]), key
        x = _image(name)
        assert torch.equal(loaded(x), original(x))


def test_checkpoint_with_a_missing_or_extra_key_is_refused(tiny: dict, tmp_path: Path) -> None:
    state = tiny["var-tiny"].state_dict()
    missing = {key: value for key, value in state.items() if key != "quantize.ema_vocab_hit_SV"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match="ema_vocab_hit_SV"):
        build_tokenizer("var-tiny", pretrained=str(tmp_path / "missing.pth"))
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match="extra.weight"):
        build_tokenizer("var-tiny", pretrained=str(tmp_path / "extra.pth"))


@pytest.mark.parametrize("name", TINY)
def test_missing_checkpoint_file_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build_tokenizer(name, pretrained="/nonexistent/weights.pth")


def test_failed_hub_download_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(**kwargs: object) -> str:
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(ConfigError, match="vae_ch160v4096z32.pth"):
        build_tokenizer("var-tiny", pretrained="FoundationVision/var")
    with pytest.raises(ConfigError, match="tokenizer_titok_l32.bin"):
        build_tokenizer("titok-tiny", pretrained="hf://fun-research/TiTok/tokenizer_titok_l32.bin")
    with pytest.raises(ConfigError, match="owner/name/path"):
        build_tokenizer("titok-tiny", pretrained="hf://fun-research/TiTok")


@pytest.mark.parametrize(
    ("name", "changes", "match"),
    [
        ("titok-tiny", {"arch": "titok_xl16"}, "Unknown TiTok variant"),
        ("var-tiny", {"arch": "var_vqvae_ch128"}, "Unknown VAR VQ-VAE variant"),
        ("titok-tiny", {"arch_kwargs": {"widht": 32}}, "Did you mean 'width'"),
        ("var-tiny", {"image_size": 128}, "last patch number"),
        ("titok-tiny", {"image_size": 60}, "image_size 60"),
    ],
)
def test_bad_architectures_are_config_errors(name: str, changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_tokenizer(name, **changes)


@pytest.mark.parametrize("name", TINY)
def test_encode_decode_round_trip(tiny: dict, name: str) -> None:
    tokenizer = tiny[name]
    x = _image(name, batch=3)
    ids = tokenizer(x)
    assert ids.dtype == torch.long and ids.shape == (3, tokenizer.num_tokens)
    assert int(ids.min()) >= 0 and int(ids.max()) < tokenizer.codebook_size
    assert torch.equal(tokenizer.encode(x), ids)  # deterministic, forward == encode
    assert torch.equal(tokenizer(x[1:2]), ids[1:2])  # an image's ids do not depend on its batch
    image = tokenizer.decode(ids)
    assert image.shape == x.shape and image.dtype == x.dtype and torch.isfinite(image).all()
    low, high = (0.0, 1.0) if name.startswith("titok") else (-1.0, 1.0)  # the preprocessed range
    assert float(image.min()) >= low and float(image.max()) <= high


def test_var_ids_are_ordered_coarse_to_fine(tiny: dict) -> None:
    tokenizer = tiny["var-tiny"]
    x = _image("var-tiny")
    ids = tokenizer(x)
    assert tokenizer.scale_sizes() == [1, 4, 16] and tokenizer.num_tokens == 21
    assert [part.shape[1] for part in tokenizer.split_scales(ids)] == [1, 4, 16]
    # The first id is the whole latent map's average (the 1x1 scale) matched against the codebook.
    latent = tokenizer.quant_conv(tokenizer.encoder(x))
    average = latent.mean(dim=(2, 3))
    nearest = torch.cdist(average, tokenizer.quantize.embedding.weight).argmin(1)
    assert torch.equal(ids[:, 0], nearest)


def test_nearest_code_is_the_closest_entry() -> None:
    generator = torch.Generator().manual_seed(0)
    vectors, codebook = torch.randn(50, 6, generator=generator), torch.randn(30, 6, generator=generator)
    assert torch.equal(nearest_code(vectors, codebook), torch.cdist(vectors, codebook).argmin(1))


@pytest.mark.parametrize("name", TINY)
def test_tokenizer_is_frozen_and_unchanged_by_training(tiny: dict, name: str) -> None:
    tokenizer = tiny[name]
    assert not tokenizer.training and all(not p.requires_grad for p in tokenizer.parameters())
    before = {key: value.clone() for key, value in tokenizer.state_dict().items()}

    class Model(torch.nn.Module):  # the VLM's view: ids through an embedding adapter
        def __init__(self) -> None:
            super().__init__()
            self.tokenizer = tokenizer
            self.embed = torch.nn.Embedding(tokenizer.codebook_size, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.embed(self.tokenizer(x)).square().mean()

    model = Model().train()
    assert not tokenizer.training and model.embed.training  # train() reaches the tokenizer, which stays eval
    tokenizer.requires_grad_(True)  # even an explicit request does not unfreeze it
    assert all(not p.requires_grad for p in tokenizer.parameters())
    embed_before = model.embed.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    model(_image(name)).backward()
    optimizer.step()
    assert all(p.grad is None for p in tokenizer.parameters())
    assert not torch.equal(model.embed.weight, embed_before)  # the rest of the model did train
    for key, value in tokenizer.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(("name", "low", "high"), [("titok-l32", 0.0, 1.0), ("var-d16-vae", -1.0, 1.0)])
def test_each_tokenizer_has_its_own_preprocessing(name: str, low: float, high: float) -> None:
    spec = load_tokenizer_spec(name)
    black_white = Image.new("RGB", (300, 260))
    black_white.paste((255, 255, 255), (150, 0, 300, 260))
    pixels = build_image_transform(spec)(black_white)
    assert pixels.shape == (3, 256, 256)
    assert float(pixels.min()) == pytest.approx(low, abs=1e-6)
    assert float(pixels.max()) == pytest.approx(high, abs=1e-6)


def test_discrete_tokenizers_are_registered() -> None:
    names = list_tokenizers()
    for name in ["titok-l32", "titok-b64", "titok-s128", "titok-tiny", "var-d16-vae", "var-tiny"]:
        assert name in names
        spec = load_tokenizer_spec(name)
        assert spec.kind == "discrete" and not spec.text_aware and spec.library in ("titok", "var")
    build_tokenizer("titok-tiny")  # loads the backends
    assert "titok" in TOKENIZER_BACKENDS and "var" in TOKENIZER_BACKENDS


def _official_var_pixels(image: Image.Image, size: int) -> torch.Tensor:
    """FoundationVision/VAR's evaluation transform (utils/data.py), written out with PIL and numpy.

    The release composes torchvision's `Resize(round(1.125 * size), LANCZOS)` (on the PIL image: short side to
    that size, long side truncated to int), `CenterCrop(size)` (offset int(round((side - size) / 2))),
    `ToTensor` (uint8 / 255) and x * 2 - 1.
    """
    short = round(1.125 * size)
    width, height = image.size
    if width <= height:
        new_size = (short, int(short * height / width))
    else:
        new_size = (int(short * width / height), short)
    resized = image.convert("RGB").resize(new_size, Image.Resampling.LANCZOS)
    left = int(round((new_size[0] - size) / 2.0))
    top = int(round((new_size[1] - size) / 2.0))
    cropped = np.asarray(resized.crop((left, top, left + size, top + size)))
    x = torch.from_numpy(cropped.copy()).permute(2, 0, 1).to(torch.float32).div(255)
    return x.add(x).add_(-1)


def _photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour waves plus noise: content on which a resampling filter's differences show."""
    generator = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    waves = np.stack([np.sin(cols / 17 + c) * np.cos(rows / 23 - c) for c in range(3)], axis=-1)
    noisy = waves * 100 + 128 + generator.normal(0, 25, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def test_official_var_reference_is_the_release_transform() -> None:
    # the hand-written reference against the release's own torchvision composition, so the test below
    # compares vlmlab with the official transform and not with a misreading of it
    from torchvision import transforms as v1

    for size in (64, 256):
        official = v1.Compose(
            [
                v1.Resize(round(1.125 * size), interpolation=v1.InterpolationMode.LANCZOS),
                v1.CenterCrop((size, size)),
                v1.ToTensor(),
                lambda x: x.add(x).add_(-1),
            ]
        )
        for width, height in [(300, 200), (257, 611)]:
            image = _photo_like(width, height, seed=width)
            assert torch.equal(_official_var_pixels(image, size), official(image))


@pytest.mark.parametrize(("width", "height"), [(300, 200), (512, 512), (257, 611), (64, 64), (611, 257)])
def test_var_pixels_and_ids_from_a_pil_image_match_the_official_transform(
    tiny: dict, width: int, height: int
) -> None:
    # var-tiny is 64 px: the release's 288 / 256 framing scales to a 72 px short side and a 64 px crop
    tokenizer = tiny["var-tiny"]
    spec = tokenizer.spec
    assert spec.image_size == 64
    image = _photo_like(width, height, seed=width * height)
    expected = _official_var_pixels(image, spec.image_size)
    pixels = build_image_transform(spec)(image)
    assert pixels.dtype == torch.float32 and torch.equal(pixels, expected)
    assert torch.equal(tokenizer(pixels[None]), tokenizer(expected[None]))


def test_var_full_size_transform_crops_at_288() -> None:
    # the released VAE's framing (no model needed: the pixels decide the ids)
    spec = load_tokenizer_spec("var-d16-vae")
    for width, height in [(300, 200), (257, 611), (1024, 768)]:
        image = _photo_like(width, height, seed=width)
        pixels = build_image_transform(spec)(image)
        assert torch.equal(pixels, _official_var_pixels(image, 256))


def test_var_grey_and_palette_images_are_filtered_in_rgb() -> None:
    spec = load_tokenizer_spec("var-tiny")
    rgb = _photo_like(120, 90, seed=3)
    for image in (rgb.convert("L"), rgb.convert("P")):
        assert torch.equal(build_image_transform(spec)(image), _official_var_pixels(image, 64))


def test_var_encoder_feeds_phi_the_contiguous_upsampled_map() -> None:
    # The official encoder (models/quant.py `f_to_idxBl_or_fhat`) upsamples each scale's entries, makes the map
    # contiguous, then applies phi. With 32-wide entries a channels-last input runs another conv kernel that
    # rounds about 1e-6 differently, so phi's outputs are compared bit for bit with that order written out.
    torch.manual_seed(0)
    tokenizer = build_tokenizer(
        "var-tiny", arch_kwargs={**load_tokenizer_spec("var-tiny").arch_kwargs, "z_channels": 32}
    )
    quantize = tokenizer.quantize
    seen: list[torch.Tensor] = []
    hooks = [
        phi.register_forward_hook(lambda module, args, output: seen.append(output))
        for phi in quantize.quant_resi.qresi_ls
    ]
    try:
        x = _image("var-tiny", seed=4)
        ids = tokenizer(x)
    finally:
        for hook in hooks:
            hook.remove()
    latent = tokenizer.quant_conv(tokenizer.encoder(x))
    batch, size = latent.shape[0], latent.shape[-1]
    patch_nums = tokenizer.config.patch_nums
    assert len(seen) == len(patch_nums)
    for scale, (pn, scale_ids) in enumerate(zip(patch_nums, tokenizer.split_scales(ids))):
        entries = quantize.embedding(scale_ids.view(batch, pn, pn)).permute(0, 3, 1, 2)
        if scale != len(patch_nums) - 1:
            entries = torch.nn.functional.interpolate(entries, size=(size, size), mode="bicubic")
        h = entries.contiguous()
        phi = quantize.quant_resi.qresi_ls[quantize.quant_resi.choice[scale]]
        expected = h.mul(1 - phi.ratio) + torch.nn.functional.conv2d(h, phi.weight, phi.bias, padding=1).mul_(
            phi.ratio
        )
        assert torch.equal(seen[scale], expected), scale
