"""Readers for local copies of the paper's academic benchmarks, yielding one uniform record per question.

In-domain (short answers, Table 1): VQAv2, A-OKVQA, ChartQA, TextVQA, DocVQA.
Out-of-domain (new topics and multiple choice, Tables 3-5): MathVista, MMT-Bench, RealWorldQA.

Point `load_benchmark(name, folder)` (or a config entry, see `benchmark_from_config`) at a folder holding the
benchmark in any of the formats it is distributed in; the format is detected from the files:

  1. a Hugging Face `datasets` folder written by `save_to_disk` (`dataset_dict.json` with one sub-folder per
     split, or a single split's `state.json` + `data-*.arrow`), memory-mapped by `datasets.load_from_disk`;
  2. parquet files as on the Hugging Face Hub (`data/validation-00000-of-00001.parquet`, ...), the split
     chosen by file or folder name, streamed by `datasets.load_dataset("parquet", streaming=True)`;
  3. the official release: JSON annotations + image folder (VQAv2 questions/annotations + COCO 2014,
     A-OKVQA `aokvqa_v1p0_<split>.json` + COCO 2017, ChartQA `<split>/<split>_{human,augmented}.json` +
     `png/`, TextVQA `TextVQA_0.5.1_<split>.json` + `train_images/`, DocVQA `<split>_v1.0.json` +
     `documents/`, MathVista `<split>.json` + `images/`, RealWorldQA JSON list + images), or the
     VLMEvalKit TSV with base64 images in which MMT-Bench is distributed (`MMT-Bench_VAL.tsv`).

The Hugging Face formats are read in place, so a benchmark on a shared read-only disk works offline: rows
stream one at a time with images left undecoded, nothing is written to the benchmark folder (the `datasets`
cache gets only the empty lock files of its parquet reader), and no hub id is resolved.

Every record is a dict with:
  id        str, unique within the benchmark split
  benchmark the benchmark name (a key of `BENCHMARKS`)
  image     a PIL image (embedded bytes/base64) or a `pathlib.Path` to the image file
  question  the question text (for multiple choice: the stem, without the option lines)
  answers   list[str] of reference answers (open-ended items), or
  options   list[str] (labelled A, B, ... in order) and `answer`, the gold letter (multiple-choice items)
  meta      dict of benchmark-specific extras (answer type, precision, category, the raw question, ...)
These are exactly what `vlmlab.scoring.metrics.METRICS[benchmark](prediction, record)` consumes.

Mistakes (unknown benchmark, missing folder, no recognisable files, unknown split, missing image) raise
`vlmlab.errors.ConfigError` naming the bad value and the valid choices.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image

from vlmlab.errors import ConfigError, unknown_choice

__all__ = [
    "BENCHMARKS",
    "DISPLAY_NAMES",
    "IN_DOMAIN",
    "OUT_OF_DOMAIN",
    "BenchmarkSpec",
    "benchmark_from_config",
    "iter_all",
    "load_benchmark",
    "vqav2_test_question_ids",
]

IN_DOMAIN: tuple[str, ...] = ("vqav2", "aokvqa", "chartqa", "textvqa", "docvqa")
OUT_OF_DOMAIN: tuple[str, ...] = ("mathvista", "mmtbench", "realworldqa")
DISPLAY_NAMES: dict[str, str] = {
    "vqav2": "VQAv2",
    "aokvqa": "A-OKVQA",
    "chartqa": "ChartQA",
    "textvqa": "TextVQA",
    "docvqa": "DocVQA",
    "mathvista": "MathVista",
    "mmtbench": "MMTBench",
    "realworldqa": "RealWorldQA",
}

# Split names as the various releases spell them; a requested split matches any of its aliases.
_SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "val": ("val", "validation", "valid", "val2014", "val2017"),
    "test": ("test", "test2015", "test2017"),
    "testdev": ("testdev", "test-dev", "test_dev", "test-dev2015"),
    "testmini": ("testmini",),
    "train": ("train", "train2014", "train2017"),
}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _aliases(split: str) -> tuple[str, ...]:
    key = split.lower()
    for canonical, names in _SPLIT_ALIASES.items():
        if key == canonical or key in names:
            return tuple(dict.fromkeys((canonical, *names)))
    return (key,)


def _matches_split(name: str, split: str) -> bool:
    return name.lower() in _aliases(split)


# ---------------------------------------------------------------------------------------------------------
# Reading context: image resolution
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Context:
    """Where images of one benchmark folder are looked up: explicit base folders, then a filename index."""

    benchmark: str
    root: Path
    bases: list[Path]
    _index: dict[str, Path] | None = field(default=None, repr=False)

    def resolve(self, relative: str | os.PathLike[str], sample_id: object) -> Path:
        candidate = Path(relative)
        if candidate.is_absolute() and candidate.is_file():
            return candidate
        for base in self.bases:
            path = base / candidate
            if path.is_file():
                return path
        if self._index is None:  # built once, on the first image the explicit folders do not hold
            self._index = {}
            for directory, _, files in os.walk(self.root):
                for name in files:
                    if name.lower().endswith(_IMAGE_SUFFIXES):
                        self._index.setdefault(name, Path(directory) / name)
        found = self._index.get(candidate.name)
        if found is None:
            raise ConfigError(
                f"Image {str(relative)!r} of {self.benchmark} sample {sample_id!r} was not found under "
                f"{str(self.root)!r} (looked in {', '.join(str(b) for b in self.bases)} and all sub-folders)."
            )
        return found

    def image(self, value: Any, sample_id: object) -> Image.Image | Path:
        """Turn an image cell (HF struct, bytes, base64 string, path, PIL image) into a PIL image or a path."""
        if isinstance(value, Image.Image | Path):
            return value
        if isinstance(value, Mapping):
            if value.get("bytes"):
                return Image.open(BytesIO(value["bytes"]))
            if value.get("path"):
                return self.resolve(value["path"], sample_id)
        if isinstance(value, bytes | bytearray):
            return Image.open(BytesIO(value))
        if isinstance(value, str) and value:
            looks_like_path = value.lower().endswith(_IMAGE_SUFFIXES) or "/" in value[:256] or "\\" in value
            if not looks_like_path:  # VLMEvalKit TSVs embed images as base64 text
                try:
                    return Image.open(BytesIO(base64.b64decode(value, validate=True)))
                except (binascii.Error, ValueError, OSError):
                    pass
            return self.resolve(value, sample_id)
        raise ConfigError(f"{self.benchmark} sample {sample_id!r} has no image (got {type(value).__name__}).")


# ---------------------------------------------------------------------------------------------------------
# Row -> record converters (they accept both the official field names and the Hugging Face ones)
# ---------------------------------------------------------------------------------------------------------


def _first(row: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return value
    return default


def _as_list(value: Any) -> list[Any]:
    """Lists stay lists; a stringified list ("['a', 'b']", seen in some HF copies) is parsed; scalars wrap."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return [value]
            return list(parsed) if isinstance(parsed, list | tuple) else [value]
        return [value]
    if isinstance(value, list | tuple):
        return list(value)
    if hasattr(value, "tolist"):
        return list(value.tolist())
    return [value]


def _answer_texts(value: Any) -> list[str]:
    """VQAv2 answers are dicts {answer, answer_confidence, answer_id}; other sets store plain strings."""
    texts = []
    for item in _as_list(value):
        texts.append(str(item["answer"]) if isinstance(item, Mapping) else str(item))
    return texts


def _open_record(
    benchmark: str, sample_id: Any, image: Any, question: str, answers: list[str], **meta: Any
) -> dict[str, Any]:
    return {
        "id": str(sample_id),
        "benchmark": benchmark,
        "image": image,
        "question": str(question),
        "answers": answers,
        "meta": {key: value for key, value in meta.items() if value is not None},
    }


def _choice_record(
    benchmark: str, sample_id: Any, image: Any, question: str, options: list[str], answer: str, **meta: Any
) -> dict[str, Any]:
    return {
        "id": str(sample_id),
        "benchmark": benchmark,
        "image": image,
        "question": str(question),
        "options": [str(option) for option in options],
        "answer": answer,
        "meta": {key: value for key, value in meta.items() if value is not None},
    }


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _convert_vqav2(row: Mapping[str, Any], index: int, ctx: _Context) -> dict[str, Any]:
    sample_id = _first(row, "question_id", "id", default=index)
    return _open_record(
        "vqav2",
        sample_id,
        ctx.image(_first(row, "image", "image_path"), sample_id),
        row["question"],
        _answer_texts(row.get("answers")),
        image_id=row.get("image_id"),
        question_type=row.get("question_type"),
        answer_type=row.get("answer_type"),
        multiple_choice_answer=row.get("multiple_choice_answer"),
    )


def _convert_aokvqa(row: Mapping[str, Any], index: int, ctx: _Context) -> dict[str, Any]:
    sample_id = _first(row, "question_id", "id", default=index)
    return _open_record(
        "aokvqa",
        sample_id,
        ctx.image(_first(row, "image", "image_path"), sample_id),
        row["question"],
        [str(answer) for answer in _as_list(row.get("direct_answers"))],
        choices=[str(choice) for choice in _as_list(row.get("choices"))] or None,
        correct_choice_idx=row.get("correct_choice_idx"),
        difficult_direct_answer=row.get("difficult_direct_answer"),
    )


def _convert_chartqa(row: Mapping[str, Any], index: int, ctx: _Context) -> dict[str, Any]:
    subset = _first(row, "subset", "type", "human_or_machine")
    image_name = _first(row, "imgname")
    sample_id = _first(row, "id", "question_id", default=f"{subset or 'q'}-{index}")
    return _open_record(
        "chartqa",
        sample_id,
        ctx.image(_first(row, "image", "image_path", "imgname"), sample_id),
        _first(row, "query", "question"),
        [str(answer) for answer in _as_list(_first(row, "label", "answer", "answers"))],
        subset=subset,
        imgname=image_name,
    )


def _convert_textvqa(row: Mapping[str, Any], index: int, ctx: _Context) -> dict[str, Any]:
    sample_id = _first(row, "question_id", "id", default=index)
    return _open_record(
        "textvqa",
        sample_id,
        ctx.image(_first(row, "image", "image_path"), sample_id),
        row["question"],
        _answer_texts(row.get("answers")),
        image_id=row.get("image_id"),
    )


def _convert_docvqa(row: Mapping[str, Any], index: int, ctx: _Context) -> dict[str, Any]:
    sample_id = _first(row, "questionId", "question_id", "id", default=index)
    return _open_record(
        "docvqa",
        sample_id,
        ctx.image(_first(row, "image", "image_path"), sample_id),
        row["question"],
        _answer_texts(row.get("answers")),
        question_types=_as_list(row.get("question_types")) or None,
        doc_id=row.get("docId"),
    )


def _convert_mathvista(row: Mapping[str, Any], index: int, ctx: _Context) -> dict[str, Any]:
    sample_id = _first(row, "pid", "id", default=index)
    image = ctx.image(_first(row, "decoded_image", "image"), sample_id)
    choices = [str(choice) for choice in _as_list(row.get("choices"))]
    answer = str(_first(row, "answer", default=""))
    meta = {
        "question_type": row.get("question_type"),
        "answer_type": row.get("answer_type"),
        "precision": _first(row, "precision"),
        "unit": row.get("unit") or None,
        "query": row.get("query"),
    }
    if choices and row.get("question_type", "multi_choice") == "multi_choice":
        if answer in choices:
            letter = _LETTERS[choices.index(answer)]
        elif len(answer) == 1 and answer.upper() in _LETTERS[: len(choices)]:
            letter = answer.upper()
        else:
            raise ConfigError(f"MathVista sample {sample_id!r}: answer {answer!r} is not one of {choices}.")
        return _choice_record(
            "mathvista", sample_id, image, row["question"], choices, letter, answer_text=answer, **meta
        )
    return _open_record("mathvista", sample_id, image, row["question"], [answer], **meta)


_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.):]\s*(.+?)\s*$")


def _split_options(question: str) -> tuple[str, list[str]]:
    """Split "stem\\nA. x\\nB. y\\n<instruction>" into the stem and the options (consecutive A, B, C, ...)."""
    lines = question.splitlines()
    options: list[str] = []
    first = None
    for number, line in enumerate(lines):
        match = _OPTION_LINE.match(line)
        if match and match.group(1) == _LETTERS[len(options)]:
            first = number if first is None else first
            options.append(match.group(2))
        elif options:
            break
    if len(options) < 2 or first is None:
        return question.strip(), []
    return "\n".join(lines[:first]).strip(), options


def _convert_realworldqa(row: Mapping[str, Any], index: int, ctx: _Context) -> dict[str, Any]:
    sample_id = _first(row, "id", "question_id", "index", default=index)
    image = ctx.image(_first(row, "image", "image_path", "file_name"), sample_id)
    raw = str(row["question"])
    stem, options = _split_options(raw)
    answer = str(_first(row, "answer", default="")).strip()
    if options and len(answer) == 1 and answer.upper() in _LETTERS[: len(options)]:
        return _choice_record(
            "realworldqa", sample_id, image, stem, options, answer.upper(), raw_question=raw
        )
    return _open_record("realworldqa", sample_id, image, raw, [answer], raw_question=raw)


def _convert_mmtbench(row: Mapping[str, Any], index: int, ctx: _Context) -> dict[str, Any]:
    sample_id = _first(row, "index", "id", default=index)
    options = []
    for letter in _LETTERS:
        value = _first(row, letter)
        if value is None or str(value).strip() == "":
            break
        options.append(str(value))
    answer = str(_first(row, "answer", default="")).strip().upper()
    if not options or answer not in _LETTERS[: len(options)]:
        raise ConfigError(
            f"MMT-Bench sample {sample_id!r}: answer {answer!r} does not name one of its options."
        )
    return _choice_record(
        "mmtbench",
        sample_id,
        ctx.image(_first(row, "image", "image_path"), sample_id),
        row["question"],
        options,
        answer,
        category=row.get("category"),
        l2_category=row.get("l2-category"),
        split=row.get("split"),
    )


# ---------------------------------------------------------------------------------------------------------
# Official releases (JSON + image folder, TSV)
# ---------------------------------------------------------------------------------------------------------

Rows = Iterator[tuple[dict[str, Any], list[Path]]]  # (row, extra image base folders for that row)


def _load_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{str(path)!r} is not valid JSON: {error}.") from error


def _glob(root: Path, pattern: str) -> list[Path]:
    return sorted(path for path in root.rglob(pattern) if path.is_file())


def _official_vqav2(root: Path, split: str) -> tuple[list[Path], Callable[[], Rows]] | None:
    tags = {"val": "val2014", "train": "train2014", "testdev": "test-dev2015", "test": "test2015"}
    tag = tags.get(_aliases(split)[0], split)
    questions = [p for p in _glob(root, "*questions*.json") if tag in p.name]
    if not questions:
        return None
    annotations = [p for p in _glob(root, "*annotations*.json") if tag in p.name]
    image_subset = "test2015" if tag.startswith("test") else tag

    def rows() -> Rows:
        by_id = {}
        if annotations:
            by_id = {a["question_id"]: a for a in _load_json(annotations[0])["annotations"]}
        for question in _load_json(questions[0])["questions"]:
            row = {**by_id.get(question["question_id"], {}), **question}
            row["image"] = f"COCO_{image_subset}_{int(question['image_id']):012d}.jpg"
            yield row, [root / image_subset, root / "images" / image_subset]

    return [questions[0], *annotations[:1]], rows


def vqav2_test_question_ids(folder: str | os.PathLike[str]) -> tuple[Path, list[int]] | None:
    """(the file, its question ids in order) of the official `v2_OpenEnded_mscoco_test2015_questions.json`
    under `folder`: every id the EvalAI server expects in a test-dev or test-standard submission; None if
    the folder lacks it."""
    found = _official_vqav2(Path(folder).expanduser(), "test")
    if found is None:
        return None
    path = found[0][0]
    return path, [int(question["question_id"]) for question in _load_json(path)["questions"]]


def _official_aokvqa(root: Path, split: str) -> tuple[list[Path], Callable[[], Rows]] | None:
    name = {"val": "val", "train": "train", "test": "test"}.get(_aliases(split)[0], split)
    files = _glob(root, f"aokvqa_v1p0_{name}.json")
    if not files:
        return None

    def rows() -> Rows:
        for item in _load_json(files[0]):
            row = dict(item)
            row["image"] = f"{int(item['image_id']):012d}.jpg"
            yield row, [root / f"{name}2017", root / "coco" / f"{name}2017", root / "images" / f"{name}2017"]

    return files[:1], rows


def _official_chartqa(root: Path, split: str) -> tuple[list[Path], Callable[[], Rows]] | None:
    files = [p for alias in _aliases(split) for p in _glob(root, f"{alias}_*.json") if p.parent.name == alias]
    files = [p for p in files if p.stem.endswith(("_human", "_augmented"))]
    if not files:
        return None

    def rows() -> Rows:
        for path in files:
            subset = path.stem.rsplit("_", 1)[1]
            for number, item in enumerate(_load_json(path)):
                row = {**item, "subset": subset, "id": f"{subset}-{number}"}
                row["image"] = item["imgname"]
                yield row, [path.parent / "png", path.parent]

    return files, rows


def _official_textvqa(root: Path, split: str) -> tuple[list[Path], Callable[[], Rows]] | None:
    name = {"val": "val", "train": "train", "test": "test"}.get(_aliases(split)[0], split)
    files = _glob(root, f"TextVQA_*_{name}.json")
    if not files:
        return None
    folder = "test_images" if name == "test" else "train_images"

    def rows() -> Rows:
        for item in _load_json(files[0])["data"]:
            row = dict(item)
            row["image"] = f"{item['image_id']}.jpg"
            yield row, [root / folder, root / "images" / folder]

    return files[:1], rows


def _official_docvqa(root: Path, split: str) -> tuple[list[Path], Callable[[], Rows]] | None:
    files = [p for alias in _aliases(split) for p in _glob(root, f"{alias}_v1.0*.json")]
    if not files:
        return None

    def rows() -> Rows:
        for item in _load_json(files[0])["data"]:
            yield dict(item), [files[0].parent]

    return files[:1], rows


def _official_mathvista(root: Path, split: str) -> tuple[list[Path], Callable[[], Rows]] | None:
    files = [p for alias in _aliases(split) for p in _glob(root, f"{alias}.json")]
    if not files:
        return None

    def rows() -> Rows:
        data = _load_json(files[0])
        items = data.values() if isinstance(data, Mapping) else data
        for item in items:
            yield dict(item), [files[0].parent]

    return files[:1], rows


def _official_realworldqa(root: Path, split: str) -> tuple[list[Path], Callable[[], Rows]] | None:
    for path in _glob(root, "*.json"):
        data = _load_json(path)
        if isinstance(data, list) and data and isinstance(data[0], Mapping) and "question" in data[0]:

            def rows(path: Path = path, data: list[Any] = data) -> Rows:
                for item in data:
                    yield dict(item), [path.parent, path.parent / "images"]

            return [path], rows
    return None


def _tsv_rows(path: Path) -> Rows:
    """VLMEvalKit TSV: base64 images; a repeated image is stored once and referenced by its row index."""
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as handle:
        table = list(csv.DictReader(handle, delimiter="\t"))
    images = {row.get("index"): row.get("image") for row in table}
    for row in table:
        image = row.get("image") or ""
        if len(image) <= 64 and image in images:  # a reference to another row's image
            row["image"] = images[image]
        yield row, [path.parent]


def _official_mmtbench(root: Path, split: str) -> tuple[list[Path], Callable[[], Rows]] | None:
    files = _glob(root, "*.tsv")
    chosen = [
        p
        for p in files
        if any(re.search(rf"(^|[_\-.]){a}($|[_\-.])", p.stem.lower()) for a in _aliases(split))
    ]
    chosen = chosen or (files if len(files) == 1 else [])
    if not chosen:
        return None
    return chosen[:1], lambda: _tsv_rows(chosen[0])


# ---------------------------------------------------------------------------------------------------------
# Hugging Face formats (save_to_disk arrow, parquet)
# ---------------------------------------------------------------------------------------------------------


def _open(load: Callable[[Path], Any], path: Path) -> Any:
    """Open `path` with a `datasets` loader; its many failure types become one ConfigError line."""
    try:
        return load(path)
    except Exception as error:  # ArrowInvalid, FileNotFoundError, KeyError on a bad state.json, ...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"{str(path)!r} cannot be read as a Hugging Face dataset: {reason}") from error


def _stream(parts: list[tuple[Any, Path]]) -> Rows:
    """Rows of `datasets` IterableDatasets, each with its folder for relative image paths. Decoding is
    off, so image cells stay `{"bytes", "path"}` and `_Context.image` opens them only when a record is used."""
    for dataset, folder in parts:
        for row in dataset.decode(False):
            yield row, [folder]


def saved_splits(folder: Path) -> dict[str, Path] | None:
    """The splits of a `DatasetDict.save_to_disk` folder, each with the folder `load_from_disk` opens for it
    (named by its `dataset_dict.json`, or, without one, every sub-folder holding a saved split's `state.json`);
    None when `folder` is not such a folder. Callers pick the split before loading, so a bad split name
    fails without opening any data and only the chosen split is memory-mapped."""
    listing = folder / "dataset_dict.json"
    if listing.is_file():
        return {str(name): folder / str(name) for name in json.loads(listing.read_text("utf-8"))["splits"]}
    if (folder / "state.json").is_file() or not folder.is_dir():
        return None
    splits = {p.name: p for p in sorted(folder.iterdir()) if (p / "state.json").is_file()}
    return splits or None


def _hf_saved(root: Path, split: str, explicit: bool) -> tuple[list[Path], Callable[[], Rows]] | None:
    import datasets

    splits = _open(saved_splits, root)
    if splits is not None:
        chosen = [folder for name, folder in splits.items() if _matches_split(name, split)]
        if not chosen:
            raise unknown_choice("split", split, splits)
        folder = chosen[0]
    elif (root / "state.json").is_file():
        folder = root
    else:
        return None
    dataset = _open(datasets.load_from_disk, folder)
    if folder == root and explicit and dataset.split and not _matches_split(str(dataset.split), split):
        raise ConfigError(f"{str(root)!r} holds split {str(dataset.split)!r}, not the requested {split!r}.")
    files = [Path(entry["filename"]) for entry in dataset.cache_files]
    return files, lambda: _stream([(dataset.to_iterable_dataset(), folder)])


def _parquet_split(path: Path, root: Path) -> str:
    """The split a parquet file belongs to: its name's first token, or the folder it sits in."""
    stem = re.split(r"[-_.]", path.stem, maxsplit=1)[0].lower()
    if any(stem in names or stem == canonical for canonical, names in _SPLIT_ALIASES.items()):
        return stem
    parent = path.parent.name.lower() if path.parent != root else ""
    return parent or stem


def _parquet_stream(path: Path) -> Any:
    """One parquet file as an IterableDataset: read where it lies, batch by batch (`streaming=False` would
    first copy the whole file, images included, into the `datasets` cache as arrow)."""
    import datasets

    return datasets.load_dataset("parquet", data_files=[str(path)], split="train", streaming=True)


def _hf_parquet(root: Path, split: str, explicit: bool) -> tuple[list[Path], Callable[[], Rows]] | None:
    files = _glob(root, "*.parquet")
    if not files:
        return None
    by_split: dict[str, list[Path]] = {}
    for path in files:
        by_split.setdefault(_parquet_split(path, root), []).append(path)
    chosen = [p for name, paths in by_split.items() if _matches_split(name, split) for p in paths]
    if not chosen:
        known = {name for name in by_split if any(name in (c, *a) for c, a in _SPLIT_ALIASES.items())}
        if explicit or known:
            raise unknown_choice("split", split, by_split)
        chosen = files  # a folder of one split with free-form file names
    parts = [(_open(_parquet_stream, path), path.parent) for path in chosen]
    return chosen, lambda: _stream(parts)


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkSpec:
    """What vlmlab knows about one benchmark: its domain, default local split and how to read it."""

    name: str
    display: str
    domain: str  # "in" (in-domain) or "out" (out-of-domain), as grouped in the paper's tables
    default_split: str  # a split with public answers (VQAv2 test-dev / DocVQA test are server-scored)
    convert: Callable[[Mapping[str, Any], int, _Context], dict[str, Any]]
    official: Callable[[Path, str], tuple[list[Path], Callable[[], Rows]] | None]
    official_hint: str


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("vqav2", "VQAv2", "in", "val", _convert_vqav2, _official_vqav2,
                      "v2_OpenEnded_mscoco_<split>_questions.json (+ annotations) and COCO images"),
        BenchmarkSpec("aokvqa", "A-OKVQA", "in", "val", _convert_aokvqa, _official_aokvqa,
                      "aokvqa_v1p0_<split>.json and COCO 2017 images"),
        BenchmarkSpec("chartqa", "ChartQA", "in", "test", _convert_chartqa, _official_chartqa,
                      "<split>/<split>_human.json, <split>/<split>_augmented.json and <split>/png/"),
        BenchmarkSpec("textvqa", "TextVQA", "in", "val", _convert_textvqa, _official_textvqa,
                      "TextVQA_0.5.1_<split>.json and train_images/"),
        BenchmarkSpec("docvqa", "DocVQA", "in", "val", _convert_docvqa, _official_docvqa,
                      "<split>_v1.0.json and documents/"),
        BenchmarkSpec("mathvista", "MathVista", "out", "testmini", _convert_mathvista, _official_mathvista,
                      "<split>.json (testmini.json) and images/"),
        BenchmarkSpec("mmtbench", "MMTBench", "out", "val", _convert_mmtbench, _official_mmtbench,
                      "MMT-Bench_VAL.tsv (VLMEvalKit TSV with base64 images)"),
        BenchmarkSpec("realworldqa", "RealWorldQA", "out", "test", _convert_realworldqa, _official_realworldqa,
                      "a JSON list of {image, question, answer} and the image files"),
    )
}  # fmt: skip


def _spec(name: str) -> BenchmarkSpec:
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in BENCHMARKS:
        raise unknown_choice("benchmark", name, BENCHMARKS)
    return BENCHMARKS[key]


def load_benchmark(
    name: str,
    folder: str | os.PathLike[str],
    split: str | None = None,
    *,
    limit: int | None = None,
    image_root: str | os.PathLike[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Iterate the uniform records of benchmark `name` stored under `folder` (see the module docstring).

    `split` defaults to the benchmark's local evaluation split (`BENCHMARKS[name].default_split`);
    `limit` stops after that many records (smoke tests); `image_root` is an extra folder to look for image
    files in (e.g. a shared COCO copy). The folder and format are checked before this returns, so a bad
    config fails at once rather than at the first record.
    """
    spec = _spec(name)
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"Benchmark folder {str(root)!r} for {spec.name!r} does not exist or is not a folder."
        )
    explicit = split is not None
    split = str(split) if explicit else spec.default_split
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}.")

    source = (
        _hf_saved(root, split, explicit) or _hf_parquet(root, split, explicit) or spec.official(root, split)
    )
    if source is None:
        raise ConfigError(
            f"No {spec.display} data for split {split!r} found in {str(root)!r}. Expected a Hugging Face "
            f"save_to_disk folder, parquet files, or the official release: "
            f"{spec.official_hint.replace('<split>', split)}."
        )
    _, rows = source
    bases = [Path(image_root).expanduser()] if image_root is not None else []
    return _records(spec, rows, _Context(spec.name, root, [*bases, root]), limit)


def _records(
    spec: BenchmarkSpec, rows: Callable[[], Rows], ctx: _Context, limit: int | None
) -> Iterator[dict[str, Any]]:
    base_folders = list(ctx.bases)
    for index, (row, extra) in enumerate(rows()):
        if limit is not None and index >= limit:
            return
        ctx.bases = [*extra, *base_folders]
        yield spec.convert(row, index, ctx)


def benchmark_from_config(entry: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Open a benchmark from a config entry: {name, path, split?, limit?, image_root?}.

    Example (YAML): `{name: docvqa, path: /data/docvqa, split: val}`.
    """
    missing = [key for key in ("name", "path") if key not in entry or entry[key] in (None, "")]
    if missing:
        raise ConfigError(f"Benchmark config entry {dict(entry)!r} lacks {', '.join(missing)}.")
    unknown = set(entry) - {"name", "path", "split", "limit", "image_root"}
    if unknown:
        raise unknown_choice(
            "benchmark config key", sorted(unknown)[0], ["name", "path", "split", "limit", "image_root"]
        )
    return load_benchmark(
        entry["name"],
        entry["path"],
        entry.get("split"),
        limit=entry.get("limit"),
        image_root=entry.get("image_root"),
    )


def iter_all(entries: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Chain several config entries (e.g. the eval suite of a run) into one record stream."""
    for entry in entries:
        yield from benchmark_from_config(entry)
