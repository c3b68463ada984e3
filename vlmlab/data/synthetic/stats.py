"""Summaries of written splits: is the answer balanced, how long are the paths, what does guessing score?

Chance accuracy (1 / number of options, averaged over samples) is the floor a uniform guesser reaches;
majority-class accuracy is what always answering the most common label reaches, so a large gap between the
two exposes an imbalanced split that a model could exploit without reasoning.

Trivial baselines (`shortcut_baselines`), each the accuracy of a strategy that reads the question but
does no reasoning, so a model's score means something only above the highest of them:
  * majority: always answer the split's most common answer (every task);
  * start (Grid): answer the object the walk starts on; the generator's walks return there in 30.4 % of
    the paper's samples against a chance level of 11.1 % (vlmlab.data.synthetic.grid; `balance_start`);
  * offset (Ring): answer the object k positions clockwise of the start, for the split's most common k
    (k = the answer's clockwise offset from the start, mod the ring size, 0 = the start itself).
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlmlab.data.synthetic.generate import SPLITS, TASKS
from vlmlab.data.synthetic.shards import read_index
from vlmlab.errors import ConfigError


def split_stats(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Statistics per (task, split) over sample records (JSONL lines or sample dicts)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record["task"], record["split"])].append(record)
    stats = {}
    for key, group in sorted(groups.items()):
        answers = Counter(r["answer"] for r in group)
        positions = Counter(_answer_position(r) for r in group)
        n = len(group)
        baselines = shortcut_baselines(group)
        stats[key] = {
            "count": n,
            "answers": dict(answers.most_common()),
            "distinct_answers": len(answers),
            "path_lengths": dict(sorted(Counter(r["meta"]["path_length"] for r in group).items())),
            "answer_positions": dict(sorted(positions.items())),
            "objects_per_sample": dict(sorted(Counter(len(r["meta"]["objects"]) for r in group).items())),
            "chance_accuracy": sum(1 / len(r["options"]) for r in group) / n,
            "majority_accuracy": answers.most_common(1)[0][1] / n,
            # Always answering "the object at the most common answer position" (grid/ring); None elsewhere.
            "majority_position_accuracy": None if "n/a" in positions else positions.most_common(1)[0][1] / n,
            "majority_answer": baselines["majority_answer"],
            "start_accuracy": baselines["start"],  # Grid only, else None
            "offsets": baselines["offsets"],  # Ring only, else None
            "offset_accuracy": baselines["offset"],  # Ring only, else None
            "offset_value": baselines["offset_value"],  # the most frequent offset itself
        }
    return stats


BASELINE_KINDS = ("majority", "start", "offset")  # the keys of `shortcut_baselines` that are accuracies


def shortcut_baselines(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy of the trivial strategies (module docstring) on these samples, all of ONE task.

    Returns {"chance", "majority", "start", "offset"} as fractions ("start": Grid only, "offset": Ring
    only, None otherwise) plus what they answer: "majority_answer" and, for Ring, "offset_value" (the k)
    and "offsets" ({k: count}).
    """
    group = list(records)
    if not group:
        raise ConfigError("shortcut_baselines needs at least one sample.")
    tasks = {r["task"] for r in group}
    if len(tasks) != 1:
        raise ConfigError(f"shortcut_baselines takes samples of one task, got {', '.join(sorted(tasks))}.")
    task, n = tasks.pop(), len(group)
    answers = Counter(r["answer"] for r in group)
    majority_answer, majority_count = answers.most_common(1)[0]
    out: dict[str, Any] = {
        "chance": sum(1 / len(r["options"]) for r in group) / n,
        "majority": majority_count / n,
        "majority_answer": majority_answer,
        "start": None,
        "offset": None,
        "offset_value": None,
        "offsets": None,
    }
    if task == "grid":
        out["start"] = sum(r["answer"] == r["meta"]["start"] for r in group) / n
    if task == "ring":
        offsets = Counter(_ring_offset(r) for r in group)
        value, count = offsets.most_common(1)[0]
        out.update(offset=count / n, offset_value=value, offsets=dict(sorted(offsets.items())))
    return out


def _ring_offset(record: dict[str, Any]) -> int:
    """How many positions clockwise of the start the answer sits (0..n-1), from the ring's indices."""
    index = {o["name"]: o["index"] for o in record["meta"]["objects"]}
    return (index[record["answer"]] - index[record["meta"]["start"]]) % len(index)


def _answer_position(record: dict[str, Any]) -> str:
    """Where the answer sits in the image: a skew here is a shortcut even when answer names are balanced."""
    meta = record["meta"]
    if record["task"] == "grid":
        cell = next(o for o in meta["objects"] if o["name"] == record["answer"])
        return f"row {cell['row'] + 1} col {cell['col'] + 1}"
    if record["task"] == "ring":
        return f"index {next(o['index'] for o in meta['objects'] if o['name'] == record['answer'])}"
    return "n/a"


def load_records(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of every JSONL index under `directory`."""
    root = Path(directory)
    # Only our own indexes ({task}-{split}.jsonl): other JSONL files may share the directory.
    pattern = re.compile(rf"({'|'.join(TASKS.names())})-({'|'.join(SPLITS)})\.jsonl")
    indexes = sorted(p for p in root.rglob("*.jsonl") if pattern.fullmatch(p.name)) if root.is_dir() else []
    if not indexes:
        raise ConfigError(
            f"no JSONL index found under {str(directory)!r}; write a split with `vlmlab data synth`."
        )
    return [record for index in indexes for record in read_index(index)]


def _histogram(counts: dict[Any, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def format_stats(stats: dict[tuple[str, str], dict[str, Any]], top_answers: int = 8) -> str:
    lines = []
    for (task, split), s in stats.items():
        answers = list(s["answers"].items())
        shown = dict(answers[:top_answers])
        more = f", ... ({len(answers) - top_answers} more)" if len(answers) > top_answers else ""
        lines += [
            f"{task}/{split}: {s['count']} samples",
            f"  chance accuracy (uniform guess): {s['chance_accuracy']:.3f}   "
            f"majority-class accuracy: {s['majority_accuracy']:.3f} (always {s['majority_answer']!r})",
        ]
        if s.get("start_accuracy") is not None:  # the trivial baselines that read the question
            lines.append(f"  answer-the-start-object accuracy: {s['start_accuracy']:.3f}")
        if s.get("offset_accuracy") is not None:
            lines.append(
                f"  most-frequent-offset accuracy: {s['offset_accuracy']:.3f} "
                f"(always the object {s['offset_value']} clockwise of the start)"
            )
        lines.append(f"  answers ({s['distinct_answers']} distinct): {_histogram(shown)}{more}")
        if s.get("offsets") is not None:
            lines.append(f"  answer offsets from the start (clockwise): {_histogram(s['offsets'])}")
        if s["majority_position_accuracy"] is not None:
            lines += [
                f"  answer positions (majority-position accuracy {s['majority_position_accuracy']:.3f}): "
                f"{_histogram(s['answer_positions'])}"
            ]
        lines += [
            f"  path lengths: {_histogram(s['path_lengths'])}",
            f"  objects per sample: {_histogram(s['objects_per_sample'])}",
        ]
    return "\n".join(lines)
