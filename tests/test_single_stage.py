"""Single-stage training (Prismatic's `no-align`, section 4.1): a recipe with `skip_stage1: true` has no stage 1;
its stage-2 run starts from the base weights, in training and in a sweep's DAG (a stage-2 run with no
parent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paper_facts import TABLE_2
from safetensors.torch import load_file

from vlmlab.errors import ConfigError
from vlmlab.presets import preset_root
from vlmlab.recipes import list_recipes, load_recipe
from vlmlab.sweep.expand import expand
from vlmlab.sweep.spec import load_sweep, stage1_recipe


def test_no_align_is_unfreeze_lms_stage_2_without_its_stage_1():
    recipe, two_stage = load_recipe("no-align"), load_recipe("unfreeze-lm")
    assert recipe.skip_stage1 and not two_stage.skip_stage1
    assert recipe.trainable_groups(2) == two_stage.trainable_groups(2)
    assert recipe.trainable_groups(3) == two_stage.trainable_groups(3)
    assert list_recipes()[: len(TABLE_2)] == list(TABLE_2)  # the paper's rows first, then the others
    with pytest.raises(ConfigError, match="'no-align' is single-stage .*it has no stage 1") as error:
        recipe.trainable_groups(1)
    assert "\n" not in str(error.value)
    # no stage-1 run of a two-stage recipe is ever mapped onto a single-stage recipe
    assert {stage1_recipe(load_recipe(name)) for name in TABLE_2} == {"all-frozen", "unfreeze-tok-s1s2"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "skip_stage1: true\nimage_tokenizer: {stage1: frozen, stage2: frozen}\n",
            "skips stage 1 .*states image_tokenizer.stage1",
        ),
        ("skip_stage1: yes please\n", "skip_stage1 in recipe 'bad' must be true or false, got 'yes please'"),
    ],
)
def test_bad_single_stage_recipes_stop_in_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_recipe(str(path))
    assert "\n" not in str(error.value)


def test_a_sweep_over_single_and_two_stage_recipes_gives_the_single_stage_runs_no_parent(tmp_path: Path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"name: stages\nbase: {preset_root()}/model/tiny.yaml\noutput_dir: {tmp_path / 'out'}\n"
        "axes:\n  fusion: [joint_decoder, cross_attention, mot]\n  freeze: [unfreeze-lm, no-align]\n"
        "stages:\n  1: {config: {train: {max_steps: 3}}}\n  2: {config: {train: {max_steps: 3}}}\n"
        "  3: {config: {train: {max_steps: 3}}}\n"
    )
    dag = expand(load_sweep(sweep))
    # by hand: 3 fusions x 2 recipes = 6 points. Stage 1: unfreeze-lm's Joint-Decoder run (MoT's stage 1 too)
    # and its Cross-Attention run = 2; no-align none. Stage 2: 6, stage 3: 6 (each point's chain goes on).
    assert dag.counts()["by_stage"] == {"1": 2, "2": 6, "3": 6}
    for run in dag:
        recipe = run.config["train"]["freeze"]
        if run.stage == 2:
            assert (run.parents == []) == (recipe == "no-align"), (recipe, run.parents)
            assert (run.config["train"]["init_from"] is None) == (recipe == "no-align")
        if run.stage == 3:
            (parent,) = run.parents
            assert dag.runs[parent].config["train"]["freeze"] == recipe


def test_a_single_stage_run_trains_from_the_base_weights_as_the_two_stage_recipes_stage_2(tmp_path):
    """The no-align stage-2 run, with no parent, learns exactly what unfreeze-lm's stage 2 learns from the
    base weights (same groups trained, same seeds): the recipe only removes stage 1."""
    from test_training import cli, write_config

    settings = dict(max_steps=2, global_batch_size=4, select_best=False, val_every_n_steps=None)
    weights = {}
    for recipe in ("no-align", "unfreeze-lm"):
        config = write_config(tmp_path, recipe, 2, "joint_decoder", freeze=recipe, **settings)
        code, error = cli(str(config), "data.val=[]")
        assert code == 0, error
        meta = json.loads((tmp_path / recipe / "final" / "meta.json").read_text())
        assert meta["parent"] is None
        if recipe == "no-align":  # what trained: the connector and the language model, not the tower
            groups = {name.split(".")[0] for name in meta["trained"]}
            assert groups == {"adapter", "lm"}, groups
        # the random-init base is stored whole (no parent to sit on): every tensor compares
        weights[recipe] = load_file(str(tmp_path / recipe / "final" / "weights.safetensors"))
    assert weights["no-align"].keys() == weights["unfreeze-lm"].keys()
    for name, value in weights["no-align"].items():
        assert value.equal(weights["unfreeze-lm"][name]), name

    # a parent for a single-stage stage 2, or a stage 1 of it: one line each, before anything is built
    child = write_config(tmp_path, "child", 2, "joint_decoder", freeze="no-align", **settings)
    code, error = cli(str(child), f"train.init_from={tmp_path / 'unfreeze-lm'}")
    assert code == 2 and "single-stage" in error and "two-stage recipes: all-frozen, unfreeze-lm" in error
    assert len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "child").exists()
    stage1 = write_config(tmp_path, "stage1", 1, "joint_decoder", freeze="no-align", **settings)
    code, error = cli(str(stage1))
    assert code == 2 and "has no stage 1" in error and len(error.strip().splitlines()) == 1, error
