"""`vlmlab describe`: parameter counts and FLOPs against hand-computed values."""

import json

import pytest

from vlmlab.cli import main
from vlmlab.config import ModelConfig
from vlmlab.models.describe import build_on_meta, describe


def test_qwen3_0_6b_language_model_parameters_by_hand(capsys):
    # embedding 151936 x 1024 = 155,582,464, twice (untied head)            = 311,164,928
    # per layer: q 1024x2048 = 2,097,152, k and v 1024x1024 = 1,048,576 each, o 2048x1024 = 2,097,152
    #            (6,291,456) + MLP 3 x 1024 x 3072 = 9,437,184 + norms 2 x 1024 + q/k norms 2 x 128 = 2,304
    #            = 15,730,944; x 28 layers = 440,466,432
    # final norm 1,024 -> 311,164,928 + 440,466,432 + 1,024 = 751,632,384
    assert main(["describe", "model/paper-0.6b", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"]["language_model"] == 751_632_384
    assert info["params"]["cross_attention"] == 0 and info["params"]["mot_image"] == 0
    assert info["tokens_per_image"] == 196  # SigLIP 2 B/16 at 224 px: 14 x 14 patches


@pytest.mark.parametrize("backbone", ["qwen3-1.7b", "qwen3-4b", "qwen3-8b"])
def test_large_presets_describe_on_meta(backbone, capsys):
    assert main(["describe", "model/paper-0.6b", f"model.backbone={backbone}", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backbone"] == backbone and info["params"]["language_model"] > 1e9


def test_mot_doubles_the_layers_but_not_the_flops_per_token():
    joint = describe(build_on_meta(ModelConfig(backbone="qwen3-0.6b", tokenizer="siglip2-b16-224")))
    mot = describe(
        build_on_meta(ModelConfig(backbone="qwen3-0.6b", tokenizer="siglip2-b16-224", fusion="mot"))
    )
    # the image copy holds every decoder layer weight: 440,466,432 (see the hand count above)
    assert mot["params"]["mot_image"] == 440_466_432
    assert mot["forward_flops_per_text_token"] == joint["forward_flops_per_text_token"]
    assert mot["forward_flops_per_image_token"] == joint["forward_flops_per_image_token"]


def test_text_token_flops_by_hand():
    # qwen3-tiny: per layer matmul weights q 64x64 + k,v 64x32 + o 64x64 + MLP 3x64x128 = 36,864; x 8 layers
    # x 2 FLOPs = 589,824. Head 512 x 64 x 2 = 65,536. Attention at context 2048: 2 x 2048 x 4 heads x 16
    # per layer x 8 = 2,097,152. Total 2,752,512.
    info = describe(build_on_meta(ModelConfig()), context_length=2048)
    assert info["forward_flops_per_text_token"] == 2_752_512


def test_cross_attention_adds_one_layer_per_four():
    info = describe(build_on_meta(ModelConfig(backbone="qwen3-0.6b", fusion="cross_attention")))
    # 28 layers / 4 = 7 gated layers; each: q 1024x2048, k/v 1024x1024, o 2048x1024, MLP 9,437,184,
    # norms 2x1024 + 2x128, gates 2 -> 15,730,946; x 7 = 110,116,622
    assert info["params"]["cross_attention"] == 110_116_622
    assert info["sequence_positions_per_image"] == 1


def test_describe_rejects_a_typo(capsys):
    assert main(["describe", "model/tiny", "model.fusoin=mot"]) == 2
    assert "Did you mean 'fusion'" in capsys.readouterr().err
