"""Trivial baselines of the synthetic tasks and Grid's start-object shortcut.

Independent truths: the walk's return probability enumerated here move by move (exact fractions, not the
generator's dynamic programme), hand-derived as 197/648 for the paper's 3 x 3 / 8-move Grid; answers and
offsets re-read from the text question; a digest of the default Grid output pinned before the balancing
option existed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from fractions import Fraction

import pytest

from vlmlab.data.synthetic import generate_split, write_split
from vlmlab.data.synthetic.grid import return_probability
from vlmlab.data.synthetic.stats import shortcut_baselines, split_stats
from vlmlab.errors import ConfigError
from vlmlab.reports.layouts import transfer_table
from vlmlab.runs.record import make_record

STEP = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}
UNDO = {"up": "down", "down": "up", "left": "right", "right": "left"}
WORDS = {
    w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())
}


def binomial_tolerance(p: float, n: int, z: float = 4.0) -> float:
    return z * math.sqrt(p * (1 - p) / n)


def returns(n: int, row: int, col: int, length: int) -> Fraction:
    """P(a walk ends where it started), enumerating every walk with its probability: each step picks
    uniformly among the in-grid moves that do not undo the previous one."""
    total = Fraction(0)

    def walk(r: int, c: int, last: str | None, left: int, p: Fraction) -> None:
        nonlocal total
        if left == 0:
            total += p if (r, c) == (row, col) else 0
            return
        moves = [
            m for m, (dr, dc) in STEP.items() if 0 <= r + dr < n and 0 <= c + dc < n and m != UNDO.get(last)
        ]
        for m in moves:
            walk(r + STEP[m][0], c + STEP[m][1], m, left - 1, p / len(moves))

    walk(row, col, None, length, Fraction(1))
    return total


def grid_from_text(sample: dict) -> tuple[str, str]:
    """(start object, answer) read from the text question and solved on its row-major listing."""
    question = sample["question"]
    rows = [line.split(", ") for line in re.findall(r"^Row \d+: (.+)\.$", question, re.M)]
    start, program = re.search(r"Start at the (.+?), move (.+?)\. Which object", question).groups()
    row, col = next((r, c) for r, names in enumerate(rows) for c, name in enumerate(names) if name == start)
    for part in program.split(", then "):
        direction, count = re.fullmatch(r"(up|down|left|right) (\w+) steps?", part).groups()
        k = WORDS[count] if count in WORDS else int(count)
        row, col = row + STEP[direction][0] * k, col + STEP[direction][1] * k
    return start, rows[row][col]


def ring_offset_from_text(sample: dict) -> int:
    question = sample["question"]
    names = re.search(
        r"Listed clockwise starting from the top of the ring, they are: (.+?)\. After", question
    )[1].split(", ")
    start, count, direction = re.search(
        r"Starting from the (.+?), move (\w+) steps? (clockwise|counterclockwise)\.", question
    ).groups()
    steps = WORDS[count] if count in WORDS else int(count)
    return (steps if direction == "clockwise" else -steps) % len(names)


def spatial_from_geometry(sample: dict) -> str:
    """SpatialMap's answer from the drawn centres alone (y grows southwards, as in images)."""
    centres = {o["name"]: o["center"] for o in sample["meta"]["objects"]}
    (qx, qy), (rx, ry) = (centres[sample["meta"]["query"][k]] for k in ("object", "reference"))
    return ("North" if qy < ry else "South") + ("east" if qx > rx else "west")


# ----------------------------------------------------------------------------------------- the shortcut


def test_return_probability_is_exact_and_the_paper_grid_returns_30_4_percent() -> None:
    exact = {(r, c): returns(3, r, c, 8) for r in range(3) for c in range(3)}
    # by hand: 11/48 from a corner, 13/36 from an edge, 3/8 from the centre; mean 197/648 = 30.40 %
    assert exact[(0, 0)] == Fraction(11, 48) and exact[(0, 1)] == Fraction(13, 36)
    assert exact[(1, 1)] == Fraction(3, 8)
    assert sum(exact.values()) / 9 == Fraction(197, 648)
    for (r, c), value in exact.items():
        assert return_probability(3, r, c, 8) == pytest.approx(float(value), abs=1e-12)
    assert return_probability(4, 0, 0, 9) == 0.0 == returns(4, 0, 0, 9)  # odd: never back (chessboard)
    assert return_probability(4, 1, 2, 6) == pytest.approx(float(returns(4, 1, 2, 6)), abs=1e-12)


def test_default_grid_output_is_unchanged() -> None:
    """The digest of 900 default Grid samples (text and meta), taken before `balance_start` existed:
    configs and cached splits rely on the default generator's bytes."""
    digest = hashlib.sha256()
    for split in ("train", "test", "ood"):
        for sample in generate_split("grid", split, 300, seed=5, image=False):
            digest.update(json.dumps(sample, sort_keys=True).encode())
    assert digest.hexdigest() == "acd28be476e8f21ccb6aa7d13df5b8e7ea685d22321240e7f48c9bb2bca1ab0a"
    off = list(generate_split("grid", "test", 50, seed=5, image=False, balance_start=False))
    assert off == list(generate_split("grid", "test", 50, seed=5, image=False))


@pytest.fixture(scope="module")
def grid_test():
    n = 3000
    return {
        balanced: list(generate_split("grid", "test", n, seed=1, image=False, balance_start=balanced))
        for balanced in (False, True)
    }


def test_balancing_brings_answer_equals_start_to_chance(grid_test) -> None:
    chance = 1 / 9
    for balanced, samples in grid_test.items():
        n = len(samples)
        rate = sum(start == answer for start, answer in map(grid_from_text, samples)) / n
        expected = chance if balanced else 197 / 648
        assert abs(rate - expected) < binomial_tolerance(expected, n), (balanced, rate)
    # ... from every kind of start cell (corner, edge, centre), not only on average
    by_kind: dict[str, list[bool]] = {}
    for sample in grid_test[True]:
        cell = next(o for o in sample["meta"]["objects"] if o["name"] == sample["meta"]["start"])
        kind = {0: "corner", 1: "edge", 2: "centre"}[(cell["row"] == 1) + (cell["col"] == 1)]
        by_kind.setdefault(kind, []).append(sample["answer"] == sample["meta"]["start"])
    for kind, hits in by_kind.items():
        assert abs(sum(hits) / len(hits) - chance) < binomial_tolerance(chance, len(hits)), kind


def test_balanced_samples_stay_valid(grid_test) -> None:
    samples = grid_test[True]
    n = len(samples)
    starts, ends = Counter(), Counter()
    for sample in samples:
        meta = sample["meta"]
        cells = {o["name"]: (o["row"], o["col"]) for o in meta["objects"]}
        row, col = cells[meta["start"]]
        starts[(row, col)] += 1
        assert len(meta["moves"]) == 8  # lengths unchanged
        for previous, move in zip([None, *meta["moves"]], meta["moves"]):
            assert move != UNDO.get(previous)  # never undoes a move
            row, col = row + STEP[move][0], col + STEP[move][1]
            assert 0 <= row < 3 and 0 <= col < 3  # never leaves the grid
        assert cells[sample["answer"]] == (row, col) and sample["answer"] in sample["options"]
        assert grid_from_text(sample)[1] == sample["answer"]  # the text still solves to it
        ends[(row, col)] += 1
    # start cells stay uniform; every cell is still an answer
    for count in starts.values():
        assert abs(count / n - 1 / 9) < binomial_tolerance(1 / 9, n)
    assert len(starts) == len(ends) == 9


def test_balance_start_is_checked_and_grid_only() -> None:
    with pytest.raises(ConfigError, match="balance_start must be true or false, got 'yes'"):
        list(generate_split("grid", "test", 1, image=False, balance_start="yes"))
    with pytest.raises(ConfigError, match="'balance_start'.*max_steps, min_steps, num_objects"):
        list(generate_split("ring", "test", 1, image=False, balance_start=True))


# ---------------------------------------------------------------------------------------- the baselines


def test_stats_baselines_equal_hand_counts() -> None:
    grid = list(generate_split("grid", "test", 400, seed=2, image=False))
    ring = list(generate_split("ring", "ood", 400, seed=2, image=False))
    spatial = list(generate_split("spatialmap", "test", 400, seed=2, image=False))
    stats = split_stats(grid + ring + spatial)

    solved = [grid_from_text(s) for s in grid]
    answers = Counter(answer for _, answer in solved)
    assert stats[("grid", "test")]["start_accuracy"] == sum(a == b for a, b in solved) / 400
    assert stats[("grid", "test")]["majority_accuracy"] == max(answers.values()) / 400
    assert stats[("grid", "test")]["offset_accuracy"] is None

    offsets = Counter(ring_offset_from_text(s) for s in ring)
    top, count = offsets.most_common(1)[0]
    assert stats[("ring", "ood")]["offsets"] == dict(sorted(offsets.items()))
    assert stats[("ring", "ood")]["offset_accuracy"] == count / 400
    assert offsets[stats[("ring", "ood")]["offset_value"]] == count
    # Ring offsets are uniform (steps 1..12 either way on 12 objects): the baseline is chance plus noise
    assert abs(count / 400 - 1 / 12) < binomial_tolerance(1 / 12, 400)
    assert stats[("ring", "ood")]["start_accuracy"] is None

    relations = Counter(spatial_from_geometry(s) for s in spatial)
    assert stats[("spatialmap", "test")]["majority_accuracy"] == max(relations.values()) / 400
    baselines = shortcut_baselines(spatial)
    assert baselines["chance"] == 0.25 and baselines["start"] is None and baselines["offset"] is None
    with pytest.raises(ConfigError, match="one task"):
        shortcut_baselines(grid[:2] + ring[:2])


def test_cli_data_stats_prints_the_baselines(tmp_path, capsys) -> None:
    from vlmlab.cli import main

    write_split("grid", "test", tmp_path, num=60, image_size=32, progress=False, workers=1)
    write_split("ring", "test", tmp_path, num=60, image_size=32, progress=False, workers=1)
    samples = {t: list(generate_split(t, "test", 60, image=False)) for t in ("grid", "ring")}
    assert main(["data", "stats", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    start = sum(a == b for a, b in map(grid_from_text, samples["grid"])) / 60
    assert f"answer-the-start-object accuracy: {start:.3f}" in printed
    top, count = Counter(ring_offset_from_text(s) for s in samples["ring"]).most_common(1)[0]
    assert f"most-frequent-offset accuracy: {count / 60:.3f}" in printed
    assert "chance accuracy (uniform guess): 0.111" in printed and "majority-class accuracy" in printed


# --------------------------------------------------------------------------------------- in eval records


def test_eval_baselines_cover_exactly_the_scored_samples() -> None:
    from vlmlab.config import DataSourceConfig
    from vlmlab.scoring.transfer import _baselines

    raws = list(generate_split("grid", "test", 40, seed=0, image=False))
    kept = raws[::2]  # as if every other prompt had been too long to score
    items = [{"id": f"{raw['id']}-tqa"} for raw in kept]
    source = DataSourceConfig(kind="synthetic", task="grid", mode="tqa", split="test")
    found = _baselines(source, 40, items)
    solved = [grid_from_text(s) for s in kept]
    assert found["start"] == sum(a == b for a, b in solved) / 20
    assert found["majority"] == max(Counter(b for _, b in solved).values()) / 20
    assert "offset" not in found
    # the eval's own difficulty: a 2x2 grid of one move can never end on its start
    easy = DataSourceConfig(kind="synthetic", task="grid", mode="vqa", split="test")
    easy.difficulty = {"grid_size": 2, "max_steps": 1}
    raws = list(generate_split("grid", "test", 10, seed=0, image=False, grid_size=2, max_steps=1))
    assert _baselines(easy, 10, [{"id": f"{r['id']}-vqa"} for r in raws])["start"] == 0.0


def transfer_records(with_baselines: bool) -> list[dict]:
    chance = {"grid": {m: {"ind": 1 / 9, "ood": 1 / 16} for m in ("vqa", "tqa")}}
    chance["ring"] = {m: {"ind": 1 / 8, "ood": 1 / 12} for m in ("vqa", "tqa")}
    baselines = {
        "grid": {m: {"ind": {"majority": 0.04, "start": 0.304}, "ood": {"majority": 0.036, "start": 0.066}}
                 for m in ("vqa", "tqa")},
        "ring": {m: {"ind": {"majority": 0.036, "offset": 0.156}, "ood": {"majority": 0.03, "offset": 0.116}}
                 for m in ("vqa", "tqa")},
    }  # fmt: skip
    records = []
    for fusion in ("joint_decoder", "mot"):
        config = {"model": {"tokenizer": "clip", "fusion": fusion}}
        metrics = {t: {m: {"ind": 0.5, "ood": 0.2} for m in ("vqa", "tqa")} for t in ("grid", "ring")}
        extra = {"baselines": baselines} if with_baselines else {}
        records.append(make_record(f"{fusion}-nt", config, metrics, stage=2, chance=chance, **extra))
    return records


def test_transfer_tables_show_the_baselines_beside_chance() -> None:
    table = transfer_table(transfer_records(True), "tqa")
    kinds = [(kind, labels[0]) for kind, labels in zip(table.kind, table.row_labels)]
    assert kinds[:4] == [
        ("chance", "Chance"),
        ("baseline", "Majority answer"),
        ("baseline", "Answer = start (Grid)"),
        ("baseline", "Most frequent offset (Ring)"),
    ]
    assert table.value(2, "grid|ind|none") == 0.304 and table.value(2, "grid|ood|cross") == 0.066
    assert table.value(2, "ring|ind|none") is None  # Grid only
    assert table.value(3, "ring|ood|same") == 0.116 and table.value(3, "grid|ind|none") is None
    markdown = table.to_markdown()
    assert "| Chance |  | 11.1 | 11.1 | 11.1 | 6.2 | 6.2 | 6.2 |" in markdown
    assert "| Answer = start (Grid) |  | 30.4 | 30.4 | 30.4 | 6.6 | 6.6 | 6.6 | – |" in markdown
    assert "| Majority answer |  | 4.0 | 4.0 | 4.0 | 3.6 |" in markdown
    assert "Baseline rows: accuracy of answering without reasoning" in markdown
    # never marked best, never given an interval; the runs' rows are unchanged
    assert all(i >= 4 for marks in table.best().values() for i in marks)
    assert table.row_labels[4:] == [("clip", "Joint-Decoder"), ("clip", "MoT")]
    latex = table.to_latex().splitlines()
    offset_line = next(i for i, line in enumerate(latex) if line.startswith("Most frequent offset"))
    # one rule under the header and one under the last baseline row: chance and baselines form one block
    assert latex[offset_line + 1] == r"\midrule" and latex.count(r"\midrule") == 2
    assert "Most frequent offset (Ring)" in table.collapse(1).to_markdown()

    legacy = transfer_table(transfer_records(False), "tqa")
    assert list(legacy.kind) == ["chance", "data", "data"]
    assert any("predate them" in note for note in legacy.notes)


def test_transfer_figure_draws_the_best_baseline(tmp_path, monkeypatch) -> None:
    from vlmlab.reports import plots

    figures = []
    original = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure) or original(figure, path))
    plots.plot_transfer(transfer_table(transfer_records(True), "tqa").collapse(1), tmp_path / "t.png")
    (figure,) = figures
    dotted = {
        ax.get_title(): [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
        for ax in figure.axes
    }
    # per panel the highest baseline: Grid InD answer = start 30.4; Ring OOD most frequent offset 11.6
    assert dotted["Grid TQA (InD)"] == pytest.approx([30.4])
    assert dotted["Ring TQA (OOD)"] == pytest.approx([11.6])
