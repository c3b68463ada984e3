"""Connectors (`model.adapter`) and the image-token count, each against an independent truth.

- pixel shuffle against transformers' Idefics3 connector, the perceiver against transformers' Idefics2
  connector (projection + perceiver resampler), with the same weights loaded into both;
- tokens per image, adapter parameters and FLOPs against values computed by hand, for every registered
  adapter;
- every adapter trains with every fusion (gradients reach every adapter weight, the loss falls);
- bad ratios and token counts stop the config or the build in one line naming the value and the valid ones;
- run ids of the existing design points do not move; exports refuse LLaVA and round-trip as remote code.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from test_export import assert_close_where, batch, checkpoint, tokenizer_yaml, vlmlab_logits
from test_fusion import interleaved_batch

from vlmlab.cli import main
from vlmlab.config import ADAPTER_NAMES, ExperimentConfig, ModelConfig, load_config, to_dict
from vlmlab.errors import ConfigError
from vlmlab.models.adapters import (
    ADAPTERS,
    AdapterShape,
    CAbstractorAdapter,
    PerceiverAdapter,
    PixelShuffleAdapter,
    space_to_depth,
)
from vlmlab.models.checkpoint import load_stage_checkpoint
from vlmlab.models.describe import build_on_meta, describe
from vlmlab.models.fusion import FUSIONS
from vlmlab.models.vlm import build_vlm
from vlmlab.runs.load import text_side
from vlmlab.sweep.expand import run_id


def test_the_registry_holds_one_class_per_declared_adapter_name():
    assert sorted(ADAPTER_NAMES) == ADAPTERS.names()


# -- (a) the same operation as transformers, with shared weights ---------------------------------------------
@pytest.mark.parametrize("ratio", [2, 3, 4])
def test_pixel_shuffle_equals_the_idefics3_connector(ratio):
    from transformers import Idefics3Config
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

    vision, text, side = 24, 40, 12  # a 12 x 12 patch grid divides by 2, 3 and 4
    ours = PixelShuffleAdapter(AdapterShape(in_dim=vision, in_tokens=side * side, out_dim=text, ratio=ratio))
    config = Idefics3Config(  # head counts that divide the small widths (the defaults would not)
        vision_config={"hidden_size": vision, "num_attention_heads": 4},
        text_config={"hidden_size": text, "num_attention_heads": 4, "num_key_value_heads": 2},
        scale_factor=ratio,
    )
    theirs = Idefics3Connector(config).eval()
    with torch.no_grad():  # Idefics3 projects with one bias-free linear layer: our MLP's first layer
        theirs.modality_projection.proj.weight.copy_(ours.mlp.fc1.weight)
        ours.mlp.fc1.bias.zero_()
    features = torch.randn(3, side * side, vision)
    # the rearrangement alone is exact: the same numbers in the same places
    torch.testing.assert_close(
        space_to_depth(features, ratio), theirs.pixel_shuffle(features, ratio), rtol=0, atol=0
    )
    assert ours.num_tokens == (side // ratio) ** 2
    with torch.no_grad():
        expected = ours.mlp.fc2(ours.mlp.act(theirs(features)))
        torch.testing.assert_close(ours(features), expected)


def idefics2_name(ours: str) -> str:
    """Our perceiver adapter's parameter name -> transformers' Idefics2Connector's (one to one)."""
    if ours.startswith("projection."):
        return ours.replace("projection.", "modality_projection.").replace(".weight", "_proj.weight")
    name = "perceiver_resampler." + ours.replace("blocks.", "layers.")
    for mine, theirs in (
        (".latent_norm.", ".input_latents_norm."),
        (".context_norm.", ".input_context_norm."),
        (".mlp_norm.", ".post_attention_layernorm."),
        (".attention.query.", ".self_attn.q_proj."),
        (".attention.key.", ".self_attn.k_proj."),
        (".attention.value.", ".self_attn.v_proj."),
        (".attention.out.", ".self_attn.o_proj."),
        (".mlp.gate.", ".mlp.gate_proj."),
        (".mlp.up.", ".mlp.up_proj."),
        (".mlp.down.", ".mlp.down_proj."),
    ):
        name = name.replace(mine, theirs)
    return name


def test_perceiver_equals_the_idefics2_connector():
    from transformers import Idefics2Config
    from transformers.models.idefics2.modeling_idefics2 import Idefics2Connector

    vision, text, hidden, latents, patches = 24, 40, 56, 6, 20
    # 4 query heads of 12 sharing 2 key-value heads: 48 wide, not the model's 40 (as Idefics2's 16 x 96)
    shape = AdapterShape(
        in_dim=vision,
        in_tokens=patches,
        out_dim=text,
        hidden_dim=hidden,
        tokens=latents,
        heads=4,
        kv_heads=2,
        head_dim=12,
        norm_eps=1e-6,
    )
    ours = PerceiverAdapter(shape).eval()
    config = Idefics2Config(
        vision_config={"hidden_size": vision, "num_attention_heads": 4},
        text_config={
            "model_type": "mistral",
            "hidden_size": text,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": hidden,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-6,
        },
        perceiver_config={
            "hidden_size": text,
            "rms_norm_eps": 1e-6,
            "hidden_act": "silu",
            "resampler_n_latents": latents,
            "resampler_depth": 3,
            "resampler_n_heads": 4,
            "resampler_head_dim": 12,
            "num_key_value_heads": 2,
        },
    )
    theirs = Idefics2Connector(config).eval()
    with torch.no_grad():  # no weight at its initial value (norm weights are all ones): a mix-up would show
        for param in ours.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    state = {idefics2_name(name): value for name, value in ours.state_dict().items()}
    assert sorted(state) == sorted(theirs.state_dict())  # one to one
    theirs.load_state_dict(state, strict=True)
    features = torch.randn(3, patches, vision)
    with torch.no_grad():
        expected = theirs(features, attention_mask=torch.ones(3, patches, dtype=torch.long))
        torch.testing.assert_close(ours(features), expected)
    assert ours(features).shape == (3, latents, text)


def test_c_abstractor_blocks_equal_timms_regnet_stage_as_honeybee_builds_it():
    """Honeybee builds its C-Abstractor's blocks as timm's RegStage(depth 3, stride 1, SiLU, LayerNorm2d): the
    same weights in our blocks and in timm's give the same output, with a width change (the shortcut conv)."""
    from timm.layers import LayerNorm2d
    from timm.models.regnet import RegStage

    vision, hidden, text, side = 24, 32, 40, 6
    ours = CAbstractorAdapter(
        AdapterShape(in_dim=vision, in_tokens=side * side, out_dim=text, hidden_dim=hidden, tokens=4)
    ).eval()
    with torch.no_grad():  # no weight at its initial value (norms start at ones and zeros)
        for param in ours.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    stages = [
        RegStage(
            3, width, hidden, stride=1, dilation=1, act_layer=torch.nn.SiLU, norm_layer=LayerNorm2d
        ).eval()
        for width in (vision, hidden)
    ]
    for timm_stage, our_stage in zip(stages, (ours.before, ours.after)):
        state = {}
        for index, block in enumerate(our_stage):
            for name, value in block.state_dict().items():
                name = name.replace("conv1.0.", "conv1.conv.").replace("conv1.1.", "conv1.bn.")
                name = name.replace("conv2.0.", "conv2.conv.").replace("conv2.1.", "conv2.bn.")
                name = name.replace("conv3.0.", "conv3.conv.").replace("conv3.1.", "conv3.bn.")
                name = name.replace("shortcut.0.", "downsample.conv.").replace(
                    "shortcut.1.", "downsample.bn."
                )
                name = name.replace("se.down.", "se.fc1.").replace("se.up.", "se.fc2.")
                state[f"b{index + 1}.{name}"] = value
        assert sorted(state) == sorted(timm_stage.state_dict())  # one to one
        timm_stage.load_state_dict(state, strict=True)
    features = torch.randn(2, side * side, vision)
    with torch.no_grad():
        grid = features.transpose(1, 2).reshape(2, vision, side, side)
        pooled = torch.nn.functional.adaptive_avg_pool2d(stages[0](grid), 2)
        expected = ours.readout(stages[1](pooled).flatten(2).transpose(1, 2))
        torch.testing.assert_close(ours(features), expected)
    assert ours(features).shape == (2, 4, text)


@pytest.mark.parametrize("adapter", ADAPTERS.names())
def test_adapter_flops_match_torchs_flop_counter(adapter):
    """Every adapter's own count (describe's) against torch's FlopCounterMode on one image, on the meta
    device: matrix multiplies, convolutions and attention, 2 FLOPs per multiply-add."""
    from torch.utils.flop_counter import FlopCounterMode

    settings, _ = TRAINING[adapter]
    shape = AdapterShape(
        in_dim=400 if adapter == "embedding" else 24,
        in_tokens=16,
        out_dim=40,
        hidden_dim=48,
        tokens=settings.get("adapter_tokens", 64),
        ratio=settings.get("pixel_shuffle_ratio", 2),
        heads=4,
        kv_heads=2,
    )
    with torch.device("meta"):
        module = ADAPTERS.get(adapter)(shape)
        inputs = torch.zeros(1, 16, dtype=torch.long) if adapter == "embedding" else torch.zeros(1, 16, 24)
    with FlopCounterMode(display=False) as counter:
        module(inputs)
    assert module.flops_per_image() == counter.get_total_flops()


CONTINUOUS_TINY = ["clip-tiny", "clip-tiny-p8", "siglip2-tiny", "dinov3-tiny", "dinov3-tiny-hf", "aimv2-tiny"]


@pytest.mark.parametrize("tokenizer", CONTINUOUS_TINY)
def test_c_abstractor_takes_every_continuous_tokenizer(tokenizer):
    vlm = build_vlm(
        dict(tokenizer=tokenizer, adapter="c_abstractor", adapter_tokens=4, random_tokenizer=True)
    )
    size = vlm.image_tokenizer.spec.image_size
    features = vlm.image_features(torch.randn(2, 3, size, size))
    assert features.shape == (2, 4, vlm.backbone_spec.hidden_size)
    features.sum().backward()
    assert all(param.grad is not None for param in vlm.adapter.parameters())


# -- (b) token counts, parameters and FLOPs by hand --------------------------------------------------------
# (adapter, its settings, tokenizer, image tokens per image worked out by hand)
TOKEN_COUNTS = [
    ("mlp", {}, "clip-tiny", 16),  # 64 px / 16 px patches: a 4 x 4 grid, one token per patch
    ("linear", {}, "clip-tiny-p8", 64),  # 64 px / 8 px: 8 x 8
    ("embedding", {}, "titok-tiny", 16),  # TiTok's 16 latent token ids
    ("embedding", {}, "var-tiny", 21),  # VAR's scales 1, 2, 4: 1 + 4 + 16 ids
    ("pixel_shuffle", {"pixel_shuffle_ratio": 2}, "clip-tiny", 4),  # (4 / 2)^2
    ("pixel_shuffle", {"pixel_shuffle_ratio": 4}, "clip-tiny", 1),  # (4 / 4)^2
    ("pixel_shuffle", {"pixel_shuffle_ratio": 2}, "clip-tiny-p8", 16),  # (8 / 2)^2
    ("pixel_shuffle", {"pixel_shuffle_ratio": 4}, "siglip2-tiny", 1),  # 4 x 4 grid, (4 / 4)^2
    ("perceiver", {"adapter_tokens": 5}, "clip-tiny", 5),  # its 5 latents
    ("perceiver", {}, "clip-tiny", 64),  # the default: Idefics2's 64 latents, more than the 16 patches
    ("avgpool", {"adapter_tokens": 4}, "clip-tiny", 4),  # 4 x 4 -> 2 x 2
    ("avgpool", {"adapter_tokens": 9}, "dinov3-tiny", 9),  # 4 x 4 -> 3 x 3 (overlapping windows)
    ("avgpool", {"adapter_tokens": 16}, "clip-tiny-p8", 16),  # 8 x 8 -> 4 x 4
    ("c_abstractor", {"adapter_tokens": 4}, "clip-tiny", 4),  # 4 x 4 -> 2 x 2
    ("c_abstractor", {"adapter_tokens": 1}, "siglip2-tiny", 1),  # 4 x 4 -> 1 x 1
    ("c_abstractor", {"adapter_tokens": 9}, "clip-tiny-p8", 9),  # 8 x 8 -> 3 x 3
]


def test_every_registered_adapter_has_hand_computed_token_counts():
    assert {case[0] for case in TOKEN_COUNTS} == set(ADAPTERS.names())


@pytest.mark.parametrize(("adapter", "settings", "tokenizer", "tokens"), TOKEN_COUNTS)
def test_tokens_per_image_are_the_connectors_output(adapter, settings, tokenizer, tokens):
    vlm = build_vlm(dict(tokenizer=tokenizer, adapter=adapter, random_tokenizer=True, **settings)).eval()
    assert vlm.features_per_image == tokens
    assert vlm.tokens_per_image == tokens  # Joint-Decoder: one placeholder per image token
    size = vlm.image_tokenizer.spec.image_size
    with torch.no_grad():
        features = vlm.image_features(torch.randn(2, 3, size, size))
    assert features.shape == (2, tokens, vlm.backbone_spec.hidden_size)


def test_the_data_encoder_writes_the_connectors_token_count():
    """The training and evaluation encoder takes the count from the model: 4 placeholders after the shuffle."""
    config = load_config(
        ExperimentConfig,
        [{"model": {"tokenizer": "clip-tiny", "random_tokenizer": True, "adapter": "pixel_shuffle"}}],
    )
    model = build_vlm(config.model).eval()
    _, encoder = text_side(config, model)
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    sample = {"id": "s", "segments": [{"type": "image", "image": image}, {"type": "text", "text": "Colour?"}]}
    encoded = encoder.encode_prompt({**sample, "response": "red"})
    assert int((encoded["input_ids"] == model.image_token_id).sum()) == 4
    with torch.no_grad():  # and the model takes that batch
        logits = model(encoded["input_ids"][None], pixel_values=encoded["pixel_values"]).logits
    assert torch.isfinite(logits).all()


# qwen3-tiny (width 64, 4 heads of 16, 2 key-value heads, decoder 2,686,976 FLOPs per token at context 2048:
# tests/test_describe.py's 2,752,512 minus its 65,536 head) + clip-tiny (16 patches of width 64; its matmul
# weights: 2 blocks x (qkv 192 x 64 + out 64 x 64 + MLP 2 x 256 x 64) = 98,304, so 196,608 FLOPs per patch).
DECODER, TOKENIZER_PER_PATCH, PATCHES = 2_686_976, 196_608, 16
DESCRIBED = [
    # adapter, settings, tokens, adapter parameters, adapter FLOPs per image
    # mlp: fc1 64 x 64 + 64, fc2 64 x 64 + 64 = 8,320; 2 x 8,192 multiply-adds x 16 tokens = 262,144
    ("mlp", {}, 16, 8_320, 262_144),
    # linear: 64 x 64 + 64 = 4,160; 2 x 4,096 x 16 = 131,072
    ("linear", {}, 16, 4_160, 131_072),
    # pixel_shuffle 2: fc1 (4 x 64 = 256) x 64 + 64 = 16,448, fc2 4,160 -> 20,608; 2 x 20,480 x 4 = 163,840
    ("pixel_shuffle", {"pixel_shuffle_ratio": 2}, 4, 20_608, 163_840),
    # avgpool 4: the MLP on 4 pooled tokens, 8,320 parameters; 2 x 8,192 x 4 = 65,536
    ("avgpool", {"adapter_tokens": 4}, 4, 8_320, 65_536),
    # perceiver, 5 latents. Parameters: projection 3 x 64 x 64 = 12,288; latents 5 x 64 = 320; per block:
    # 3 norms 192, q 4,096, k 2,048, v 2,048, o 4,096, MLP 3 x 64 x 256 = 49,152 -> 61,632, x 3 = 184,896;
    # final norm 64 -> 197,568. Multiply-adds: projection 12,288 x 16 patches = 196,608; per block q and o
    # 8,192 x 5 latents = 40,960, k and v 4,096 x (16 + 5 keys) = 86,016, QK^T and AV 2 x 5 x 21 x 4 x 16 =
    # 13,440, MLP 49,152 x 5 = 245,760 -> 386,176, x 3 = 1,158,528; total 1,355,136, x 2 = 2,710,272
    ("perceiver", {"adapter_tokens": 5}, 5, 197_568, 2_710_272),
    # c_abstractor, 4 tokens, every width 64. Parameters per block: 1x1 conv 4,096, depthwise 3x3 64 x 9 = 576,
    # 1x1 conv 4,096, three LayerNorms 3 x 128 = 384, squeeze-excite to 64 / 4 = 16 channels 64 x 16 + 16 +
    # 16 x 64 + 64 = 2,128 (no shortcut conv: 64 -> 64) -> 11,280, x 6 blocks = 67,680; readout 2 x 4,160 =
    # 8,320 -> 76,000. Multiply-adds: a block's convs 8,768 per position, its squeeze-excite 2,048 once; 3
    # blocks on 16 patches 3 x (140,288 + 2,048) = 427,008, 3 on 4 pooled 3 x (35,072 + 2,048) = 111,360,
    # readout 8,192 x 4 = 32,768 -> 571,136, x 2 = 1,142,272
    ("c_abstractor", {"adapter_tokens": 4}, 4, 76_000, 1_142_272),
]


@pytest.mark.parametrize(("adapter", "settings", "tokens", "params", "flops"), DESCRIBED)
def test_describe_reports_the_connector_by_hand(adapter, settings, tokens, params, flops):
    info = describe(build_on_meta(ModelConfig(adapter=adapter, **settings)), context_length=2048)
    assert info["adapter"] == adapter
    assert (info["tokenizer_tokens_per_image"], info["tokens_per_image"]) == (PATCHES, tokens)
    assert info["params"]["adapter"] == params
    assert info["adapter_flops_per_image"] == flops
    # an image token carries its share of the tokenizer's and the adapter's work on the image
    per_image_token = (PATCHES * TOKENIZER_PER_PATCH + flops) / tokens + DECODER
    assert info["forward_flops_per_image_token"] == int(per_image_token)


def test_vlmlab_describe_prints_tokens_per_image_for_the_connector(capsys):
    assert main(["describe", "model/tiny", "model.adapter=pixel_shuffle", "model.pixel_shuffle_ratio=4"]) == 0
    out = capsys.readouterr().out
    assert "adapter pixel_shuffle: 16 tokenizer tokens -> 1 image tokens" in out


# -- (c) every connector trains with every fusion ----------------------------------------------------------
# (settings, image tokens per image by hand): each connector changes the tiny tokenizers' count where it can
TRAINING = {
    "mlp": ({}, 16),  # clip-tiny's 4 x 4 patches
    "linear": ({}, 16),
    "embedding": ({"tokenizer": "titok-tiny"}, 16),  # the discrete tokenizers' only adapter; 16 token ids
    "pixel_shuffle": ({"pixel_shuffle_ratio": 2}, 4),  # (4 / 2)^2
    "perceiver": ({"adapter_tokens": 5}, 5),
    "avgpool": ({"adapter_tokens": 4}, 4),
    "c_abstractor": ({"adapter_tokens": 4}, 4),
}


@pytest.mark.parametrize("fusion", FUSIONS.names())
@pytest.mark.parametrize("adapter", ADAPTERS.names())
def test_every_connector_trains_with_every_fusion(adapter, fusion):
    settings, tokens = TRAINING[adapter]
    settings = {"tokenizer": "clip-tiny", **settings}
    vlm = build_vlm(dict(fusion=fusion, adapter=adapter, random_tokenizer=True, **settings)).train()
    # Joint-Decoder and MoT place the image's tokens in the sequence; Cross-Attention one marker, the tokens
    # in its image bank
    assert vlm.features_per_image == tokens
    assert vlm.tokens_per_image == (1 if fusion == "cross_attention" else tokens)
    if fusion == "cross_attention":  # its gates start closed (no gradient reaches the images): open them
        for layer in vlm.fusion.cross_attn_layers:
            layer.attn_gate.data.fill_(0.5)
            layer.mlp_gate.data.fill_(0.5)
    ids, segments, pixels = interleaved_batch(vlm, [[3, "I", 5], [2, "I", 4, "I", 1]])
    labels = torch.where(ids == vlm.image_token_id, -100, ids)
    optimizer = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=1e-3, weight_decay=0)
    losses = []
    for step in range(2):
        optimizer.zero_grad()
        loss = vlm(ids, pixel_values=pixels, segment_ids=segments, labels=labels).loss
        loss.backward()
        if step == 0:  # the connector is on the path: every one of its weights gets a gradient
            for name, param in vlm.adapter.named_parameters():
                assert param.grad is not None and bool(param.grad.abs().sum() > 0), name
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(loss) for loss in losses) and losses[1] < losses[0], losses


# -- (d) bad settings: one line naming the value and the valid ones ------------------------------------------
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(adapter="pixelshuffle"), "Unknown adapter 'pixelshuffle'. Did you mean 'pixel_shuffle'"),
        (dict(pixel_shuffle_ratio=5), r"pixel-shuffle ratio \(model.pixel_shuffle_ratio\) 5.*2, 3, 4"),
        (dict(adapter="perceiver", adapter_tokens=0), "adapter_tokens=0 is impossible.*1 or more"),
        (dict(adapter="avgpool", adapter_tokens=50), "adapter_tokens=50 is not a square.*49 or 64"),
        (
            dict(adapter="c_abstractor", adapter_tokens=8),
            "adapter_tokens=8 is not a square.*c_abstractor.*4 or 9",
        ),
        # a discrete tokenizer's ids take the embedding table only, a continuous one's features anything else
        (
            dict(adapter="perceiver", tokenizer="titok-tiny"),
            r"Adapter 'perceiver' cannot take a discrete tokenizer's output \(titok-tiny\); use embedding \(or",
        ),
        (
            dict(adapter="c_abstractor", tokenizer="var-tiny"),
            r"Adapter 'c_abstractor' cannot take a discrete tokenizer's output \(var-tiny\); use embedding",
        ),
        (
            dict(adapter="pixel_shuffle", tokenizer="titok-tiny"),
            "Adapter 'pixel_shuffle' cannot take a discrete tokenizer's output",
        ),
        (
            dict(adapter="embedding"),
            "cannot take a continuous.*use mlp, linear, pixel_shuffle, perceiver, avgpool, c_abstractor",
        ),
    ],
)
def test_bad_connector_settings_stop_the_config(settings, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(ModelConfig, [settings])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            dict(adapter="pixel_shuffle", pixel_shuffle_ratio=3),
            r"pixel_shuffle_ratio=3 does not divide the 4 x 4 patch grid of clip-tiny \(valid here: 2, 4\)",
        ),
        (
            dict(adapter="avgpool", adapter_tokens=25),
            r"adapter_tokens=25 cannot be pooled from the 4 x 4 patch grid.*valid here: 1, 4, 9, 16\)",
        ),
        (dict(adapter="avgpool"), "adapter_tokens=64 cannot be pooled"),  # MM1's 64 needs an 8 x 8 grid
        (
            dict(adapter="c_abstractor", adapter_tokens=25),
            r"adapter_tokens=25 cannot be pooled.*c_abstractor needs a square.*valid here: 1, 4, 9, 16\)",
        ),
    ],
)
def test_bad_connector_settings_stop_the_build(settings, message):
    with pytest.raises(ConfigError, match=message) as error:
        build_vlm(dict(random_tokenizer=True, **settings))
    assert "\n" not in str(error.value)


def test_a_patch_grid_that_is_not_square_cannot_be_shuffled_or_pooled():
    shape = AdapterShape(in_dim=8, in_tokens=12, out_dim=8, tokenizer="a 3 x 4 tower")
    for adapter in ("pixel_shuffle", "avgpool"):
        with pytest.raises(
            ConfigError, match=f"'{adapter}' needs a square patch grid; a 3 x 4 tower gives 12"
        ):
            ADAPTERS.get(adapter)(shape)
    assert ADAPTERS.get("perceiver")(shape).num_tokens == 64  # the perceiver reads any set of patches


# -- run ids, checkpoints, export --------------------------------------------------------------------------
def test_connector_settings_change_run_ids_only_where_they_are_used():
    def ids(**model) -> str:
        config = to_dict(ExperimentConfig())
        config["model"].update(model)
        return run_id(1, config, [], {})

    before = to_dict(ExperimentConfig())  # a config resolved before the connector keys existed
    for key in ("adapter_tokens", "pixel_shuffle_ratio"):
        del before["model"][key]
    assert run_id(1, before, [], {}) == ids()
    assert ids(adapter_tokens=16, pixel_shuffle_ratio=4) == ids()  # the MLP uses neither
    assert ids(adapter="pixel_shuffle", adapter_tokens=16) == ids(adapter="pixel_shuffle")
    assert ids(adapter="pixel_shuffle", pixel_shuffle_ratio=4) != ids(adapter="pixel_shuffle")
    assert ids(adapter="perceiver", adapter_tokens=16) != ids(adapter="perceiver")
    assert ids(adapter="avgpool", adapter_tokens=16) != ids(adapter="perceiver", adapter_tokens=16)


def test_a_checkpoint_of_another_connector_is_refused(tmp_path):
    source = checkpoint(tmp_path, "avgpool", adapter="avgpool", adapter_tokens=4)
    same = build_vlm(dict(random_tokenizer=True, adapter="avgpool", adapter_tokens=4))
    load_stage_checkpoint(same, source)
    # the same weight shapes, pooled to another count: loads silently unless refused
    other = build_vlm(dict(random_tokenizer=True, adapter="avgpool", adapter_tokens=1))
    with pytest.raises(
        ConfigError, match="trained with model.adapter=avgpool model.adapter_tokens=4"
    ) as error:
        load_stage_checkpoint(other, source)
    assert "\n" not in str(error.value) and "model.adapter_tokens=1" in str(error.value)


def test_export_refuses_llava_for_a_connector(tmp_path, capsys):
    # a tower LLaVA maps (feature_layer -2): only the connector stands in the way
    tokenizer = tokenizer_yaml(tmp_path, "clip-tiny", -2)
    source = checkpoint(tmp_path, "ckpt", tokenizer=tokenizer, adapter="pixel_shuffle")
    assert main(["export", str(source), "--out", str(tmp_path / "out"), "--format", "llava"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a LLaVA architecture" in err, err
    assert "'pixel_shuffle' (16 patches -> 4 image tokens)" in err and "--format remote-code" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("adapter", "settings"),
    [
        ("pixel_shuffle", {}),
        ("perceiver", {"adapter_tokens": 5}),
        ("avgpool", {"adapter_tokens": 1}),
        ("c_abstractor", {"adapter_tokens": 4}),
    ],
)
def test_connectors_export_as_remote_code(tmp_path, adapter, settings):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmlab.eval.export import export_run, load_for_export

    source = checkpoint(tmp_path, "ckpt", adapter=adapter, **settings)
    out = export_run(source, tmp_path / "hf")
    assert (out / "vlmlab_export.json").read_text().count(f"its adapter is '{adapter}'") == 1
    config, model, _, _ = load_for_export(source)
    hf = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    assert hf.config.tokens_per_image == model.tokens_per_image
    input_ids, mask, pixels = batch(model, pad_last=3)
    with torch.no_grad():
        got = hf(input_ids=input_ids, pixel_values=pixels, attention_mask=mask).logits
    assert_close_where(got, vlmlab_logits(model, input_ids, mask, pixels), mask)
    # the processor expands one image into the connector's count, as vlmlab's encoder does
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=Image.new("RGB", (64, 64)), return_tensors="pt")
    assert int((inputs["input_ids"] == model.image_token_id).sum()) == model.tokens_per_image
    assert config.model.adapter == adapter


# exact resume after a kill: tests/test_training.py's kill test runs its second case with the perceiver
