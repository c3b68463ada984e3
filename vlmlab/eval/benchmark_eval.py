"""Academic benchmarks on a trained run, in LoMo's two protocols.

- standard: the benchmark image, then the question as text (multiple-choice options lettered A, B, ...);
- rendered: the benchmark image, then the whole question rendered as an image that replaces the text
  (LoMo's rendered evaluation), with only a fixed short instruction left as text.
Predictions are scored with the official-style metric of each benchmark (vlmlab.eval.metrics); the results
go into the run's `eval.json` as `<benchmark>` and `<benchmark>.rendered`, and the Standard vs Rendered table
with the gap is printed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlmlab.data.benchmarks import benchmark_from_config
from vlmlab.eval.accuracy import generate_texts
from vlmlab.eval.metrics import get_metric
from vlmlab.eval.rendered import rendered_question_segments
from vlmlab.eval.results import config_hash, write_record
from vlmlab.eval.runs import load_run, text_side

SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
PROTOCOLS = ("standard", "rendered")


def question_text(record: Mapping[str, Any]) -> str:
    """The question as the model reads it: the stem, then lettered options for multiple-choice items."""
    options = record.get("options")
    if not options:
        return record["question"]
    lettered = "\n".join(f"{chr(ord('A') + i)}. {option}" for i, option in enumerate(options))
    return f"{record['question']}\n{lettered}"


def benchmark_sample(record: Mapping[str, Any], protocol: str) -> dict[str, Any]:
    """A record as a vlmlab sample (segments) under `protocol`."""
    image = record.get("image")
    if isinstance(image, str | Path):
        image = Image.open(image).convert("RGB")
    images = [image] if image is not None else []
    instruction = MULTIPLE_CHOICE if record.get("options") else SHORT_ANSWER
    question = question_text(record)
    if protocol == "rendered":
        segments = rendered_question_segments(question, images)
        segments.append({"type": "text", "text": instruction})
    else:
        segments = [{"type": "image", "image": img} for img in images]
        segments.append({"type": "text", "text": f"{question}\n{instruction}"})
    return {"id": str(record["id"]), "segments": segments, "response": "", "source": record["benchmark"]}


def predict(
    model: torch.nn.Module,
    tokenizer: Any,
    encoder: Any,
    records: Sequence[Mapping[str, Any]],
    protocol: str,
    batch_size: int = 16,
    max_new_tokens: int = 32,
) -> dict[str, str]:
    """{record id: generated answer text}; prompts too long for the model are answered with ''."""
    predictions: dict[str, str] = {}
    items = []
    for record in records:
        encoded = encoder.encode_prompt(benchmark_sample(record, protocol))
        if encoded is None:
            predictions[str(record["id"])] = ""
            continue
        items.append({"id": str(record["id"]), **encoded})
    for item, text in zip(items, generate_texts(model, tokenizer, items, batch_size, max_new_tokens)):
        predictions[item["id"]] = text.strip()
    return predictions


def score(name: str, predictions: Mapping[str, str], records: Iterable[Mapping[str, Any]]) -> float:
    metric = get_metric(name)
    values = [metric(predictions.get(str(r["id"]), ""), r) for r in records]
    return sum(values) / max(len(values), 1)


def evaluate_benchmarks(
    run_dir: str | Path,
    entries: Sequence[Mapping[str, Any]],
    protocols: Sequence[str] = PROTOCOLS,
    write: bool = True,
) -> dict[str, Any]:
    """Score `run_dir` on each benchmark entry ({name, path, split?, limit?}) under each protocol."""
    started = time.time()
    config, model = load_run(run_dir)
    tokenizer, encoder = text_side(config, model)
    metrics: dict[str, float] = {}
    for entry in entries:
        records = list(benchmark_from_config(entry))
        for protocol in protocols:
            predictions = predict(model, tokenizer, encoder, records, protocol)
            key = entry["name"] if protocol == "standard" else f"{entry['name']}.rendered"
            metrics[key] = score(entry["name"], predictions, records)
    run_dir = Path(run_dir)
    path = run_dir / "eval.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    if not previous and (run_dir / "result.json").exists():
        previous = json.loads((run_dir / "result.json").read_text())
        previous["metrics"] = {}
    resolved = previous.get("config") or {}
    record = {
        "run_id": previous.get("run_id", run_dir.name),
        "config_hash": previous.get("config_hash") or config_hash(resolved),
        "stage": config.train.stage,
        "config": resolved,
        "metrics": {**previous.get("metrics", {}), **metrics},
        "chance": previous.get("chance", {}),
        "timings": {**previous.get("timings", {}), "benchmark_eval_seconds": round(time.time() - started, 1)},
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
    }
    if write:
        write_record(record, path)
    return record
