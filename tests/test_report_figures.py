"""Every figure draws every cell its table has: bar heights (and the scaling lines' points) read back from
the matplotlib Axes equal the table's numbers, cell for cell; a gap is an explicit "n/a" marker.

Built from the golden-records fixture (tests/report_records.py), including the transfer case the
quickstart showed wrong: Joint-Decoder / unfreeze-lm is the only TQA-trained SpatialMap run (47.0 %), and
the No-Train cells differ by recipe (0.0 % and 21.7 %), so neither may vanish into an average.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from report_records import design_records, scaling_records, transfer_records

from vlmlab.reports import plots
from vlmlab.reports.layouts import design_table, scaling_table, transfer_table
from vlmlab.reports.table import Table

DESIGN_KEYS = ["model.tokenizer", "model.fusion", "train.freeze"]


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list:
    drawn: list = []
    original = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.append(figure) or original(figure, path))
    return drawn


def drawn_cells(figure) -> tuple[dict[str, float], set[str]]:
    """{"<row>|<column key>": bar height} and the cells marked n/a, from the figure's artists."""
    bars, gaps = {}, set()
    for ax in figure.axes:
        for artist in ax.get_children():
            gid = artist.get_gid()
            if gid is None:
                continue
            if isinstance(artist, Rectangle):
                assert gid not in bars, f"{gid} drawn twice"
                bars[gid] = artist.get_height()
            elif isinstance(artist, Text) and artist.get_text() == "n/a":
                gaps.add(gid)
    return bars, gaps


def expected_cells(table: Table, keys: list[str]) -> tuple[dict[str, float], set[str]]:
    bars, gaps = {}, set()
    for row, kind in enumerate(table.kind):
        if kind != "data":
            continue
        for key in keys:
            value = table.value(row, key)
            if value is None:
                gaps.add(f"{row}|{key}")
            else:
                bars[f"{row}|{key}"] = 100 * value
    return bars, gaps


def assert_same(
    drawn: tuple[dict[str, float], set[str]], expected: tuple[dict[str, float], set[str]]
) -> None:
    bars, gaps = drawn
    assert set(bars) == set(expected[0]) and gaps == expected[1]
    for cell, height in expected[0].items():
        assert bars[cell] == pytest.approx(height), cell


def test_design_figure_draws_every_row_of_the_table(tmp_path: Path, figures: list) -> None:
    table = design_table(design_records(), DESIGN_KEYS)
    plots.plot_design(table, tmp_path / "design.png")
    assert_same(drawn_cells(figures[-1]), expected_cells(table, ["avg_ind", "avg_ood"]))
    # hand-checked: clip / Joint-Decoder / all-frozen in-domain (50.0 + 22.0 + 12.2 + 20.1 + 12.1) / 5
    bars, gaps = drawn_cells(figures[-1])
    assert bars["0|avg_ind"] == pytest.approx(23.28)
    assert {"7|avg_ind", "9|avg_ind"} <= gaps  # the run never made and the run without DocVQA


@pytest.mark.parametrize("modality", ["tqa", "vqa"])
def test_transfer_figure_draws_one_bar_per_recipe_and_condition(
    tmp_path: Path, figures: list, modality
) -> None:
    table = transfer_table(transfer_records(), modality, ["model.fusion", "train.freeze"])
    plots.plot_transfer(table, tmp_path / "transfer.png")
    keys = [column.key for column in table.columns]
    assert_same(drawn_cells(figures[-1]), expected_cells(table, keys))
    if modality == "tqa":
        bars, gaps = drawn_cells(figures[-1])
        jd_lm = table.row_labels.index(("Joint-Decoder", "unfreeze-lm"))
        jd_frozen = table.row_labels.index(("Joint-Decoder", "all-frozen"))
        assert bars[f"{jd_lm}|spatialmap|ind|same"] == pytest.approx(47.0)  # was drawn n/a
        assert bars[f"{jd_lm}|spatialmap|ind|none"] == pytest.approx(21.7)  # not averaged with 0.0
        assert bars[f"{jd_frozen}|spatialmap|ind|none"] == pytest.approx(0.0)
        assert f"{jd_frozen}|spatialmap|ind|same" in gaps


def test_scaling_figure_draws_every_cell_as_a_point(tmp_path: Path, figures: list) -> None:
    table = scaling_table(scaling_records(), DESIGN_KEYS, "model.backbone")
    plots.plot_scaling(table, tmp_path / "scaling.png")
    (figure,) = figures
    panels = {ax.get_title(): ax for ax in figure.axes}
    for title, metric in (("Average In-domain", "avg_ind"), ("Average Out-of-domain", "avg_ood")):
        ax = panels[title]
        sizes = [tick.get_text() for tick in ax.get_xticklabels()]
        lines = {
            line.get_label(): list(line.get_ydata()) for line in ax.get_lines() if line.get_label()[0] != "_"
        }
        for row, labels in enumerate(table.row_labels):
            value = table.value(row, metric)
            drawn = lines[" / ".join(labels[:-1])][sizes.index(labels[-1])]
            if value is None:
                assert math.isnan(drawn)
            else:
                assert drawn == pytest.approx(100 * value)
