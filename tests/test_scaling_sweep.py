"""The scaling study (section 3, Figure 2; Appendix D.1): the shipped scaling sweep expands to the figure's grid with
each backbone's stage-1 settings, and `vlmlab results --layout scaling` draws Figure 2 from the records its
runs leave behind."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from paper_facts import (
    FIGURE_2_BACKBONES,
    FIGURE_2_SETUPS,
    FIGURE_2_TOKENIZERS,
    STAGE_1_BY_BACKBONE,
    TABLE_2,
    TABLE_12,
    TABLE_13,
)

from vlmlab.cli import main as vlmlab_main
from vlmlab.presets import preset_root
from vlmlab.scoring.intervals import wilson
from vlmlab.sweep.expand import expand
from vlmlab.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parent.parent
PRESETS = preset_root()
SCALING = PRESETS / "sweeps" / "scaling.yaml"
DESIGN_SPACE = PRESETS / "sweeps" / "design_space.yaml"

# How the sweep spells the paper's names: backbone presets (vlmlab/presets/backbone/), released weights on the
# hub, the webdataset folders under /data, tokenizer preset families.
PRESET = {"Qwen3-0.6B": "qwen3-0.6b", "Qwen3-1.7B": "qwen3-1.7b", "Qwen3-4B": "qwen3-4b"}
FOLDER = {"COYO-700M": "coyo", "DataComp-1B": "datacomp"}
FAMILY = {"SigLIP 2": "siglip2", "DINOv3": "dinov3"}
PAPER_NAME = {preset: paper for paper, preset in PRESET.items()}


@pytest.fixture(scope="module")
def dag():
    return expand(load_sweep(SCALING))


def family(tokenizer: str) -> str:
    return next(name for name, prefix in FAMILY.items() if tokenizer.startswith(prefix))


def recipe(name: str) -> tuple[bool, bool, bool]:
    """A recipe name as its Table 2 row, from the paper's table (not from vlmlab/presets/freeze/)."""
    return TABLE_2[name]


# -------------------------------------------------------------------------------------------- the grid


def test_dry_run_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert vlmlab_main(["sweep", str(SCALING), "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # 3 sizes x 2 tokenizers x 2 fusions x 2 recipes = 24 points; the file keeps Figure 2's two
    # (fusion, recipe) pairs of the four: 12 excluded, 12 stage-2 runs (6 per fusion).
    assert data["grid"] == {"points": 24, "excluded": 12, "skipped_by_rules": 0, "rule_reasons": {}}
    # Stage 1 trains Joint-Decoders only (MoT starts from one), and both recipes unfreeze the tokenizer in
    # stage 1: one stage-1 run per size and tokenizer, 3 x 2 = 6.
    assert data["counts"]["by_stage"] == {"1": 6, "2": 12}
    assert data["counts"]["by_stage_and_fusion"] == {
        "1": {"joint_decoder": 6, "cross_attention": 0, "mot": 0},
        "2": {"joint_decoder": 6, "cross_attention": 0, "mot": 6},
    }
    assert data["counts"]["total"] == 18
    # the dry run shows each run's stage-1 settings: in its labels, and in its id after the backbone
    labels = [run["labels"]["vars.size"] for run in data["runs"]]
    assert {(label["backbone"], label["batch"], label["steps"], label["warmup"]) for label in labels} == {
        (PRESET[name], facts["global_batch_size"], facts["steps"], facts["warmup"])
        for name, facts in STAGE_1_BY_BACKBONE.items()
    }
    for run in data["runs"]:
        size = run["labels"]["vars.size"]
        assert f"{size['backbone']}_-tag-{size['tag']}" in run["id"]


def test_stage1_runs_follow_appendix_d1(dag) -> None:
    spec = load_sweep(SCALING)
    processes = spec.stages[1].resources.nodes * spec.stages[1].resources.gpus_per_node
    stage1 = [run for run in dag if run.stage == 1]
    seen = set()
    for run in stage1:
        config = run.config
        backbone = PAPER_NAME[config["model"]["backbone"]]
        facts = STAGE_1_BY_BACKBONE[backbone]
        seen.add((backbone, family(config["model"]["tokenizer"])))
        train, optim, data = config["train"], config["optim"], config["data"]
        assert (train["global_batch_size"], train["max_steps"], optim["warmup_steps"]) == (
            facts["global_batch_size"],
            facts["steps"],
            facts["warmup"],
        ), run.id
        assert [source["path"] for source in data["train"]] == [f"/data/{FOLDER[facts['dataset']]}"]
        assert data["train"][0]["kind"] == "webdataset"  # img2dataset shards, as the design space's COYO
        # the released weights of this size, and its own text tokenizer
        assert config["model"]["backbone_weights"] == f"Qwen/{backbone}"
        assert data["text_tokenizer"] == f"Qwen/{backbone}"
        # Table 12, the same at every size
        assert optim["lr"]["adapter"] == TABLE_12["adapter_lr"]
        assert optim["lr"]["image_tokenizer"] == TABLE_12["image_tokenizer_lr"]
        assert (
            tuple(optim["betas"]) == TABLE_12["betas"] and optim["weight_decay"] == TABLE_12["weight_decay"]
        )
        assert optim["min_lr_ratio"] == TABLE_12["min_lr_ratio"]
        assert data["max_length"] == TABLE_12["max_caption_tokens"]
        # the tokenizer trains from stage 1 on (both setups are U in Table 2's "Image Stage 1")
        assert recipe(train["freeze"])[0] is True and config["model"]["fusion"] == "joint_decoder"
        # the global batch is reachable by gradient accumulation on the stage's processes
        assert train["global_batch_size"] % (data["micro_batch_size"] * processes) == 0
    assert len(stage1) == len(seen) == len(FIGURE_2_BACKBONES) * len(FIGURE_2_TOKENIZERS)


def test_stage2_runs_are_figure2(dag) -> None:
    runs = dag.runs
    points = set()
    parents: dict[tuple[str, str], set[str]] = {}
    for run in (r for r in dag if r.stage == 2):
        config = run.config
        backbone = PAPER_NAME[config["model"]["backbone"]]
        tokenizer = family(config["model"]["tokenizer"])
        image_s1, image_s2, language_s2 = recipe(config["train"]["freeze"])
        points.add((backbone, tokenizer, config["model"]["fusion"], language_s2))
        if config["model"]["fusion"] == "joint_decoder":  # "completely unfrozen"
            assert (image_s1, image_s2, language_s2) == (True, True, True)
        # Table 13 at every size
        train, optim = config["train"], config["optim"]
        assert (train["max_steps"], train["global_batch_size"], optim["warmup_steps"]) == (
            TABLE_13["steps"],
            TABLE_13["global_batch_size"],
            TABLE_13["warmup"],
        )
        assert optim["lr"]["adapter"] == TABLE_13["adapter_lr"]
        assert optim["lr"]["language_model"] == TABLE_13["language_lr"]
        # it starts from the stage-1 run of its own backbone and tokenizer
        (parent,) = run.parents
        assert runs[parent].stage == 1
        assert runs[parent].config["model"]["backbone"] == config["model"]["backbone"]
        assert runs[parent].config["model"]["tokenizer"] == config["model"]["tokenizer"]
        parents.setdefault((backbone, tokenizer), set()).add(parent)
    assert points == {
        (backbone, tokenizer, fusion, language)
        for backbone in FIGURE_2_BACKBONES
        for tokenizer in FIGURE_2_TOKENIZERS
        for fusion, language in FIGURE_2_SETUPS.values()
    }
    # MoT (F) starts from the Joint-Decoder's stage-1 run (section 2.3): one parent per size and tokenizer
    assert all(len(ids) == 1 for ids in parents.values()) and len(parents) == 6


def test_size_tags_spell_their_settings(dag) -> None:
    for run in dag:
        size = run.labels["vars.size"]
        assert size["tag"] == f"{size['data']}_{size['batch']}x{size['steps'] // 1000}k_w{size['warmup']}"


def test_qwen3_0_6b_stage1_runs_are_the_design_space_ones(dag) -> None:
    """Same resolved stage-1 configs as the design space (Table 12): same hash part of the run id."""
    design = {run.id.rsplit("_", 1)[1]: run for run in expand(load_sweep(DESIGN_SPACE)) if run.stage == 1}
    small = [r for r in dag if r.stage == 1 and r.config["model"]["backbone"] == "qwen3-0.6b"]
    assert len(small) == 2
    for run in small:
        twin = design[run.id.rsplit("_", 1)[1]]
        assert twin.config["model"]["tokenizer"] == run.config["model"]["tokenizer"]


# ------------------------------------------------------------------------------ Figure 2 from records

IN_DOMAIN = ("vqav2", "aokvqa", "chartqa", "textvqa", "docvqa")
OUT_OF_DOMAIN = ("mathvista", "mmtbench", "realworldqa")
# Offsets around a row's average that cancel, so each average is the chosen number exactly.
IND_OFFSETS = (0.02, -0.02, 0.01, -0.01, 0.0)
OOD_OFFSETS = (0.01, -0.01, 0.0)
N = 1000  # samples per benchmark
# Averages (in-domain, out-of-domain) per (tokenizer, setup) and size 0.6B / 1.7B / 4B (made up, with the
# paper's shape: SigLIP 2 above DINOv3, MoT (F) best out of domain, everything growing with size).
AVERAGES = {
    ("siglip2", "joint_decoder"): ((0.44, 0.33), (0.47, 0.35), (0.52, 0.36)),
    ("siglip2", "mot"): ((0.45, 0.35), (0.49, 0.37), (0.53, 0.39)),
    ("dinov3", "joint_decoder"): ((0.35, 0.30), (0.38, 0.31), (0.42, 0.33)),
    ("dinov3", "mot"): ((0.36, 0.32), (0.40, 0.33), (0.43, 0.35)),
}
SIZES = ("qwen3-0.6b", "qwen3-1.7b", "qwen3-4b")
NOT_EVALUATED = ("dinov3", "mot", "qwen3-4b")  # trained, never run through `vlmlab eval`


def benchmark_entry(score: float) -> dict:
    correct = round(score * N)
    return {"score": correct / N, "n": N, "ci": list(wilson(correct, N)), "correct": correct}


def write_run_records(root: Path) -> None:
    """What the sweep's runs leave: every run's result.json (vlmlab.train.run: its validation metrics as
    flat floats, none in stage 1), and for evaluated stage-2 runs `vlmlab eval --benchmark`'s eval.json
    (the training metrics plus a {"score", "n", "ci", "correct"} entry per benchmark), written later."""
    for run in expand(load_sweep(SCALING, output_dir=root)):
        run.run_dir.mkdir(parents=True)
        model = run.config["model"]
        training = {}
        if run.stage == 2:
            training = {"vqav2/accuracy": 0.5, "vqav2/accuracy_ci_low": 0.45, "vqav2/accuracy_ci_high": 0.55}
            training["mean_accuracy"] = 0.5
        record = {
            "run_id": run.run_dir.name,
            "config_hash": "0" * 16,
            "stage": run.stage,
            "config": run.config,
            "metrics": training,
            "chance": {},
            "created": "2026-03-01T00:00:00+00:00",
        }
        (run.run_dir / "result.json").write_text(json.dumps(record))
        key = (model["tokenizer"].split("-")[0], model["fusion"], model["backbone"])
        if run.stage == 1 or key == NOT_EVALUATED:
            continue
        ind, ood = AVERAGES[key[:2]][SIZES.index(model["backbone"])]
        metrics = dict(training)
        metrics |= {b: benchmark_entry(ind + d) for b, d in zip(IN_DOMAIN, IND_OFFSETS)}
        metrics |= {b: benchmark_entry(ood + d) for b, d in zip(OUT_OF_DOMAIN, OOD_OFFSETS)}
        evaluated = {**record, "metrics": metrics, "created": "2026-03-02T00:00:00+00:00"}
        (run.run_dir / "eval.json").write_text(json.dumps(evaluated))


def test_results_scaling_layout_renders_figure2(tmp_path: Path, monkeypatch, capsys) -> None:
    from vlmlab.reports import plots

    figures = []
    original = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure) or original(figure, path))
    write_run_records(tmp_path / "scaling")
    out = tmp_path / "report"
    assert vlmlab_main(["results", str(tmp_path / "scaling"), "--layout", "scaling", "--out", str(out)]) == 0
    capsys.readouterr()

    rows = list(csv.DictReader(io.StringIO((out / "scaling.csv").read_text())))
    # one row per tokenizer x setup x size, in the paper's order; stage-1 records (no scores) add none
    assert [(r["tokenizer"], r["fusion"], r["freeze"], r["backbone"]) for r in rows] == [
        (tokenizer, fusion, freeze, size)
        for tokenizer in ("siglip2-b16-224", "dinov3-vitb16")
        for fusion, freeze in (("Joint-Decoder", "unfreeze-all"), ("MoT", "unfreeze-tok-s1s2"))
        for size in SIZES
    ]
    shown = {(r["tokenizer"].split("-")[0], r["fusion"], r["backbone"]): r for r in rows}
    # SigLIP 2 Joint-Decoder at 1.7B: in-domain 47.0, out-of-domain 35.0, all (5 x 47 + 3 x 35) / 8 = 42.5
    row = shown[("siglip2", "Joint-Decoder", "qwen3-1.7b")]
    assert (row["Avg In-domain"], row["Avg Out-of-domain"], row["Avg All"]) == ("47.00", "35.00", "42.50")
    # DINOv3 MoT (F) at 0.6B: 36.0 / 32.0 / (180 + 96) / 8 = 34.5
    row = shown[("dinov3", "MoT", "qwen3-0.6b")]
    assert (row["Avg In-domain"], row["Avg Out-of-domain"], row["Avg All"]) == ("36.00", "32.00", "34.50")
    # pooled Wilson interval of the 5 in-domain benchmarks: 5 x 1000 answers, 2350 right at 47.0 %
    low, high = wilson(2350, 5000)
    siglip_jd = shown[("siglip2", "Joint-Decoder", "qwen3-1.7b")]
    assert (siglip_jd["Avg In-domain_lo"], siglip_jd["Avg In-domain_hi"]) == (
        f"{100 * low:.2f}",
        f"{100 * high:.2f}",
    )
    # the run that was never evaluated is a gap, not a zero
    missing = shown[("dinov3", "MoT", "qwen3-4b")]
    assert missing["Avg In-domain"] == missing["Avg Out-of-domain"] == ""
    # best marked per size (Figure 2 compares setups at one size): SigLIP 2 MoT (F) everywhere at 0.6B
    # (45.0 in, 35.0 out, 41.25 all); at 4B in-domain 53.0 and out-of-domain 39.0, also MoT (F)
    best = {(key[0], key[1], key[2]): set(r["best"].split(";")) - {""} for key, r in shown.items()}
    assert best[("siglip2", "MoT", "qwen3-0.6b")] == {"Avg In-domain", "Avg Out-of-domain", "Avg All"}
    assert best[("siglip2", "MoT", "qwen3-4b")] == {"Avg In-domain", "Avg Out-of-domain", "Avg All"}
    assert all(not marks for key, marks in best.items() if key[:2] != ("siglip2", "MoT"))
    markdown = (out / "scaling.md").read_text()
    assert "best per column at each backbone in bold" in markdown
    assert (
        "|  | MoT | unfreeze-tok-s1s2 | qwen3-0.6b | **45.0** [" in markdown
    )  # tokenizer blanked below its first row

    # Figure 2: one line per tokenizer x setup, x = the three sizes in order, y = the averages in %
    (figure,) = figures
    panels = {ax.get_title(): ax for ax in figure.axes}
    for title, average in (("Average In-domain", 0), ("Average Out-of-domain", 1)):
        ax = panels[title]
        assert [tick.get_text() for tick in ax.get_xticklabels()] == list(SIZES)
        lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
        for (tokenizer, fusion), sizes in AVERAGES.items():
            name = {"siglip2": "siglip2-b16-224", "dinov3": "dinov3-vitb16"}[tokenizer]
            setup = "Joint-Decoder / unfreeze-all" if fusion == "joint_decoder" else "MoT / unfreeze-tok-s1s2"
            ys = lines[f"{name} / {setup}"]
            expected = [100 * values[average] for values in sizes]
            if (tokenizer, fusion) == NOT_EVALUATED[:2]:
                assert ys[:2] == pytest.approx(expected[:2]) and ys[2] != ys[2]  # NaN: a broken line
            else:
                assert ys == pytest.approx(expected)
