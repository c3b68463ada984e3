"""Replicates and paired tests (vlmlab.scoring.replicates) against values computed by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from vlmlab.scoring.intervals import wilson
from vlmlab.scoring.replicates import paired_comparison, seed_interval

T_975_2DF = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom (any printed table: 4.303)


def test_the_seed_interval_is_the_t_interval_by_hand() -> None:
    # 0.40, 0.44, 0.48: mean 0.44, s = 0.04, half = 4.3027 * 0.04 / sqrt(3) = 0.099366
    mean, (low, high) = seed_interval([0.40, 0.44, 0.48])
    assert mean == pytest.approx(0.44)
    half = T_975_2DF * 0.04 / math.sqrt(3)
    assert (low, high) == pytest.approx((0.44 - half, 0.44 + half))
    assert half == pytest.approx(0.099366, abs=1e-6)


def test_disagreeing_seeds_give_a_wide_interval_and_agreeing_ones_keep_the_items_uncertainty() -> None:
    # 20 %, 50 %, 80 %: s = 0.3, half = 4.3027 * 0.3 / sqrt(3) = 0.745 -> the whole of [0, 1]
    mean, (low, high) = seed_interval([0.2, 0.5, 0.8], n=64)
    assert mean == pytest.approx(0.5) and (low, high) == (0.0, 1.0)
    # three seeds that agree exactly: no run-to-run spread, but 64 items are still a sample
    mean, interval = seed_interval([0.5, 0.5, 0.5], n=64)
    assert interval == pytest.approx(wilson(32, 64))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_interval([0.5])


def _sign_flip_p_value(differences: list[int]) -> float:
    """Two-sided exact permutation p-value by enumerating every sign flip (the test's own truth)."""
    observed = abs(sum(differences))
    flips = list(itertools.product((1, -1), repeat=len(differences)))
    extreme = sum(abs(sum(s * d for s, d in zip(signs, differences))) >= observed for signs in flips)
    return extreme / len(flips)


def test_the_paired_test_gives_the_exact_permutation_p_value() -> None:
    a = [1, 1, 1, 1, 0, 1]
    b = [0, 0, 1, 0, 1, 0]
    # differences 1, 1, 0, 1, -1, 1: five non-zero signs sum to 3; |sum| >= 3 when 0, 1, 4 or 5 of them are
    # +1: C(5,0) + C(5,1) + C(5,4) + C(5,5) = 12 of 32 flips (the zero doubles both counts) -> 0.375
    result = paired_comparison(a, b)
    assert result.exact and result.n == 6 and result.seeds == (1, 1)
    assert result.p_value == pytest.approx(0.375)
    assert result.p_value == pytest.approx(_sign_flip_p_value([x - y for x, y in zip(a, b)]))
    assert result.difference == pytest.approx(0.5)
    assert not result.holds  # p = 0.375


def test_the_paired_test_with_seeds_averages_each_item_over_seeds() -> None:
    a = [[1, 1, 0, 1, 1, 1, 0, 1], [1, 0, 1, 1, 1, 1, 1, 1]]
    b = [[0, 1, 0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0, 1, 0]]
    per_item = [(x1 + x2) / 2 - (y1 + y2) / 2 for x1, x2, y1, y2 in zip(*a, *b)]
    # per item: 1, 0, 0.5, 0.5, 0.5, 1, 0, 1 -> enumerate the 2^8 swaps of A's and B's item means
    observed = abs(sum(per_item))
    extreme = sum(
        abs(sum(s * d for s, d in zip(signs, per_item))) >= observed - 1e-12
        for signs in itertools.product((1, -1), repeat=8)
    )
    result = paired_comparison(a, b)
    assert result.p_value == pytest.approx(extreme / 256)
    assert result.per_seed == pytest.approx((6 / 8 - 2 / 8, 7 / 8 - 2 / 8))
    assert result.seeds == (2, 2) and result.across_seeds


def test_identical_answers_differ_by_nothing() -> None:
    answers = [[1, 0, 1, 1, 0, 0, 1, 0, 1, 1]] * 3
    result = paired_comparison(answers, answers)
    assert result.difference == 0.0 and result.ci == (0.0, 0.0) and result.p_value == 1.0
    assert not result.holds and not result.across_seeds


def test_an_effect_of_one_lucky_seed_does_not_hold_across_seeds() -> None:
    rng = np.random.default_rng(0)
    base = (rng.random((3, 200)) < 0.3).astype(float)
    lucky = base.copy()
    lucky[0] = (rng.random(200) < 0.9).astype(float)  # one seed's break-through
    result = paired_comparison(lucky, base)
    assert result.p_value < 0.05  # over items, the seed-averaged answers differ...
    assert not result.across_seeds and not result.holds  # ...but two of three seeds show nothing
    steady = np.stack([(rng.random(200) < 0.6).astype(float) for _ in range(3)])
    assert paired_comparison(steady, base).holds


def test_mismatched_items_are_refused() -> None:
    with pytest.raises(ValueError, match="same items"):
        paired_comparison([1, 0, 1], [1, 0])


# ------------------------------------------------------------------------------ replicates in the tables


def _seed_record(seed: int | None, correct: int, fusion: str = "joint_decoder", n: int = 64) -> dict:
    from vlmlab.runs.record import make_record

    train: dict = {"freeze": "all-frozen", "output_dir": f"/runs/{fusion}-{seed}"}
    if seed is not None:
        train["seed"] = seed
    config = {"model": {"tokenizer": {"name": "clip"}, "fusion": fusion}, "train": train}
    metric = {"score": correct / n, "n": n, "ci": list(wilson(correct, n)), "correct": correct}
    return make_record(f"{fusion}-{seed}", config, {"vqav2": metric}, stage=2)


def _vqav2_cell(records: list[dict]) -> str:
    from vlmlab.reports.layouts import design_table

    table = design_table(records, ["model.fusion"], benchmarks=["vqav2"], averages_only=False)
    markdown = table.to_markdown()
    row = next(line for line in markdown.splitlines() if line.startswith("| Joint-Decoder"))
    return row.split("|")[2].strip()


def test_three_seeds_read_as_their_mean_with_the_interval_across_them() -> None:
    # 20 %, 50 %, 80 % of 64 items (13, 32, 51 correct: 20.3, 50.0, 79.7 %)
    cell = _vqav2_cell([_seed_record(0, 13), _seed_record(1, 32), _seed_record(2, 51)])
    value, interval, seeds = cell.replace("**", "").partition(" [")[0], cell.split("[")[1].split("]")[0], cell
    assert value == "50.0" and seeds.endswith("(3 seeds)")
    low, high = (float(x) for x in interval.split(", "))
    assert high - low >= 30
    # by hand: s = sqrt(((13-32)^2 + (51-32)^2) / 2) / 64 = 0.296875; t = 4.3027; half = 0.7375 -> [0, 100]
    assert (low, high) == (0.0, 100.0)


def test_one_run_keeps_its_wilson_interval_and_says_nothing_of_seeds() -> None:
    low, high = wilson(32, 64)
    assert _vqav2_cell([_seed_record(0, 32)]) == f"50.0 [{100 * low:.1f}, {100 * high:.1f}]"
    # records without a seed (hand-made, older tools) are never merged: pooled as before
    pooled = _vqav2_cell([_seed_record(None, 13), _seed_record(None, 51)])
    assert "seeds" not in pooled and pooled.startswith("50.0 [")


def test_only_records_differing_in_the_seed_alone_are_replicates() -> None:
    from vlmlab.reports.replicates import merge_replicates

    records = [_seed_record(0, 13), _seed_record(1, 51), _seed_record(0, 20, "mot")]
    merged = merge_replicates(records)
    assert len(merged) == 2
    point = next(r for r in merged if r["config"]["model"]["fusion"] == "joint_decoder")
    assert point["replicates"] == ["joint_decoder-0", "joint_decoder-1"]
    assert point["metrics"]["vqav2"]["seeds"] == 2
    assert point["metrics"]["vqav2"]["score"] == pytest.approx(32 / 64)
    assert next(r for r in merged if r["config"]["model"]["fusion"] == "mot") == records[2]


# ------------------------------------------------------------------------------------ --compare


def _scored_record(fusion: str, seed: int, outcomes: list[int]) -> dict:
    from vlmlab.runs.record import make_record

    n, correct = len(outcomes), sum(outcomes)
    cell = {"score": correct / n, "n": n, "ci": list(wilson(correct, n)), "correct": correct}
    cell.update(outcomes=outcomes, items="same-items")
    config = {
        "model": {"tokenizer": "clip-tiny", "fusion": fusion, "backbone": "qwen3-tiny"},
        "train": {"freeze": "unfreeze-lm", "seed": seed, "output_dir": f"/runs/{fusion}/{seed}"},
    }
    metrics = {"spatialmap": {"vqa": {"ind": cell}}}
    return make_record(
        f"{fusion}-{seed}", config, metrics, stage=2, chance={"spatialmap": {"vqa": {"ind": 0.25}}}
    )


def _results(tmp_path, records: list[dict], *extra: str, capsys) -> tuple[int, str, str]:
    from vlmlab.cli import main
    from vlmlab.runs.record import write_record

    for record in records:
        write_record(record, tmp_path / "runs")
    code = main(["results", str(tmp_path / "runs"), "--layout", "transfer", "--no-plot", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


JD = [[1, 1, 0, 1, 1, 1, 0, 1], [1, 0, 1, 1, 1, 1, 1, 1]]
MOT = [[0, 1, 0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0, 1, 0]]


def test_compare_prints_the_paired_test_over_samples_and_seeds(tmp_path, capsys) -> None:
    records = [_scored_record("joint_decoder", s, JD[s]) for s in (0, 1)]
    records += [_scored_record("mot", s, MOT[s]) for s in (0, 1)]
    code, out, _ = _results(tmp_path, records, "--compare", "model.fusion=joint_decoder,mot", capsys=capsys)
    assert code == 0
    line = next(x for x in out.splitlines() if x.strip().startswith("spatialmap.vqa.ind"))
    # per item over the two seeds: JD - MoT = 1, 0, .5, .5, .5, 1, 0, 1 -> mean 0.5625; its exact p-value
    # by enumerating the 2^8 swaps (test_the_paired_test_with_seeds_averages_each_item_over_seeds)
    per_item = [(a1 + a2 - b1 - b2) / 2 for a1, a2, b1, b2 in zip(*JD, *MOT)]
    observed = abs(sum(per_item))
    extreme = sum(
        abs(sum(s * d for s, d in zip(signs, per_item))) >= observed - 1e-12
        for signs in itertools.product((1, -1), repeat=8)
    )
    assert "Joint-Decoder - MoT = +56.2 points" in line
    assert f"p = {extreme / 256:.4f} (exact paired permutation over 8 items), 2 seeds" in line
    assert "per seed +50.0 / +62.5" in line
    assert (tmp_path / "runs" / "report" / "compare.md").exists()
    # the table reads the two seeds as one design point each
    assert "(2 seeds)" in out


def test_compare_of_identical_answers_shows_no_difference(tmp_path, capsys) -> None:
    records = [_scored_record("joint_decoder", 0, JD[0]), _scored_record("mot", 0, JD[0])]
    code, out, _ = _results(tmp_path, records, "--compare", "model.fusion=mot,joint_decoder", capsys=capsys)
    assert code == 0
    assert "MoT - Joint-Decoder = +0.0 points [+0.0, +0.0], p = 1.0000" in out
    assert "1 seed: no effect shown" in out


@pytest.mark.parametrize(
    ("compare", "expected"),
    [
        ("model.fusoin=joint_decoder,mot", ["no record has the config key 'model.fusoin'"]),
        ("model.fusion=joint_decoder,moe", ["model.fusion='moe'", "Valid choices: joint_decoder, mot"]),
        ("model.fusion=mot", ["--compare expects KEY=A,B", "'model.fusion=mot'"]),
    ],
)
def test_compare_names_a_bad_key_or_value_and_the_choices(tmp_path, capsys, compare, expected) -> None:
    records = [_scored_record("joint_decoder", 0, JD[0]), _scored_record("mot", 0, MOT[0])]
    code, out, err = _results(tmp_path, records, "--compare", compare, capsys=capsys)
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1
    for needle in expected:
        assert needle in err, err


def test_the_figure_draws_each_seed_on_its_bar(tmp_path, monkeypatch) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    from vlmlab.reports import plots
    from vlmlab.reports.layouts import design_table

    drawn: list = []
    original = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.append(figure) or original(figure, path))
    records = [_seed_record(0, 13), _seed_record(1, 32), _seed_record(2, 51), _seed_record(0, 20, "mot")]
    table = design_table(records, ["model.fusion"], benchmarks=["vqav2"], averages_only=False)
    plots.plot_design(table, tmp_path / "design.png", metrics=["vqav2"])
    artists = {a.get_gid(): a for ax in drawn[-1].axes for a in ax.get_children() if a.get_gid()}
    row = next(i for i in range(len(table.values)) if table.row_labels[i] == ("Joint-Decoder",))
    bar, points = artists[f"{row}|vqav2"], artists[f"{row}|vqav2|seeds"]
    assert isinstance(bar, Rectangle) and bar.get_height() == pytest.approx(50.0)
    # the three seeds as they were scored (13, 32, 51 of 64), on the bar's x
    assert isinstance(points, Line2D)
    assert sorted(points.get_ydata()) == pytest.approx([100 * 13 / 64, 50.0, 100 * 51 / 64])
    assert list(points.get_xdata()) == pytest.approx([bar.get_x() + bar.get_width() / 2] * 3)
    # a single run (MoT, one seed) is a bar with its interval and no seed points
    other = next(i for i in range(len(table.values)) if i != row and table.kind.iloc[i] == "data")
    assert f"{other}|vqav2" in artists and f"{other}|vqav2|seeds" not in artists


def test_vlmlab_results_prints_the_seeds_cell_and_writes_their_count(tmp_path, capsys) -> None:
    from vlmlab.cli import main
    from vlmlab.runs.record import write_record

    for seed, correct in ((0, 13), (1, 32), (2, 51)):
        write_record(_seed_record(seed, correct), tmp_path / "runs" / f"s{seed}" / "result.json")
    write_record(_seed_record(0, 32, "mot"), tmp_path / "runs" / "mot" / "result.json")
    code = main(["results", str(tmp_path / "runs"), "--group-by", "model.fusion", "--no-plot"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.replace("**", "").splitlines()  # (bold: the best of a column, here a tie)
    row = next(line for line in lines if line.startswith("| Joint-Decoder"))
    assert "| 50.0 [0.0, 100.0] (3 seeds) |" in row
    low, high = wilson(32, 64)  # the single MoT run: its own Wilson interval, no seeds
    mot = next(line for line in lines if line.startswith("| MoT"))
    assert f"50.0 [{100 * low:.1f}, {100 * high:.1f}] |" in mot and "seed" not in mot
    (csv,) = (tmp_path / "runs" / "report").glob("*.csv")
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    seeds = header.index(next(h for h in header if h.endswith("_seeds")))
    counts = {line.split(",")[0]: line.split(",")[seeds] for line in lines[1:]}
    assert counts == {"Joint-Decoder": "3", "MoT": ""}
