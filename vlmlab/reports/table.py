"""A paper-style table held as DataFrames, rendered to Markdown, CSV and LaTeX by pandas.

A `Table` is the cells of a layout: `values` (rows x column keys, fractions, NaN = a gap), the evidence
of each cell (`evidence`: n, correct, ci_lo, ci_hi frames), which averages are `partial`, the `reference`
a change is computed from (Tables 8-11), the row `labels` (one column per key, as displayed) and each
row's `kind` ("data", "chance" or "baseline"). Rendering turns those into frames of cell strings that
`DataFrame.to_markdown` (tabulate), `DataFrame.to_csv` and `Styler.to_latex` write, following the
conventions of vlmlab.reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
from tabulate import DataRow, TableFormat

from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.reports.frame import EVIDENCE_FIELDS, MISSING_LABEL, key_label, pool

MISSING = {"md": MISSING_LABEL, "tex": "--", "csv": ""}
INTERVAL_NOTE = (
    "[low, high]: 95 % confidence interval (Wilson for 0/1 outcomes, percentile bootstrap for soft scores); "
    "a cell averaging several results has the interval of their pooled samples where each records its "
    "0/1 outcomes on as many samples, and none otherwise."
)
SEEDS_NOTE = (
    "(k seeds): the mean over k training seeds of one design point; its interval is the t-interval across "
    "the seeds, widened where narrower to the Wilson interval of the mean at the items scored (one seed "
    "alone cannot show run-to-run variation)."
)
DELTA_INTERVAL_NOTE = "An interval is the score's, not that of its change from base."
FORMATS = ("md", "csv", "tex")

_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
    "†": r"$^\dagger$",
    "→": r"$\rightarrow$",
}


def escape_tex(text: str) -> str:
    """Plain text (labels, titles, notes) as LaTeX; the table's own dash, dagger and arrow as LaTeX's."""
    return "".join(_TEX_ESCAPES.get(char, char) for char in text)


def _in_rows(mask: pd.DataFrame, rows: pd.Series) -> pd.DataFrame:
    """A cell mask restricted to the rows where `rows` holds."""
    return mask.apply(lambda column: column & rows)


@dataclass
class Column:
    """One value column: `key` is its id, `label` its header, `group` an optional spanning header."""

    key: str
    label: str
    group: str | None = None
    mark_best: bool = True
    # the cell shows its change from the row's `reference` value (Tables 8-11: from the base model)
    delta: bool = False


@dataclass
class Table:
    """A paper-style table (see the module docstring); frames share one RangeIndex, one row per row."""

    name: str
    title: str
    keys: list[str]
    columns: list[Column]
    labels: pd.DataFrame  # columns = keys, the displayed group values
    values: pd.DataFrame  # columns = column keys, fractions, NaN = gap
    kind: pd.Series
    notes: list[str] = field(default_factory=list)
    evidence: dict[str, pd.DataFrame] = field(default_factory=dict)  # n, correct, ci_lo, ci_hi
    partial: pd.DataFrame | None = None  # bool: the cell is a partial average (†)
    reference: pd.DataFrame | None = None  # the value a `delta` column's change is from
    # how many leading label columns are blanked where they repeat the row above (as the paper prints its
    # tokenizer column); flags and the last key are always printed, so every row reads on its own
    blank: int = 0
    # a key whose values are compared separately when marking the best per column (the scaling table:
    # the best setup at each backbone size); None = the whole column
    best_within: str | None = None
    # sets of column keys compared within each row instead of down the column (Tables 10-11: the higher of
    # SFT and RL per dataset and test split); those columns are not compared down the column
    best_among: list[tuple[str, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        keys = [column.key for column in self.columns]
        self.values = self.values.reindex(columns=keys).astype(float)
        empty = pd.DataFrame(math.nan, index=self.values.index, columns=keys)
        self.evidence = {f: self.evidence.get(f, empty).reindex(columns=keys) for f in EVIDENCE_FIELDS}
        if self.partial is None:
            self.partial = pd.DataFrame(False, index=self.values.index, columns=keys)
        if self.reference is None:
            self.reference = empty
        self.reference = self.reference.reindex(columns=keys)

    # ------------------------------------------------------------------------------------- reading

    @property
    def key_labels(self) -> list[str]:
        return [key_label(key) for key in self.keys]

    @property
    def row_labels(self) -> list[tuple[str, ...]]:
        """Each row's labels, one per key."""
        return list(self.labels.itertuples(index=False, name=None))

    def column(self, key: str) -> Column:
        for column in self.columns:
            if column.key == key:
                return column
        raise unknown_choice("table column", key, [c.key for c in self.columns])

    def value(self, row: int, key: str) -> float | None:
        """The cell's value (a fraction), None for a gap."""
        value = self.values.iloc[row][key]
        return None if pd.isna(value) else float(value)

    def interval(self, row: int, key: str) -> tuple[float, float] | None:
        """The 95 % interval (fractions) of a cell; None for a gap, a chance or baseline row, or none."""
        low, high = self.evidence["ci_lo"].iloc[row][key], self.evidence["ci_hi"].iloc[row][key]
        if self.kind.iloc[row] != "data" or pd.isna(self.values.iloc[row][key]) or pd.isna(low):
            return None
        return float(low), float(high)

    def seed_scores(self, row: int, key: str) -> tuple[float, ...] | None:
        """Each seed's score (fractions) of a cell that is a mean over seeds; None otherwise."""
        scores = self.evidence["seed_scores"].iloc[row][key]
        if self.kind.iloc[row] != "data" or pd.isna(self.values.iloc[row][key]):
            return None
        return tuple(scores) if isinstance(scores, tuple) else None

    def intervals(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(low, high) of every cell, NaN where `interval` is None."""
        shown = _in_rows(self.values.notna() & self.evidence["ci_lo"].notna(), self.kind == "data")
        return self.evidence["ci_lo"].where(shown), self.evidence["ci_hi"].where(shown)

    def change(self, digits: int = 1) -> pd.DataFrame:
        """Each cell's change from its reference in points (%), from both values at `digits` decimals (as
        displayed, so that the shown numbers add up); NaN where either is missing."""
        shown = (100 * self.values).map(lambda v: round(v, digits))
        base = (100 * self.reference).map(lambda v: round(v, digits))
        change = shown - base
        return change.mask(change.abs() < 0.5 * 10**-digits, 0.0)

    def seed_counts(self) -> pd.DataFrame:
        """How many seeds each shown data cell is the mean of; NaN for a single run (no replicates)."""
        shown = _in_rows(self.values.notna() & self.evidence["seeds"].notna(), self.kind == "data")
        return self.evidence["seeds"].where(shown)

    def has_seeds(self) -> bool:
        """Whether any cell of the table is a mean over seeds (replicates)."""
        return bool(self.seed_counts().notna().any().any())

    def has_intervals(self) -> bool:
        """Whether any cell of the table has a confidence interval."""
        return bool(self.intervals()[0].notna().any().any())

    @property
    def shown_notes(self) -> list[str]:
        """The notes, with the interval convention added where the table shows an interval (and the seeds'
        where a cell is a mean over seeds)."""
        seeds = [SEEDS_NOTE] if self.has_seeds() and SEEDS_NOTE not in self.notes else []
        if not self.has_intervals() or INTERVAL_NOTE in self.notes:
            return [*self.notes, *seeds]
        if any(column.delta for column in self.columns):
            return [*self.notes, INTERVAL_NOTE, DELTA_INTERVAL_NOTE, *seeds]
        return [*self.notes, INTERVAL_NOTE, *seeds]

    def best(self) -> dict[str, set[int]]:
        """Row positions holding the best value of each column, at display precision (ties all count)."""
        shown = (100 * self.values).map(lambda v: round(v, 1))
        eligible = shown.where(_in_rows(~self.partial, self.kind == "data"))
        among = {key for keys in self.best_among for key in keys}
        blocks = (
            self.labels[self.best_within] if self.best_within in self.keys else pd.Series("", shown.index)
        )
        marks: dict[str, set[int]] = {}
        for column in self.columns:
            if not column.mark_best or column.key in among:
                continue
            for _, block in eligible[column.key].dropna().groupby(blocks, sort=False):
                if len(block) >= 2:
                    marks.setdefault(column.key, set()).update(block.index[block == block.max()])
        for keys in self.best_among:
            for position, row in eligible[list(keys)].iterrows():
                row = row.dropna()
                if len(row) >= 2:
                    for key in row.index[row == row.max()]:
                        marks.setdefault(key, set()).add(position)
        return marks

    # ---------------------------------------------------------------------------------- rendering

    def _header(self, column: Column, sep: str) -> str:
        return f"{column.group}{sep}{column.label}" if column.group else column.label

    def _labels(self, style: str) -> pd.DataFrame:
        """The label columns: in Markdown and LaTeX blanked where they repeat the data row above."""
        labels = self.labels.copy()
        if style == "csv":
            return labels.replace(MISSING_LABEL, "")
        data = (self.kind == "data").to_numpy()
        for i in range(self.blank if len(labels) else 0):
            prefix = self.labels.iloc[:, : i + 1].apply(tuple, axis=1)
            repeated = (prefix == prefix.shift()) & data & pd.Series(data).shift(fill_value=False).to_numpy()
            labels.iloc[repeated.to_numpy(), i] = ""
        return labels.map(escape_tex) if style == "tex" else labels

    def _cells(self, style: str) -> pd.DataFrame:
        """The value columns as displayed: %, gaps, bold best, † partial, (change), [interval]."""
        digits = 2 if style == "csv" else 1
        text = (100 * self.values).map(lambda v: f"{v:.{digits}f}")
        if style == "csv":
            return text.where(self.values.notna(), "")
        bold = pd.DataFrame(False, index=text.index, columns=text.columns)
        for key, rows in self.best().items():
            bold.loc[list(rows), key] = True
        marked = "**" + text + "**" if style == "md" else r"\textbf{" + text + "}"
        text = marked.where(bold, text) + self.partial.map(
            lambda p: ("†" if style == "md" else r"$^\dagger$") if p else ""
        )
        deltas = [c.key for c in self.columns if c.delta]
        sign = {"md": "-", "tex": "$-$"}[style]
        change = self.change().map(lambda c: "" if pd.isna(c) else f" ({c:+.1f})".replace("(-", f"({sign}"))
        text[deltas] = text[deltas] + change[deltas]
        low, high = self.intervals()
        interval = "[" + (100 * low).map(lambda v: f"{v:.1f}") + ", " + (100 * high).map(lambda v: f"{v:.1f}")
        interval = " " + interval + "]" if style == "md" else r" {\scriptsize " + interval + "]}"
        text = text + interval.where(low.notna(), "")
        seeds = self.seed_counts().map(
            lambda k: "" if pd.isna(k) else (" (1 seed)" if k == 1 else f" ({int(k)} seeds)")
        )
        text = text + (seeds if style == "md" else seeds.map(lambda t: rf" {{\scriptsize{t}}}" if t else ""))
        return text.where(self.values.notna(), MISSING[style])

    def _notes(self) -> list[str]:
        notes = self.shown_notes
        return [f"{note}  " if n < len(notes) - 1 else note for n, note in enumerate(notes)]

    def to_markdown(self) -> str:
        """A GitHub pipe table under its bold title, notes below; cells unpadded, so they read as written."""
        frame = pd.concat([self._labels("md"), self._cells("md")], axis=1)
        n_keys = len(self.keys)
        rule = "|" + "|".join([":---"] * n_keys + ["---:"] * len(self.columns)) + "|"
        pipes = DataRow("|", "|", "|")
        fmt = TableFormat(None, lambda *_: rule, None, None, pipes, pipes, 1, None)
        headers = [*self.key_labels, *(self._header(c, ": ") for c in self.columns)]
        body = frame.to_markdown(
            index=False, headers=headers, tablefmt=fmt, disable_numparse=True, stralign=None, numalign=None
        )
        lines = [f"**{self.title}**", ""] if self.title else []
        lines.append(body)
        if self.shown_notes:
            lines += ["", *self._notes()]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """Values with two decimals; after each its `_lo` / `_hi` interval (and `_delta` change, and in a
        table of replicates `_seeds`) columns, then `best` and `partial`: the columns where the row is best
        or a partial average."""
        cells, (low, high) = self._cells("csv"), self.intervals()
        seeds = self.seed_counts() if self.has_seeds() else None
        everywhere = pd.DataFrame(True, index=self.values.index, columns=self.values.columns)
        deltas = self.change(2).where(_in_rows(everywhere, self.kind == "data"))
        headers = [self._header(c, " / ") for c in self.columns]
        parts, names = [self._labels("csv")], list(self.key_labels)
        for header, column in zip(headers, self.columns):
            parts += [cells[column.key], (100 * low[column.key]), (100 * high[column.key])]
            names += [header, f"{header}_lo", f"{header}_hi"]
            if column.delta:
                parts.append(deltas[column.key])
                names.append(f"{header}_delta")
            if seeds is not None:
                parts.append(seeds[column.key].map(lambda k: "" if pd.isna(k) else str(int(k))))
                names.append(f"{header}_seeds")
        best = self.best()
        named = dict(zip([c.key for c in self.columns], headers))
        marks = [[named[key] for key in named if i in best.get(key, ())] for i in range(len(self.values))]
        parts.append(pd.Series([";".join(m) for m in marks]))
        parts.append(self.partial.apply(lambda row: ";".join(named[k] for k in row.index[row]), axis=1))
        frame = pd.concat(parts, axis=1)
        frame.columns = [*names, "best", "partial"]
        return frame.to_csv(index=False, lineterminator="\n", float_format="%.2f")

    def to_latex(self) -> str:
        """A booktabs table in a `table` float. Styler writes the tabular; the spanning column-group row
        with its \\cmidrule rules, and the rule under the chance and baseline rows, are added here, as
        Styler has neither."""
        frame = pd.concat([self._labels("tex"), self._cells("tex")], axis=1)
        frame.columns = pd.MultiIndex.from_tuples(
            [(f"key{i}", escape_tex(label)) for i, label in enumerate(self.key_labels)]
            + [(c.key, escape_tex(c.label)) for c in self.columns]
        )
        n_keys = len(self.keys)
        spec = "l" * n_keys + "r" * len(self.columns)
        tabular = frame.style.hide(axis="index").hide(axis="columns", level=0)
        lines = tabular.to_latex(column_format=spec, hrules=True).splitlines()
        header = lines.index(r"\midrule")  # under the column labels; body rows follow, one per line
        chance = [
            i for i in range(len(self.kind) - 1) if self.kind[i] != "data" and self.kind[i + 1] == "data"
        ]
        for i in reversed(chance):
            lines.insert(header + 2 + i, r"\midrule")
        groups: list[tuple[str | None, int]] = []
        for column in self.columns:
            if groups and groups[-1][0] == column.group:
                groups[-1] = (column.group, groups[-1][1] + 1)
            else:
                groups.append((column.group, 1))
        if any(group for group, _ in groups):
            cells, rules, start = [""] * n_keys, [], n_keys + 1
            for group, span in groups:
                cells.append(rf"\multicolumn{{{span}}}{{c}}{{{escape_tex(group or '')}}}")
                if group:
                    rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
                start += span
            lines[2:2] = [" & ".join(cells) + r" \\", " ".join(rules)]  # under \toprule
        wide = n_keys + len(self.columns) > 10
        out = [r"\begin{table}[t]", r"\centering", r"\small"]
        if self.title:
            out.append(rf"\caption{{{escape_tex(self.title)}}}")
        if wide:  # scale wide tables to the text width (needs \usepackage{graphicx})
            out.append(r"\resizebox{\linewidth}{!}{%")
            lines[-1] += "}"
        out += lines
        if self.shown_notes:
            out.append(r"\par\smallskip\footnotesize " + " ".join(escape_tex(n) for n in self.shown_notes))
        out.append(r"\end{table}")
        return "\n".join(out) + "\n"

    def render(self, fmt: str) -> str:
        """Render as "md", "csv" or "tex"."""
        renderers = {"md": self.to_markdown, "csv": self.to_csv, "tex": self.to_latex}
        if fmt not in renderers:
            raise unknown_choice("table format", fmt, renderers)
        return renderers[fmt]()

    # ---------------------------------------------------------------------------------- reshaping

    def collapse(self, keep: int) -> Table:
        """Average the data rows over all but the first `keep` keys (e.g. over fusions).

        Strict like the tables: a cell is a gap unless every averaged row has it, so a missing run never
        silently turns a mean over three fusions into a mean over two. Chance and baseline rows are kept.
        """
        if not 0 < keep <= len(self.keys):
            raise ConfigError(f"collapse(keep={keep}) needs 1..{len(self.keys)} keys.")
        if keep == len(self.keys):
            return self
        data = self.kind == "data"
        kept, dropped = self.keys[:keep], self.keys[keep:]
        expected = set(self.labels.loc[data, dropped].itertuples(index=False, name=None))
        rows = [
            (self.labels.loc[i, kept], self.values.loc[i], self.partial.loc[i], self.kind[i], None)
            for i in self.kind.index[~data]
        ]
        for _, members in self.labels[data].groupby(kept, sort=False):
            positions = members.index
            absent = len(expected - set(members[dropped].itertuples(index=False, name=None)))
            values = self.values.loc[positions].mean(skipna=False)
            if absent:  # e.g. a fusion never run under this key: no mean over fewer rows
                values[:] = math.nan
            partial = self.partial.loc[positions].any() & values.notna()
            evidence = {
                key: pool(pd.DataFrame({f: self.evidence[f].loc[positions, key] for f in EVIDENCE_FIELDS}))
                for key in values.index[values.notna() & ~partial]
            }
            rows.append((self.labels.loc[positions[0], kept], values, partial, "data", evidence))
        index = pd.RangeIndex(len(rows))
        collapsed = {
            f: pd.DataFrame([{k: e[f] for k, e in (ev or {}).items()} for *_, ev in rows], index=index)
            for f in EVIDENCE_FIELDS
        }
        dropped_labels = ", ".join(self.key_labels[keep:])
        notes = [
            *self.notes,
            f"Averaged over {dropped_labels}; a cell is empty unless every {dropped_labels} has it.",
        ]
        return Table(
            self.name,
            self.title,
            kept,
            list(self.columns),
            pd.DataFrame([r[0] for r in rows], index=index),
            pd.DataFrame([r[1] for r in rows], index=index),
            pd.Series([r[3] for r in rows], index=index),
            notes,
            collapsed,
            pd.DataFrame([r[2] for r in rows], index=index).astype(bool),
            blank=min(self.blank, keep - 1),
            best_within=self.best_within if self.best_within in kept else None,
            best_among=self.best_among,
        )
