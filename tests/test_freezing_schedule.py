"""Per-stage freezing and per-group learning-rate schedules against hand-computed values."""

import math

import pytest
import torch
from paper_facts import TABLE_2

from vlmlab.config import OptimConfig
from vlmlab.errors import ConfigError
from vlmlab.models.vlm import build_vlm
from vlmlab.recipes import list_recipes, load_recipe
from vlmlab.train.freezing import apply_freezing
from vlmlab.train.schedule import build_optimizer, build_scheduler, lr_multiplier


def test_the_six_table_2_recipes():
    # in Table 2's row order, then the recipes the paper does not list (tests/test_single_stage.py)
    assert list_recipes()[: len(TABLE_2)] == list(TABLE_2)
    assert all(load_recipe(name).table_row is None for name in list_recipes()[len(TABLE_2) :])
    for name, (tok1, tok2, lang2) in TABLE_2.items():
        recipe = load_recipe(name)
        assert (recipe.tokenizer_stage1, recipe.tokenizer_stage2, recipe.language_stage2) == (
            tok1,
            tok2,
            lang2,
        )
        assert recipe.trainable_groups(1)["language_model"] is False


def batch_for(vlm):
    n = vlm.tokens_per_image
    ids = torch.cat(
        [
            torch.randint(0, 400, (2, 3)),
            torch.full((2, n), vlm.image_token_id),
            torch.randint(0, 400, (2, 6)),
        ],
        dim=1,
    )
    labels = torch.where(ids == vlm.image_token_id, -100, ids)
    return dict(input_ids=ids, labels=labels, pixel_values=torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("fusion", ["joint_decoder", "cross_attention"])
@pytest.mark.parametrize("recipe_name", ["all-frozen", "unfreeze-tok-s1s2"])
def test_stage_1_step_changes_exactly_the_trainable_groups(fusion, recipe_name):
    vlm = build_vlm(dict(fusion=fusion, random_tokenizer=True)).train()
    if fusion == "cross_attention":  # open the gates so every cross-attention weight gets a gradient
        for layer in vlm.fusion.cross_attn_layers:
            layer.attn_gate.data.fill_(0.5)
            layer.mlp_gate.data.fill_(0.5)
    summary = apply_freezing(vlm, load_recipe(recipe_name), stage=1)
    before = {name: p.detach().clone() for name, p in vlm.named_parameters()}
    optimizer = build_optimizer(vlm.parameter_groups(), OptimConfig(warmup_steps=0))
    vlm(**batch_for(vlm)).loss.backward()
    optimizer.step()
    for group, params in vlm.parameter_groups().items():
        for name, param in params:
            same = torch.equal(param, before[name])
            if summary[group]["trainable"] and not name.endswith("mask_token"):
                continue  # checked in aggregate below (a few weights may legitimately get zero gradient)
            assert same, f"{name} in frozen group {group} changed"
        if summary[group]["trainable"]:
            assert any(not torch.equal(p, before[n]) for n, p in params), f"trainable {group} did not change"
    assert summary["language_model"]["trainable"] is False
    assert summary["image_tokenizer"]["trainable"] is (recipe_name == "unfreeze-tok-s1s2")


def test_stage_2_recipe_unfreezes_language_model():
    vlm = build_vlm(dict(fusion="mot", random_tokenizer=True))
    summary = apply_freezing(vlm, load_recipe("unfreeze-lm"), stage=2)
    assert summary["language_model"]["trainable"] and summary["mot_image"]["trainable"]
    assert not summary["image_tokenizer"]["trainable"]


def test_rules_of_the_paper_are_enforced(tmp_path):
    with pytest.raises(
        ConfigError, match="Unknown freezing recipe 'unfreeze-al'. Did you mean 'unfreeze-all'"
    ):
        load_recipe("unfreeze-al")
    bad = tmp_path / "s1-only.yaml"
    bad.write_text("image_tokenizer: {stage1: trainable, stage2: frozen}\n")
    with pytest.raises(ConfigError, match="stays unfrozen in stage 2"):
        load_recipe(str(bad))
    lm_s1 = tmp_path / "lm-s1.yaml"
    lm_s1.write_text("language_model: {stage1: trainable, stage2: trainable}\n")
    with pytest.raises(ConfigError, match="frozen in stage 1"):
        load_recipe(str(lm_s1))
    discrete = build_vlm(dict(tokenizer="titok-tiny"))
    with pytest.raises(ConfigError, match="discrete and always frozen.*all-frozen, unfreeze-lm"):
        apply_freezing(discrete, load_recipe("unfreeze-tok-s2"), stage=2)
    mot = build_vlm(dict(fusion="mot", random_tokenizer=True))
    with pytest.raises(ConfigError, match="no stage 1"):
        apply_freezing(mot, load_recipe("all-frozen"), stage=1)


def test_warmup_then_cosine_to_ten_percent_by_hand():
    # warmup 10 steps, 100 steps in all, floor 10%:
    #   step 0 -> 1/10; step 9 -> 10/10; step 10 -> cosine start = 1.0;
    #   step 55 -> progress (55-10)/90 = 0.5 -> 0.1 + 0.9 * (1 + cos(pi/2)) / 2 = 0.55; step 100 -> 0.1
    for step, expected in [(0, 0.1), (9, 1.0), (10, 1.0), (55, 0.55), (100, 0.1), (150, 0.1)]:
        assert lr_multiplier(step, 10, 100, 0.1) == pytest.approx(expected)
    # stage 3: 5-epoch cosine to 0 read after epoch 1 of 5 -> (1 + cos(pi/5)) / 2 = 0.9045 (Appendix D.3)
    assert lr_multiplier(140, 0, 700, 0.0) == pytest.approx((1 + math.cos(math.pi / 5)) / 2)


def test_each_group_follows_its_own_peak():
    vlm = build_vlm(dict(fusion="cross_attention", random_tokenizer=True))
    apply_freezing(vlm, load_recipe("unfreeze-tok-s1s2"), stage=1)
    optim = OptimConfig(warmup_steps=10, min_lr_ratio=0.1)
    optimizer = build_optimizer(vlm.parameter_groups(), optim)
    scheduler = build_scheduler(optimizer, optim, total_steps=100)
    seen = {}
    for step in range(101):
        if step in (0, 9, 55, 100):
            seen[step] = {g["name"]: g["lr"] for g in optimizer.param_groups}
        optimizer.step()
        scheduler.step()
    # peaks (Table 12): adapter 2e-4, cross-attention 2e-4, image tokenizer 6e-6
    assert seen[0]["adapter"] == pytest.approx(2e-5)
    assert seen[9]["image_tokenizer"] == pytest.approx(6e-6)
    assert seen[55]["cross_attention"] == pytest.approx(0.55 * 2e-4)
    assert seen[100]["image_tokenizer"] == pytest.approx(6e-7)
    assert "language_model" not in seen[0]  # frozen in stage 1: not in the optimizer at all
