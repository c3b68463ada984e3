"""Result records (atomic writes, gathering) and the paper's table layouts, figures and `vlmlab results`."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import pytest

from vlmlab.errors import ConfigError
from vlmlab.reports import cli as reports_cli
from vlmlab.reports.frame import Evidence, get_dotted, metric_evidence
from vlmlab.reports.layouts import design_table, scaling_table, transfer_table
from vlmlab.reports.plots import plot_design, plot_scaling, plot_transfer
from vlmlab.runs.record import (
    config_hash,
    flatten_metrics,
    make_record,
    read_records,
    validate_record,
    write_record,
)
from vlmlab.scoring.intervals import wilson

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Table 3 (Joint-Decoder), CLIP with everything frozen, as fractions.
CLIP_FROZEN = {
    "vqav2": 0.498,
    "aokvqa": 0.221,
    "chartqa": 0.122,
    "textvqa": 0.201,
    "docvqa": 0.121,
    "mathvista": 0.250,
    "mmtbench": 0.374,
    "realworldqa": 0.290,
}


def config(tokenizer: str, lang_frozen: bool, fusion: str = "joint_decoder", **extra: object) -> dict:
    return {
        "model": {"tokenizer": {"name": tokenizer}, "fusion": fusion, "backbone": "qwen3-0.6b"},
        "train": {"freeze": {"lang_s2": lang_frozen}},
        **extra,
    }


def shifted(metrics: dict, delta: float) -> dict:
    return {name: round(value + delta, 4) for name, value in metrics.items()}


# ---------------------------------------------------------------------------------------------- records


def test_make_record_and_hash() -> None:
    record = make_record("r1", config("clip", True), CLIP_FROZEN, stage=2, timings={"eval_s": 3.5})
    assert set(record) == {
        "run_id",
        "config_hash",
        "stage",
        "config",
        "metrics",
        "chance",
        "timings",
        "created",
    }
    assert record["config_hash"] == config_hash(config("clip", True))
    # the hash ignores key order and changes with any value
    reordered = {"train": {"freeze": {"lang_s2": True}}, "model": config("clip", True)["model"]}
    assert config_hash(reordered) == record["config_hash"]
    assert config_hash(config("clip", False)) != record["config_hash"]
    assert record["created"].endswith("+00:00")


def test_validate_record_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="outside \\[0, 1\\]"):
        make_record("r", {}, {"vqav2": 74.8}, stage=2)  # percent instead of fraction
    with pytest.raises(ConfigError, match="lacks stage"):
        validate_record({"run_id": "r", "config": {}, "metrics": {}})
    with pytest.raises(ConfigError, match="stage must be an int"):
        validate_record({"run_id": "r", "stage": "2", "config": {}, "metrics": {}})
    with pytest.raises(ConfigError, match="non-numeric"):
        make_record("r", {}, {"vqav2": "high"}, stage=2)


def test_flatten_metrics_and_dotted_get() -> None:
    flat = flatten_metrics({"VQAv2": 0.5, "docvqa": {"score": 0.25, "n": 10}, "grid": {"tqa": {"ind": 0.6}}})
    assert flat == {"vqav2": 0.5, "docvqa": 0.25, "grid.tqa.ind": 0.6}
    assert get_dotted({"model": {"fusion": "mot"}}, "model.fusion") == "mot"
    assert get_dotted({"model": {}}, "model.fusion", "x") == "x"
    assert get_dotted({"data": {"train": [{"mode": "tqa"}]}}, "data.train.0.mode") == "tqa"
    assert get_dotted({"data": {"train": []}}, "data.train.0.mode") is None


def test_write_record_is_atomic_and_read_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    record = make_record(
        "clip/frozen", config("clip", True), CLIP_FROZEN, stage=2, created="2026-01-01T00:00:00+00:00"
    )
    path = write_record(record, tmp_path / "sweep")
    assert path.name == "clip_frozen.stage2.json"
    assert json.loads(path.read_text()) == record
    assert not list(path.parent.glob("*.tmp"))  # no temporary file left behind
    # a newer record of the same run and stage replaces the old one when gathering
    newer = make_record(
        "clip/frozen",
        config("clip", True),
        shifted(CLIP_FROZEN, 0.01),
        stage=2,
        created="2026-02-01T00:00:00+00:00",
    )
    write_record(newer, tmp_path / "sweep" / "nested" / "copy.json")
    (tmp_path / "sweep" / "config.json").write_text(json.dumps({"model": {}}))  # not a record: ignored
    (tmp_path / "sweep" / "broken.json").write_text('{"run_id": "x", "metrics": ')  # half-written: warned
    with caplog.at_level("WARNING", logger="vlmlab.runs"):
        records = read_records(tmp_path / "sweep")
    (warned,) = [r.getMessage() for r in caplog.records if "broken.json" in r.getMessage()]
    assert "not readable JSON" in warned and "\n" not in warned  # one line
    assert len(records) == 1 and records[0]["metrics"]["vqav2"] == pytest.approx(0.508)
    (tmp_path / "sweep" / "broken.json").unlink()
    assert read_records(tmp_path / "sweep", stage=3) == []
    with pytest.raises(ConfigError, match="does not exist"):
        read_records(tmp_path / "missing")


# ---------------------------------------------------------------------------------------- design table


def design_records() -> list[dict]:
    records = [
        make_record("clip-f", config("clip", True), CLIP_FROZEN, stage=2),
        make_record("clip-u", config("clip", False), shifted(CLIP_FROZEN, 0.10), stage=2),
        make_record("siglip-f", config("siglip2", True), shifted(CLIP_FROZEN, 0.05), stage=2),
    ]
    incomplete = shifted(CLIP_FROZEN, 0.20)
    del incomplete["docvqa"]  # this run never evaluated DocVQA
    records.append(make_record("siglip-u", config("siglip2", False), incomplete, stage=2))
    return records


def test_design_table_averages_gaps_and_best() -> None:
    table = design_table(design_records(), ["model.tokenizer", "train.freeze"])
    # dict-valued train.freeze expands to one column per leaf; rows in the paper's order (frozen first)
    assert table.keys == ["model.tokenizer", "train.freeze.lang_s2"]
    assert table.row_labels == [
        ("clip", "yes"),
        ("clip", "no"),
        ("siglip2", "yes"),
        ("siglip2", "no"),
    ]
    clip = {key: table.value(0, key) for key in table.values.columns}
    # In-domain: (49.8 + 22.1 + 12.2 + 20.1 + 12.1) / 5 = 116.3 / 5 = 23.26
    assert clip["avg_ind"] == pytest.approx(0.2326)
    # Out-of-domain: (25.0 + 37.4 + 29.0) / 3 = 30.467; All: (116.3 + 91.4) / 8 = 25.9625 (the paper: 25.9)
    assert clip["avg_ood"] == pytest.approx(0.30467, abs=1e-5)
    assert clip["avg_all"] == pytest.approx(0.259625)
    last = {key: table.value(3, key) for key in table.values.columns}
    assert last["docvqa"] is None and last["avg_ind"] is None and last["avg_all"] is None  # gaps, not zeros
    assert last["avg_ood"] == pytest.approx(0.30467 + 0.20, abs=1e-5)

    markdown = table.to_markdown()
    assert (
        "| clip | yes | 49.8 | 22.1 | 12.2 | 20.1 | 12.1 | 25.0 | 37.4 | 29.0 | 23.3 | 30.5 | 26.0 |"
        in markdown
    )
    # repeated tokenizer blanked as in the paper; DocVQA gap; best per column in bold
    assert "|  | no | **69.8** | **42.1** | **32.2** | **40.1** | – |" in markdown
    # DocVQA's best is CLIP unfrozen (22.1): the siglip2 row that lacks DocVQA does not compete
    assert "|  | no | 59.8 | 32.1 | 22.2 | 30.1 | **22.1** |" in markdown
    assert "Averages are left empty" in markdown

    rows = list(csv.reader(io.StringIO(table.to_csv())))
    assert rows[0][:3] == ["tokenizer", "freeze.lang_s2", "VQAv2"] and rows[0][-2:] == ["best", "partial"]
    siglip_unfrozen = dict(zip(rows[0], rows[4]))
    assert siglip_unfrozen["DocVQA"] == "" and siglip_unfrozen["Avg In-domain"] == ""
    assert siglip_unfrozen["VQAv2"] == "69.80" and "VQAv2" in siglip_unfrozen["best"].split(";")

    latex = table.to_latex()
    assert (
        r"\toprule" in latex and r"\textbf{69.8}" in latex and r"freeze.lang\_s2" in latex and " -- " in latex
    )


def test_design_table_partial_averages_are_marked() -> None:
    table = design_table(design_records(), ["model.tokenizer", "train.freeze"], partial_averages=True)
    # mean of the 4 in-domain benchmarks it has: (69.8 + 42.1 + 32.2 + 40.1) / 4 = 46.05
    assert table.value(3, "avg_ind") == pytest.approx(0.4605)
    assert table.partial.loc[3, "avg_ind"] and table.partial.loc[3, "avg_all"]
    markdown = table.to_markdown()
    assert "46.0†" in markdown or "46.1†" in markdown
    assert "**46" not in markdown  # a partial average is never marked best
    assert "† averaged over the available benchmarks only" in markdown


def test_design_table_pivot_like_table2() -> None:
    # Table 2: rows = freezing recipe, column groups = fusion, averaged over tokenizers
    records = [
        make_record("jd-clip", config("clip", True), CLIP_FROZEN, stage=2),
        make_record("jd-sig", config("siglip2", True), shifted(CLIP_FROZEN, 0.02), stage=2),
        make_record("mot-clip", config("clip", True, "mot"), shifted(CLIP_FROZEN, 0.04), stage=2),
        make_record("mot-sig", config("siglip2", True, "mot"), shifted(CLIP_FROZEN, 0.06), stage=2),
        make_record("jd-clip-u", config("clip", False), shifted(CLIP_FROZEN, 0.10), stage=2),
        make_record("jd-sig-u", config("siglip2", False), shifted(CLIP_FROZEN, 0.12), stage=2),
        make_record("mot-clip-u", config("clip", False, "mot"), shifted(CLIP_FROZEN, 0.14), stage=2),
        # mot-sig-u was never run: MoT / unfrozen must be a gap, not the CLIP-only value
    ]
    table = design_table(
        records, ["train.freeze"], pivot="model.fusion", where={"model.tokenizer": ["clip", "siglip2"]}
    )
    assert [c.group for c in table.columns] == ["Joint-Decoder"] * 3 + ["MoT"] * 3
    assert len(table.values) == 2  # frozen, unfrozen
    # JD frozen: mean of CLIP and CLIP+2 points -> in-domain 23.26 + 1 = 24.26
    assert table.value(0, "Joint-Decoder|avg_ind") == pytest.approx(0.2426)
    assert table.value(0, "MoT|avg_ind") == pytest.approx(0.2326 + 0.05)
    assert table.value(1, "MoT|avg_ind") is None
    latex = table.to_latex()
    assert r"\multicolumn{3}{c}{Joint-Decoder}" in latex and r"\cmidrule(lr){2-4}" in latex


def test_design_table_notes_when_an_axis_is_averaged_silently() -> None:
    records = [
        make_record("a", config("clip", True), CLIP_FROZEN, stage=2),
        make_record("b", config("clip", True, "mot"), CLIP_FROZEN, stage=2),
    ]
    table = design_table(records, ["model.tokenizer"])
    assert any("model.fusion" in note for note in table.notes)
    with pytest.raises(ConfigError, match="No records match"):
        design_table(records, ["model.tokenizer"], where={"model.tokenizer": ["dinov3"]})
    transfer_only = make_record("t", config("clip", True), {"grid": {"tqa": {"ind": 0.5}}}, stage=3)
    with pytest.raises(ConfigError, match="--layout transfer"):
        design_table([transfer_only], ["model.tokenizer"])


def test_freezing_recipe_names_sort_in_table2_order() -> None:
    recipes = ["unfreeze-all", "unfreeze-tok-s2", "all-frozen", "unfreeze-tok-s1s2", "unfreeze-lm"]
    records = [
        make_record(name, {"model": {"tokenizer": "clip"}, "train": {"freeze": name}}, CLIP_FROZEN, stage=2)
        for name in recipes
    ]
    table = design_table(records, ["train.freeze"])
    order = [labels[0] for labels in table.row_labels]
    assert order == ["all-frozen", "unfreeze-lm", "unfreeze-tok-s2", "unfreeze-tok-s1s2", "unfreeze-all"]


def test_design_table_shows_missing_design_points_as_empty_rows() -> None:
    records = [
        make_record("a", config("clip", True), CLIP_FROZEN, stage=2),
        make_record("b", config("clip", False), CLIP_FROZEN, stage=2),
        make_record("c", config("siglip2", True), CLIP_FROZEN, stage=2),  # siglip2 unfrozen never ran
    ]
    table = design_table(records, ["model.tokenizer", "train.freeze"])
    assert table.row_labels[-1] == ("siglip2", "no")
    assert table.values.iloc[-1].isna().all()
    assert "|  | no | – | – |" in table.to_markdown()
    assert any("with no run" in note for note in table.notes)
    assert not any("Averages are left empty" in note for note in table.notes)
    assert len(design_table(records, ["model.tokenizer", "train.freeze"], fill_missing=False).values) == 3


# -------------------------------------------------------------------------------------- transfer table


def transfer_records() -> list[dict]:
    chance = {"grid": 0.25, "ring.tqa": 0.125, "ring.vqa": 0.125}
    records = []
    for tokenizer in ("clip", "siglip2"):
        for fusion in ("joint_decoder", "mot"):
            base = {"model": {"tokenizer": tokenizer, "fusion": fusion}}
            # the stage-2 model trained on VQA data: still "No Train" for the synthetic tasks
            stage2 = {**base, "data": {"train": [{"kind": "webdataset", "mode": "vqa"}]}}
            untrained = {
                task: {m: {"ind": 0.05, "ood": 0.02} for m in ("vqa", "tqa")} for task in ("grid", "ring")
            }
            records.append(make_record(f"{tokenizer}-{fusion}-nt", stage2, untrained, stage=2, chance=chance))
            for task in ("grid", "ring"):
                for modality, tqa_score in (("tqa", 0.90), ("vqa", 0.60)):
                    if tokenizer == "siglip2" and fusion == "mot" and task == "ring" and modality == "vqa":
                        continue  # a missing run
                    metrics = {  # InD under "test", the synthetic sets' split name, is accepted too
                        task: {
                            "tqa": {"test": tqa_score, "ood": tqa_score / 3},
                            "vqa": {"ind": 0.5, "ood": 0.1},
                        }
                    }
                    cfg = {**base, "data": {"train": [{"kind": "synthetic", "task": task, "mode": modality}]}}
                    records.append(
                        make_record(f"{tokenizer}-{fusion}-{task}-{modality}", cfg, metrics, stage=3)
                    )
    return records


def test_transfer_table_layout_and_chance() -> None:
    table = transfer_table(transfer_records(), "tqa")
    # columns: task x {InD, OOD} x {No Train, same-modality (TQA-trained), cross-modality (VQA-trained)}
    assert [c.label for c in table.columns[:3]] == ["No Train", "TQA-trained", "VQA-trained"]
    assert table.columns[0].group == "Grid TQA (InD)" and table.columns[-1].group == "Ring TQA (OOD)"
    assert table.kind[0] == "chance" and table.value(0, "grid|ind|none") == 0.25
    assert table.value(0, "ring|ood|cross") == 0.125  # "ring.tqa" entry matches ring.tqa.ood
    assert table.row_labels[1:] == [
        ("clip", "Joint-Decoder"),
        ("clip", "MoT"),
        ("siglip2", "Joint-Decoder"),
        ("siglip2", "MoT"),
    ]
    assert table.value(1, "grid|ind|none") == 0.05
    assert table.value(1, "grid|ind|same") == 0.90  # trained on the TQA grid task, evaluated on TQA grid
    assert table.value(1, "grid|ind|cross") == 0.60  # trained on the VQA grid task
    assert table.value(4, "ring|ind|cross") is None  # the missing run is a gap
    markdown = table.to_markdown()
    assert "| Chance |  | 25.0 | 25.0 | 25.0 |" in markdown
    assert "Image-to-Text (VQA→TQA)" in markdown
    assert r"$\rightarrow$" in table.to_latex()

    reverse = transfer_table(transfer_records(), "vqa")
    assert [c.label for c in reverse.columns[:3]] == ["No Train", "VQA-trained", "TQA-trained"]
    # collapse over fusions (Figures 4/5): strict -> siglip2's ring cross cell is a gap
    per_tokenizer = table.collapse(1)
    data = [labels for labels, kind in zip(per_tokenizer.row_labels, per_tokenizer.kind) if kind == "data"]
    assert data == [("clip",), ("siglip2",)]
    siglip = per_tokenizer.row_labels.index(("siglip2",))
    assert per_tokenizer.value(siglip, "ring|ind|cross") is None
    assert per_tokenizer.value(siglip, "grid|ind|cross") == 0.60

    with pytest.raises(ConfigError, match="evaluation modality"):
        transfer_table(transfer_records(), "audio")
    with pytest.raises(ConfigError, match="No transfer records"):
        transfer_table(design_records(), "tqa")


# ------------------------------------------------------------------------------------------- figures


def test_plots_write_pngs_with_gaps(tmp_path: Path) -> None:
    design = design_table(design_records(), ["model.tokenizer", "train.freeze"])
    assert plot_design(design, tmp_path / "design.png").read_bytes().startswith(PNG_MAGIC)
    transfer = transfer_table(transfer_records(), "tqa").collapse(1)
    assert plot_transfer(transfer, tmp_path / "transfer.png").read_bytes().startswith(PNG_MAGIC)
    records = [
        make_record(
            f"{size}", {"model": {"tokenizer": "siglip2", "backbone": f"qwen3-{size}"}}, CLIP_FROZEN, stage=2
        )
        for size in ("4b", "0.6b")  # written out of order; 1.7b missing
    ]
    scaling = scaling_table(records, ["model.tokenizer"], "model.backbone")
    assert [labels[-1] for labels in scaling.row_labels] == ["qwen3-0.6b", "qwen3-4b"]
    assert plot_scaling(scaling, tmp_path / "scaling.png").read_bytes().startswith(PNG_MAGIC)


# ---------------------------------------------------------------------------------------------- CLI


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vlmlab")
    reports_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_results_design(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for record in design_records():
        write_record(record, tmp_path / "sweep" / record["run_id"])
    out = tmp_path / "report"
    assert (
        run_cli(
            [
                "results",
                str(tmp_path / "sweep"),
                "--out",
                str(out),
                "--group-by",
                "model.tokenizer,train.freeze",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| tokenizer | freeze.lang_s2 | VQAv2 |" in printed
    for name in ("design.md", "design.csv", "design.tex"):
        assert (out / name).is_file()
    assert (out / "design.png").read_bytes().startswith(PNG_MAGIC)


def test_cli_results_transfer_and_scaling(tmp_path: Path) -> None:
    for record in transfer_records():
        write_record(record, tmp_path / "transfer")
    out = tmp_path / "out"
    assert (
        run_cli(
            [
                "results",
                str(tmp_path / "transfer"),
                "--layout",
                "transfer",
                "--out",
                str(out),
                "--format",
                "md",
            ]
        )
        == 0
    )
    assert {p.name for p in out.iterdir()} == {
        "transfer_tqa.md",
        "transfer_tqa.png",
        "transfer_vqa.md",
        "transfer_vqa.png",
    }


def test_cli_errors_through_the_top_level_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vlmlab.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["results", str(tmp_path / "empty")]) == 2
    assert "No result records" in capsys.readouterr().err
    write_record(make_record("r", config("clip", True), CLIP_FROZEN, stage=2), tmp_path / "one")
    assert main(["results", str(tmp_path / "one"), "--format", "md,xlsx", "--no-plot"]) == 2
    assert "Unknown table format 'xlsx'" in capsys.readouterr().err
    assert main(["results", str(tmp_path / "one"), "--where", "model.fusion"]) == 2


# ------------------------------------------------------------------------------- confidence intervals


def with_counts(metrics: dict, n: int = 200) -> dict:
    """Float leaves -> {"score", "n", "ci", "correct"} entries, as `vlmlab eval` writes them (0/1 outcomes)."""
    if isinstance(metrics, dict):
        return {key: with_counts(value, n) for key, value in metrics.items()}
    correct = round(metrics * n)
    return {"score": correct / n, "n": n, "ci": list(wilson(correct, n)), "correct": correct}


def counted_transfer_records(n: int = 200) -> list[dict]:
    return [{**record, "metrics": with_counts(record["metrics"], n)} for record in transfer_records()]


def test_metric_evidence_reads_dicts_and_flat_interval_pairs() -> None:
    metrics = {
        "grid": {"tqa": {"ind": {"score": 0.05, "n": 200, "ci": [0.027, 0.090], "correct": 10}}},
        "docvqa": {"score": 0.25, "n": 10, "ci": [0.1, 0.4]},  # soft scores: no "correct"
        "vqav2": 0.5,
        "vqav2_ci_low": 0.4,
        "vqav2_ci_high": 0.6,
        "textvqa": {"score": 0.5, "ci": [0.6, 0.4]},  # malformed interval: ignored
    }
    evidence = metric_evidence(metrics)
    assert evidence["grid.tqa.ind"] == Evidence(200, (0.027, 0.090), 10)
    assert evidence["docvqa"] == Evidence(10, (0.1, 0.4), None)
    assert evidence["vqav2"] == Evidence(ci=(0.4, 0.6))
    assert "textvqa" not in evidence
    # the flat pair is the accuracy's interval, not two metrics of their own
    assert set(flatten_metrics(metrics)) == {"grid.tqa.ind", "docvqa", "vqav2", "textvqa"}
    make_record("r", {}, metrics, stage=3)  # both forms validate


def test_transfer_table_shows_intervals_in_every_format() -> None:
    table = transfer_table(counted_transfer_records(), "tqa")
    # Wilson 10/200 by hand: centre 0.05848, half 0.03110 -> [2.7, 9.0] %
    low, high = table.interval(1, "grid|ind|none")  # row 0 is the chance row, row 1 clip / Joint-Decoder
    assert low == pytest.approx(0.02738, abs=1e-4) and high == pytest.approx(0.08958, abs=1e-4)
    assert table.interval(0, "grid|ind|none") is None  # the chance row has none
    markdown = table.to_markdown()
    assert "| clip | Joint-Decoder | **5.0** [2.7, 9.0] | **90.0** [85.1, 93.4] |" in markdown
    assert "| Chance |  | 25.0 | 25.0 | 25.0 |" in markdown  # the chance row stays, bare
    assert "95 % confidence interval" in markdown
    rows = list(csv.reader(io.StringIO(table.to_csv())))
    header = rows[0]
    assert header[2:5] == [
        "Grid TQA (InD) / No Train",
        "Grid TQA (InD) / No Train_lo",
        "Grid TQA (InD) / No Train_hi",
    ]
    cells = dict(zip(header, rows[2]))
    assert (cells["Grid TQA (InD) / No Train"], cells["Grid TQA (InD) / No Train_lo"]) == ("5.00", "2.74")
    assert cells["Grid TQA (InD) / No Train_hi"] == "8.96"
    assert dict(zip(header, rows[1]))["Grid TQA (InD) / No Train_lo"] == ""  # chance: no interval
    latex = table.to_latex()
    assert r"\textbf{5.0} {\scriptsize [2.7, 9.0]}" in latex and "95 \\% confidence" in latex


def test_averaged_cells_pool_their_samples_or_show_no_interval() -> None:
    per_tokenizer = transfer_table(counted_transfer_records(), "tqa").collapse(1)
    clip = per_tokenizer.row_labels.index(("clip",))
    # two fusions x 10/200 -> the pooled 20/400, whose proportion is the shown mean
    assert per_tokenizer.value(clip, "grid|ind|none") == pytest.approx(0.05)
    assert per_tokenizer.interval(clip, "grid|ind|none") == pytest.approx(wilson(20, 400))
    siglip = per_tokenizer.row_labels.index(("siglip2",))
    assert per_tokenizer.interval(siglip, "ring|ind|cross") is None  # a gap has no interval
    assert "[" in per_tokenizer.to_markdown()
    # unequal sample counts: the pooled proportion is not the mean shown, so no interval
    records = counted_transfer_records()
    records[0]["metrics"]["grid"]["tqa"]["ind"].update(n=100, correct=5, score=0.05)
    mixed = transfer_table(records, "tqa").collapse(1)
    clip = mixed.row_labels.index(("clip",))
    assert (
        mixed.value(clip, "grid|ind|none") == pytest.approx(0.05)
        and mixed.interval(clip, "grid|ind|none") is None
    )
    # old records (plain floats): no interval anywhere, no note, empty _lo/_hi CSV cells
    plain = transfer_table(transfer_records(), "tqa")
    assert not plain.has_intervals() and "confidence interval" not in plain.to_markdown()
    header, _, first = list(csv.reader(io.StringIO(plain.to_csv())))[:3]
    assert dict(zip(header, first))["Grid TQA (InD) / No Train_lo"] == ""


def test_design_table_intervals_per_benchmark_and_pooled_rows() -> None:
    metrics = dict(CLIP_FROZEN)
    metrics["vqav2"] = {"score": 0.5, "n": 100, "ci": list(wilson(50, 100)), "correct": 50}
    metrics["docvqa"] = {"score": 0.121, "n": 50, "ci": [0.08, 0.17]}  # soft (ANLS): a bootstrap interval
    records = [
        make_record("a", config("clip", True), metrics, stage=2),
        make_record("b", config("clip", False), metrics, stage=2),
    ]
    table = design_table(records, ["model.tokenizer", "train.freeze"])
    assert table.interval(0, "vqav2") == pytest.approx(wilson(50, 100))
    assert table.interval(0, "docvqa") == (0.08, 0.17)
    assert table.interval(0, "aokvqa") is None and table.interval(0, "avg_ind") is None  # plain float; mixed
    assert "| clip | yes | **50.0** [40.4, 59.6] |" in table.to_markdown()
    # one row over both records: vqav2 pools 100/200; docvqa (soft, no counts) has no honest interval
    merged = design_table(records, ["model.tokenizer"])
    assert (
        merged.interval(0, "vqav2") == pytest.approx(wilson(100, 200))
        and merged.interval(0, "docvqa") is None
    )
    # a training run's result.json: flat floats with the interval beside the accuracy
    flat = {"vqav2": 0.5, "vqav2_ci_low": 0.4, "vqav2_ci_high": 0.6}
    table = design_table([make_record("t", config("clip", True), flat, stage=2)], ["model.tokenizer"])
    assert [c.key for c in table.columns] == ["vqav2", "avg_ind", "avg_all"]
    assert table.interval(0, "vqav2") == (0.4, 0.6) and table.interval(0, "avg_ind") == (0.4, 0.6)


def captured_figures(monkeypatch: pytest.MonkeyPatch) -> list:
    from vlmlab.reports import plots

    figures = []
    original = plots._save

    def save(figure, path):
        figures.append(figure)
        return original(figure, path)

    monkeypatch.setattr(plots, "_save", save)
    return figures


def error_bars(figure) -> list:
    from matplotlib.container import ErrorbarContainer

    return [c for ax in figure.axes for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_figures_draw_error_bars_where_intervals_exist(tmp_path: Path, monkeypatch) -> None:
    figures = captured_figures(monkeypatch)
    transfer = transfer_table(counted_transfer_records(), "tqa").collapse(1)
    plot_transfer(transfer, tmp_path / "transfer.png")
    bars = error_bars(figures[-1])
    # 2 tasks x 2 splits x 3 conditions x 2 tokenizers, less siglip2's missing ring cross-modality cells
    assert len(bars) == 2 * 2 * 3 * 2 - 2
    # each spans the pooled Wilson interval of its bar (in %)
    lows = sorted(round(float(segment[0][1]), 3) for bar in bars for segment in bar[2][0].get_segments())
    assert round(100 * wilson(20, 400)[0], 3) in lows
    plot_transfer(transfer_table(transfer_records(), "tqa").collapse(1), tmp_path / "plain.png")
    assert error_bars(figures[-1]) == []  # no intervals recorded: plain bars

    metrics = with_counts(CLIP_FROZEN, 100)
    records = [make_record(f"r{i}", config("clip", i == 0), metrics, stage=2) for i in range(2)]
    plot_design(design_table(records, ["model.tokenizer", "train.freeze"]), tmp_path / "design.png")
    assert len(error_bars(figures[-1])) == 2 * 2  # avg_ind and avg_ood panels, two bars each
    sizes = [
        make_record(s, {"model": {"tokenizer": "siglip2", "backbone": f"qwen3-{s}"}}, metrics, stage=2)
        for s in ("0.6b", "4b")
    ]
    plot_scaling(scaling_table(sizes, ["model.tokenizer"], "model.backbone"), tmp_path / "scaling.png")
    assert len(error_bars(figures[-1])) == 2  # one series per panel, both points with an interval


def test_cli_results_prints_intervals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for record in counted_transfer_records():
        write_record(record, tmp_path / "transfer")
    out = tmp_path / "out"
    argv = ["results", str(tmp_path / "transfer"), "--layout", "transfer", "--out", str(out), "--no-plot"]
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "**5.0** [2.7, 9.0]" in printed and "| Chance |" in printed
    assert "No Train_lo" in (out / "transfer_tqa.csv").read_text()


def test_encoders_layout_rows_a_set_of_towers_against_each_alone() -> None:
    """Prismatic's fused towers (sweep prismatic_fused): a record's model.tokenizer list is one row, `a + b`."""
    from vlmlab.reports.layouts import encoders_table

    pair = ["dinov3-vitl16", "siglip2-so400m-p16-256"]
    records = [
        make_record("dinov3", {"model": {"tokenizer": pair[0]}}, CLIP_FROZEN, stage=2),
        make_record("siglip2", {"model": {"tokenizer": pair[1]}}, shifted(CLIP_FROZEN, 0.01), stage=2),
        make_record("fused", {"model": {"tokenizer": pair}}, shifted(CLIP_FROZEN, 0.03), stage=2),
    ]
    table = encoders_table(records)
    assert table.name == "encoders" and table.keys == ["model.tokenizer"]
    labels = [row[0] for row in table.row_labels]
    assert sorted(labels) == sorted([*pair, "dinov3-vitl16 + siglip2-so400m-p16-256"])
    fused = labels.index("dinov3-vitl16 + siglip2-so400m-p16-256")
    # VQAv2 49.8 + 3 points; the fused row is best in every column
    assert table.value(fused, "vqav2") == pytest.approx(0.528)
    assert table.value(fused, "avg_all") == pytest.approx(0.259625 + 0.03)
    assert "| dinov3-vitl16 + siglip2-so400m-p16-256 | **52.8** |" in table.to_markdown()
