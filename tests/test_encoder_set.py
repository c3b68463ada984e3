"""Several image encoders at once (issue 26; vlmlab/models/tokenizers/encoder_set.py): shapes against hand
counts, the set's output against each tower run alone on its own preprocessing, per-tower freezing and
learning rates, describe, checkpoints, export, training and an exact resume after SIGKILL."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_training import experiment, killed_and_resumed

from vlmlab.config import ExperimentConfig, load_config, to_dict
from vlmlab.errors import ConfigError
from vlmlab.models.checkpoint import load_stage_checkpoint, save_stage_checkpoint
from vlmlab.models.describe import describe
from vlmlab.models.tokenizers import build_image_transform, build_tokenizer
from vlmlab.models.vlm import build_vlm
from vlmlab.recipes import load_recipe
from vlmlab.train.freezing import apply_freezing
from vlmlab.train.schedule import build_optimizer

# (towers, rule, tokens per image, feature width), counted by hand from the tiny presets: every tiny tower is
# 64 wide; dinov3-tiny, siglip2-tiny and clip-tiny are 64 px of 16 px patches (4 x 4), aimv2-tiny 56 px of
# 14 px patches (4 x 4 too, at a smaller input), clip-tiny-p8 64 px of 8 px patches (8 x 8)
CASES = [
    (["dinov3-tiny", "siglip2-tiny"], "channel", 16, 64 + 64),
    (["aimv2-tiny", "siglip2-tiny"], "channel", 16, 64 + 64),
    (["clip-tiny", "clip-tiny-p8"], "tokens", 16 + 64, 64),
    (["clip-tiny", "clip-tiny-p8"], "resample", 16, 64 + 64),  # 8 x 8 averaged onto 4 x 4
    (["clip-tiny-p8", "clip-tiny"], "resample", 64, 64 + 64),  # 4 x 4 interpolated onto 8 x 8
]


def model_config(towers: list[str], rule: str, **more: object) -> dict:
    return {"tokenizer": towers, "encoder_fusion": rule, "random_tokenizer": True, **more}


def photo(width: int = 90, height: int = 70) -> Image.Image:
    """A non-square noise image: every tower's crop, resize and normalisation is visible in its pixels."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def upsample_2x(grid: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 of [D, s, s] without align_corners, written out: output 2k samples source k - 1/4, output
    2k + 1 samples k + 1/4 (3/4 of the near neighbour, 1/4 of the far one, edges clamped)."""

    def along(x: torch.Tensor, dim: int) -> torch.Tensor:
        size = x.shape[dim]
        index = torch.arange(size)
        prev = x.index_select(dim, (index - 1).clamp(min=0))
        nxt = x.index_select(dim, (index + 1).clamp(max=size - 1))
        even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
        return torch.stack([even, odd], dim=dim + 1).flatten(dim, dim + 1)

    return along(along(grid, 1), 2)


def expected_features(alone: list[torch.Tensor], rule: str) -> torch.Tensor:
    """The set's output from each tower's output alone, by the rule's definition (shapes by hand)."""
    if rule == "tokens":
        return torch.cat(alone, dim=1)
    if rule == "resample":
        side = int(alone[0].shape[1] ** 0.5)
        moved = []
        for features in alone:
            count, tokens, width = features.shape
            own = int(tokens**0.5)
            grid = features.reshape(count, own, own, width)
            if own == 2 * side:  # each coarse patch: the mean of the 2 x 2 fine patches it covers
                grid = grid.reshape(count, side, 2, side, 2, width).mean(dim=(2, 4))
            elif 2 * own == side:
                grid = torch.stack([upsample_2x(g.permute(2, 0, 1)).permute(1, 2, 0) for g in grid])
            moved.append(grid.reshape(count, side * side, width))
        alone = moved
    return torch.cat(alone, dim=-1)


@pytest.mark.parametrize(
    ("towers", "rule", "tokens", "width"), CASES, ids=[f"{'+'.join(c[0])}-{c[1]}" for c in CASES]
)
def test_the_set_gives_the_hand_counted_shape_and_each_tower_alone(towers, rule, tokens, width) -> None:
    model = build_vlm(model_config(towers, rule))
    encoder = model.image_tokenizer
    assert (encoder.num_tokens, encoder.embed_dim) == (tokens, width)
    assert model.features_per_image == tokens  # the MLP keeps the count
    assert model.adapter.fc1.in_features == width  # the adapter reads the fused width
    side = max(tower.spec.image_size for tower in encoder.towers)

    image = photo()
    pixels = encoder.image_transform()(image)
    assert pixels.shape == (3 * len(towers), side, side)
    with torch.no_grad():
        fused = encoder(pixels[None])
    assert fused.shape == (1, tokens, width)

    alone = []
    for index, name in enumerate(towers):
        tower = build_tokenizer(name, pretrained=None)  # built on its own, given the set's weights
        tower.load_state_dict(encoder.towers[index].state_dict())
        tower.eval()
        own = build_image_transform(tower.spec)(image)  # the tower's own preprocessing, not the set's
        with torch.no_grad():
            alone.append(tower(own[None]))
    torch.testing.assert_close(fused, expected_features(alone, rule), rtol=0, atol=1e-6)


def test_each_view_is_the_towers_own_preprocessing_padded_with_zeros() -> None:
    encoder = build_vlm(model_config(["aimv2-tiny", "siglip2-tiny"], "channel")).image_tokenizer
    image = photo()
    pixels = encoder.image_transform()(image)
    aimv2 = build_image_transform(encoder.towers[0].spec)(image)
    siglip = build_image_transform(encoder.towers[1].spec)(image)
    assert torch.equal(pixels[0:3, :56, :56], aimv2) and torch.equal(pixels[3:6], siglip)
    assert not pixels[0:3, 56:].any() and not pixels[0:3, :, 56:].any()  # aimv2's 56 px view: zeros around
    assert not torch.equal(pixels[0:3, :56, :56], pixels[3:6, :56, :56])  # other size and statistics


# ---------------------------------------------------------------------------------- refusals, one line


@pytest.mark.parametrize(
    ("model", "optim", "needle"),
    [
        (
            {"tokenizer": ["clip-tiny", "clip-tiny-p8"]},
            {},
            "patch grids differ (clip-tiny 4x4, clip-tiny-p8 8x8)",
        ),
        ({"tokenizer": ["clip-tiny", "titok-tiny"]}, {}, "discrete tokenizer 'titok-tiny'"),
        ({"tokenizer": ["clip-tiny"]}, {}, "lists one tower"),
        ({"tokenizer": ["clip-tiny", "siglip2-tiny"], "encoder_fusion": "sum"}, {}, "Valid choices: channel"),
        ({"tokenizer": ["clip-tiny", "siglip2-tiny"], "tiling": "anyres"}, {}, "model.tiling=anyres"),
        ({"tokenizer": ["clip-tiny", "siglip2-tiny"], "tokenizer_weights": "/w.pt"}, {}, "tokenizer_weights"),
        ({"tokenizer": ["clip-tiny", "siglip2-tiny"], "encoder_freeze": ["frozen"]}, {}, "1 state(s) for 2"),
        ({"tokenizer": ["clip-tiny", "siglip2-tiny"], "encoder_freeze": ["x", "recipe"]}, {}, "recipe"),
        ({"encoder_freeze": ["frozen"]}, {}, "is one tokenizer (clip-tiny)"),
        ({"tokenizer": ["clip-tiny", "siglip2-tiny"]}, {"encoder_lr": [1e-5]}, "1 rate(s)"),
        ({"tokenizer": ["clip-tiny", "siglip2-tiny"]}, {"encoder_lr": [1e-5, 0.0]}, "no learning rate"),
        (
            {"tokenizer": ["clip-tiny", "siglip2-tiny"], "adapter": "embedding"},
            {},
            "cannot take a continuous",
        ),
    ],
)
def test_bad_settings_are_refused_on_load_in_one_line(model, optim, needle) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(ExperimentConfig, [{"model": model, "optim": optim}])
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_token_concatenation_of_different_widths_is_refused_when_built() -> None:
    narrow = {**_preset("siglip2-tiny"), "name": "siglip2-narrow"}
    narrow["arch_kwargs"] = {**narrow["arch_kwargs"], "embed_dim": 32}
    with pytest.raises(ConfigError) as error:
        build_vlm(model_config(["clip-tiny", narrow], "tokens"))
    message = str(error.value)
    assert "widths differ (clip-tiny 64, siglip2-narrow 32)" in message and "\n" not in message
    assert build_vlm(model_config(["clip-tiny", narrow], "channel")).image_tokenizer.embed_dim == 96


def _preset(name: str) -> dict:
    from vlmlab.config import tokenizer_preset

    return tokenizer_preset(name)


# ------------------------------------------------------------------ freezing and learning rates per tower


def test_freezing_and_learning_rates_per_tower() -> None:
    config = load_config(
        ExperimentConfig,
        [
            {
                "model": model_config(
                    ["dinov3-tiny", "siglip2-tiny"], "channel", encoder_freeze=["frozen", "recipe"]
                ),
                "optim": {"encoder_lr": [3e-6, 1e-5]},
            }
        ],
    )
    model = build_vlm(config.model)
    summary = apply_freezing(model, load_recipe("unfreeze-tok-s2"), stage=2)  # the recipe trains the towers
    dinov3, siglip2 = (list(tower.named_parameters()) for tower in model.image_tokenizer.towers)
    assert not any(p.requires_grad for _, p in dinov3)  # frozen by model.encoder_freeze
    assert all(p.requires_grad for _, p in siglip2)  # follows the recipe
    assert [t["trainable"] for t in summary["image_tokenizer"]["towers"]] == [False, True]
    assert summary["image_tokenizer"]["trainable"]

    groups = {g["name"]: g for g in build_optimizer(model.parameter_groups(), config.optim).param_groups}
    assert not any(name.startswith("image_tokenizer.0") for name in groups)
    tower_params = {id(p) for _, p in siglip2}
    owned = [
        p for name in ("image_tokenizer.1", "image_tokenizer.1.no_decay") for p in groups[name]["params"]
    ]
    assert {id(p) for p in owned} == tower_params and len(owned) == len(tower_params)
    assert groups["image_tokenizer.1"]["lr"] == 1e-5

    # both towers train: one group each, at its own rate (null: optim.lr.image_tokenizer)
    config.model.encoder_freeze, config.optim.encoder_lr = [], [None, 1e-5]
    model = build_vlm(config.model)
    apply_freezing(model, load_recipe("unfreeze-tok-s2"), stage=2)
    groups = {
        g["name"]: g["lr"] for g in build_optimizer(model.parameter_groups(), config.optim).param_groups
    }
    assert (
        groups["image_tokenizer.0"] == config.optim.lr["image_tokenizer"]
        and groups["image_tokenizer.1"] == 1e-5
    )

    # a recipe that freezes the towers freezes both: the per-tower states only ever freeze more
    apply_freezing(model, load_recipe("all-frozen"), stage=2)
    assert not any(p.requires_grad for p in model.image_tokenizer.parameters())


# ------------------------------------------------------------------------------ describe, checkpoints, export


def test_describe_counts_each_tower_as_it_counts_it_alone() -> None:
    pair = describe(build_vlm(model_config(["dinov3-tiny", "siglip2-tiny"], "channel")))
    dinov3 = describe(build_vlm({"tokenizer": "dinov3-tiny", "random_tokenizer": True}))
    siglip2 = describe(build_vlm({"tokenizer": "siglip2-tiny", "random_tokenizer": True}))
    assert pair["tokenizer"] == "dinov3-tiny+siglip2-tiny" and pair["encoder_fusion"] == "channel"
    assert (pair["tokenizer_tokens_per_image"], pair["tokens_per_image"], pair["tokenizer_width"]) == (
        16,
        16,
        128,
    )
    assert [e["params"] for e in pair["encoders"]] == [
        dinov3["params"]["image_tokenizer"],
        siglip2["params"]["image_tokenizer"],
    ]
    assert pair["params"]["image_tokenizer"] == sum(e["params"] for e in pair["encoders"])
    # the same adapter on both; the set's image token carries both towers' FLOPs (and a wider adapter input)
    extra_adapter = pair["adapter_flops_per_image_token"] - dinov3["adapter_flops_per_image_token"]
    assert extra_adapter == 2 * 64 * model_hidden()  # 64 more input features into fc1, per token
    # an image token = its share of the towers' and the adapter's FLOPs + the decoder's; the pair's towers
    # cost what each costs alone (the same 16 patches each)
    decoder = dinov3["forward_flops_per_text_token"] - 2 * vocab_head()
    towers = sum(
        d["forward_flops_per_image_token"] - d["adapter_flops_per_image_token"] - decoder
        for d in (dinov3, siglip2)
    )
    pair_towers = pair["forward_flops_per_image_token"] - pair["adapter_flops_per_image_token"] - decoder
    assert pair_towers == pytest.approx(towers, abs=2)  # each count was truncated to an integer


def model_hidden() -> int:
    return build_vlm({"random_tokenizer": True}).backbone_spec.hidden_size


def vocab_head() -> int:
    return build_vlm({"random_tokenizer": True}).lm.lm_head.weight.numel()


def test_describe_command_prints_the_towers(capsys) -> None:
    from vlmlab.cli import main

    assert (
        main(
            [
                "describe",
                "model/tiny",
                "model.tokenizer=[clip-tiny,clip-tiny-p8]",
                "model.encoder_fusion=tokens",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "encoders (tokens fusion -> 80 tokens of width 64):" in out
    assert "clip-tiny-p8" in out and "64 tokens of width 64" in out


def _saved_set(tmp_path: Path, rule: str = "resample") -> tuple[Path, torch.nn.Module]:
    config = load_config(ExperimentConfig, [{"model": model_config(["clip-tiny", "clip-tiny-p8"], rule)}])
    model = build_vlm(config.model)
    apply_freezing(model, load_recipe("unfreeze-all"), stage=2)
    with torch.no_grad():  # weights a fresh model could not have
        for param in model.image_tokenizer.towers[1].parameters():
            param.add_(0.5)
    folder = save_stage_checkpoint(model, tmp_path / "ckpt", to_dict(config), None, include_frozen=True)
    return folder, model


def test_checkpoint_round_trip_and_refusals(tmp_path) -> None:
    folder, trained = _saved_set(tmp_path)
    again = build_vlm(model_config(["clip-tiny", "clip-tiny-p8"], "resample"))
    load_stage_checkpoint(again, folder)
    reference = trained.state_dict()
    for name, value in again.state_dict().items():
        assert torch.equal(value, reference[name]), name
    assert any(
        name.startswith("image_tokenizer.towers.1.")
        for name in load_file(str(folder / "weights.safetensors"))
    )

    # another fusion rule of the same towers has the same shapes at channel width: refused by name, one line
    for other, needle in [
        (model_config(["clip-tiny-p8", "clip-tiny"], "resample"), "model.tokenizer=[clip-tiny,clip-tiny-p8]"),
        ({"tokenizer": "clip-tiny", "random_tokenizer": True}, "this model has model.tokenizer=clip-tiny"),
    ]:
        with pytest.raises(ConfigError) as error:
            load_stage_checkpoint(build_vlm(other), folder)
        assert needle in str(error.value) and "\n" not in str(error.value)


def test_export_refuses_an_encoder_set_in_one_line(tmp_path) -> None:
    from vlmlab.eval.export import export_run

    folder, _ = _saved_set(tmp_path, "tokens")
    for fmt in ("auto", "llava", "remote-code"):
        with pytest.raises(ConfigError) as error:
            export_run(folder, tmp_path / f"out-{fmt}", format=fmt)
        message = str(error.value)
        assert "several towers (clip-tiny+clip-tiny-p8)" in message and f"--format {fmt}" in message
        assert "\n" not in message and not (tmp_path / f"out-{fmt}").exists()


# ---------------------------------------------------------------------------------------- training


@pytest.mark.slow(seconds=15)
@pytest.mark.parametrize("rule", ["tokens", "resample"])
def test_a_pair_of_different_grids_trains_with_a_frozen_tower(tmp_path, rule) -> None:
    config = experiment(tmp_path, rule, 1, "joint_decoder", max_steps=2, checkpoint_every_n_steps=2)
    config.model = dataclasses.replace(
        config.model,
        tokenizer=["clip-tiny", "clip-tiny-p8"],
        encoder_fusion=rule,
        encoder_freeze=["recipe", "frozen"],
    )
    config.data.max_length = 192  # tokens: 16 + 64 image positions per image
    config.data.val = []  # training is under test here, not generation
    from vlmlab.train.run import train

    result = train(config)
    assert result["freezing"]["image_tokenizer"]["towers"][1]["trainable"] is False
    trained = json.loads((tmp_path / rule / "final" / "meta.json").read_text())["trained"]
    assert any(name.startswith("image_tokenizer.towers.0.") for name in trained)  # unfreeze-all: tower 0
    assert not any(name.startswith("image_tokenizer.towers.1.") for name in trained)  # frozen on request
    assert result["timings"]["steps"] == 2


PAIR = [
    "data.val=[]",  # the resume is under test, not validation
    "model.tokenizer=[dinov3-tiny,siglip2-tiny]",
    "model.encoder_fusion=channel",
    "optim.encoder_lr=[1e-5,null]",
]


@pytest.mark.slow(seconds=50)
def test_the_pair_resumes_exactly_after_sigkill(tmp_path) -> None:
    """tests/test_training.py's kill test for DINOv3 + SigLIP 2 concatenated on channels with a learning rate
    per tower (both train: unfreeze-all): SIGKILL after step 4 (its checkpoint was step 3), resumed, gives the
    weights of an uninterrupted run."""
    straight, resumed = killed_and_resumed(
        tmp_path, PAIR, kill_at=4, saved_at=3, max_steps=6, checkpoint_every_n_steps=3
    )
    assert {n.split(".")[2] for n in straight if n.startswith("image_tokenizer.towers.")} == {"0", "1"}
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
