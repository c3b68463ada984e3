"""Hugging Face datasets through the `datasets` library: `save_to_disk` folders, parquet / arrow files, hub ids.

`path`: a folder written by `save_to_disk` (a DatasetDict: `split` picks the split), parquet or arrow files
(a file, a glob), a hub snapshot folder as `huggingface-cli download` leaves it (`README.md` + data files:
read by `datasets.load_dataset` as the hub would, its README's configs picked by `subset`, else its
`data/` / split-named files), any other folder of data files, or a hub id (needs a network).
`streaming: true` reads through datasets' IterableDataset (parquet files or the hub), split across readers
with `datasets.distributed.split_dataset_by_node` and resumed with its own `state_dict()`; otherwise the
dataset is memory-mapped and records are row indices.

`fields` maps the sample's parts to columns; unmapped parts use the column of the same name when there is
one: `id` (the sample's id in logs and bad-data reports; else the row index), `image` (bytes, `{"bytes",
"path"}` as the Image feature stores it, or a PIL image) or `images` (a list of them), and one of `messages`
(chat / LLaVA turns with `<image>` markers, or The Cauldron's `texts`: `{user, assistant, source}` exchanges,
found by their form), `texts` (an interleaved document: OBELICS' `texts` aligned with `images`, None where
the other modality sits; `vlmlab.data.sources.documents`), `question` + `answer` (optionally `options`), or
`caption` (with `instruction` as the user text). A row whose image cell is empty (None, or an empty list) is
a text-only sample, as LLaVA-OneVision's text subsets hold them; an image list entry that is a local path is
read from `image_root` (or as an absolute path); a URL is a bad sample (download the images first).
"""

from __future__ import annotations

import glob
import io
import itertools
import os
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from vlmlab.config import DataSourceConfig
from vlmlab.data.benchmarks import saved_splits
from vlmlab.data.samples import CAPTION_INSTRUCTION, check_sample
from vlmlab.data.sources.base import (
    BadSample,
    DataHealth,
    IndexedReader,
    Record,
    Source,
    SourceReader,
    source_name,
)
from vlmlab.data.sources.conversation import conversation_sample
from vlmlab.data.sources.documents import document_sample
from vlmlab.data.sources.webdataset import decode_or_skip
from vlmlab.errors import ConfigError, unknown_choice

FIELDS = ("id", "image", "images", "messages", "texts", "question", "answer", "options", "caption")
FIELD_ALIASES = {"messages": ("messages", "conversations"), "answer": ("answer", "answers")}


def open_hf_dataset(config: DataSourceConfig, name: str) -> Any:
    """The `datasets` Dataset / IterableDataset a source config names (module docstring)."""
    import datasets

    path = str(config.path)
    try:
        splits = saved_splits(Path(path))
        if splits is not None:
            if config.split not in splits:
                raise ConfigError(
                    f"source {name!r}: split {config.split!r} is not in {path!r}; splits: {', '.join(splits)}."
                )
            path = str(splits[config.split])
        if os.path.isdir(path) and (Path(path) / "state.json").is_file():
            dataset = datasets.load_from_disk(path)
            return (
                dataset.to_iterable_dataset(num_shards=max(1, len(dataset) // 1000))
                if config.streaming
                else dataset
            )
        if os.path.isdir(path):  # a hub snapshot or a folder of data files: as the hub would read it
            return _load_folder(config, name, path)
        files = sorted(glob.glob(path)) if any(c in path for c in "*?[") else [path]
        if files and all(f.endswith((".parquet", ".arrow")) for f in files):
            if not all(os.path.isfile(f) for f in files):
                raise ConfigError(f"source {name!r}: {path!r} names no existing parquet / arrow file.")
            builder = "parquet" if files[0].endswith(".parquet") else "arrow"
            return datasets.load_dataset(builder, data_files=files, split="train", streaming=config.streaming)
        if os.path.exists(path):
            raise ConfigError(
                f"source {name!r}: {path!r} is neither a save_to_disk folder nor parquet / arrow files."
            )
        return datasets.load_dataset(path, split=config.split, streaming=config.streaming)
    except ConfigError:
        raise
    except Exception as error:  # datasets raises many kinds (FileNotFoundError, DatasetNotFoundError, ...)
        raise ConfigError(f"source {name!r}: cannot open Hugging Face dataset {path!r}: {error}") from error


def _load_folder(config: DataSourceConfig, name: str, path: str) -> Any:
    """A hub snapshot folder (its README.md's `configs`, else the `data/` or split-named files) through
    `datasets.load_dataset`, the way the hub reads it; the config (`subset`) and split are checked first so a
    wrong one is one line naming the valid ones."""
    import datasets

    try:
        subsets = datasets.get_dataset_config_names(path)
    except Exception as error:  # noqa: BLE001 (no data files, an unreadable README, ...: one line)
        raise ConfigError(
            f"source {name!r}: {path!r} is neither a save_to_disk folder nor a folder of data files "
            f"(parquet, arrow, json, csv; a hub snapshot): {str(error).splitlines()[0][:200]}"
        ) from None
    subset = config.subset
    if subset is None and len(subsets) > 1:
        raise ConfigError(
            f"source {name!r}: {path!r} holds {len(subsets)} subsets; pick one with `subset`: "
            f"{', '.join(subsets[:60])}{', ...' if len(subsets) > 60 else ''}."
        )
    if subset is not None and subset not in subsets:
        raise unknown_choice(f"subset of {path!r} (source {name!r})", subset, subsets)
    builder = datasets.load_dataset_builder(path, subset)
    splits = list(builder.config.data_files or {})
    if splits and config.split not in splits:
        raise ConfigError(
            f"source {name!r}: split {config.split!r} is not in {path!r}"
            f"{f' (subset {subset!r})' if subset else ''}; splits: {', '.join(splits)}."
        )
    return datasets.load_dataset(path, subset, split=config.split, streaming=config.streaming)


def _first_value(dataset: Any, column: str, rows: int = 64) -> Any:
    """The first non-empty list item of `column` among the first rows (what a `texts` column holds)."""
    import datasets

    if isinstance(dataset, datasets.Dataset):
        values = dataset.select_columns([column]).select(range(min(rows, len(dataset))))[column]
    else:
        values = [row.get(column) for row in itertools.islice(iter(dataset), rows)]
    for value in values:
        for item in value or []:
            if item is not None:
                return item
    return None


def _image_list_feature(feature: Any) -> bool:
    import datasets

    inner = getattr(feature, "feature", feature[0] if isinstance(feature, list) and feature else None)
    return isinstance(inner, datasets.Image)


def _columns(dataset: Any) -> list[str]:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    first = next(iter(dataset))  # a streaming dataset of unknown features
    return list(first)


class HFSource(Source):
    def __init__(self, config: DataSourceConfig) -> None:
        import datasets

        self.name = source_name(config)
        if not config.path:
            raise ConfigError(
                f"hf source {self.name!r} needs a `path` (folder, parquet / arrow files or hub id)."
            )
        self.config = config
        self.dataset = open_hf_dataset(config, self.name)
        columns = _columns(self.dataset)
        self.fields: dict[str, str] = {}
        for part, column in dict(config.fields or {}).items():
            if part not in FIELDS:
                raise ConfigError(
                    f"source {self.name!r}: unknown field {part!r} in `fields`; valid: {', '.join(FIELDS)}."
                )
            if column not in columns:
                raise ConfigError(
                    f"source {self.name!r}: field {part!r} maps to column {column!r}, which does not exist; "
                    f"columns: {', '.join(columns)}."
                )
            self.fields[part] = column
        for part in FIELDS:
            if part not in self.fields and part != "texts":
                found = [c for c in FIELD_ALIASES.get(part, (part,)) if c in columns]
                if found:
                    self.fields[part] = found[0]
        if "texts" in columns and not {"messages", "texts"} & set(self.fields):
            # one column name, two published forms: The Cauldron's exchanges (dicts), OBELICS' paragraphs
            first = _first_value(self.dataset, "texts")
            self.fields["messages" if isinstance(first, dict) else "texts"] = "texts"
        if "messages" in self.fields:
            self.form = "messages"
        elif "texts" in self.fields:
            self.form = "document"
        elif "question" in self.fields and "answer" in self.fields:
            self.form = "vqa"
        elif "caption" in self.fields:
            self.form = "caption"
        else:
            raise ConfigError(
                f"source {self.name!r}: no columns for messages, texts (documents), question + answer, or "
                f"caption (map them with `fields`); columns: {', '.join(columns)}."
            )
        self.text_only = "image" not in self.fields and "images" not in self.fields
        self.streaming = isinstance(self.dataset, datasets.IterableDataset)
        if not self.streaming:  # keep image cells as bytes: decoded only for the batches that use them
            for part in ("image", "images"):
                column = self.fields.get(part)
                feature = self.dataset.features.get(column) if column else None
                if isinstance(feature, datasets.Image):
                    self.dataset = self.dataset.cast_column(column, datasets.Image(decode=False))
                elif feature is not None and _image_list_feature(feature):
                    self.dataset = self.dataset.cast_column(column, [datasets.Image(decode=False)])
        self.columns = sorted(set(self.fields.values()))
        self.image_root = Path(config.image_root) if config.image_root else None
        # ids from the dataset's own id column (read alone: no image cell is touched for a key)
        self._ids = (
            self.dataset.select_columns([self.fields["id"]])
            if "id" in self.fields and not self.streaming
            else None
        )

    def num_samples(self) -> int | None:
        return None if self.streaming else len(self.dataset)

    def reader(self, reader_id: int, num_readers: int, seed: int, health: DataHealth) -> SourceReader:
        if self.streaming:
            return HFStreamReader(self, reader_id, num_readers, health)
        return IndexedReader(self.name, len(self.dataset), reader_id, num_readers, seed, health)

    def _row(self, record: Record) -> dict[str, Any]:
        return record["row"] if "row" in record else self.dataset[int(record["index"])]

    def key(self, record: Record) -> str:
        column = self.fields.get("id")
        if column is not None:
            if "row" in record and record["row"].get(column) is not None:
                return str(record["row"][column])
            if self._ids is not None and "index" in record:
                value = self._ids[int(record["index"])][column]
                if value is not None:
                    return str(value)
        return str(record.get("key", record.get("index")))

    def where(self, record: Record) -> str:
        return f"{self.config.path}[{self.key(record)}]"

    def _image(self, value: Any, load: bool) -> Image.Image | None:
        if value is None:
            raise BadSample("the image cell is empty")
        if isinstance(value, str):  # OBELICS-style lists hold URLs or, once downloaded, paths
            if "://" in value:
                raise BadSample(
                    f"image {value!r:.80} is a URL: download the documents' images first (img2dataset) and "
                    "store them in the dataset or as paths"
                )
            path = Path(value) if self.image_root is None else self.image_root / value
            if not path.is_file():
                raise BadSample(f"image file {str(path)!r} does not exist", place=str(path.parent) + "/")
            return decode_or_skip(path.read_bytes(), f"image {path}") if load else None
        if not load:
            return None
        if isinstance(value, Image.Image):
            return value.convert("RGB")
        if isinstance(value, dict):
            if value.get("bytes"):
                value = value["bytes"]
            elif value.get("path") and os.path.isfile(value["path"]):
                value = Path(value["path"]).read_bytes()
            else:
                raise BadSample(f"the image cell holds neither bytes nor a readable path: {value!r:.80}")
        if isinstance(value, bytes | bytearray):
            return decode_or_skip(bytes(value), "image cell")
        raise BadSample(f"the image cell holds a {type(value).__name__}, not an image")

    def _sample(self, record: Record, load: bool) -> dict[str, Any]:
        row = self._row(record)
        key = self.key(record)
        if self.form == "document":
            return document_sample(
                key,
                row.get(self.fields["texts"]),
                row.get(self.fields["images"]) if "images" in self.fields else None,
                lambda value, _: self._image(value, load),
                source=self.name,
                max_images=self.config.max_images,
            )
        # an empty image cell is a text-only row (LLaVA-OneVision's text subsets), not a bad one
        images: list[Any] = []
        if "images" in self.fields and row.get(self.fields["images"]):
            images = [self._image(v, load) for v in row[self.fields["images"]]]
        elif "image" in self.fields and row.get(self.fields["image"]) is not None:
            images = [self._image(row.get(self.fields["image"]), load)]
        if self.form == "messages":
            return conversation_sample(
                key,
                row.get(self.fields["messages"]),
                images,
                source=self.name,
                system=self.config.system or None,
            )
        segments = [{"type": "image", "image": image} for image in images]
        if self.form == "vqa":
            answer = row.get(self.fields["answer"])
            if isinstance(answer, list):  # several reference answers: train on the most common
                answer = Counter(str(a) for a in answer).most_common(1)[0][0] if answer else None
            question = row.get(self.fields["question"])
            if not isinstance(question, str) or answer is None or str(answer) == "":
                raise BadSample("empty question or answer")
            sample = {"segments": [*segments, {"type": "text", "text": question}], "response": str(answer)}
            sample.update(answer=str(answer), kind="vqa" if images else "text")
            options = row.get(self.fields["options"]) if "options" in self.fields else None
            if options:
                sample["options"] = [str(o) for o in options]
        else:
            caption = row.get(self.fields["caption"])
            if not isinstance(caption, str) or not caption.strip():
                raise BadSample("empty caption")
            if not images:
                raise BadSample("a caption without an image")
            instruction = self.config.instruction or CAPTION_INSTRUCTION
            sample = {"segments": [*segments, {"type": "text", "text": instruction}], "response": caption}
            sample.update(answer=caption, kind="caption")
        sample.update(id=key, source=self.name)
        try:
            return check_sample(sample)
        except ConfigError as error:
            raise BadSample(str(error)) from error

    def text_sample(self, record: Record) -> dict[str, Any]:
        return self._sample(record, load=False)

    def full_sample(self, record: Record) -> dict[str, Any]:
        return self._sample(record, load=True)


def _plain(value: Any) -> Any:
    """A cell as str / int / float / bytes / list / dict only (records travel in the checkpointed state)."""
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return value
    return str(value)


class HFStreamReader(SourceReader):
    """Reader g of G over a streaming dataset: `split_dataset_by_node` shares, datasets' own resumable state."""

    def __init__(self, source: HFSource, reader_id: int, num_readers: int, health: DataHealth) -> None:
        from datasets.distributed import split_dataset_by_node

        self.source, self.health = source, health
        self.dataset = split_dataset_by_node(source.dataset, rank=reader_id, world_size=num_readers)
        self.epoch, self.count, self.produced_in_epoch = 0, 0, 0
        self._state: dict[str, Any] | None = None
        self._rows: Any = None

    def __next__(self) -> Record:
        while True:
            if self._rows is None:
                self.dataset.set_epoch(self.epoch)
                if self._state is not None:
                    self.dataset.load_state_dict(self._state)
                self._rows = iter(self.dataset)
            try:
                row = next(self._rows)
            except StopIteration:
                if self.produced_in_epoch == 0:
                    raise ConfigError(
                        f"source {self.source.name!r}: a reader's share of the dataset is empty."
                    ) from None
                self.epoch, self.produced_in_epoch, self._state, self._rows = self.epoch + 1, 0, None, None
                continue
            self._state = self.dataset.state_dict()
            self.count += 1
            self.produced_in_epoch += 1
            self.health.read(self.source.name)
            row = {column: _plain(row.get(column)) for column in self.source.columns}
            return {"row": row, "key": f"{self.epoch}:{self.count}"}

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "count": self.count,
            "produced_in_epoch": self.produced_in_epoch,
            "hf_state": self._state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.count = int(state["epoch"]), int(state["count"])
        self.produced_in_epoch = int(state["produced_in_epoch"])
        self._state, self._rows = state["hf_state"], None
