"""Academic benchmarks on a trained run, in LoMo's two protocols.

- standard: the benchmark image, then the question as text (multiple-choice options lettered A, B, ...);
- rendered: the benchmark image, then the whole question rendered as an image that replaces the text
  (LoMo's rendered evaluation), with only a fixed short instruction left as text.
Predictions stream to a JSONL file per (benchmark, split, protocol) and are scored with the official metric of
each benchmark (vlmlab.scoring.metrics); the results go into the run's `eval.json` as `<benchmark>` and
`<benchmark>.rendered` (`<benchmark>-<split>` for an explicit split), and the Standard vs Rendered table with
the gap is printed. Server-scored splits get the official submission file instead of a score.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlmlab.data.benchmarks import benchmark_from_config, vqav2_test_question_ids
from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.eval.rendered import rendered_question_segments
from vlmlab.files import atomic_write_text
from vlmlab.runs.load import load_run, text_side
from vlmlab.runs.record import config_hash, write_record
from vlmlab.scoring.accuracy import generate_texts
from vlmlab.scoring.intervals import interval, is_binary
from vlmlab.scoring.metrics import get_metric

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


SUBMISSION_SPLITS = {  # benchmark -> (splits only the official server scores, the id field it expects)
    "vqav2": (("test", "test-dev", "testdev", "test2015", "test-dev2015"), "question_id"),
    "textvqa": (("test",), "question_id"),
    "docvqa": (("test",), "questionId"),
}
# EvalAI takes a VQAv2 submission (test-dev or test-standard) only if it answers every test2015 question:
# test-dev is a subset of test2015, so its answers are padded out with this placeholder, as the VQA
# challenge's instructions ask (and LLaVA's conversion does)
VQAV2_FILLER_ANSWER = ""


def _needs_test2015_ids(name: str, split: str | None) -> bool:
    return name == "vqav2" and str(split or "") in SUBMISSION_SPLITS["vqav2"][0]


def check_submission_inputs(entries: Sequence[Mapping[str, Any]]) -> None:
    """Before anything is built: a VQAv2 server split needs the folder's test2015 question file (every id the
    server expects), else one line naming the file to add."""
    for entry in entries:
        if _needs_test2015_ids(entry["name"], entry.get("split")) and not vqav2_test_question_ids(
            entry["path"]
        ):
            raise ConfigError(
                f"--split {entry.get('split')}: the EvalAI server takes a VQAv2 submission only if it covers "
                f"every test2015 question id, and {str(entry['path'])!r} lacks "
                "v2_OpenEnded_mscoco_test2015_questions.json (in the official v2_Questions_Test_mscoco.zip, "
                "beside the test-dev questions); add it there."
            )


DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """The lines a previous (perhaps killed) evaluation finished; a torn last line is dropped."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    good = 0
    with path.open("rb") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            done[row["id"]] = row
            good += len(line)
    if good < path.stat().st_size:  # cut the torn tail so appending continues a valid file
        with path.open("r+b") as handle:
            handle.truncate(good)
    return done


def _reference(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the metrics read of a record (everything but the image)."""
    return {k: v for k, v in record.items() if k != "image"}


def predict(
    model: torch.nn.Module,
    tokenizer: Any,
    encoder: Any,
    records: Iterable[Mapping[str, Any]],
    protocol: str,
    out: Path,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    dtype: torch.dtype | None = None,
) -> Path:
    """Generate an answer for every record into `out` (JSONL: id, prediction, reference), streaming: records
    are encoded one batch at a time, and each finished batch is appended and fsynced, so memory does not grow
    with the split and a killed evaluation continues where it stopped. Prompts too long for the model are
    answered with ''."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _read_predictions(out)
    with out.open("a", encoding="utf-8") as handle:

        def flush(batch: list[Mapping[str, Any]]) -> None:
            encoded = [encoder.encode_prompt(benchmark_sample(record, protocol)) for record in batch]
            items = [{"id": str(r["id"]), **e} for r, e in zip(batch, encoded) if e is not None]
            texts = iter(generate_texts(model, tokenizer, items, batch_size, max_new_tokens, dtype))
            for record, item in zip(batch, encoded):
                text = next(texts).strip() if item is not None else ""
                row = {"id": str(record["id"]), "prediction": text, "reference": _reference(record)}
                handle.write(json.dumps(row, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

        batch: list[Mapping[str, Any]] = []
        for record in records:
            if str(record["id"]) in done:
                continue
            batch.append(record)
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    return out


def sample_scores(name: str, predictions: Path) -> list[float] | None:
    """The official metric of every prediction in the file (in [0, 1]); None when the split has no
    reference answers."""
    metric = get_metric(name)
    values = []
    for row in _read_predictions(predictions).values():
        reference = row["reference"]
        if not reference.get("answers") and not reference.get("options"):
            return None  # a server-scored split
        values.append(float(metric(row["prediction"], reference)))
    return values


def score(name: str, predictions: Path) -> float | None:
    """The official metric over a predictions file; None when the split has no reference answers."""
    values = sample_scores(name, predictions)
    return sum(values) / len(values) if values else None


def score_metric(name: str, predictions: Path) -> dict[str, Any] | None:
    """The record entry of a predictions file: {"score", "n", "ci": [low, high]} with the 95 % interval of
    the per-sample scores (Wilson when all are 0/1, then also "correct"; else the seeded bootstrap), or
    None when the split has no reference answers."""
    values = sample_scores(name, predictions)
    if not values:
        return None
    low, high = interval(values)
    entry: dict[str, Any] = {"score": sum(values) / len(values), "n": len(values), "ci": [low, high]}
    if is_binary(values):
        entry["correct"] = int(sum(values))
    return entry


def write_submission(name: str, split: str, predictions: Path, folder: Path | None = None) -> Path | None:
    """The official submission file of a server-scored split (VQAv2 test-dev / test and TextVQA test on
    EvalAI: [{"question_id": int, "answer": str}]; DocVQA test on the RRC: [{"questionId": int, "answer":
    str}]); None for other splits. VQAv2's lists every test2015 question id of the benchmark `folder` in
    that file's order: the predicted answers, `VQAV2_FILLER_ANSWER` for the rest."""
    splits, id_field = SUBMISSION_SPLITS.get(name, ((), ""))
    if split not in splits:
        return None
    answers = {int(row["id"]): row["prediction"] for row in _read_predictions(predictions).values()}
    if _needs_test2015_ids(name, split):
        found = vqav2_test_question_ids(folder) if folder is not None else None
        if found is None:
            raise ConfigError(f"{str(folder)!r} lacks v2_OpenEnded_mscoco_test2015_questions.json.")
        questions, ids = found
        outside = len(set(answers) - set(ids))
        if outside:  # the server rejects ids it does not know
            print(
                f"vlmlab eval: {outside} predicted question id(s) are not in {questions}; left out of the "
                "submission.",
                file=sys.stderr,
            )
        rows = [{id_field: qid, "answer": answers.get(qid, VQAV2_FILLER_ANSWER)} for qid in ids]
    else:
        rows = [{id_field: qid, "answer": answer} for qid, answer in answers.items()]
    path = predictions.with_name(predictions.name.removesuffix(".jsonl") + "-submission.json")
    atomic_write_text(path, json.dumps(rows))
    return path


def evaluate_benchmarks(
    run_dir: str | Path,
    entries: Sequence[Mapping[str, Any]],
    protocols: Sequence[str] = PROTOCOLS,
    write: bool = True,
    *,
    device: str | None = None,
    dtype: str = "fp32",
    batch_size: int = 16,
    max_new_tokens: int = 32,
    out_dir: str | Path | None = None,
    loaded: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Score `run_dir` on each benchmark entry ({name, path, split?, limit?, image_root?}) under each protocol.

    Predictions go to `out_dir` (default RUN/eval/) as `<name>[-<split>][.rendered].jsonl`, one line per
    record; an existing file is continued, not redone. Splits with reference answers are scored into
    `eval.json` as {"score", "n", "ci": [low, high]} (`score_metric`); server-scored splits (VQAv2
    test-dev, TextVQA / DocVQA test) get their submission file. `loaded`: the run's config and a model
    already built (an intermediate checkpoint's: vlmlab/eval/checkpoints.py)."""
    if dtype not in DTYPES:
        raise unknown_choice("--dtype", dtype, DTYPES)
    check_submission_inputs(entries)
    started = time.time()
    config, model = loaded or load_run(run_dir)
    if device is not None:
        try:
            model.to(torch.device(device))
        except (RuntimeError, AssertionError) as error:
            raise ConfigError(
                f"--device {device!r} is not usable here ({str(error).splitlines()[0]})."
            ) from None
    tokenizer, encoder = text_side(config, model)
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "eval"
    metrics: dict[str, Any] = {}
    files: dict[str, str] = {}
    for entry in entries:
        split = entry.get("split")
        for protocol in protocols:
            key = (
                entry["name"]
                + (f"-{split}" if split else "")
                + ("" if protocol == "standard" else ".rendered")
            )
            path = predict(
                model,
                tokenizer,
                encoder,
                benchmark_from_config(entry),
                protocol,
                out / f"{key}.jsonl",
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                dtype=DTYPES[dtype],
            )
            files[key] = str(path)
            value = score_metric(entry["name"], path)
            if value is not None:
                metrics[key] = value
            submission = write_submission(entry["name"], str(split or ""), path, Path(entry["path"]))
            if submission is not None:
                files[f"{key}.submission"] = str(submission)
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
    return {**record, "files": files}
