"""`vlmlab results --layout open_weight`: the paper's Tables 8-11 (Appendix B) from open-weight VLM records.

The expected strings are worked out by hand from the fabricated scores (the paper's own numbers where it
gives them: Table 8 / Table 10, SpatialMap, Qwen2.5-VL-7B).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from vlmlab.errors import ConfigError
from vlmlab.reports.open_weight import (
    open_weight_name,
    open_weight_rl_table,
    open_weight_sft_table,
    open_weight_tables,
)
from vlmlab.runs.record import make_record, write_record
from vlmlab.scoring.intervals import wilson

QWEN7 = "Qwen/Qwen2.5-VL-7B-Instruct"
QWEN3 = "Qwen/Qwen2.5-VL-3B-Instruct"
INTERN = "OpenGVLab/InternVL3-8B-hf"
GEMMA = "google/gemma-3-4b-it"
KIMI = "moonshotai/Kimi-VL-A3B-Instruct"


def cfg(model: str | None, method: str, task: str, mode: str) -> dict:
    return {
        "model": {"open_weight": model, "tokenizer": {"name": "clip"}, "fusion": "joint_decoder"},
        "train": {"method": method},
        "data": {"train": [{"kind": "synthetic", "task": task, "mode": mode}]},
    }


def scores(task: str, vqa_ind: float, vqa_ood: float, tqa_ind: float, tqa_ood: float, n: int = 0) -> dict:
    """{task: {vqa: {ind, ood}, tqa: {ind, ood}}} as `vlmlab eval` writes it (with n: 0/1 counts + CI)."""

    def entry(value: float) -> dict:
        if not n:
            return {"score": value}
        correct = round(value * n)
        return {"score": correct / n, "n": n, "ci": list(wilson(correct, n)), "correct": correct}

    return {
        task: {
            "vqa": {"ind": entry(vqa_ind), "ood": entry(vqa_ood)},
            "tqa": {"ind": entry(tqa_ind), "ood": entry(tqa_ood)},
        }
    }


def same(task: str, value: float) -> dict:
    return scores(task, value, value, value, value)


def record(run_id: str, model: str | None, method: str, task: str, mode: str, metrics: dict) -> dict:
    return make_record(run_id, cfg(model, method, task, mode), metrics, stage=3)


def table8_records(n: int = 0) -> list[dict]:
    """SFT on VQA (Table 8) plus one SFT on TQA (Table 9), and the base records they are compared with."""
    return [
        # Qwen2.5-VL-7B: the paper's SpatialMap numbers (base 80.2, 80.2, 62.2, 63.4). Its spatialmap base
        # record also scored grid (10.0), but a base record for grid (50.0) exists and is preferred there.
        record(
            "q7-base-sm",
            QWEN7,
            "eval",
            "spatialmap",
            "vqa",
            {**scores("spatialmap", 0.802, 0.802, 0.622, 0.634, n), **same("grid", 0.1)},
        ),
        record("q7-base-grid", QWEN7, "eval", "grid", "vqa", same("grid", 0.5)),
        record(
            "q7-sft-sm",
            QWEN7,
            "sft",
            "spatialmap",
            "vqa",
            scores("spatialmap", 0.986, 0.982, 0.630, 0.576, n),
        ),
        record("q7-sft-grid", QWEN7, "sft", "grid", "vqa", scores("grid", 0.9, 0.8, 0.7, 0.6)),
        # an RL run: never in Tables 8-9
        record("q7-rl-sm", QWEN7, "grpo", "spatialmap", "vqa", same("spatialmap", 0.111)),
        record("q3-base", QWEN3, "eval", "spatialmap", "vqa", scores("spatialmap", 0.7, 0.7, 0.55, 0.56)),
        record("q3-sft-sm", QWEN3, "sft", "spatialmap", "vqa", scores("spatialmap", 0.95, 0.9, 0.6, 0.65)),
        # InternVL3: one base record (trained-task field says spatialmap) that counts for grid too
        record(
            "iv-base",
            INTERN,
            "eval",
            "spatialmap",
            "vqa",
            {**scores("spatialmap", 0.6, 0.6, 0.65, 0.5), **same("grid", 0.25)},
        ),
        record("iv-sft-sm", INTERN, "sft", "spatialmap", "vqa", scores("spatialmap", 0.9, 0.85, 0.7, 0.5)),
        record("iv-sft-grid-tqa", INTERN, "sft", "grid", "tqa", scores("grid", 0.45, 0.25, 0.75, 0.65)),
        # Gemma-3: two base records, for grid and ring; spatialmap (neither) -> their mean (30.0+10.0)/2
        record(
            "g-base-grid",
            GEMMA,
            "eval",
            "grid",
            "vqa",
            {**same("spatialmap", 0.3), **same("grid", 0.4), **same("ring", 0.3)},
        ),
        record(
            "g-base-ring",
            GEMMA,
            "eval",
            "ring",
            "vqa",
            {**same("spatialmap", 0.1), **same("grid", 0.2), **same("ring", 0.5)},
        ),
        record("g-sft-sm", GEMMA, "sft", "spatialmap", "vqa", scores("spatialmap", 0.4, 0.3, 0.2, 0.1)),
        record("g-sft-grid", GEMMA, "sft", "grid", "vqa", scores("grid", 0.8, 0.7, 0.6, 0.5)),
        record("g-sft-ring", GEMMA, "sft", "ring", "vqa", same("ring", 0.6)),
        # Kimi-VL: no base record -> the score alone
        record("k-sft-sm", KIMI, "sft", "spatialmap", "vqa", scores("spatialmap", 0.5, 0.4, 0.3, 0.2)),
        # not an open-weight record: ignored by this layout
        record("vlmlab-run", None, "sft", "spatialmap", "vqa", same("spatialmap", 0.999)),
    ]


def table10_records() -> list[dict]:
    """Base / SFT / RL on VQA: the paper's Table 10 SpatialMap numbers for the 7B, a 3B, an InternVL
    without RL (so without a Table 10/11 of its own)."""
    return [
        record(
            "q7-base", QWEN7, "eval", "spatialmap", "vqa", scores("spatialmap", 0.802, 0.802, 0.622, 0.634)
        ),
        record("q7-base-grid", QWEN7, "eval", "grid", "vqa", same("grid", 0.5)),
        record(
            "q7-sft-sm", QWEN7, "sft", "spatialmap", "vqa", scores("spatialmap", 0.996, 0.982, 0.652, 0.576)
        ),
        record(
            "q7-rl-sm", QWEN7, "grpo", "spatialmap", "vqa", scores("spatialmap", 0.998, 0.982, 0.708, 0.600)
        ),
        record("q7-sft-grid", QWEN7, "sft", "grid", "vqa", scores("grid", 0.9, 0.8, 0.7, 0.6)),
        # (no RL run on grid for the 7B)
        record("q3-base", QWEN3, "eval", "spatialmap", "vqa", same("spatialmap", 0.7)),
        record("q3-sft-sm", QWEN3, "sft", "spatialmap", "vqa", same("spatialmap", 0.9)),
        record("q3-rl-sm", QWEN3, "grpo", "spatialmap", "vqa", same("spatialmap", 0.8)),
        record("iv-base", INTERN, "eval", "spatialmap", "vqa", same("spatialmap", 0.6)),
        record("iv-sft-sm", INTERN, "sft", "spatialmap", "vqa", same("spatialmap", 0.9)),
    ]


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# ------------------------------------------------------------------------------------------- Table 8


def test_table8_cells_show_the_change_from_base() -> None:
    table = open_weight_sft_table(table8_records(), "vqa")
    assert table.name == "open_weight_sft_vqa"
    assert [c.label for c in table.columns] == ["VQA (InD)", "VQA (OOD)", "TQA (InD)", "TQA (OOD)"]
    models = ["Qwen2.5-VL-7B", "Qwen2.5-VL-3B", "InternVL3-8B", "Gemma-3-4B", "Kimi-VL-A3B"]
    # every model gets a row per dataset, in the paper's order (the vlmlab record has none)
    assert table.row_labels == [(d, m) for d in ("SpatialMap", "Grid", "Ring") for m in models]
    md = table.to_markdown()
    assert "| Dataset | Model | VQA (InD) | VQA (OOD) | TQA (InD) | TQA (OOD) |" in md
    # the paper's Table 8 row; best per column within SpatialMap in bold
    assert (
        "| SpatialMap | Qwen2.5-VL-7B | **98.6** (+18.4) | **98.2** (+18.0) | 63.0 (+0.8) | 57.6 (-5.8) |"
        in md
    )
    assert "|  | Qwen2.5-VL-3B | 95.0 (+25.0) | 90.0 (+20.0) | 60.0 (+5.0) | **65.0** (+9.0) |" in md
    assert "|  | InternVL3-8B | 90.0 (+30.0) | 85.0 (+25.0) | **70.0** (+5.0) | 50.0 (+0.0) |" in md
    # no base record for the row's dataset: the mean of the two others (30.0 and 10.0 -> 20.0)
    assert "|  | Gemma-3-4B | 40.0 (+20.0) | 30.0 (+10.0) | 20.0 (+0.0) | 10.0 (-10.0) |" in md
    # no base at all: the score alone
    assert "|  | Kimi-VL-A3B | 50.0 | 40.0 | 30.0 | 20.0 |" in md
    assert "no base-model record" in md
    # grid: the 7B's grid base record (50.0) is used, not the grid scores of its spatialmap one (10.0);
    # Gemma's grid-task base (40.0) rather than the mean with its ring-task one
    assert (
        "| Grid | Qwen2.5-VL-7B | **90.0** (+40.0) | **80.0** (+30.0) | **70.0** (+20.0) | **60.0** (+10.0) |"
        in md
    )
    assert "|  | Gemma-3-4B | 80.0 (+40.0) | 70.0 (+30.0) | 60.0 (+20.0) | 50.0 (+10.0) |" in md
    # missing runs are gaps, never 0 (InternVL was fine-tuned on grid's TQA version only: not in Table 8)
    assert "|  | InternVL3-8B | – | – | – | – |" in md
    assert "| Ring | Qwen2.5-VL-7B | – | – | – | – |" in md
    # Ring: only Gemma has a run, so nothing to compare and no bold; base = its ring-task record (50.0)
    assert "|  | Gemma-3-4B | 60.0 (+10.0) | 60.0 (+10.0) | 60.0 (+10.0) | 60.0 (+10.0) |" in md
    # the RL run (11.1) and the non-open-weight record (99.9) are not in it
    assert "11.1" not in md and "99.9" not in md


def test_table8_without_fill_drops_rows_without_runs() -> None:
    # a caption-stage run (neither VQA nor TQA) is no SFT run of Table 8 or 9
    caption = record("k-caption-ring", KIMI, "sft", "ring", "caption", same("ring", 0.9))
    table = open_weight_sft_table([*table8_records(), caption], "vqa", fill_missing=False)
    assert table.row_labels == [
        ("SpatialMap", "Qwen2.5-VL-7B"),
        ("SpatialMap", "Qwen2.5-VL-3B"),
        ("SpatialMap", "InternVL3-8B"),
        ("SpatialMap", "Gemma-3-4B"),
        ("SpatialMap", "Kimi-VL-A3B"),
        ("Grid", "Qwen2.5-VL-7B"),
        ("Grid", "Gemma-3-4B"),
        ("Ring", "Gemma-3-4B"),
    ]


def test_table8_csv_has_a_delta_column_and_latex_a_minus() -> None:
    table = open_weight_sft_table(table8_records(), "vqa")
    text = table.to_csv()
    header = text.splitlines()[0].split(",")
    assert header[:6] == ["Dataset", "Model", "VQA (InD)", "VQA (InD)_lo", "VQA (InD)_hi", "VQA (InD)_delta"]
    assert header[-6:] == ["TQA (OOD)", "TQA (OOD)_lo", "TQA (OOD)_hi", "TQA (OOD)_delta", "best", "partial"]
    rows = csv_rows(text)
    q7 = rows[0]
    assert (q7["Dataset"], q7["Model"]) == ("SpatialMap", "Qwen2.5-VL-7B")
    assert q7["VQA (InD)"] == "98.60" and q7["VQA (InD)_delta"] == "18.40"
    assert q7["TQA (OOD)"] == "57.60" and q7["TQA (OOD)_delta"] == "-5.80"
    assert q7["best"] == "VQA (InD);VQA (OOD)"
    kimi = rows[4]
    assert kimi["Model"] == "Kimi-VL-A3B" and kimi["VQA (InD)"] == "50.00" and kimi["VQA (InD)_delta"] == ""
    intern = rows[2]
    assert intern["TQA (OOD)_delta"] == "0.00"
    gap = rows[7]  # Grid, InternVL3-8B
    assert gap["VQA (InD)"] == "" and gap["VQA (InD)_delta"] == ""
    tex = table.to_latex()
    assert r"\textbf{98.6} (+18.4)" in tex and r"57.6 ($-$5.8)" in tex
    assert r"$\rightarrow$" in tex


def test_table8_intervals_follow_the_change() -> None:
    table = open_weight_sft_table(table8_records(n=500), "vqa")
    lo, hi = wilson(493, 500)  # 98.6 % of 500
    md = table.to_markdown()
    assert f"**98.6** (+18.4) [{100 * lo:.1f}, {100 * hi:.1f}]" in md
    assert "95 % confidence interval" in md and "An interval is the score's, not that of its change" in md
    assert "An interval is the score's" not in open_weight_sft_table(table8_records(), "vqa").to_markdown()
    row = csv_rows(table.to_csv())[0]
    assert row["VQA (InD)_lo"] == f"{100 * lo:.2f}" and row["VQA (InD)_hi"] == f"{100 * hi:.2f}"
    assert row["VQA (InD)_delta"] == "18.40"


# ------------------------------------------------------------------------------------------- Table 9


def test_table9_puts_the_trained_modality_first() -> None:
    table = open_weight_sft_table(table8_records(), "tqa")
    assert table.name == "open_weight_sft_tqa"
    assert [c.label for c in table.columns] == ["TQA (InD)", "TQA (OOD)", "VQA (InD)", "VQA (OOD)"]
    md = table.to_markdown()
    assert "| Dataset | Model | TQA (InD) | TQA (OOD) | VQA (InD) | VQA (OOD) |" in md
    assert "Text-to-Image (TQA→VQA)" in md
    # InternVL's only base record says spatialmap, yet it counts for grid (25.0 everywhere)
    assert "|  | InternVL3-8B | 75.0 (+50.0) | 65.0 (+40.0) | 45.0 (+20.0) | 25.0 (+0.0) |" in md
    # the VQA-trained runs are not in it
    assert "| SpatialMap | Qwen2.5-VL-7B | – | – | – | – |" in md
    assert "98.6" not in md


# ---------------------------------------------------------------------------------------- Tables 10-11


def test_table10_base_sft_rl_with_bold_on_the_higher() -> None:
    table = open_weight_rl_table(table10_records(), "Qwen2.5-VL-7B")
    assert table.name == "open_weight_rl_qwen2_5_vl_7b"
    md = table.to_markdown()
    assert (
        "| Test split | SpatialMap: Base | SpatialMap: SFT | SpatialMap: RL | Grid: Base | Grid: SFT | Grid: RL |"
        in md
    )
    assert "| VQA (InD) | 80.2 | 99.6 (+19.4) | **99.8** (+19.6) | 50.0 | 90.0 (+40.0) | – |" in md
    assert (
        "| VQA (OOD) | 80.2 | **98.2** (+18.0) | **98.2** (+18.0) | 50.0 | 80.0 (+30.0) | – |" in md
    )  # a tie
    assert "| TQA (InD) | 62.2 | 65.2 (+3.0) | **70.8** (+8.6) | 50.0 | 70.0 (+20.0) | – |" in md
    assert "| TQA (OOD) | 63.4 | 57.6 (-5.8) | **60.0** (-3.4) | 50.0 | 60.0 (+10.0) | – |" in md
    rows = csv_rows(table.to_csv())
    header = table.to_csv().splitlines()[0].split(",")
    assert "SpatialMap / Base_delta" not in header and "SpatialMap / RL_delta" in header
    assert rows[0]["Test split"] == "VQA (InD)"
    assert rows[0]["SpatialMap / Base"] == "80.20" and rows[0]["SpatialMap / RL_delta"] == "19.60"
    assert rows[0]["SpatialMap / SFT_delta"] == "19.40" and rows[0]["best"] == "SpatialMap / RL"
    assert rows[0]["Grid / RL"] == "" and rows[0]["Grid / RL_delta"] == ""
    # the model can be named by its hub id too
    assert open_weight_rl_table(table10_records(), QWEN7).to_markdown() == md


def test_only_models_with_rl_get_a_table10() -> None:
    tables = open_weight_tables(table10_records())
    assert [t.name for t in tables] == [
        "open_weight_sft_vqa",
        "open_weight_rl_qwen2_5_vl_7b",
        "open_weight_rl_qwen2_5_vl_3b",
    ]
    small = tables[2].to_markdown()
    assert "| VQA (InD) | 70.0 | **90.0** (+20.0) | 80.0 (+10.0) | – | – | – |" in small
    with pytest.raises(ConfigError, match="open-weight model"):
        open_weight_rl_table(table10_records(), "Llama-4")


def test_names_and_order_of_unknown_models() -> None:
    assert open_weight_name("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen2.5-VL-3B"
    assert open_weight_name("/models/gemma-3-4b-it/") == "Gemma-3-4B"
    assert open_weight_name("/ckpt/beta-vlm/") == "beta-vlm"
    records = [
        record("b", "/ckpt/beta-vlm/", "sft", "ring", "vqa", same("ring", 0.3)),
        record("a", "org/Alpha-VLM", "sft", "ring", "vqa", same("ring", 0.2)),
        record("k", KIMI, "sft", "ring", "vqa", same("ring", 0.1)),
    ]
    table = open_weight_sft_table(records)
    assert table.row_labels == [
        ("Ring", "Kimi-VL-A3B"),
        ("Ring", "Alpha-VLM"),
        ("Ring", "beta-vlm"),
    ]
    assert "| Ring | Kimi-VL-A3B | 10.0 | 10.0 | 10.0 | 10.0 |" in table.to_markdown()


def test_errors_without_open_weight_or_fine_tuned_records() -> None:
    with pytest.raises(ConfigError, match="No open-weight records"):
        open_weight_tables([record("v", None, "sft", "grid", "vqa", same("grid", 0.5))])
    with pytest.raises(ConfigError, match="no fine-tuned run"):
        open_weight_tables([record("b", QWEN7, "eval", "grid", "vqa", same("grid", 0.5))])


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_open_weight_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vlmlab.cli import main

    for item in [*table10_records(), record("vlmlab-run", None, "sft", "grid", "vqa", same("grid", 0.999))]:
        write_record(item, tmp_path / "runs" / item["run_id"])
    out = tmp_path / "report"
    assert main(["results", str(tmp_path / "runs"), "--layout", "open_weight", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # Table 8: the 7B beats the 3B and InternVL (90.0 each) on SpatialMap VQA (InD)
    assert "| SpatialMap | Qwen2.5-VL-7B | **99.6** (+19.4) |" in printed
    assert "| VQA (InD) | 80.2 | 99.6 (+19.4) | **99.8** (+19.6) | 50.0 | 90.0 (+40.0) | – |" in printed
    assert "99.9" not in printed
    names = {p.name for p in out.iterdir()}
    assert names == {
        f"{name}.{fmt}"
        for name in ("open_weight_sft_vqa", "open_weight_rl_qwen2_5_vl_7b", "open_weight_rl_qwen2_5_vl_3b")
        for fmt in ("md", "csv", "tex")
    }
    assert "SpatialMap / RL_delta" in (out / "open_weight_rl_qwen2_5_vl_7b.csv").read_text()


def test_cli_open_weight_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vlmlab.cli import main

    write_record(record("vlmlab-run", None, "sft", "grid", "vqa", same("grid", 0.5)), tmp_path / "runs")
    assert main(["results", str(tmp_path / "runs"), "--layout", "open_weight"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("vlmlab: error:") and "No open-weight records" in err
    assert not (tmp_path / "runs" / "report" / "open_weight_sft_vqa.md").exists()
