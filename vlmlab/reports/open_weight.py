"""Open-weight VLMs (Appendix B): Tables 8-9 (SFT, change from the base model) and Tables 10-11 (Base, SFT
and RL per model), over the records frame (conventions: vlmlab.reports)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.reports.frame import config_value, filter_frame, natural, pool, records_frame
from vlmlab.reports.layouts import (
    MODALITIES,
    MODALITY_ALIASES,
    TASK_NAMES,
    TRAIN_MODALITY_KEY,
    TRAIN_TASK_KEY,
    build,
    transfer_cells,
    transfer_evidence,
    transfer_tasks,
)
from vlmlab.reports.table import Column, Table

# Open-weight VLMs: the model (hub id or folder) and how it was trained (vlmlab.config)
OPEN_WEIGHT_KEY = "model.open_weight"
TRAIN_METHOD_KEY = "train.method"
# The models the paper fine-tunes, by the last part of their hub id (lowercase), in its row order.
OPEN_WEIGHT_NAMES = {
    "qwen2.5-vl-7b-instruct": "Qwen2.5-VL-7B",
    "qwen2.5-vl-3b-instruct": "Qwen2.5-VL-3B",
    "internvl3-8b-hf": "InternVL3-8B",
    "gemma-3-4b-it": "Gemma-3-4B",
    "kimi-vl-a3b-instruct": "Kimi-VL-A3B",
}
_METHOD_ALIASES = {"eval": "eval", "base": "eval", "sft": "sft", "grpo": "grpo", "rl": "grpo"}
_SPLIT_LABELS = {"ind": "InD", "ood": "OOD"}
_BASE_NOTE = (
    'Base: the model before fine-tuning on synthetic data (train.method "eval"); where a model has several '
    "such records, those evaluated for the row's dataset ({task_key}) are used, and several are averaged."
)
_NO_BASE_NOTE = "A score without a change in parentheses has no base-model record to compare with."


def open_weight_name(value: Any) -> str:
    """A model's short name: the paper's for the five models it fine-tunes, else the last path part
    ("Qwen/Qwen2.5-VL-7B-Instruct" -> "Qwen2.5-VL-7B", "/ckpt/my-vlm/" -> "my-vlm")."""
    last = str(value).strip().rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return OPEN_WEIGHT_NAMES.get(last.lower(), last)


def _order(name: str) -> tuple[Any, ...]:
    known = list(OPEN_WEIGHT_NAMES.values())
    return (0, known.index(name)) if name in known else (1, natural(name.lower()))


def _method(value: Any) -> str | None:
    """A train.method value -> "eval" | "sft" | "grpo", or None when it is none of them."""
    if value is None:  # vlmlab.config.TrainConfig's default
        return "sft"
    return _METHOD_ALIASES.get(str(value).strip().lower())


def _normal(value: Any) -> str | None:
    return None if value is None else str(value).strip().lower()


def _entries(
    records: Sequence[Mapping[str, Any]],
    where: Mapping[str, Sequence[str]] | None,
    model_key: str,
    method_key: str,
    modality_key: str,
    task_key: str,
    tasks: Sequence[str] | None,
    notes: list[str],
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The records with a model at `model_key` and transfer metrics, with columns `model` (short name),
    `method`, `modality` (trained on, vqa | tqa | None) and `task`; the models in the paper's order; the
    tasks."""
    frame = filter_frame(records_frame(records), where)
    models = config_value(frame, model_key)
    has_model = models.map(lambda m: m is not None and not isinstance(m, bool) and bool(str(m).strip()))
    frame = frame[has_model.astype(bool) & transfer_cells(frame).notna().any(axis=1)].copy()
    raw_method = config_value(frame, method_key)
    frame["method"] = raw_method.map(_method)
    unknown = sorted({str(v) for v in raw_method[frame["method"].isna()]})
    if unknown:
        notes.append(f"Records with {method_key} = {', '.join(unknown)} are not tabulated.")
    frame = frame[frame["method"].notna()]
    if frame.empty:
        raise ConfigError(
            f"No open-weight records: expected config.{model_key} (a hub id or folder) and metrics named "
            "<task>.<vqa|tqa>.<ind|ood> (e.g. grid.tqa.ind)."
        )
    ids = config_value(frame, model_key).map(str)
    frame["model"] = ids.map(open_weight_name)
    for name, paths in sorted(ids.groupby(frame["model"]).agg(lambda p: sorted(set(p))).items()):
        if len(paths) > 1:
            notes.append(f"{name} gathers the records of {', '.join(paths)}.")
    frame["modality"] = config_value(frame, modality_key).map(
        lambda v: MODALITY_ALIASES.get(str(v).strip().lower())
    )
    frame["task"] = config_value(frame, task_key).map(_normal)
    models_in_order = sorted(set(frame["model"]), key=_order)
    tasks = list(tasks) if tasks is not None else transfer_tasks(frame)
    return frame, models_in_order, tasks


def _cell(frame: pd.DataFrame, cell: str) -> tuple[float, pd.Series | None, int]:
    """Mean score of the records in `cell` "task|mod|split" (those that have it), their pooled evidence,
    and how many."""
    scores = transfer_cells(frame).reindex(columns=[cell])[cell].dropna()
    if scores.empty:
        return math.nan, None, 0
    return sum(scores) / len(scores), pool(transfer_evidence(frame, cell, scores.index)), len(scores)


def _base(frame: pd.DataFrame, model: str, task: str, cell: str) -> tuple[float, pd.Series | None, int]:
    """The base model's score in `cell`: its "eval" records evaluated for `task` (data.train.0.task) where
    some have the cell, else all its "eval" records that have it; several are averaged."""
    bases = frame[(frame["model"] == model) & (frame["method"] == "eval")]
    scored = transfer_cells(bases).reindex(columns=[cell])[cell].notna()
    preferred = bases[(bases["task"] == task) & scored]
    return _cell(preferred if not preferred.empty else bases, cell)


def _trained(frame: pd.DataFrame, model: str, method: str, modality: str, task: str) -> pd.DataFrame:
    """The `method` runs of `model` trained on the `modality` version of `task`."""
    chosen = (frame["model"] == model) & (frame["method"] == method)
    return frame[chosen & (frame["modality"] == modality) & (frame["task"] == task)]


def _modality(requested: str) -> str:
    modality = MODALITY_ALIASES.get(str(requested).strip().lower(), "")
    if modality not in MODALITIES:
        raise unknown_choice("training modality", requested, MODALITIES)
    return modality


def open_weight_sft_table(
    records: Sequence[Mapping[str, Any]],
    train_modality: str = "vqa",
    *,
    tasks: Sequence[str] | None = None,
    where: Mapping[str, Sequence[str]] | None = None,
    model_key: str = OPEN_WEIGHT_KEY,
    method_key: str = TRAIN_METHOD_KEY,
    modality_key: str = TRAIN_MODALITY_KEY,
    task_key: str = TRAIN_TASK_KEY,
    fill_missing: bool = True,
) -> Table:
    """Table 8 (train_modality="vqa": Image-to-Text) or Table 9 ("tqa": Text-to-Image) for open-weight VLMs.

    Rows dataset x model (the model at `model_key`), columns the trained modality's InD and OOD splits
    then the other modality's. A cell is the score of the model fine-tuned (train.method "sft") on the
    `train_modality` version of the row's dataset, with its change from the base model's score in the same
    cell (train.method "eval"). With `fill_missing`, every model gets a row for every dataset (a gap where
    it was not fine-tuned on it); without, rows with no score are left out.
    """
    train_modality = _modality(train_modality)
    other = "vqa" if train_modality == "tqa" else "tqa"
    notes: list[str] = []
    frame, models, tasks = _entries(
        records, where, model_key, method_key, modality_key, task_key, tasks, notes
    )
    cells = [(mod, split) for mod in (train_modality, other) for split in ("ind", "ood")]
    columns = [
        Column(f"{mod}|{split}", f"{mod.upper()} ({_SPLIT_LABELS[split]})", delta=True)
        for mod, split in cells
    ]
    rows = []
    averaged = no_base = False
    for task in tasks:
        for model in models:
            runs = _trained(frame, model, "sft", train_modality, task)
            row: dict[str, Any] = {"labels": (TASK_NAMES.get(task, task), model), "values": {}}
            row["evidence"], row["reference"] = {}, {}
            for column, (mod, split) in zip(columns, cells):
                value, found, count = _cell(runs, f"{task}|{mod}|{split}")
                row["values"][column.key] = value
                averaged |= count > 1
                if found is not None:
                    row["evidence"][column.key] = found
                base, _, _ = _base(frame, model, task, f"{task}|{mod}|{split}")
                if not math.isnan(base):
                    row["reference"][column.key] = base
                no_base |= not math.isnan(value) and math.isnan(base)
            if fill_missing or any(not math.isnan(v) for v in row["values"].values()):
                rows.append(row)
    trained = train_modality.upper()
    notes.insert(
        0,
        f"Accuracy in %; models fine-tuned (SFT) on the {trained} version of the row's dataset; in "
        "parentheses the change from the base model, in points; best per column within each dataset in "
        f"bold (every column; the paper bolds the {other.upper()} ones); – = no run.",
    )
    notes.insert(1, _BASE_NOTE.format(task_key=task_key))
    if averaged:
        notes.append("Cells with several fine-tuned runs (seeds) show their mean.")
    if no_base:
        notes.append(_NO_BASE_NOTE)
    direction = "Image-to-Text (VQA→TQA)" if train_modality == "vqa" else "Text-to-Image (TQA→VQA)"
    return build(
        f"open_weight_sft_{train_modality}",
        f"{direction} transfer of open-weight VLMs fine-tuned on {trained}: accuracy (%) and change from base",
        ["Dataset", "Model"],
        columns,
        rows,
        notes,
        blank=1,
        best_within="Dataset",
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "model"


def open_weight_rl_table(
    records: Sequence[Mapping[str, Any]],
    model: str,
    train_modality: str = "vqa",
    *,
    tasks: Sequence[str] | None = None,
    where: Mapping[str, Sequence[str]] | None = None,
    model_key: str = OPEN_WEIGHT_KEY,
    method_key: str = TRAIN_METHOD_KEY,
    modality_key: str = TRAIN_MODALITY_KEY,
    task_key: str = TRAIN_TASK_KEY,
) -> Table:
    """Tables 10-11 for one open-weight model (its short name or its id/folder): Base, SFT and RL (GRPO,
    the record of its best checkpoint) after training on the `train_modality` version of each dataset.

    Rows the four test splits (VQA/TQA x InD/OOD), column groups per dataset {Base, SFT, RL}; SFT and RL
    show their change from Base in parentheses, and per dataset and row the higher of the two is bold.
    """
    train_modality = _modality(train_modality)
    notes: list[str] = []
    frame, models, tasks = _entries(
        records, where, model_key, method_key, modality_key, task_key, tasks, notes
    )
    name = model if model in models else open_weight_name(model)
    if name not in models:
        raise unknown_choice("open-weight model", model, models)
    columns = []
    for task in tasks:
        group = TASK_NAMES.get(task, task)
        columns.append(Column(f"{task}|base", "Base", group, mark_best=False))
        columns.append(Column(f"{task}|sft", "SFT", group, delta=True))
        columns.append(Column(f"{task}|grpo", "RL", group, delta=True))
    rows = []
    averaged = no_base = False
    for mod in MODALITIES:
        for split in ("ind", "ood"):
            label = f"{mod.upper()} ({_SPLIT_LABELS[split]})"
            row: dict[str, Any] = {"labels": (label,), "values": {}, "evidence": {}, "reference": {}}
            for task in tasks:
                cell = f"{task}|{mod}|{split}"
                base, base_evidence, _ = _base(frame, name, task, cell)
                row["values"][f"{task}|base"] = base
                if base_evidence is not None:
                    row["evidence"][f"{task}|base"] = base_evidence
                for method in ("sft", "grpo"):
                    key = f"{task}|{method}"
                    value, found, count = _cell(_trained(frame, name, method, train_modality, task), cell)
                    row["values"][key] = value
                    averaged |= count > 1
                    if found is not None:
                        row["evidence"][key] = found
                    if not math.isnan(base):
                        row["reference"][key] = base
                    no_base |= not math.isnan(value) and math.isnan(base)
            rows.append(row)
    trained = train_modality.upper()
    notes.insert(
        0,
        f"Accuracy in %; {name} trained on the {trained} version of each dataset: SFT (supervised "
        "fine-tuning) and RL (GRPO, best checkpoint), in parentheses the change from Base, in points; per "
        "dataset and test split the higher of SFT and RL in bold; – = no run.",
    )
    notes.insert(1, _BASE_NOTE.format(task_key=task_key).replace("row's dataset", "column's dataset"))
    if averaged:
        notes.append("Cells with several runs (seeds, checkpoints) show their mean.")
    if no_base:
        notes.append(_NO_BASE_NOTE)
    suffix = "" if train_modality == "vqa" else f"_{train_modality}"
    return build(
        f"open_weight_rl_{_slug(name)}{suffix}",
        f"{name}: Base, SFT and RL trained on {trained}, accuracy (%) and change from base",
        ["Test split"],
        columns,
        rows,
        notes,
        best_among=[(f"{task}|sft", f"{task}|grpo") for task in tasks],
    )


def open_weight_tables(
    records: Sequence[Mapping[str, Any]],
    *,
    tasks: Sequence[str] | None = None,
    where: Mapping[str, Sequence[str]] | None = None,
    model_key: str = OPEN_WEIGHT_KEY,
    method_key: str = TRAIN_METHOD_KEY,
    modality_key: str = TRAIN_MODALITY_KEY,
    task_key: str = TRAIN_TASK_KEY,
    fill_missing: bool = True,
) -> list[Table]:
    """Appendix B's tables of the records that name an open-weight model: Table 8 (SFT on VQA) and Table 9
    (SFT on TQA) where some run was fine-tuned on that modality, then one Table 10/11 per model and
    modality with an RL (grpo) run, in the paper's model order."""
    frame, models, tasks = _entries(records, where, model_key, method_key, modality_key, task_key, tasks, [])
    options = {
        "tasks": tasks,
        "where": where,
        "model_key": model_key,
        "method_key": method_key,
        "modality_key": modality_key,
        "task_key": task_key,
    }
    trained = set(
        frame.loc[frame["method"] != "eval", ["model", "method", "modality"]].itertuples(
            index=False, name=None
        )
    )
    tables = [
        open_weight_sft_table(records, modality, fill_missing=fill_missing, **options)
        for modality in MODALITIES
        if any(method == "sft" and mod == modality for _, method, mod in trained)
    ]
    tables += [
        open_weight_rl_table(records, model, modality, **options)
        for model in models
        for modality in MODALITIES
        if (model, "grpo", modality) in trained
    ]
    if not tables:
        raise ConfigError(
            "The open-weight records hold no fine-tuned run (train.method sft or grpo, with "
            f"{modality_key} vqa or tqa); Tables 8-11 compare those with the base models."
        )
    return tables
