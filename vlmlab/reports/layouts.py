"""The paper's design-space layouts over the records frame: Tables 1-5 (and Table 2's pivot), Figure 2's
scaling data and the cross-modality transfer Tables 6-7 (conventions: vlmlab.reports)."""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from vlmlab.data.benchmarks import DISPLAY_NAMES, IN_DOMAIN, OUT_OF_DOMAIN
from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.reports.frame import (
    EVIDENCE_FIELDS,
    NO_EVIDENCE,
    RECORD_FIELDS,
    canonical,
    config_value,
    display_value,
    filter_frame,
    get_dotted,
    is_indexed_list,
    key_label,
    order_key,
    pool,
    prefixed,
    records_frame,
)
from vlmlab.reports.replicates import DESIGN_AXES
from vlmlab.reports.table import Column, Table

AVERAGE_LABELS = {"avg_ind": "Avg In-domain", "avg_ood": "Avg Out-of-domain", "avg_all": "Avg All"}
DEFAULT_GROUP_BY: dict[str, tuple[str, ...]] = {
    "idefics2_connector": (),  # keys before the connector; the connector row is always there
    "idefics2_lora": ("model.fusion",),  # keys before the language model's training; that row is always there
    "design": ("model.tokenizer", "model.fusion", "train.freeze"),
    "transfer": ("model.tokenizer", "model.fusion"),
    "scaling": ("model.tokenizer", "model.fusion", "train.freeze"),
    "open_weight": ("model.open_weight",),  # the model; rows are dataset x model (Tables 8-9)
    "resize": ("model.tokenizer",),  # Prismatic's image processing: a row per tower, a column group per rule
    "encoders": ("model.tokenizer",),  # Prismatic's fused towers: a row per encoder or encoder set
}
# the config path of the resize rule (vlmlab.config.IMAGE_RESIZE_RULES), the column groups of `resize_table`
RESIZE_KEY = "model.image_resize"
# Where a stage-3 run's config says what it was fine-tuned on (vlmlab.config: data.train[0].{task,mode}).
TRAIN_MODALITY_KEY = "data.train.0.mode"
TRAIN_TASK_KEY = "data.train.0.task"
TRANSFER_TASKS = ("spatialmap", "grid", "ring")
TASK_NAMES = {"spatialmap": "SpatialMap", "grid": "Grid", "ring": "Ring"}
MODALITIES = ("vqa", "tqa")
MODALITY_ALIASES = {"vqa": "vqa", "image": "vqa", "img": "vqa", "tqa": "tqa", "text": "tqa", "txt": "tqa"}
_TRANSFER_METRIC = re.compile(r"^(?P<task>[a-z0-9_\-]+)\.(?P<mod>vqa|tqa)\.(?P<split>ind|id|test|ood)$")
_CONDITIONS = ("none", "same", "cross")
# Trivial baselines of the synthetic tasks (kind in a record's `baselines` -> row label), in row order.
BASELINE_ROWS = {
    "majority": "Majority answer",
    "start": "Answer = start (Grid)",
    "offset": "Most frequent offset (Ring)",
}

# ----------------------------------------------------------------------------------------------- rows


def mean(values: Sequence[float], absent: int = 0, allow_partial: bool = False) -> tuple[float, bool]:
    """(mean, partial) of the cells averaged into one (NaN = missing; `absent` more missing ones): NaN
    unless all are present, or with `allow_partial` the mean of those present, marked partial. Summed in
    order, so that a cell is exactly the mean the conventions define."""
    present = [v for v in values if not math.isnan(v)]
    if not present:
        return math.nan, False
    if len(present) < len(values) + absent:
        return (sum(present) / len(present), True) if allow_partial else (math.nan, False)
    return sum(present) / len(present), False


def expand_keys(frame: pd.DataFrame, keys: Sequence[str], notes: list[str]) -> list[str]:
    """Dict-valued group keys without a name (e.g. a freezing recipe {image_s1, image_s2, lang_s2}) become
    one column per leaf; a list (an encoder set's towers, indexed "0", "1", ... by records_frame) stays one
    column, shown `a + b`; keys absent from every record are dropped (with a note)."""
    expanded: list[str] = []
    for key in keys:
        values = config_value(frame, key)
        if values.isna().all():
            notes.append(f"Config key {key!r} is absent from every record; not used for grouping.")
            continue
        leaves = [
            path
            for value in values
            if isinstance(value, Mapping)
            and not any(k in value for k in ("name", "id", "arch"))
            and not is_indexed_list(value)
            for path in _leaf_paths(value, key)
        ]
        expanded.extend(dict.fromkeys(leaves) if leaves else [key])
    if not expanded:  # nothing to group by: one row per run rather than one meaningless average
        notes.append("Rows are individual runs (none of the group-by keys is set).")
        expanded.append("run_id")
    return expanded


def _leaf_paths(value: Mapping[str, Any], prefix: str) -> list[str]:
    paths = []
    for key, item in value.items():
        path = f"{prefix}.{key}"
        if isinstance(item, Mapping) and not any(k in item for k in ("name", "id", "arch")):
            paths.extend(_leaf_paths(item, path))
        else:
            paths.append(path)
    return paths


def _set_dotted(mapping: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        mapping = mapping.setdefault(part, {})
    mapping[last] = value


def group_rows(
    frame: pd.DataFrame, keys: Sequence[str], fill: Sequence[str] = (), notes: list[str] | None = None
) -> list[tuple[tuple[Any, ...], pd.Index]]:
    """(raw key values, the records' index) per row, sorted in the paper's order.

    With `fill` (the original, unexpanded group keys), every observed combination of the leading keys gets a
    row for every value of the LAST key seen anywhere (e.g. each tokenizer x fusion gets every freezing
    recipe), so a missing run shows up as an empty row instead of vanishing. Whole values are used (a
    recipe stays one recipe); leading-key combinations never run at all are not invented.
    """
    raw = pd.DataFrame({key: config_value(frame, key) for key in keys}, index=frame.index)
    ident = raw.apply(lambda row: canonical([display_value(v) for v in row]), axis=1)
    groups: dict[str, tuple[tuple[Any, ...], pd.Index]] = {
        name: (tuple(raw.loc[members[0]]), members)
        for name, members in raw.groupby(ident, sort=False).groups.items()
    }
    if len(fill) >= 2 and not any(key in RECORD_FIELDS for key in fill):
        filled = pd.DataFrame({key: config_value(frame, key) for key in fill}, index=frame.index)
        prefixes = {canonical(list(p)): tuple(p) for p in filled.iloc[:, :-1].itertuples(index=False)}
        lasts = {canonical(v): v for v in filled.iloc[:, -1]}
        added = 0
        for prefix, last in itertools.product(prefixes.values(), lasts.values()):
            synthetic: dict[str, Any] = {}
            for key, value in zip(fill, (*prefix, last)):
                _set_dotted(synthetic, key, value)
            values = tuple(get_dotted(synthetic, key) for key in keys)
            name = canonical([display_value(v) for v in values])
            if name not in groups:
                groups[name] = (values, pd.Index([]))
                added += 1
        if added and notes is not None:
            notes.append(
                f"{added} row(s) with no run (a {key_label(fill[-1])} value seen elsewhere) are shown empty."
            )
    return sorted(groups.values(), key=lambda item: tuple(order_key(v) for v in item[0]))


def fill_keys(group_by: Sequence[str], keys: Sequence[str]) -> list[str]:
    """The requested group keys that survived `expand_keys` (as themselves or as expanded leaves)."""
    return [g for g in group_by if any(k == g or k.startswith(g + ".") for k in keys)]


def _covers(keys: Sequence[str], axis: str) -> bool:
    return any(key == axis or key.startswith(axis + ".") or axis.startswith(key + ".") for key in keys)


def varying_axes_note(
    frame: pd.DataFrame, groups: Sequence[tuple], used: Sequence[str], notes: list[str]
) -> None:
    """Say so when a row silently averages over different design points (an ungrouped axis varies)."""
    for axis in DESIGN_AXES:
        if _covers(used, axis):
            continue
        values = config_value(frame, axis)
        varying: set[str] = set()
        for _, members in groups:
            if values.loc[members].map(canonical).nunique() > 1:
                varying.update(values.loc[members].map(display_value))
        if varying:
            notes.append(f"Rows average over several {axis} values ({', '.join(sorted(varying))}).")


def leading_blank(groups: Sequence[tuple[tuple[Any, ...], Any]], n_keys: int) -> int:
    """How many leading label columns may be blanked where they repeat the row above: categorical keys up
    to the first flag (yes/no), never the last key."""
    blank = 0
    while blank < n_keys - 1 and not any(isinstance(raw[blank], bool) for raw, _ in groups):
        blank += 1
    return blank


def _evidence(frame: pd.DataFrame, positions: Any, name: str) -> pd.DataFrame:
    """The evidence (n, correct, ci_lo, ci_hi) of the metric `name` of the records at `positions`."""
    return pd.DataFrame(
        {
            f: frame[f"{f}.{name}"].loc[positions] if f"{f}.{name}" in frame else math.nan
            for f in EVIDENCE_FIELDS
        },
        index=positions,
    )


def build(
    name: str,
    title: str,
    keys: Sequence[str],
    columns: Sequence[Column],
    rows: Sequence[dict[str, Any]],
    notes: list[str],
    **options: Any,
) -> Table:
    """A Table from row dicts: labels (tuple), values / partial / reference (per column key), evidence
    (column key -> Series of the evidence fields), kind."""
    index = pd.RangeIndex(len(rows))
    keyed = [column.key for column in columns]

    def frame(part: str, default: Any) -> pd.DataFrame:
        return pd.DataFrame([row.get(part, {}) for row in rows], index=index, columns=keyed).fillna(default)

    evidence = {
        f: pd.DataFrame([{k: e[f] for k, e in row.get("evidence", {}).items()} for row in rows], index=index)
        for f in EVIDENCE_FIELDS
    }
    return Table(
        name,
        title,
        list(keys),
        list(columns),
        pd.DataFrame([row["labels"] for row in rows], index=index, columns=list(keys)),
        pd.DataFrame([row["values"] for row in rows], index=index, columns=keyed),
        pd.Series([row.get("kind", "data") for row in rows], index=index),
        notes,
        evidence,
        frame("partial", False).astype(bool),
        pd.DataFrame([row.get("reference", {}) for row in rows], index=index, columns=keyed),
        **options,
    )


# ---------------------------------------------------------------------------------------- Tables 1-5


def _benchmarks_in(scores: pd.DataFrame) -> list[str]:
    names = {name for name in scores.columns if "." not in name}
    known = [name for name in (*IN_DOMAIN, *OUT_OF_DOMAIN) if name in names]
    return known + sorted(names - set(known))


def _record_cells(
    frame: pd.DataFrame, shown: Sequence[str], domains: Mapping[str, Sequence[str]], partial: bool
) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[Any, str], pd.Series]]:
    """Each record's benchmark and average cells, which averages are partial, and each cell's evidence."""
    scores = prefixed(frame, "score")
    cells = scores.reindex(columns=list(shown))
    flags = pd.DataFrame(False, index=frame.index, columns=list(domains))
    evidence = {(i, b): pool(_evidence(frame, [i], b)) for i in frame.index for b in shown}
    for average, members in domains.items():
        present = scores.reindex(columns=list(members))
        for i, row in present.iterrows():
            value, is_partial = mean(list(row), allow_partial=partial) if members else (math.nan, False)
            cells.loc[i, average] = value
            flags.loc[i, average] = is_partial
            if not is_partial and not math.isnan(value):
                evidence[(i, average)] = pool(
                    pd.concat([_evidence(frame, [i], b) for b in members], ignore_index=True)
                )
    return cells, flags, evidence


def design_table(
    records: Sequence[Mapping[str, Any]],
    group_by: Sequence[str] = DEFAULT_GROUP_BY["design"],
    *,
    pivot: str | None = None,
    benchmarks: Sequence[str] | None = None,
    where: Mapping[str, Sequence[str]] | None = None,
    partial_averages: bool = False,
    averages_only: bool = False,
    fill_missing: bool = True,
    name: str = "design",
    title: str | None = None,
) -> Table:
    """Tables 1-5 (and Table 2 with `pivot`): per-benchmark columns plus the three averages.

    `group_by` are dotted config paths defining the rows; with `fill_missing`, each combination of the
    leading keys gets a row for every value of the last key, empty where that run is missing. `pivot` turns
    one more path's values into column groups of the three averages (Table 2: rows = freezing recipe,
    pivot = model.fusion, `where` selecting the text-aware tokenizers). `benchmarks` restricts/reorders the
    benchmark columns (default: those found, in-domain first in the paper's order). Records without any of
    those benchmarks are ignored.
    """
    notes: list[str] = []
    frame = filter_frame(records_frame(records), where)
    if frame.empty:
        raise ConfigError(f"No records match the filter {dict(where or {})!r}.")
    found = _benchmarks_in(prefixed(frame, "score"))
    shown = list(benchmarks) if benchmarks is not None else found
    notes += [f"No record has {bench!r}." for bench in shown if bench not in found]
    frame = frame[prefixed(frame, "score").reindex(columns=shown).notna().any(axis=1)]
    if frame.empty:
        if not shown:
            raise ConfigError(
                "No academic benchmark scores (vqav2, aokvqa, ...) in the records; "
                "transfer records (<task>.<vqa|tqa>.<ind|ood>) need --layout transfer."
            )
        raise ConfigError(f"No records with any of the benchmarks {', '.join(shown)} to tabulate.")
    domains = {
        "avg_ind": [b for b in IN_DOMAIN if b in found],
        "avg_ood": [b for b in OUT_OF_DOMAIN if b in found],
    }
    domains["avg_all"] = domains["avg_ind"] + domains["avg_ood"]
    averages = [avg for avg, members in domains.items() if members]

    keys = expand_keys(frame, list(group_by), notes)
    groups = group_rows(frame, keys, fill_keys(group_by, keys) if fill_missing else (), notes)
    varying_axes_note(frame, groups, [*keys, *([pivot] if pivot else []), *(where or {})], notes)
    cells, flags, evidence = _record_cells(frame, shown, domains, partial_averages)

    if pivot is None:
        metric_keys = ([] if averages_only else list(shown)) + averages
        columns = [Column(k, DISPLAY_NAMES.get(k, AVERAGE_LABELS.get(k, k))) for k in metric_keys]
        pivots = pd.Series("", index=frame.index)
    else:
        pivots = config_value(frame, pivot).map(display_value)
        values = sorted({canonical(v): v for v in config_value(frame, pivot)}.values(), key=order_key)
        columns = [
            Column(f"{display_value(p)}|{avg}", AVERAGE_LABELS[avg].replace("Avg ", ""), display_value(p))
            for p in values
            for avg in averages
        ]
    # a pivot cell averages over the same design points (e.g. tokenizers) as its row: a point with no run
    # under this pivot value counts as a missing value, not as a smaller average
    averaged = [axis for axis in DESIGN_AXES if not _covers([*keys, pivot or ""], axis)]
    point = (
        pd.DataFrame({a: config_value(frame, a) for a in averaged}, index=frame.index).apply(
            lambda row: canonical(list(row)), axis=1
        )
        if averaged
        else pd.Series("[]", index=frame.index)
    )

    rows = []
    for raw, members in groups:
        row: dict[str, Any] = {"labels": tuple(display_value(v) for v in raw), "values": {}, "partial": {}}
        row["evidence"] = {}
        for column in columns:
            label, metric = column.key.split("|") if pivot else ("", column.key)
            selected = members[pivots[members] == label]
            if selected.empty:
                row["values"][column.key] = math.nan
                continue
            absent = len(set(point[members]) - set(point[selected])) if pivot else 0
            value, is_partial = mean(list(cells.loc[selected, metric]), absent, partial_averages)
            row["values"][column.key] = value
            if not math.isnan(value) and (
                is_partial or flags.reindex(columns=[metric]).loc[selected].any().any()
            ):
                row["partial"][column.key] = True
            elif not math.isnan(value) and not absent:
                pooled = pool(pd.DataFrame([evidence.get((i, metric), NO_EVIDENCE) for i in selected]))
                row["evidence"][column.key] = pooled
        rows.append(row)

    notes.insert(0, "Accuracy in %; best per column in bold; – = not evaluated.")
    if any(row["partial"] for row in rows):
        notes.append("† averaged over the available benchmarks only (incomplete row).")
    elif (
        not partial_averages
        and pivot is None
        and any(
            math.isnan(row["values"][avg])
            and any(not math.isnan(row["values"].get(b, math.nan)) for b in shown)
            for row in rows
            for avg in averages
        )
    ):
        notes.append("Averages are left empty for rows missing a benchmark.")
    if title is None:
        title = "Evaluation results (accuracy in %)"
        if pivot:
            title = f"Average in-domain / out-of-domain / overall accuracy (%) by {key_label(pivot)}"
    return build(name, title, keys, columns, rows, notes, blank=leading_blank(groups, len(keys)))


def scaling_table(
    records: Sequence[Mapping[str, Any]],
    series_by: Sequence[str] = DEFAULT_GROUP_BY["scaling"],
    x_key: str = "model.backbone",
    *,
    where: Mapping[str, Sequence[str]] | None = None,
    partial_averages: bool = False,
    fill_missing: bool = True,
) -> Table:
    """Figure 2's data: the three averages per series (tokenizer x recipe) and backbone size (last key)."""
    series = [key for key in series_by if key != x_key]
    table = design_table(
        records,
        [*series, x_key],
        where=where,
        partial_averages=partial_averages,
        averages_only=True,
        fill_missing=fill_missing,
        name="scaling",
        title=f"Average accuracy (%) against {key_label(x_key)} size",
    )
    if x_key in table.keys:  # Figure 2 compares setups at one size; the largest size would win everywhere
        table.best_within = x_key
        table.notes[0] = table.notes[0].replace(
            "best per column", f"best per column at each {key_label(x_key)}"
        )
    return table


def resize_table(
    records: Sequence[Mapping[str, Any]],
    group_by: Sequence[str] = DEFAULT_GROUP_BY["resize"],
    *,
    where: Mapping[str, Sequence[str]] | None = None,
    partial_averages: bool = False,
    fill_missing: bool = True,
) -> Table:
    """Prismatic VLMs' image-processing comparison (section 4.2; the sweep prismatic_resize): the three
    averages per tower (rows) under each resize rule (column groups: crop, resize, letterbox), so a rule is
    read across one row, where only the framing of the image changed."""
    return design_table(
        records,
        group_by,
        pivot=RESIZE_KEY,
        where=where,
        partial_averages=partial_averages,
        fill_missing=fill_missing,
        name="resize",
        title="Average accuracy (%) per image resize rule",
    )


def encoders_table(
    records: Sequence[Mapping[str, Any]],
    group_by: Sequence[str] = DEFAULT_GROUP_BY["encoders"],
    *,
    where: Mapping[str, Sequence[str]] | None = None,
    partial_averages: bool = False,
    fill_missing: bool = True,
) -> Table:
    """Prismatic VLMs' visual representations (section 4.2; the sweep prismatic_fused): a row per image
    encoder, a set of towers (model.tokenizer a list) labelled `a + b`, with the benchmarks and the three
    averages, so the fused row reads against each tower alone."""
    return design_table(
        records,
        group_by,
        where=where,
        partial_averages=partial_averages,
        fill_missing=fill_missing,
        name="encoders",
        title="Average accuracy (%) per image encoder (fused towers vs each alone)",
    )


# ------------------------------------------------------------------------------- Idefics2's connectors

CONNECTOR_KEY = "model.connector"  # the row label the connector layout adds to each record's config


def connector_table(
    records: Sequence[Mapping[str, Any]],
    tokens_per_image: Callable[[Mapping[str, Any]], int],
    group_by: Sequence[str] = (),
    *,
    where: Mapping[str, Sequence[str]] | None = None,
    partial_averages: bool = False,
    fill_missing: bool = True,
) -> Table:
    """Idefics2's connector ablation (sweep idefics2_connector): a row per connector, its header the image
    tokens it gives ("perceiver, 64 tokens/image"), with the benchmarks and the three averages; `group_by`
    keys go before it. `tokens_per_image(model_config)` counts them from a record's model config (the
    command line builds the model on the meta device; a test passes its own numbers): tables stay pandas."""
    labelled = []
    for record in records:
        record = copy.deepcopy(dict(record))
        model = record.get("config", {}).get("model", {})
        if "adapter" in model:  # records of other layouts (no connector) are left for them
            model["connector"] = f"{model['adapter']}, {tokens_per_image(model)} tokens/image"
            labelled.append(record)
    if not labelled:
        raise ConfigError("No records with a model.adapter to tabulate by connector.")
    return design_table(
        labelled,
        [*group_by, CONNECTOR_KEY],
        where=where,
        partial_averages=partial_averages,
        fill_missing=fill_missing,
        name="idefics2_connector",
        title="Accuracy (%) by connector, with the image tokens each gives the language model",
    )


# ------------------------------------------------------------------- Idefics2's frozen / LoRA / full backbone

LM_TRAINING_KEY = (
    "train.language_model"  # the row label the idefics2_lora layout adds to each record's config
)
# row labels in Idefics2's order (frozen, LoRA, full), which the tables' natural sort keeps
LM_TRAINING_LABELS = {"frozen": "frozen", "lora": "LoRA", "trainable": "trained fully"}


def lm_training(config: Mapping[str, Any]) -> str:
    """How a run's language model trained, from its config: frozen, LoRA (with its rank, and DoRA) or fully
    (the recipe's state for the run's stage; stage 1 always freezes it)."""
    from vlmlab.recipes import load_recipe

    train = config.get("train", {})
    state = load_recipe(str(train.get("freeze"))).states(int(train.get("stage", 2)))["language_model"]
    label = LM_TRAINING_LABELS[state]
    if state == "lora":
        lora = train.get("lora") or {}
        label += f" (r={lora.get('rank', 8)}{', DoRA' if lora.get('dora') else ''})"
    return label


def lm_training_table(
    records: Sequence[Mapping[str, Any]],
    group_by: Sequence[str] = DEFAULT_GROUP_BY["idefics2_lora"],
    *,
    where: Mapping[str, Sequence[str]] | None = None,
    partial_averages: bool = False,
    fill_missing: bool = True,
) -> Table:
    """Idefics2's backbone-training ablation (sweep idefics2_lora, its section 3.2): a row per fusion and
    language-model training (frozen / LoRA / trained fully), with the benchmarks and the three averages."""
    labelled = []
    for record in records:
        record = copy.deepcopy(dict(record))
        config = record.get("config", {})
        if config.get("train", {}).get("freeze") is not None and not config.get("model", {}).get(
            "open_weight"
        ):
            config["train"]["language_model"] = lm_training(config)
            labelled.append(record)
    if not labelled:
        raise ConfigError("No records with a train.freeze recipe to tabulate by language-model training.")
    return design_table(
        labelled,
        [*group_by, LM_TRAINING_KEY],
        where=where,
        partial_averages=partial_averages,
        fill_missing=fill_missing,
        name="idefics2_lora",
        title="Accuracy (%) by fusion and how the language model trains (frozen, LoRA, fully)",
    )


# ---------------------------------------------------------------------------------------- Tables 6-7


def modality(value: Any) -> str | None:
    """A training modality value -> "vqa" | "tqa", None for no training; unknown values are refused."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "none", "null", "no", "false", "no_train", "notrain"):
        return None
    if text not in MODALITY_ALIASES:
        raise unknown_choice("training modality", value, sorted(MODALITY_ALIASES) + ["none"])
    return MODALITY_ALIASES[text]


def transfer_cells(frame: pd.DataFrame, prefix: str = "score") -> pd.DataFrame:
    """The `<task>.<vqa|tqa>.<ind|ood>` metrics of each record as columns "task|mod|split" ("test" and
    "id" read as "ind", the synthetic sets' in-distribution split); other metrics dropped."""
    scores = prefixed(frame, prefix)
    names: dict[str, str] = {}
    for column in scores.columns:
        match = _TRANSFER_METRIC.match(column)
        if match:
            split = "ood" if match.group("split") == "ood" else "ind"
            names[column] = f"{match.group('task')}|{match.group('mod')}|{split}"
    if not names:
        return pd.DataFrame(index=frame.index)
    return scores[list(names)].rename(columns=names).T.groupby(level=0, sort=False).last().T


def transfer_evidence(frame: pd.DataFrame, cell: str, positions: Sequence[Any]) -> pd.DataFrame:
    """Evidence rows of the records at `positions` in a transfer cell "task|mod|split": that of the metric
    name the record's score was read from."""
    task, mod, split = cell.split("|")
    names = [f"{task}.{mod}.{s}" for s in (("ind", "id", "test") if split == "ind" else ("ood",))]
    rows = []
    for i in positions:
        scored = [
            name for name in names if f"score.{name}" in frame and pd.notna(frame.at[i, f"score.{name}"])
        ]
        rows.append(_evidence(frame, [i], scored[-1]).iloc[0] if scored else NO_EVIDENCE)
    return pd.DataFrame(rows)


def transfer_tasks(frame: pd.DataFrame) -> list[str]:
    """Synthetic tasks with `<task>.<vqa|tqa>.<ind|ood>` metrics, in the paper's order then by name."""
    cells = transfer_cells(frame)
    found = {column.split("|")[0] for column in cells.columns[cells.notna().any()]}
    known = [task for task in TRANSFER_TASKS if task in found]
    return known + sorted(found - set(known))


def _lookup(found: Mapping[str, float], task: str, mod: str, split: str, suffix: str = "") -> float:
    for name in (f"{task}.{mod}.{split}", f"{task}.{split}", f"{task}.{mod}", task):
        value = found.get(name + suffix)
        if value is not None and not math.isnan(value):
            return value
    return math.nan


def _first(frame: pd.DataFrame, prefix: str) -> dict[str, float]:
    """Per name, the first record's value (the evaluations of one sweep score the same held-out sets)."""
    values = prefixed(frame, prefix)
    return {name: values[name].dropna().iloc[0] for name in values.columns if values[name].notna().any()}


def _baseline_rows(
    frame: pd.DataFrame, columns: Sequence[Column], mod: str, n_keys: int, notes: list[str]
) -> list:
    """One row per trivial baseline that some record carries, cells as the chance row's (same per
    condition: the baseline belongs to the evaluated set, not to the run)."""
    found = _first(frame, "baseline")
    rows = []
    for kind, label in BASELINE_ROWS.items():
        values = {}
        for column in columns:
            task, split, _ = column.key.split("|")
            values[column.key] = _lookup(found, task, mod, split, f".{kind}")
        if any(not math.isnan(v) for v in values.values()):
            rows.append({"labels": (label, *[""] * (n_keys - 1)), "values": values, "kind": "baseline"})
    if rows:
        notes.append(
            "Baseline rows: accuracy of answering without reasoning (always the most common answer; Grid: "
            "the start object; Ring: the object at the most frequent offset from the start), on the "
            "held-out samples scored."
        )
    elif prefixed(frame, "chance").notna().any().any():
        notes.append("No trivial baselines: these records predate them; `vlmlab eval` again to record them.")
    return rows


def transfer_table(
    records: Sequence[Mapping[str, Any]],
    eval_modality: str = "tqa",
    group_by: Sequence[str] = DEFAULT_GROUP_BY["transfer"],
    *,
    tasks: Sequence[str] | None = None,
    where: Mapping[str, Sequence[str]] | None = None,
    modality_key: str = TRAIN_MODALITY_KEY,
    task_key: str = TRAIN_TASK_KEY,
    fill_missing: bool = True,
) -> Table:
    """Tables 6-7 for one evaluation modality: accuracy on the `eval_modality` version of each task.

    eval_modality="tqa" is the image-to-text direction (Table 6 / Figure 4): "No Train" is the stage-2
    model (records of stage < 3), "TQA-trained" the same-modality fine-tune and "VQA-trained" the
    cross-modality one, told apart by the config value at `modality_key`. "vqa" is the text-to-image
    direction (Table 7 / Figure 5). Trained records count only for the task at `task_key` (when set). A
    first "Chance" row gives the chance level from the records' `chance` entries, and the rows after it
    the trivial baselines from their `baselines`, both measured on the held-out samples scored.
    """
    requested = eval_modality
    eval_modality = MODALITY_ALIASES.get(str(eval_modality).strip().lower(), "")
    if eval_modality not in MODALITIES:
        raise unknown_choice("evaluation modality", requested, MODALITIES)
    other = "vqa" if eval_modality == "tqa" else "tqa"
    notes: list[str] = []
    frame = filter_frame(records_frame(records), where)
    frame = frame[transfer_cells(frame).notna().any(axis=1)]
    tasks = list(tasks) if tasks is not None else transfer_tasks(frame)
    if frame.empty or not tasks:
        raise ConfigError(
            "No transfer records: expected metrics named <task>.<vqa|tqa>.<ind|ood> (e.g. grid.tqa.ind)."
        )
    keys = expand_keys(frame, list(group_by), notes)
    groups = group_rows(frame, keys, fill_keys(group_by, keys) if fill_missing else (), notes)
    # the untrained (stage 2) and fine-tuned (stage 3) runs share rows by design
    varying_axes_note(frame, groups, [*keys, *(where or {}), "stage"], notes)

    labels = {
        "none": "No Train",
        "same": f"{eval_modality.upper()}-trained",
        "cross": f"{other.upper()}-trained",
    }
    columns = [
        Column(
            f"{task}|{split}|{cond}",
            labels[cond],
            f"{TASK_NAMES.get(task, task)} {eval_modality.upper()} ({'InD' if split == 'ind' else 'OOD'})",
        )
        for task in tasks
        for split in ("ind", "ood")
        for cond in _CONDITIONS
    ]
    # the stage-2 model (stage < 3) is "No Train", before any synthetic fine-tuning
    trained = config_value(frame, modality_key)[frame["stage"] >= 3].map(modality)
    condition = pd.Series("none", index=frame.index, dtype=object)
    condition[trained.index] = trained.map(
        lambda m: "none" if m is None else ("same" if m == eval_modality else "cross")
    )
    trained_task = config_value(frame, task_key).map(lambda t: None if t is None else str(t).lower())
    scores = transfer_cells(frame)

    chances = _first(frame, "chance")
    rows: list[dict[str, Any]] = []
    chance = {
        c.key: _lookup(chances, c.key.split("|")[0], eval_modality, c.key.split("|")[1]) for c in columns
    }
    if any(not math.isnan(v) for v in chance.values()):
        rows.append({"labels": ("Chance", *[""] * (len(keys) - 1)), "values": chance, "kind": "chance"})
    rows += _baseline_rows(frame, columns, eval_modality, len(keys), notes)
    for raw, members in groups:
        row: dict[str, Any] = {"labels": tuple(display_value(v) for v in raw), "values": {}, "evidence": {}}
        for column in columns:
            task, split, cond = column.key.split("|")
            cell = f"{task}|{eval_modality}|{split}"
            chosen = members[condition[members] == cond]
            if cond != "none":
                chosen = chosen[trained_task[chosen].isna() | (trained_task[chosen] == task)]
            present = (
                scores.reindex(columns=[cell]).loc[chosen, cell].dropna() if len(chosen) else pd.Series()
            )
            row["values"][column.key] = sum(present) / len(present) if len(present) else math.nan
            if len(present):
                row["evidence"][column.key] = pool(transfer_evidence(frame, cell, present.index))
        rows.append(row)

    direction = "Image-to-Text (VQA→TQA)" if eval_modality == "tqa" else "Text-to-Image (TQA→VQA)"
    notes.insert(
        0, f"Accuracy in % on the {eval_modality.upper()} versions; best per column in bold; – = no run."
    )
    return build(
        f"transfer_{eval_modality}",
        f"{direction} transfer: accuracy (%) on the {eval_modality.upper()} tasks",
        keys,
        columns,
        rows,
        notes,
        blank=leading_blank(groups, len(keys)),
    )
