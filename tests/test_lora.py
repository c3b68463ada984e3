"""LoRA (peft) as the third per-stage state of a parameter group, against independent truths: trainable counts
summed by hand from the backbone's shapes, peft's own merge against the unmerged model, the full training
state in last.ckpt against what a stage checkpoint's chain rebuilds, and the sweep's header count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import experiment, trained_weights

from vlmlab.config import ExperimentConfig, LoraSettings, load_config
from vlmlab.errors import ConfigError
from vlmlab.models import lora
from vlmlab.models.backbone import load_backbone_spec
from vlmlab.models.checkpoint import load_stage_checkpoint
from vlmlab.models.vlm import build_vlm
from vlmlab.recipes import load_recipe
from vlmlab.sweep.expand import expand, run_id
from vlmlab.sweep.spec import load_sweep
from vlmlab.train.freezing import apply_freezing
from vlmlab.train.run import build_model, train

REPO = Path(__file__).resolve().parent.parent
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny(fusion: str = "joint_decoder") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_vlm(dict(backbone="qwen3-tiny", tokenizer="clip-tiny", random_tokenizer=True, fusion=fusion))


def projection_shapes() -> dict[str, tuple[int, int]]:
    """(in, out) of each Qwen3 projection, from the preset's numbers (not from the built modules)."""
    spec = load_backbone_spec("qwen3-tiny")
    hidden, inner = spec.hidden_size, spec.intermediate_size
    q, kv = spec.num_attention_heads * spec.head_dim, spec.num_key_value_heads * spec.head_dim
    return {
        "q_proj": (hidden, q),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (q, hidden),
        "gate_proj": (hidden, inner),
        "up_proj": (hidden, inner),
        "down_proj": (inner, hidden),
    }


def batch(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = [model.image_token_id] * model.tokens_per_image
    ids = torch.tensor([[5, 6, *image, *torch.randint(0, 400, (8,), generator=generator).tolist()]] * 2)
    size = model.image_tokenizer.spec.image_size
    return {
        "input_ids": ids,
        "labels": torch.where(ids == model.image_token_id, -100, ids),
        "pixel_values": torch.randn(2, 3, size, size, generator=generator),
    }


def train_a_little(model: torch.nn.Module, steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for step in range(steps):
        model(**batch(model, step), return_logits=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


# ------------------------------------------------------------------------------------------------- counts


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("targets", [list(PROJECTIONS), ["q_proj", "v_proj"]])
def test_trainable_count_is_the_sum_over_target_modules(dora: bool, targets: list[str]) -> None:
    model = tiny()
    settings = LoraSettings(rank=4, dora=dora, target_modules={"language_model": targets})
    summary = apply_freezing(model, load_recipe("lora-lm"), 2, settings)
    shapes = projection_shapes()
    layers = load_backbone_spec("qwen3-tiny").num_hidden_layers
    # r x (in + out) per adapted Linear (A is r x in, B is out x r); DoRA adds one magnitude per output
    expected = layers * sum(
        4 * (shapes[t][0] + shapes[t][1]) + (shapes[t][1] if dora else 0) for t in targets
    )
    lm_trainable = [(n, p) for n, p in model.parameter_groups()["language_model"] if p.requires_grad]
    assert summary["language_model"]["trainable_params"] == expected
    assert sum(p.numel() for _, p in lm_trainable) == expected
    assert all(".lora_" in name for name, _ in lm_trainable)  # the base weights stay frozen
    # peft's own count of what it added: the trainable parameters of its LoRA layers
    peft_count = sum(
        p.numel()
        for _, layer in lora.lora_layers(model, "language_model")
        for n, p in layer.named_parameters()
        if "lora_" in n
    )
    assert peft_count == expected
    # the always-trainable adapter still trains, the frozen tokenizer does not
    assert summary["adapter"]["trainable"] and not summary["image_tokenizer"]["trainable"]
    assert summary["language_model"]["params"] == sum(
        p.numel() for n, p in tiny().lm.named_parameters()
    )  # the base's count is the plain model's


def test_image_tokenizer_lora_reaches_only_layers_its_forward_calls() -> None:
    """open_clip's attention reads out_proj by weight (nn.MultiheadAttention): all-linear leaves it out, so
    every adapter it adds gets a gradient."""
    recipe = tmp_recipe("image_tokenizer: {stage1: lora, stage2: lora}\nlanguage_model: {stage2: frozen}\n")
    model = tiny()
    summary = apply_freezing(model, recipe, 1, LoraSettings(rank=2))
    assert summary["image_tokenizer"]["trainable_params"] > 0
    model(**batch(model, 0), return_logits=False).loss.backward()
    adapters = lora.adapter_parameters(model, "image_tokenizer")
    assert adapters and all(".out_proj." not in name for name, _ in adapters)
    # B starts at zero, so only A's gradient vanishes; B's gradient must be non-zero in every adapter
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in adapters if "lora_B" in n)


def tmp_recipe(text: str, name: str = "tok-lora") -> object:
    """A user's recipe file (by path, as `train.freeze` takes one)."""
    import tempfile

    path = Path(tempfile.mkdtemp()) / f"{name}.yaml"
    path.write_text(text)
    return load_recipe(path)


# ------------------------------------------------------------------------------------------------- merging


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("fusion", ["joint_decoder", "cross_attention"])
def test_merged_weights_give_the_unmerged_logits(fusion: str, dora: bool) -> None:
    model = tiny(fusion)
    plain_names = {name for name, _ in model.named_parameters()}
    apply_freezing(model, load_recipe("lora-lm"), 2, LoraSettings(rank=4, dora=dora))
    train_a_little(model)
    b = [p for n, p in lora.adapter_parameters(model, "language_model") if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in b)  # the adapters moved: a merge has something to fold
    model.eval()
    probe = batch(model, 7)
    with torch.no_grad():
        unmerged = model(**probe).logits
        assert lora.merge_all(model) == ["language_model"]
        merged = model(**probe).logits
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    assert {name for name, _ in model.named_parameters()} == plain_names  # the plain model again
    assert not lora.lora_adapters(model)


# --------------------------------------------------------------------------- stages, checkpoints, hand-off


@pytest.fixture(scope="module")
def lora_chain(tmp_path_factory) -> Path:
    """Stage 1 (the language model frozen), then a LoRA stage 2 from it, through the real train()."""
    tmp = tmp_path_factory.mktemp("lora")
    train(experiment(tmp, "s1", 1, "joint_decoder", freeze="lora-lm", max_steps=2))
    config = experiment(
        tmp,
        "s2",
        2,
        "joint_decoder",
        freeze="lora-lm",
        init_from=str(tmp / "s1"),
        keep_resume_state=True,
        select_best=False,
        val_every_n_steps=None,
        lora={"rank": 4, "alpha": 8},
    )
    record = train(config)
    assert record["freezing"]["language_model"]["lora"] == "r=4 alpha=8"
    return tmp


@pytest.mark.slow(seconds=40)
def test_a_lora_stage_2_checkpoint_holds_only_adapters_and_loads_back(lora_chain: Path) -> None:
    s2 = lora_chain / "s2"
    stored = load_file(str(s2 / "final" / "weights.safetensors"))
    groups = {name.split(".", 1)[0] for name in stored}
    assert groups == {"lm", "adapter"}  # no tokenizer, no base LM weight
    assert all(".lora_A." in n or ".lora_B." in n for n in stored if n.startswith("lm."))
    expected = (
        sum(4 * (i + o) for i, o in projection_shapes().values())
        * load_backbone_spec("qwen3-tiny").num_hidden_layers
    )
    assert sum(v.numel() for n, v in stored.items() if n.startswith("lm.")) == expected
    meta = json.loads((s2 / "final" / "meta.json").read_text())
    assert meta["lora"]["language_model"]["rank"] == 4 and meta["lora_merged"] == []
    # a fresh model through the chain: every tensor the run trained on equals its full training state
    model = tiny()
    load_stage_checkpoint(model, s2)
    state = model.state_dict()
    for name, value in trained_weights(s2).items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)


def test_the_checkpoint_evaluator_loads_a_lora_runs_resume_checkpoint_as_its_stage_checkpoint(
    lora_chain: Path,
) -> None:
    """eval.every_n_checkpoints reads resume checkpoints (vlmlab/eval/checkpoints.py): for a LoRA stage 2 the
    model it builds (the parent's chain, this stage's adapters) holds the weights the exported delta gives."""
    from vlmlab.eval.checkpoints import load_checkpoint_model
    from vlmlab.runs.load import load_run

    config, exported = load_run(lora_chain / "s2")
    held = load_checkpoint_model(config, lora_chain / "s2" / "checkpoints" / "last.ckpt").state_dict()
    assert held.keys() == exported.state_dict().keys()
    assert any(lora.is_adapter_parameter(name) for name in held)
    for name, value in exported.state_dict().items():
        assert torch.equal(held[name], value), name


@pytest.mark.slow(seconds=40)
@pytest.mark.parametrize("handoff", ["carry", "merge"])
def test_stage_3_carries_or_merges_the_adapters(lora_chain: Path, handoff: str) -> None:
    s2, s3 = lora_chain / "s2", lora_chain / f"s3-{handoff}"
    config = experiment(
        lora_chain,
        s3.name,
        3,
        "joint_decoder",
        freeze="lora-lm",
        init_from=str(s2),
        keep_resume_state=True,
        lora={"rank": 4, "alpha": 8, "handoff": handoff},
    )
    # the hand-off itself: carried adapters hold stage 2's values, merged ones are gone into the base
    model, _ = build_model(config)
    apply_freezing(model, load_recipe("lora-lm"), 3, config.train.lora)
    s2_state = trained_weights(s2)
    name = "lm.model.layers.0.self_attn.q_proj.lora_B.default.weight"
    if handoff == "carry":
        torch.testing.assert_close(model.state_dict()[name], s2_state[name], rtol=0, atol=0)
    else:
        assert not torch.equal(model.state_dict()[name], s2_state[name])  # fresh adapters: B = 0
        assert model.lora_merged == ["language_model"]
    train(config)
    meta = json.loads((s3 / "final" / "meta.json").read_text())
    assert meta["lora_merged"] == ([] if handoff == "carry" else ["language_model"])
    fresh = tiny()
    load_stage_checkpoint(fresh, s3)
    state = fresh.state_dict()
    assert state.keys() == trained_weights(s3).keys()
    for key, value in trained_weights(s3).items():
        # merged base weights are recomputed from stage 2's adapters: the same float ops, the same values
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow(seconds=20)
def test_export_merges_the_adapters_first(lora_chain: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText

    from vlmlab.eval.export import export_run

    out = export_run(lora_chain / "s2", tmp_path / "hf")
    record = json.loads((out / "vlmlab_export.json").read_text())
    assert record["lora_merged"] == ["language_model"]
    stored = {name for path in out.glob("*.safetensors") for name in load_file(str(path))}
    assert stored and not any("lora_" in name or "base_layer" in name for name in stored)
    # the exported (merged) model computes what the trained model with its adapters computes
    model = tiny()
    load_stage_checkpoint(model, lora_chain / "s2")
    assert lora.lora_adapters(model)
    hf = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    probe = batch(model.eval(), 3)
    with torch.no_grad():
        reference = model(**probe).logits
        got = hf(
            input_ids=probe["input_ids"],
            pixel_values=probe["pixel_values"],
            attention_mask=torch.ones_like(probe["input_ids"]),
        ).logits
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.lora.rank=0", "train.lora.rank=0"),
        ("train.lora.alpha=-1", "train.lora.alpha=-1"),
        ("train.lora.dropout=1.0", "train.lora.dropout=1.0"),
        ("train.lora.handoff=fold", "'fold'. Valid choices: carry, merge"),
        (
            "train.lora.target_modules={vision: [qkv]}",
            "'vision'. Valid choices: image_tokenizer, language_model",
        ),
        ("train.lora.target_modules={language_model: []}", "must list module names"),
        ("train.lora.rnk=4", "Did you mean 'train.lora.rank'?"),
    ],
)
def test_bad_lora_settings_fail_with_one_line_at_load(override: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(ExperimentConfig, [], [override])
    assert words in str(error.value) and "\n" not in str(error.value)


def test_a_target_module_matching_nothing_names_the_ones_that_exist() -> None:
    settings = LoraSettings(target_modules={"language_model": ["q_proj", "qkv"]})
    with pytest.raises(ConfigError) as error:
        apply_freezing(tiny(), load_recipe("lora-lm"), 2, settings)
    message = str(error.value)
    assert "\n" not in message and "qkv matches no linear layer of the language_model" in message
    assert all(name in message for name in PROJECTIONS)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("language_model: {stage1: lora}\n", "must stay frozen in stage 1"),
        ("language_model: {stage2: LoRA}\n", "Valid choices: frozen, lora, trainable"),
        ("image_tokenizer: {stage1: lora, stage2: frozen}\n", "freezes it in stage 2"),
    ],
)
def test_bad_lora_recipes_fail_with_one_line(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        tmp_recipe(text, name=f"bad-{abs(hash(text))}")
    assert words in str(error.value) and "\n" not in str(error.value)


def test_carrying_adapters_of_another_rank_is_refused() -> None:
    model = tiny()
    apply_freezing(model, load_recipe("lora-lm"), 2, LoraSettings(rank=4))
    with pytest.raises(ConfigError, match="train.lora.handoff=merge"):
        apply_freezing(model, load_recipe("lora-lm"), 3, LoraSettings(rank=8))


# ------------------------------------------------------------------------------------ the sweep and run ids


def test_idefics2_lora_dry_run_counts_what_its_header_states() -> None:
    from vlmlab import presets

    header = presets.resolve("sweeps", "idefics2_lora").read_text()
    assert "# 8 runs: 2 stage-1 + 6 stage-2" in header and "section 3.2" in header
    result = subprocess.run(
        [sys.executable, "-m", "vlmlab.cli", "sweep", "idefics2_lora", "--dry-run", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(result.stdout)
    assert data["counts"]["total"] == 8 and data["counts"]["by_stage"] == {"1": 2, "2": 6}
    stage2 = [run for run in data["runs"] if run["stage"] == 2]
    points = sorted((run["labels"]["model.fusion"], run["labels"]["train.freeze"]) for run in stage2)
    assert points == sorted(
        (fusion, recipe)
        for fusion in ("joint_decoder", "cross_attention")
        for recipe in ("all-frozen", "lora-lm", "unfreeze-lm")
    )


def test_lora_settings_count_in_run_ids_only_where_a_group_trains_through_lora(tmp_path: Path) -> None:
    dag = expand(load_sweep("idefics2_lora", output_dir=tmp_path))
    for run in dag:
        changed = json.loads(json.dumps(run.config))
        changed["train"]["lora"]["rank"] = 16
        same = run_id(run.stage, changed, run.parents, {}) == run.id
        uses_lora = run.stage == 2 and run.config["train"]["freeze"] == "lora-lm"
        assert same != uses_lora, run.id


def test_the_layout_labels_how_the_language_model_trained() -> None:
    from vlmlab.reports.layouts import lm_training

    def config(freeze: str, stage: int = 2, **lora_settings) -> dict:
        return {"train": {"freeze": freeze, "stage": stage, "lora": {"rank": 8, **lora_settings}}}

    assert lm_training(config("all-frozen")) == "frozen"
    assert lm_training(config("unfreeze-lm")) == "trained fully"
    assert lm_training(config("lora-lm")) == "LoRA (r=8)"
    assert lm_training(config("lora-lm", rank=16, dora=True)) == "LoRA (r=16, DoRA)"
    assert lm_training(config("lora-lm", stage=1)) == "frozen"  # stage 1 freezes the language model


def test_the_results_layout_has_a_row_per_fusion_and_language_model_training() -> None:
    from report_records import BASE_SCORES, _record

    from vlmlab.reports.layouts import lm_training_table

    records = []
    for fusion in ("cross_attention", "joint_decoder"):
        for shift, freeze in enumerate(("unfreeze-lm", "lora-lm", "all-frozen")):
            config = {
                "model": {
                    "tokenizer": {"name": "siglip2-b16-224"},
                    "fusion": fusion,
                    "backbone": "qwen3-0.6b",
                },
                "train": {"freeze": freeze, "stage": 2, "lora": {"rank": 8}},
            }
            metrics = {name: round(value + shift / 100, 4) for name, value in BASE_SCORES.items()}
            records.append(_record(f"{fusion}-{freeze}", config, metrics))
    table = lm_training_table(records)
    rows = [line for line in table.render("md").splitlines() if line.startswith("| ") and "%" not in line]
    labels, fusion = [], ""
    for cells in (row.split("|") for row in rows[1:]):
        fusion = cells[1].strip() or fusion  # a merged cell repeats the row above
        labels.append((fusion, cells[2].strip()))
    # Idefics2's order: Joint-Decoder (fully autoregressive) first as in Figure 1, then frozen, LoRA, full
    assert labels == [
        (fusion, training)
        for fusion in ("Joint-Decoder", "Cross-Attention")
        for training in ("frozen", "LoRA (r=8)", "trained fully")
    ]
