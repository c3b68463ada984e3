"""The paper's stage-2 mixture from the official files: COCO-Captions, VQAv2, DocVQA, TextVQA, ChartQA, A-OKVQA.

One source per dataset (`benchmark`), `path` its root folder, `split` (train by default). The questions come
from the benchmark readers (`vlmlab.data.benchmarks`: official JSON + images, HF `save_to_disk` folders or
parquet); COCO-Captions from `annotations/captions_<split>2017.json` (or 2014) + `<split>2017/`. Targets:
VQAv2 its most common answer (the official `multiple_choice_answer`), A-OKVQA the most common direct answer,
the others their first reference answer. Records are indices; an image shared by several questions stays a
path, read once per sample that uses it, never copied.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from vlmlab.config import DataSourceConfig
from vlmlab.data.benchmarks import load_benchmark
from vlmlab.data.samples import CAPTION_INSTRUCTION
from vlmlab.data.sources.base import BadSample, DataHealth, IndexedReader, Record, Source, source_name
from vlmlab.data.sources.webdataset import decode_or_skip
from vlmlab.errors import ConfigError, unknown_choice

STAGE2_DATASETS = ("coco_captions", "vqav2", "docvqa", "textvqa", "chartqa", "aokvqa")
SHORT_ANSWER = "\nAnswer the question using a single word or phrase."


def coco_caption_items(root: Path, split: str, name: str) -> list[tuple[Any, str, str]]:
    """(image path, instruction placeholder, caption) per caption of the official COCO captions files."""
    for year in ("2017", "2014"):
        annotations = root / "annotations" / f"captions_{split}{year}.json"
        if annotations.is_file():
            break
    else:
        raise ConfigError(
            f"source {name!r}: no COCO captions for split {split!r} under {str(root)!r} (expected "
            f"annotations/captions_{split}2017.json and {split}2017/)."
        )
    data = json.loads(annotations.read_text(encoding="utf-8"))
    folder = root / f"{split}{year}"
    files = {image["id"]: folder / image["file_name"] for image in data["images"]}
    return [(files[a["image_id"]], "", a["caption"].strip()) for a in data["annotations"]]


def _target(benchmark: str, record: dict[str, Any]) -> str | None:
    answers = [a for a in record.get("answers", []) if str(a).strip()]
    if benchmark == "vqav2" and record["meta"].get("multiple_choice_answer"):
        return str(record["meta"]["multiple_choice_answer"])
    if benchmark in ("vqav2", "aokvqa") and answers:
        return Counter(answers).most_common(1)[0][0]
    if answers:
        return str(answers[0])
    if record.get("options") and record.get("answer"):  # multiple choice: the gold option's text
        return record["options"]["ABCDEFGHIJKLMNOPQRSTUVWXYZ".index(record["answer"])]
    return None


class VQASource(Source):
    def __init__(self, config: DataSourceConfig) -> None:
        self.name = source_name(config) if config.name else (config.benchmark or "vqa")
        if config.benchmark not in STAGE2_DATASETS:
            raise unknown_choice(f"benchmark (vqa source {self.name!r})", config.benchmark, STAGE2_DATASETS)
        if not config.path or not Path(config.path).is_dir():
            raise ConfigError(f"vqa source {self.name!r}: path {config.path!r} is not a folder.")
        self.config, self.benchmark = config, config.benchmark
        root = Path(config.path)
        if self.benchmark == "coco_captions":
            self.items = coco_caption_items(root, config.split, self.name)
        else:
            self.items = []
            for record in load_benchmark(self.benchmark, root, config.split, image_root=config.image_root):
                image = record["image"]
                self.items.append((image if isinstance(image, Image.Image) else Path(image),
                                   record["question"], _target(self.benchmark, record),
                                   [str(a) for a in record.get("answers") or []]))  # fmt: skip
        if not self.items:
            raise ConfigError(f"vqa source {self.name!r}: {self.benchmark} {config.split} holds no samples.")

    def num_samples(self) -> int:
        return len(self.items)

    def reader(self, reader_id: int, num_readers: int, seed: int, health: DataHealth) -> IndexedReader:
        return IndexedReader(self.name, len(self.items), reader_id, num_readers, seed, health)

    def key(self, record: Record) -> str:
        return f"{self.benchmark}:{record['index']}"

    def where(self, record: Record) -> str:
        image = self.items[record["index"]][0]
        return str(image) if isinstance(image, Path) else f"{self.config.path} ({self.benchmark})"

    def _sample(self, record: Record, load: bool) -> dict[str, Any]:
        image, question, target, *references = self.items[record["index"]]
        if target is None or not str(target).strip():
            raise BadSample("no reference answer")
        if isinstance(image, Path):
            if not image.is_file():
                raise BadSample(f"image file {str(image)!r} does not exist")
            pixels = decode_or_skip(image.read_bytes(), f"image {image}") if load else None
        else:
            pixels = image.convert("RGB") if load else None
        if self.benchmark == "coco_captions":
            text, kind = self.config.instruction or CAPTION_INSTRUCTION, "caption"
        else:
            text, kind = question + SHORT_ANSWER, "vqa"
        return {
            "id": self.key(record),
            "source": self.name,
            "segments": [{"type": "image", "image": pixels}, {"type": "text", "text": text}],
            "response": str(target),
            "answer": str(target),
            "kind": kind,
            # validation scores with the benchmark's official metric against every reference answer
            **(
                {"benchmark": self.benchmark, "answers": references[0] or [str(target)]} if references else {}
            ),
        }

    def text_sample(self, record: Record) -> dict[str, Any]:
        return self._sample(record, load=False)

    def full_sample(self, record: Record) -> dict[str, Any]:
        return self._sample(record, load=True)
