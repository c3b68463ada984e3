"""Sweep files: expansion into a DAG of stage runs, the paper's rules, run identity, the local backend and the
sbatch scripts (rendered and executed with a stand-in `srun`; tests/test_slurm.py submits them for real)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from paper_facts import TABLE_2

from vlmlab.cli import main as vlmlab_main
from vlmlab.config import ExperimentConfig, load_config, to_dict
from vlmlab.errors import ConfigError
from vlmlab.presets import preset_root
from vlmlab.sweep.expand import expand, write_run_files
from vlmlab.sweep.slurm import render_script
from vlmlab.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parent.parent
PRESETS = preset_root()
FAKE_TRAIN = REPO / "tests" / "fixtures" / "fake_train.py"
FAKE_COMMAND = f"{{python}} {shlex.quote(str(FAKE_TRAIN))} {{config}} {{overrides}} --step-seconds 0.02"

DISCRETE = {"titok-l32", "var-d16-vae"}  # section 2.2: TiTok and VAR are the discrete tokenizers

SMALL_SWEEP = f"""
name: small
base: {PRESETS}/model/tiny.yaml
axes:
  tokenizer: [clip-tiny, titok-tiny]
  fusion: [joint_decoder, mot]
stages:
  1: {{config: {{train: {{max_steps: 3}}}}}}
  2: {{config: {{train: {{max_steps: 3}}}}}}
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def cli(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = vlmlab_main(["sweep", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def dry_run_json(sweep: str) -> dict:
    """Through the real command line, as a user would run it."""
    result = subprocess.run(
        [sys.executable, "-m", "vlmlab.cli", "sweep", sweep, "--dry-run", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


# --------------------------------------------------------------------------------------------------------------
# The paper's grids


def test_design_space_dry_run_counts() -> None:
    data = dry_run_json("design_space")
    # Grid: 6 tokenizers x 3 fusions x 6 recipes = 108 points. The discrete tokenizers (TiTok, VAR) are always
    # frozen, so the 4 recipes that unfreeze the tokenizer are left out for them: 2 x 3 x 4 = 24 points.
    assert data["grid"]["points"] == 108
    assert data["grid"]["skipped_by_rules"] == 24
    # Stage 2: one run per remaining point: continuous 4 tokenizers x 6 recipes x 3 fusions = 72, discrete
    # 2 tokenizers x 2 recipes (all-frozen, unfreeze-lm) x 3 fusions = 12; 84 in all, 28 per fusion.
    # Stage 1: Joint-Decoder and Cross-Attention only (MoT starts from the Joint-Decoder run), one run per
    # image-tokenizer stage-1 state: continuous 4 x 2 states (frozen, unfrozen) x 2 fusions = 16, discrete
    # 2 x 1 state (frozen) x 2 fusions = 4; 20 in all, 10 per fusion. Total: 20 + 84 = 104.
    assert data["counts"] == {
        "total": 104,
        "by_stage": {"1": 20, "2": 84},
        "by_stage_and_fusion": {
            "1": {"joint_decoder": 10, "cross_attention": 10, "mot": 0},
            "2": {"joint_decoder": 28, "cross_attention": 28, "mot": 28},
        },
    }
    runs = {run["id"]: run for run in data["runs"]}
    assert len(runs) == 104
    for run in runs.values():
        labels = run["labels"]
        if run["stage"] == 1:
            assert run["depends_on"] == []
            continue
        (parent_id,) = run["depends_on"]
        parent = runs[parent_id]
        assert parent["stage"] == 1
        assert parent["labels"]["model.tokenizer"] == labels["model.tokenizer"]
        assert TABLE_2[parent["labels"]["train.freeze"]][0] == TABLE_2[labels["train.freeze"]][0]
        expected_fusion = "joint_decoder" if run["fusion"] == "mot" else run["fusion"]
        assert parent["fusion"] == expected_fusion
        assert labels["model.tokenizer"] not in DISCRETE or not any(TABLE_2[labels["train.freeze"]][:2])
    # Children of each stage-1 run: the recipes sharing its stage-1 state that its tokenizer may use
    # (continuous: 4 with S1 frozen, 2 with S1 unfrozen; discrete: 2, both S1 frozen), times the fusions that
    # start from it (Joint-Decoder: itself and MoT = 2; Cross-Attention: 1).
    children = Counter(parent for run in runs.values() for parent in run["depends_on"])
    for run in runs.values():
        if run["stage"] == 1:
            s1 = TABLE_2[run["labels"]["train.freeze"]][0]
            recipes = (2 if s1 else 4) if run["labels"]["model.tokenizer"] not in DISCRETE else 2
            fusions = 2 if run["fusion"] == "joint_decoder" else 1
            assert children[run["id"]] == recipes * fusions, run["id"]


def test_idefics2_connector_dry_run_counts_what_its_header_states() -> None:
    from vlmlab import presets

    header = presets.resolve("sweeps", "idefics2_connector").read_text()
    assert "# 6 runs: 3 stage-1 + 3 stage-2" in header
    data = dry_run_json("idefics2_connector")
    # 3 connectors x 1 tokenizer x 1 fusion x 1 recipe: a stage-1 run (the connector alone trains) and a
    # stage-2 run per connector
    assert data["counts"]["total"] == 6 and data["counts"]["by_stage"] == {"1": 3, "2": 3}
    runs = data["runs"]
    assert sorted(run["labels"]["model.adapter"] for run in runs) == sorted(
        ["mlp", "perceiver", "pixel_shuffle"] * 2
    )
    for run in runs:
        if run["stage"] == 2:  # each stage-2 run starts from its own connector's stage-1 run
            (parent,) = [p for p in runs if p["id"] == run["depends_on"][0]]
            assert parent["labels"]["model.adapter"] == run["labels"]["model.adapter"]


def test_mm1_connector_dry_run_counts_what_its_header_states() -> None:
    from vlmlab import presets

    header = presets.resolve("sweeps", "mm1_connector").read_text()
    assert "# 24 runs: 12 stage-1 + 12 stage-2" in header
    data = dry_run_json("mm1_connector")
    assert data["counts"]["total"] == 24 and data["counts"]["by_stage"] == {"1": 12, "2": 12}

    def point(run: dict) -> tuple:
        labels = run["labels"]
        return labels["model.adapter"], labels["model.adapter_tokens"], labels["model.image_size"]

    # MM1's grid, each point once per stage: 3 connectors x 64 / 144 tokens x 224 / 336 px
    grid = {
        (a, t, s) for a in ("avgpool", "perceiver", "c_abstractor") for t in (64, 144) for s in (224, 336)
    }
    for stage in (1, 2):
        points = [point(run) for run in data["runs"] if run["stage"] == stage]
        assert sorted(points) == sorted(grid)
    for run in data["runs"]:
        if run["stage"] == 2:  # each stage-2 run starts from the stage-1 run of its own point
            (parent,) = [p for p in data["runs"] if p["id"] == run["depends_on"][0]]
            assert point(parent) == point(run)


def test_prismatic_fused_dry_run_counts_what_its_header_states() -> None:
    from vlmlab import presets

    header = presets.resolve("sweeps", "prismatic_fused").read_text()
    assert "# 9 runs: 3 stage-1 + 6 stage-2" in header
    data = dry_run_json("prismatic_fused")
    assert data["counts"]["total"] == 9 and data["counts"]["by_stage"] == {"1": 3, "2": 6}
    pair = ["dinov3-vitl16", "siglip2-so400m-p16-256"]
    encoders = sorted(map(json.dumps, [*pair, pair]))
    stage1 = [run["labels"]["model.tokenizer"] for run in data["runs"] if run["stage"] == 1]
    assert sorted(map(json.dumps, stage1)) == encoders  # each tower alone and both fused: one stage-1 run
    for recipe in ("unfreeze-lm", "no-align"):  # and one stage-2 run per encoder point and recipe
        stage2 = [r for r in data["runs"] if r["stage"] == 2 and r["labels"]["train.freeze"] == recipe]
        assert sorted(json.dumps(run["labels"]["model.tokenizer"]) for run in stage2) == encoders
        for run in stage2:
            if recipe == "no-align":  # single-stage: no parent
                assert run["depends_on"] == []
                continue
            (parent,) = [p for p in data["runs"] if p["id"] == run["depends_on"][0]]
            assert parent["labels"]["model.tokenizer"] == run["labels"]["model.tokenizer"]
    # the pair's ids spell both towers; the single towers' configs carry no encoder-set keys' effect
    assert sum("dinov3-vitl16-siglip2-so400m-p16-256" in run["id"] for run in data["runs"]) == 3


def test_transfer_dry_run_counts_and_shared_prefix() -> None:
    data = dry_run_json("transfer")
    # Tables 6-7: 6 tokenizers x 3 fusions = 18 stage-2 models (recipe unfreeze-lm), each fine-tuned on
    # 3 tasks x {VQA, TQA} = 6 stage-3 runs: 108. Stage 1: JD and CA x 6 tokenizers x 1 state (frozen) = 12.
    assert data["counts"] == {
        "total": 138,
        "by_stage": {"1": 12, "2": 18, "3": 108},
        "by_stage_and_fusion": {
            "1": {"joint_decoder": 6, "cross_attention": 6, "mot": 0},
            "2": {"joint_decoder": 6, "cross_attention": 6, "mot": 6},
            "3": {"joint_decoder": 36, "cross_attention": 36, "mot": 36},
        },
    }
    runs = {run["id"]: run for run in data["runs"]}
    for stage2 in (r for r in runs.values() if r["stage"] == 2):
        kids = [r for r in runs.values() if stage2["id"] in r["depends_on"]]
        combos = {(k["labels"]["vars.task"], k["labels"]["vars.modality"]) for k in kids}
        assert combos == {(t, m) for t in ("spatialmap", "grid", "ring") for m in ("vqa", "tqa")}
    # Stages 1-2 are the design space's runs (same ids, same folder): trained once for both sweeps.
    design = {run["id"] for run in dry_run_json("design_space")["runs"]}
    assert {r["id"] for r in runs.values() if r["stage"] < 3} <= design
    assert data["output_dir"] == str(REPO / "outputs" / "design_space")


def test_tiny_sweep_counts() -> None:
    dag = expand(load_sweep(PRESETS / "sweeps" / "tiny.yaml"))
    # 2 tokenizers x 3 fusions x 2 recipes x 2 modalities = 24 points; titok-tiny x unfreeze-tok-s1s2 is left
    # out (3 fusions x 2 modalities = 6). Stage 1: clip 2 fusions x 2 states + titok 2 fusions = 6; stage 2:
    # clip 3 x 2 + titok 3 = 9; stage 3: 9 x 2 modalities = 18.
    assert dag.counts()["by_stage"] == {"1": 6, "2": 9, "3": 18}
    assert sum(dag.skipped.values()) == 6


def test_appendix_d_hyperparameters_reach_the_run_configs() -> None:
    dag = expand(load_sweep(PRESETS / "sweeps" / "design_space.yaml"))
    stage1 = next(run for run in dag if run.stage == 1)
    stage2 = next(run for run in dag if run.stage == 2 and run.fusion == "mot")
    assert stage1.config["optim"]["lr"]["adapter"] == 2e-4
    assert stage1.config["optim"]["lr"]["image_tokenizer"] == 6e-6
    assert stage1.config["optim"]["lr"]["cross_attention"] == 2e-4
    assert (stage1.config["optim"]["warmup_steps"], stage1.config["train"]["max_steps"]) == (5000, 100000)
    assert stage1.config["train"]["global_batch_size"] == 1536
    lr2 = stage2.config["optim"]["lr"]
    assert (lr2["adapter"], lr2["image_tokenizer"], lr2["cross_attention"]) == (1e-5, 1e-5, 1e-5)
    assert (lr2["language_model"], lr2["mot_image"]) == (5e-5, 5e-5)
    assert (stage2.config["optim"]["warmup_steps"], stage2.config["train"]["max_steps"]) == (750, 10860)
    transfer = expand(load_sweep(PRESETS / "sweeps" / "transfer.yaml"))
    stage3 = next(run for run in transfer if run.stage == 3)
    assert set(stage3.config["optim"]["lr"].values()) == {1e-5}
    assert (stage3.config["train"]["global_batch_size"], stage3.config["train"]["max_steps"]) == (32, 140)
    task = stage3.labels["vars.task"]
    assert stage3.config["data"]["train"][0]["task"] == task
    assert {v["task"] for v in stage3.config["data"]["val"]} == {task}


# --------------------------------------------------------------------------------------------------------------
# Run identity and the written run folders


def test_run_ids_hash_only_what_the_stage_can_see(tmp_path: Path) -> None:
    def ids(
        stage1: str = "{}",
        stage2: str = "{}",
        axes: str = "{tokenizer: [clip-tiny], fusion: [joint_decoder, mot]}",
    ):
        path = write(
            tmp_path / f"s{len(list(tmp_path.iterdir()))}.yaml",
            f"""
            base: {PRESETS}/model/tiny.yaml
            axes: {axes}
            stages:
              1: {{config: {stage1}}}
              2: {{config: {stage2}}}
            """,
        )
        dag = expand(load_sweep(path, output_dir=tmp_path / "out"))
        return {run.stage: sorted(r.id for r in dag if r.stage == run.stage) for run in dag}

    base = ids()
    assert len(base[1]) == 1 and len(base[2]) == 2  # MoT shares the Joint-Decoder stage-1 run
    assert ids() == base  # deterministic
    assert (
        ids(axes="{fusion: [joint_decoder, mot], tokenizer: [clip-tiny]}") == base
    )  # axis order is irrelevant
    # A stage-1 setting changes the stage-1 run and, through the parent id, every stage-2 run.
    changed = ids(stage1="{optim: {warmup_steps: 7}}")
    assert changed[1] != base[1] and not set(changed[2]) & set(base[2])
    # A stage-2 setting leaves stage 1 alone.
    changed = ids(stage2="{optim: {warmup_steps: 7}}")
    assert changed[1] == base[1] and not set(changed[2]) & set(base[2])
    # Execution settings and learning rates of groups that do not train in that stage change nothing.
    assert ids(stage1="{train: {devices: 8, num_nodes: 4}, data: {num_workers: 6}}") == base
    assert ids(stage1="{optim: {lr: {language_model: 0.5, cross_attention: 0.5}}}") == base


def test_written_configs_load_and_point_at_parents(tmp_path: Path) -> None:
    dag = expand(load_sweep(PRESETS / "sweeps" / "tiny.yaml", output_dir=tmp_path / "out"))
    assert write_run_files(dag) == 2 * len(dag)
    assert write_run_files(dag) == 0  # unchanged files are left alone
    for run in dag:
        assert run.run_dir == tmp_path / "out" / f"stage{run.stage}" / run.id
        loaded = to_dict(load_config(ExperimentConfig, [run.config_path]))
        assert loaded == run.config
        assert loaded["train"]["output_dir"] == str(run.run_dir)
        assert loaded["train"]["stage"] == run.stage
        if run.stage == 1:
            assert loaded["train"]["init_from"] is None
            assert loaded["model"]["fusion"] != "mot"
            assert loaded["train"]["freeze"] in ("all-frozen", "unfreeze-tok-s1s2")
        else:
            (parent,) = (dag.runs[p] for p in run.parents)
            assert loaded["train"]["init_from"] == str(parent.run_dir)
            assert parent.stage == run.stage - 1
        meta = json.loads((run.run_dir / "sweep_run.json").read_text())
        assert meta["id"] == run.id and meta["parents"] == run.parents


# --------------------------------------------------------------------------------------------------------------
# Bad input: every error names the bad value and the choices


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"axes": "{tokenzier: [clip-tiny]}"}, ["tokenzier", "Did you mean 'tokenizer'"]),
        ({"axes": "{model.tokenzier: [clip-tiny]}"}, ["model.tokenzier", "model.tokenizer"]),
        ({"axes": "{tokenizer: [clip-tiyn]}"}, ["clip-tiyn", "clip-tiny", "titok-l32"]),
        ({"axes": "{fusion: [joint_decoder, moe]}"}, ["moe", "mot", "cross_attention"]),
        ({"axes": "{freeze: [unfreeze-everything]}"}, ["unfreeze-everything", "unfreeze-all", "all-frozen"]),
        ({"axes": "{backbone: [qwen3-7b]}"}, ["qwen3-7b", "qwen3-8b"]),
        # A rule-violating combination asked for explicitly (no other value of the axis survives).
        (
            {"axes": "{tokenizer: [titok-tiny], freeze: [unfreeze-all]}"},
            ["titok-tiny", "unfreeze-all", "all-frozen, unfreeze-lm"],
        ),
        (
            {
                "axes": "{}",
                "extra": "  2: {config: {model: {tokenizer: var-tiny}, train: {freeze: unfreeze-tok-s2}}}",
            },
            ["var-tiny", "unfreeze-tok-s2", "all-frozen, unfreeze-lm"],
        ),
        (
            {"axes": "{tokenizer: [clip-tiny]}", "exclude": "[{tokenizer: clip-tiyn}]"},
            ["clip-tiyn", "clip-tiny"],
        ),
        ({"axes": "{tokenizer: [clip-tiny]}", "exclude": "[{fusion: mot}]"}, ["fusion", "only swept axes"]),
        ({"top": "stagse: {}"}, ["stagse", "stages"]),
        ({"extra": "  4: {}"}, ["Unknown stage 4", "1, 2, 3"]),
        ({"command": "{python} train {cfg}"}, ["cfg", "config", "run_dir"]),
        (  # text-only data trains only the language model: with it frozen, nothing would train
            {"extra": "  2: {config: {data: {train: [{kind: synthetic, task: grid, mode: tqa}]}}}"},
            ["text-only", "all-frozen", "language model frozen"],
        ),
        (
            {"extra": "  2: {config: {data: {train: [{task: '${vars.task}'}]}}}"},
            ["vars.task", "sweep variables"],
        ),
        ({"top": "seeds: -1"}, ["seeds: -1", "a count of at least 1", "distinct non-negative integers"]),
        ({"top": "seeds: [0, 1, 1]"}, ["[0, 1, 1]", "lists a seed twice"]),
        ({"top": "seeds: [0, x]"}, ["seed 'x'", "distinct non-negative integers"]),
        ({"top": "seeds: true"}, ["seeds: True", "a count of at least 1"]),
        (
            {"top": "seeds: 2", "axes": "{train.seed: [0, 1]}"},
            ["`seeds` and an axis on train.seed", "keep `seeds` for replicates"],
        ),
    ],
)
def test_bad_sweep_files_name_value_and_choices(tmp_path: Path, edit: dict, expected: list[str]) -> None:
    text = f"""
        base: {PRESETS}/model/tiny.yaml
        {edit.get("top", "")}
        command: "{edit.get("command", "{python} -m vlmlab.cli train {config}")}"
        axes: {edit.get("axes", "{}")}
        exclude: {edit.get("exclude", "[]")}
        stages:
          1: {{}}
        """
    text = textwrap.dedent(text)
    if "extra" in edit:
        text += edit["extra"] + "\n"
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        expand(load_sweep(path))
    for needle in expected:
        assert needle in str(error.value), (needle, str(error.value))


def test_seeds_train_every_design_point_once_per_seed_and_keep_seed_0_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "seeds.yaml", "extends: quickstart\nseeds: [0, 1, 2]\n")
    replicated, single = dry_run_json(str(path)), dry_run_json("quickstart")
    assert replicated["grid"]["seeds"] == [0, 1, 2] and "seeds" not in single["grid"]
    by_stage = {stage: 3 * count for stage, count in single["counts"]["by_stage"].items()}
    assert replicated["counts"]["by_stage"] == by_stage

    # three runs per design point and stage, whose configs differ only in train.seed (and their folders)
    dag = expand(load_sweep(path))
    points: dict[tuple, list] = {}
    for run in dag:
        config = json.loads(json.dumps(run.config))
        seed = config["train"].pop("seed")
        for key in ("output_dir", "init_from"):
            config["train"].pop(key)
        points.setdefault((run.stage, json.dumps(config, sort_keys=True)), []).append((seed, run))
    assert len(points) == sum(single["counts"]["by_stage"].values())
    for replicates in points.values():
        assert sorted(seed for seed, _ in replicates) == [0, 1, 2]
        for seed, run in replicates:  # a replicate is a whole chain: its parent has its seed
            assert run.labels["train.seed"] == seed
            assert all(dag.runs[p].config["train"]["seed"] == seed for p in run.parents)
            assert (f"_seed{seed}_" in run.id) == (seed != 0)
    # seed 0 keeps the ids of the sweep without seeds: finished runs are reused when seeds are added
    single_ids = {run["id"] for run in single["runs"]}
    assert {run["id"] for run in replicated["runs"] if run["labels"]["train.seed"] == 0} == single_ids
    assert expand(
        load_sweep(write(tmp_path / "count.yaml", "extends: quickstart\nseeds: 3\n"))
    ).runs.keys() == (dag.runs.keys())


def test_the_dry_run_lists_each_design_points_seeds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(tmp_path / "seeds.yaml", "extends: quickstart\nseeds: [0, 1, 2]\n")
    code, out, _ = cli(str(path), "--dry-run", capsys=capsys)
    assert code == 0
    assert "grid: 18 points (6 design points x 3 seeds)" in out  # 3 fusions x 2 recipes, each 3 times
    assert "each design point trained with train.seed = 0, 1, 2" in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  stage") and "/" in line]
    # every run of seed 0 (its id as without seeds) is listed with its seed-1 and seed-2 replicates
    plain = [r for r in listed if "_seed" not in r]
    assert len(listed) == 3 * len(plain) == 33
    for run in plain:
        stem = run.rsplit("_", 1)[0]
        assert sum(r.startswith((f"{stem}_seed1_", f"{stem}_seed2_")) for r in listed) == 2, run


def test_cli_reports_bad_input_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(
        tmp_path / "bad.yaml",
        f"base: {PRESETS}/model/tiny.yaml\naxes: {{fusoin: [mot]}}\nstages: {{1: {{}}}}\n",
    )
    code, _, err = cli(str(path), "--dry-run", capsys=capsys)
    assert code == 2
    assert "fusoin" in err and "Did you mean 'fusion'" in err


def test_extends_and_removing_an_axis(tmp_path: Path) -> None:
    parent = write(tmp_path / "a" / "parent.yaml", SMALL_SWEEP.replace("name: small", "output_dir: out"))
    child = write(
        tmp_path / "b" / "child.yaml",
        f"""
        extends: {os.path.relpath(parent, tmp_path / "b")}
        axes: {{fusion: null}}
        """,
    )
    spec = load_sweep(child)
    assert spec.name == "child"
    assert spec.output_dir == tmp_path / "a" / "out"  # relative paths stay relative to the file they are in
    dag = expand(spec)
    assert dag.counts()["by_stage"] == {"1": 2, "2": 2}  # fusion axis removed: joint_decoder only


def test_stage_config_files_and_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path / "files.yaml",
        f"""
        base: [{PRESETS}/model/tiny.yaml, {{train: {{seed: 3}}}}]
        stages:
          1:
            config: [{PRESETS}/stages/stage1.yaml, {{train: {{max_steps: 9}}}}]
            overrides: ["optim.warmup_steps=7", "optim.lr.adapter=0.001"]
        """,
    )
    (run,) = expand(load_sweep(path, output_dir=tmp_path / "out"))
    stage1 = load_config(ExperimentConfig, [PRESETS / "stages" / "stage1.yaml"])
    assert run.config["train"]["seed"] == 3  # base mapping
    assert run.config["train"]["global_batch_size"] == stage1.train.global_batch_size  # stage file
    assert run.config["train"]["max_steps"] == 9  # later source wins
    assert run.config["optim"]["warmup_steps"] == 7 and run.config["optim"]["lr"]["adapter"] == 1e-3
    assert (
        run.config["optim"]["lr"]["image_tokenizer"] == stage1.optim.lr["image_tokenizer"]
    )  # merged, not replaced


# --------------------------------------------------------------------------------------------------------------
# Local backend


def _results(dag) -> dict[str, dict]:
    return {run.id: json.loads(run.result_path.read_text()) for run in dag if run.is_done()}


def test_local_backend_order_failure_resume_and_idempotence(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep = write(tmp_path / "small.yaml", SMALL_SWEEP)
    out = tmp_path / "out"
    dag = expand(load_sweep(sweep, output_dir=out))
    by_label = {(r.stage, r.labels["model.tokenizer"], r.labels["model.fusion"]): r for r in dag}
    titok_s1 = by_label[(1, "titok-tiny", "joint_decoder")]
    titok_kids = [by_label[(2, "titok-tiny", f)] for f in ("joint_decoder", "mot")]
    common = [str(sweep), "--backend", "local", "--parallel", "2", "--output", str(out)]

    # 1. stage-1 titok run fails: its two stage-2 dependants are never started.
    code, text, _ = cli(
        *common, "--command", FAKE_COMMAND + " --fail-if model.tokenizer=titok-tiny", capsys=capsys
    )
    assert code == 1
    assert "3 done, 1 failed, 2 blocked" in text
    code, text, _ = cli(str(sweep), "--status", "--json", "--output", str(out), capsys=capsys)
    status = {r["id"]: r for r in json.loads(text)["runs"]}
    assert status[titok_s1.id]["state"] == "failed" and "exit code 3" in status[titok_s1.id]["detail"]
    for kid in titok_kids:
        assert status[kid.id]["state"] == "blocked"
        assert status[kid.id]["detail"] == f"parent {titok_s1.key} failed"
        assert not kid.log_path.exists()  # never started
    assert "failing on purpose" in titok_s1.log_path.read_text()
    results = _results(dag)
    assert len(results) == 3
    for run in dag:  # every child started after its parent finished
        if run.id in results and run.parents:
            assert results[run.id]["started"] >= results[run.parents[0]]["finished"]

    # 2. again, now the run is killed (SIGKILL) at step 2: status says so, its dependants stay blocked.
    crash = FAKE_COMMAND + " --crash-at-step 2 --crash-if train.stage=1"
    code, text, _ = cli(*common, "--command", crash, capsys=capsys)
    assert code == 1 and "3 runs to do, 3 done already" in text
    assert "killed by signal 9" in text
    assert (titok_s1.run_dir / "checkpoints" / "last.ckpt").read_text() == "2"

    # 3. again: it resumes from its checkpoint marker, then the dependants run.
    code, text, _ = cli(*common, "--command", crash, capsys=capsys)
    assert code == 0 and "6 done, 0 failed, 0 blocked" in text
    assert json.loads(titok_s1.result_path.read_text())["resumed_from"] == 2
    results = _results(dag)
    intervals = sorted((r["started"], r["finished"]) for r in results.values())
    assert (
        max(sum(s < end and e > start for s, e in intervals) for start, end in intervals) <= 2
    )  # --parallel 2

    # 4. and again: nothing left to do.
    code, text, _ = cli(*common, "--command", crash, capsys=capsys)
    assert code == 0 and "0 runs to do, 6 done already" in text
    assert _results(dag) == results


def test_local_cancel_stops_a_running_sweep(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = write(tmp_path / "small.yaml", SMALL_SWEEP.replace("max_steps: 3", "max_steps: 200"))
    out = tmp_path / "out"
    slow = FAKE_COMMAND.replace("0.02", "0.1")
    executor = subprocess.Popen(
        [sys.executable, "-m", "vlmlab.cli", "sweep", str(sweep), "--backend", "local", "--output", str(out)]
        + ["--parallel", "2", "--command", slow],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            code, text, _ = cli(str(sweep), "--status", "--json", "--output", str(out), capsys=capsys)
            if json.loads(text)["counts"]["running"] == 2:
                break
            time.sleep(0.2)
        code, text, _ = cli(str(sweep), "--cancel", "--output", str(out), capsys=capsys)
        assert code == 0 and "cancelled 2 job(s)" in text
        assert executor.wait(timeout=30) == 1
    finally:
        executor.kill()
    assert "sweep small: cancelled" in executor.stdout.read()
    code, text, _ = cli(str(sweep), "--status", "--json", "--output", str(out), capsys=capsys)
    data = json.loads(text)
    assert data["counts"] == {**data["counts"], "failed": 2, "blocked": 4, "running": 0}
    assert {r["detail"] for r in data["runs"] if r["state"] == "failed"} == {
        "cancelled (vlmlab sweep --cancel)"
    }


def test_status_of_a_fresh_sweep(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = write(tmp_path / "small.yaml", SMALL_SWEEP)
    code, text, _ = cli(str(sweep), "--status", "--json", "--output", str(tmp_path / "out"), capsys=capsys)
    assert code == 0
    data = json.loads(text)
    assert data["counts"]["not submitted"] == 6 and {r["state"] for r in data["runs"]} == {"not submitted"}


def test_slurm_backend_without_slurm_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmlab.sweep.slurm import submit_slurm

    spec = load_sweep(write(tmp_path / "small.yaml", SMALL_SWEEP), output_dir=tmp_path / "out")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="sbatch, scontrol, scancel"):
        submit_slurm(expand(spec), spec)


# --------------------------------------------------------------------------------------------------------------
# sbatch scripts: they parse, they point at configs that load, and they run (with a stand-in srun)


def _stand_in_srun(folder: Path, mode: str) -> Path:
    """`srun` that records its arguments (mode "record") or drops its options and runs the command ("exec")."""
    path = folder / "srun"
    body = (
        'printf "%s\\n" "$@" > "$SRUN_RECORD"'
        if mode == "record"
        else 'while [[ "$1" == -* ]]; do shift; done\nexec "$@"'
    )
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)
    return folder


def _arrays(dag) -> list[tuple[int, list, list[str]]]:
    """Runs grouped as the slurm backend groups them: per stage, per parent (fake parent job ids)."""
    groups: dict[tuple[int, tuple[str, ...]], list] = {}
    for run in dag:
        groups.setdefault((run.stage, tuple(run.parents)), []).append(run)
    return [
        (stage, runs, [f"{100 + i}_0" for i, _ in enumerate(parents)])
        for (stage, parents), runs in groups.items()
    ]


def test_design_space_sbatch_scripts_parse_and_point_at_loadable_configs(tmp_path: Path) -> None:
    spec = load_sweep(PRESETS / "sweeps" / "design_space.yaml", output_dir=tmp_path / "out")
    dag = expand(spec)
    write_run_files(dag)
    bin_dir = _stand_in_srun(tmp_path, "record")
    seen = set()
    for number, (stage, runs, waits) in enumerate(_arrays(dag)):
        script = tmp_path / f"array{number}.sbatch"
        script.write_text(render_script(dag, spec, stage, runs, waits))
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        text = script.read_text()
        nodes = {1: 4, 2: 2}[stage]
        for directive in (
            f"--array=0-{len(runs) - 1}",
            f"--nodes={nodes}",
            "--ntasks-per-node=8",
            "--gpus-per-node=8",
            "--partition=gpu",
            "--signal=USR1@90",
            "--requeue",
        ):
            assert f"#SBATCH {directive}\n" in text
        assert ("--dependency=afterok:" in text) == (stage > 1)
        for index, run in enumerate(runs):
            record = tmp_path / "srun.txt"
            env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": str(index)}
            env.update(SRUN_RECORD=str(record), SLURM_ARRAY_JOB_ID="1")
            subprocess.run(["bash", str(script)], env=env, check=True)
            argv = record.read_text().splitlines()
            assert argv[:2] == ["--kill-on-bad-exit=1", "bash"]
            command = shlex.split(argv[3])
            assert command[1:4] == ["-m", "vlmlab.cli", "train"]
            assert command[4:] == [str(run.config_path), f"train.num_nodes={nodes}", "train.devices=8"]
            # the file holds the run's config (expand checked each of its values against the schema); one
            # run per array goes through the whole load with the script's overrides (a structured OmegaConf
            # merge is a tenth of a second, 104 of them a fifth of this test)
            assert yaml.safe_load(run.config_path.read_text()) == run.config
            if index == 0:
                config = to_dict(load_config(ExperimentConfig, [command[4]], command[5:]))
                assert config["train"]["output_dir"] == str(run.run_dir)
                assert config["train"]["num_nodes"] == nodes
            seen.add(run.id)
    assert seen == set(dag.runs)


def test_sbatch_script_runs_a_stage_with_awkward_paths(tmp_path: Path) -> None:
    out = tmp_path / "it's a sweep" / "out dir"  # a quote and spaces: everything reaching a shell is quoted
    spec = load_sweep(write(tmp_path / "small.yaml", SMALL_SWEEP), output_dir=out, command=FAKE_COMMAND)
    dag = expand(spec)
    write_run_files(dag)
    bin_dir = _stand_in_srun(tmp_path, "exec")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_JOB_ID": "1"}
    for stage, runs, waits in _arrays(dag):
        script = out / f"stage{stage}-{runs[0].id}.sbatch"
        script.write_text(render_script(dag, spec, stage, runs, waits))
        for index, run in enumerate(runs):
            subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": str(index)}, check=True)
            assert run.is_done()
            assert "restart 0" in run.log_path.read_text()
            # a task whose run is done already (a requeue after the end) exits at once
            done = subprocess.run(
                ["bash", str(script)],
                env={**env, "SLURM_ARRAY_TASK_ID": str(index)},
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0 and "done already" in done.stdout


def test_quickstart_sweep_covers_three_fusions_two_recipes_and_cuts_frozen_points_short():
    from vlmlab.sweep.expand import expand
    from vlmlab.sweep.spec import load_sweep

    dag = expand(load_sweep("quickstart"))
    counts = dag.to_json()["counts"]
    # stage 1: {joint_decoder, cross_attention}, the tokenizer frozen in both recipes = 2 (MoT reuses Joint-
    # Decoder's); stage 2: 3 fusions x 2 recipes = 6; stage 3: only the 3 unfreeze-lm runs, because text-only
    # data trains nothing with the language model frozen: all-frozen points end at stage 2 (cut short, not removed)
    assert counts["by_stage"] == {"1": 2, "2": 6, "3": 3}
    assert counts["by_stage_and_fusion"]["2"] == {"joint_decoder": 2, "cross_attention": 2, "mot": 2}
    assert {run.config["train"]["freeze"] for run in dag if run.stage == 3} == {"unfreeze-lm"}
    assert sum(dag.skipped.values()) == 3 and all(r.startswith("stage 3 left out") for r in dag.skipped)


def test_lomo_sweeps_cover_tables_2_to_5_and_share_runs() -> None:
    from vlmlab.data.lomo.transform import LomoConfig

    full = {"rewrite_ratio": 0.5, "position": "middle", "distortion": True}  # Tables 2-5's "LoMo" row
    pd_off = {"rewrite_ratio": 0.5, "position": "middle", "distortion": False}
    full_text = {"rewrite_ratio": 0.5, "distortion": False, "max_whole_sentences": 1000000}
    ratios = [{**full, "rewrite_ratio": r} for r in (0.25, 0.75, 1.0)]
    positions = [{**full, "position": p} for p in ("prefix", "suffix", "multi")]
    matched = {**full, "image_text_ratio": 1.0}
    tables = {
        "lomo_components": [{}, full_text, pd_off, full],  # Table 2: SFT, Full-Text, w/o PD, LoMo = 4
        "lomo_ratio": [{}, ratios[0], full, *ratios[1:]],  # Table 3: 0/25/50/75/100% = 5
        "lomo_position": [{}, positions[0], full, *positions[1:]],  # Table 4: SFT + 4 positions = 5
        "lomo_matched": [{}, full, matched],  # Table 5: SFT 1:1, LoMo 3:1, LoMo 1:1 = 3
    }
    # lomo.yaml holds every row: 4 + 5 + 5 + 3 = 17 - 3 repeated SFT rows - 3 repeated full-LoMo rows = 11.
    tables["lomo"] = [{}, full_text, pd_off, full, *ratios, *positions, matched]
    ids: dict[str, dict[str, str]] = {}  # sweep -> json(data.lomo) -> stage-2 run id
    for name, rows in tables.items():
        dag = expand(load_sweep(PRESETS / "sweeps" / f"{name}.yaml"))
        stage2 = [run for run in dag if run.stage == 2]
        assert dag.counts()["by_stage"] == {"1": 1, "2": len(rows)}, name  # one shared stage-1 run
        seen = {json.dumps(run.config["data"]["lomo"], sort_keys=True): run for run in stage2}
        assert set(seen) == {json.dumps(row, sort_keys=True) for row in rows}, name
        for run in stage2:
            LomoConfig.from_mapping(run.config["data"]["lomo"])  # valid LoMo settings ({} = off)
            assert (
                run.config["model"]["backbone"] == "qwen3-8b"
                and run.config["train"]["freeze"] == "unfreeze-lm"
            )
            sources = {s["name"]: s.get("mode") for s in run.config["data"]["train"]}
            assert "text" in sources.values() and any(m not in ("text", "tqa") for m in sources.values())
        ids[name] = {key: run.id for key, run in seen.items()}
    # The table files extend lomo.yaml: the same row is the same run (trained once into outputs/lomo).
    for name, by_row in ids.items():
        assert all(ids["lomo"][key] == rid for key, rid in by_row.items()), name
