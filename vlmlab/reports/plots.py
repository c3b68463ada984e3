"""Publication-style PNG figures from the tables of vlmlab.reports.

* `plot_design`: grouped bars of the in-domain and out-of-domain averages, one group per tokenizer (the
  table's first key) and one bar per freezing recipe / fusion (the remaining keys) -- Tables 1-5 at a glance.
* `plot_transfer`: Figures 4/5 -- per synthetic task (columns) and split (rows, InD / OOD), bars for No Train,
  same-modality and cross-modality training per table row (e.g. fusion / freezing recipe: every row of the
  table its own bar group, so no bar averages away a cell the table shows), with the chance level as a
  dashed line and the strongest trivial baseline (majority answer, Grid's start object, Ring's most
  frequent offset) dotted.
* `plot_scaling`: Figure 2 -- average accuracy against backbone size, one line per tokenizer x recipe.

Bars and points carry 95 % error bars wherever the table has an interval for the cell (`Table.interval`:
the record's own, that of the pooled samples of an averaged cell, or for a mean over seeds the interval
across them); a cell without one is drawn without. A bar that is a mean over seeds also draws each seed's
score as a hollow dot on it (gid "<row position>|<column key>|seeds"): the run-to-run spread in sight.
Missing values are gaps: no bar (a small "n/a" marks the slot) and broken lines, never zeros. Every bar and
"n/a" marker has the gid "<row position>|<column key>" of its table cell, so that a figure can be checked
against its table cell for cell. Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, so
nothing touches pyplot's global state or needs a display, and written atomically (vlmlab.files).
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from vlmlab.errors import ConfigError
from vlmlab.files import atomic_write_bytes
from vlmlab.reports.frame import parse_size
from vlmlab.reports.layouts import AVERAGE_LABELS
from vlmlab.reports.table import Table

__all__ = ["plot_design", "plot_scaling", "plot_transfer"]

# Okabe-Ito colour-blind-safe palette, then matplotlib's tab20 for long series lists.
_PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
_CONDITION_COLOURS = {"none": "#9E9E9E", "same": "#0072B2", "cross": "#E69F00"}
# each seed of a bar that is a mean over seeds: hollow dots on the bar, above the error bar
_SEED_POINTS = {"linestyle": "none", "marker": "o", "markersize": 3.2, "markerfacecolor": "white"}
_SEED_POINTS |= {"markeredgecolor": "#222222", "markeredgewidth": 0.8, "zorder": 5}
_ERRORBAR = {
    "fmt": "none",
    "ecolor": "#222222",
    "elinewidth": 0.8,
    "capsize": 2.0,
    "capthick": 0.8,
    "zorder": 5,
}
_DPI = 200
_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
}


def _colours(n: int) -> list[str]:
    if n <= len(_PALETTE):
        return _PALETTE[:n]
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


_FAMILIES = ["Blues", "Oranges", "Greens", "Purples", "Reds", "Greys"]


def _series_colours(series: Sequence[tuple[str, ...]]) -> list[Any]:
    """One hue family per value of the first series key (e.g. fusion), shades for the rest (e.g. recipe),
    so bars of the same architecture read as one block; a flat palette when there is one series key."""
    firsts = list(dict.fromkeys(s[0] for s in series if s))
    if len(firsts) < 2 or len(firsts) > len(_FAMILIES) or all(len(s) < 2 for s in series):
        return _colours(len(series))
    from matplotlib import colormaps

    colours = []
    for item in series:
        family = colormaps[_FAMILIES[firsts.index(item[0])]]
        siblings = [s for s in series if s[0] == item[0]]
        n, k = len(siblings), siblings.index(item)
        colours.append(family(0.35 + 0.55 * (k / (n - 1) if n > 1 else 0.5)))
    return colours


def _data_rows(table: Table) -> dict[int, tuple[str, ...]]:
    """Position -> labels of the table's data rows (not chance or baseline rows)."""
    return {i: labels for i, labels in enumerate(table.row_labels) if table.kind[i] == "data"}


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def _styled(function: Callable[..., Path]) -> Callable[..., Path]:
    """Run a plotting function under the module's rc style (rcParams are read as artists are created)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Path:
        with matplotlib.rc_context(_STYLE):
            return function(*args, **kwargs)

    return wrapper


def _style_axes(ax: Axes, ylabel: str | None = "Accuracy (%)") -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.grid(axis="y", color="#DDDDDD", linewidth=0.6)
    ax.set_axisbelow(True)
    if ylabel:
        ax.set_ylabel(ylabel)


def _save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight", facecolor="white")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _grouped_bars(
    ax: Axes,
    groups: Sequence[str],
    series: Sequence[str],
    values: Sequence[Sequence[float | None]],
    colours: Sequence[str],
    *,
    annotate: bool,
    intervals: Sequence[Sequence[tuple[float, float] | None]] | None = None,
    cells: Sequence[Sequence[str]] | None = None,
    seeds: Sequence[Sequence[tuple[float, ...] | None]] | None = None,
) -> None:
    """values[s][g]: bar of series s in group g; None -> an empty slot labelled n/a. intervals[s][g]: the
    bar's 95 % interval (fractions), drawn as an error bar; None -> no error bar. cells[s][g]: the gid of
    the bar (or its n/a marker), naming the table cell it draws. seeds[s][g]: each seed's score where the
    bar is a mean over seeds, drawn as points on the bar (gid "<cell>|seeds"), so the spread shows."""
    n_series = max(len(series), 1)
    width = 0.8 / n_series
    tops = [v for row in values for v in row if v is not None]
    tops += [ci[1] for row in intervals or () for ci in row if ci is not None]
    tops += [max(points) for row in seeds or () for points in row if points]
    top = max(tops, default=0.0)
    for s, colour in enumerate(colours[: len(series)]):
        for g in range(len(groups)):
            x = g - 0.4 + width * (s + 0.5)
            value = values[s][g]
            gid = cells[s][g] if cells is not None else None
            if value is None or math.isnan(value):
                ax.text(
                    x, 1.0, "n/a", rotation=90, ha="center", va="bottom", fontsize=6, color="#777777", zorder=4,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.4}, gid=gid,
                )  # fmt: skip
                continue
            ax.bar(
                x, 100 * value, width=width * 0.92, color=colour, edgecolor="white", linewidth=0.4, gid=gid
            )
            ci = intervals[s][g] if intervals is not None else None
            if ci is not None:
                below, above = max(0.0, value - ci[0]), max(0.0, ci[1] - value)
                ax.errorbar([x], [100 * value], yerr=[[100 * below], [100 * above]], **_ERRORBAR)
            points = seeds[s][g] if seeds is not None else None
            if points:
                ax.plot(
                    [x] * len(points), [100 * p for p in points], gid=None if gid is None else f"{gid}|seeds",
                    **_SEED_POINTS,
                )  # fmt: skip
            if annotate:
                label_y = 100 * (ci[1] if ci is not None else value) + 0.8
                ax.text(x, label_y, f"{100 * value:.1f}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylim(0, min(100.0, max(10.0, 100 * top * 1.18)))


@_styled
def plot_design(table: Table, path: str | os.PathLike[str], *, metrics: Sequence[str] | None = None) -> Path:
    """Grouped bars from a (non-pivoted) `design_table`: x = first key, bars = the other keys combined.

    `metrics` are column keys to draw, one panel each (default: the in-domain and out-of-domain averages,
    or the first benchmark columns when no average could be computed).
    """
    filled = [key for key in table.values.columns if table.values[key].notna().any()]
    if metrics is None:
        metrics = [m for m in ("avg_ind", "avg_ood") if m in filled] or filled[:2]
    if not metrics:
        raise ConfigError("Nothing to plot: every cell of the table is empty.")
    rows = _data_rows(table)
    groups = list(dict.fromkeys(labels[0] for labels in rows.values()))
    series_keys = list(dict.fromkeys(labels[1:] for labels in rows.values()))
    series = [" / ".join(key) for key in series_keys]
    lookup = {(labels[0], " / ".join(labels[1:])): i for i, labels in rows.items()}
    colours = _series_colours(series_keys)
    n_bars = len(groups) * len(series)
    width = min(16.0, max(5.5, 1.2 + 0.28 * n_bars + 0.3 * len(groups)))
    figure = _new_figure(width, 2.6 * len(metrics) + 0.6)
    axes = figure.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    for ax, metric in zip(axes, metrics):
        found = [[lookup.get((g, s)) for g in groups] for s in series]
        values = [[None if i is None else table.value(i, metric) for i in row] for row in found]
        intervals = [[None if i is None else table.interval(i, metric) for i in row] for row in found]
        cells = [[f"{i}|{metric}" for i in row] for row in found]
        seeds = [[None if i is None else table.seed_scores(i, metric) for i in row] for row in found]
        _grouped_bars(
            ax, groups, series, values, colours, annotate=n_bars <= 24, intervals=intervals, cells=cells,
            seeds=seeds,
        )  # fmt: skip
        _style_axes(ax)
        label = AVERAGE_LABELS.get(metric) or table.column(metric).label
        ax.set_title(label.replace("Avg ", "Average "), loc="left", fontweight="bold")
    axes[-1].set_xlabel(table.key_labels[0])
    if len(series) > 1 or series[0]:
        handles = [Patch(facecolor=c, label=s or "all") for s, c in zip(series, colours)]
        figure.legend(
            handles=handles,
            title=" / ".join(table.key_labels[1:]) or None,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
            alignment="left",
        )
    figure.suptitle(table.title, x=0.02, ha="left", fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


@_styled
def plot_transfer(table: Table, path: str | os.PathLike[str]) -> Path:
    """Figures 4/5 from a `transfer_table`: subplots task (columns) x split (rows), x = the table's first
    key (tokenizer; build the table grouped by tokenizer only to average over fusions, as the paper does),
    bars No Train / same-modality / cross-modality with their 95 % error bars, a dashed chance line
    where the chance is known and a dotted one at the best trivial baseline where the table has them."""
    data_rows = list(_data_rows(table))
    chance_row = next((i for i, kind in enumerate(table.kind) if kind == "chance"), None)
    baseline_rows = [i for i, kind in enumerate(table.kind) if kind == "baseline"]
    if not data_rows:
        raise ConfigError("Nothing to plot: the transfer table has no rows.")
    tasks = list(dict.fromkeys(column.key.split("|")[0] for column in table.columns))
    group_titles = {tuple(c.key.split("|")[:2]): c.group for c in table.columns}
    conditions = ["none", "same", "cross"]
    labels = {c.key.split("|")[2]: c.label for c in table.columns}
    groups = [" / ".join(table.row_labels[i]) for i in data_rows]
    colours = [_CONDITION_COLOURS[cond] for cond in conditions]
    n_cols = len(tasks)
    width = min(18.0, max(6.0, n_cols * (1.0 + 0.75 * len(groups))))
    figure = _new_figure(width, 5.4)
    axes = figure.subplots(2, n_cols, sharey=True, squeeze=False)
    for col, task in enumerate(tasks):
        for row_index, split in enumerate(("ind", "ood")):
            ax = axes[row_index, col]
            keys = [f"{task}|{split}|{cond}" for cond in conditions]
            values = [[table.value(i, key) for i in data_rows] for key in keys]
            intervals = [[table.interval(i, key) for i in data_rows] for key in keys]
            cells = [[f"{i}|{key}" for i in data_rows] for key in keys]
            seeds = [[table.seed_scores(i, key) for i in data_rows] for key in keys]
            _grouped_bars(
                ax,
                groups,
                [labels[c] for c in conditions],
                values,
                colours,
                annotate=False,
                intervals=intervals,
                cells=cells,
                seeds=seeds,
            )
            ax.set_ylim(0, 105)
            chance = table.value(chance_row, f"{task}|{split}|none") if chance_row is not None else None
            if chance is not None:
                ax.axhline(100 * chance, color="#C62828", linestyle="--", linewidth=1.1, zorder=3)
            # the best score a no-reasoning strategy reaches on this set: bars below it show no skill
            trivial = [v for i in baseline_rows if (v := table.value(i, f"{task}|{split}|none")) is not None]
            if trivial:
                ax.axhline(100 * max(trivial), color="#222222", linestyle=":", linewidth=1.2, zorder=3)
            _style_axes(ax, "Accuracy (%)" if col == 0 else None)
            ax.set_title(group_titles[(task, split)], fontweight="bold")
            if len(groups) > 3 or max(len(g) for g in groups) > 8:
                for tick in ax.get_xticklabels():
                    tick.set_rotation(30)
                    tick.set_ha("right")
    handles = [Patch(facecolor=c, label=labels[cond]) for cond, c in zip(conditions, colours)]
    if chance_row is not None:
        handles.append(Line2D([0], [0], color="#C62828", linestyle="--", linewidth=1.1, label="Chance"))
    if baseline_rows:
        label = "Best trivial baseline"
        handles.append(Line2D([0], [0], color="#222222", linestyle=":", linewidth=1.2, label=label))
    figure.suptitle(table.title, fontsize=10)
    figure.legend(
        handles=handles, loc="upper center", ncol=len(handles), bbox_to_anchor=(0.5, 0.965), frameon=False
    )
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    return _save(figure, path)


_LINESTYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P"]


@_styled
def plot_scaling(table: Table, path: str | os.PathLike[str]) -> Path:
    """Figure 2 from a `scaling_table`: x = backbone (the last key), ordered by parsed size; one line per
    series (the other keys), colour per first key (tokenizer), line style per the rest (recipe)."""
    rows = _data_rows(table)
    if not rows:
        raise ConfigError("Nothing to plot: the scaling table has no rows.")
    xs = sorted(
        {labels[-1] for labels in rows.values()},
        key=lambda label: (parse_size(label) is None, parse_size(label) or 0, label),
    )
    series = list(dict.fromkeys(labels[:-1] for labels in rows.values()))
    firsts = list(dict.fromkeys(s[0] if s else "" for s in series))
    rests = list(dict.fromkeys(s[1:] for s in series))
    colours = dict(zip(firsts, _colours(len(firsts))))
    lookup = {(labels[:-1], labels[-1]): i for i, labels in rows.items()}
    data = table.values.loc[list(rows)]
    metrics = [m for m in ("avg_ind", "avg_ood") if m in data and data[m].notna().any()]
    if not metrics:
        raise ConfigError("Nothing to plot: no row has an in-domain or out-of-domain average.")
    figure = _new_figure(4.2 * len(metrics) + 1.8, 3.4)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for key in series:
            ys = [table.value(lookup[(key, x)], metric) if (key, x) in lookup else None for x in xs]
            cis = [table.interval(lookup[(key, x)], metric) if (key, x) in lookup else None for x in xs]
            ys = [math.nan if y is None else 100 * y for y in ys]
            style = rests.index(key[1:])
            shown = [i for i, ci in enumerate(cis) if ci is not None and not math.isnan(ys[i])]
            if shown:
                ax.errorbar(
                    shown,
                    [ys[i] for i in shown],
                    yerr=[
                        [max(0.0, ys[i] - 100 * cis[i][0]) for i in shown],
                        [max(0.0, 100 * cis[i][1] - ys[i]) for i in shown],
                    ],
                    **{**_ERRORBAR, "ecolor": colours[key[0] if key else ""]},
                )
            ax.plot(
                range(len(xs)),
                ys,
                color=colours[key[0] if key else ""],
                linestyle=_LINESTYLES[style % len(_LINESTYLES)],
                marker=_MARKERS[style % len(_MARKERS)],
                markersize=5,
                linewidth=1.6,
                label=" / ".join(key) or "all",
            )
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels(xs)
        ax.set_xlim(-0.3, len(xs) - 0.7)
        ax.set_xlabel(table.key_labels[-1])
        _style_axes(ax)
        ax.set_title(AVERAGE_LABELS[metric].replace("Avg ", "Average "), fontweight="bold")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.92), frameon=False,
                  title=" / ".join(table.key_labels[:-1]) or None)  # fmt: skip
    figure.suptitle(table.title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)
