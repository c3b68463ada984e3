"""LLaVA / ShareGPT conversations: one JSON list or a JSONL file, images in a folder.

Each entry: `{"id": ..., "image": "coco/train2017/x.jpg" | [paths...], "conversations": [{"from": "human",
"value": "<image>\\nWhat is ..."}, {"from": "gpt", "value": "..."}, ...]}` (or `"messages"` of role/content
turns). Paths are relative to `image_root` (default: the JSON file's folder). Multi-turn: the loss covers
every assistant turn. The file is read once per process; records are indices (`IndexedReader`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmlab.config import DataSourceConfig
from vlmlab.data.sources.base import BadSample, DataHealth, IndexedReader, Record, Source, source_name
from vlmlab.data.sources.conversation import conversation_sample
from vlmlab.data.sources.webdataset import decode_or_skip
from vlmlab.errors import ConfigError


def read_json_records(path: Path, name: str) -> list[dict[str, Any]]:
    """A JSON list, or JSON lines (one object per line), as a list of dicts."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"source {name!r}: cannot read {str(path)!r}: {error}") from error
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"source {name!r}: {str(path)!r} is not valid JSON ({error}).") from error
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ConfigError(f"source {name!r}: {str(path)!r} must hold a list of objects (one per sample).")
    if not rows:
        raise ConfigError(f"source {name!r}: {str(path)!r} holds no samples.")
    return rows


class LlavaSource(Source):
    def __init__(self, config: DataSourceConfig) -> None:
        self.name = source_name(config)
        if not config.path:
            raise ConfigError(f"llava source {self.name!r} needs a `path` (the JSON or JSONL file).")
        self.config = config
        self.text_only = config.mode == "text"  # a text-only corpus: LoMo rewrites it, Table 5 counts it
        self.path = Path(config.path)
        if not self.path.is_file():
            raise ConfigError(f"llava source {self.name!r}: {str(self.path)!r} does not exist.")
        self.image_root = Path(config.image_root) if config.image_root else self.path.parent
        if not self.image_root.is_dir():
            raise ConfigError(
                f"llava source {self.name!r}: image_root {str(self.image_root)!r} is not a folder."
            )
        self.rows = read_json_records(self.path, self.name)

    def num_samples(self) -> int:
        return len(self.rows)

    def reader(self, reader_id: int, num_readers: int, seed: int, health: DataHealth) -> IndexedReader:
        return IndexedReader(self.name, len(self.rows), reader_id, num_readers, seed, health)

    def key(self, record: Record) -> str:
        return str(self.rows[record["index"]].get("id", record["index"]))

    def where(self, record: Record) -> str:
        return f"{self.path}[{record['index']}]"

    def _paths(self, row: dict[str, Any]) -> list[Path]:
        value = row.get("image", row.get("images"))
        values = [] if value is None else value if isinstance(value, list) else [value]
        paths = []
        for item in values:
            if not isinstance(item, str):
                raise BadSample(f"image entry {item!r:.60} is not a path")
            path = self.image_root / item
            if not path.is_file():
                raise BadSample(
                    f"image file {str(path)!r} does not exist (image_root {str(self.image_root)!r})"
                )
            paths.append(path)
        return paths

    def _sample(self, record: Record, load: bool) -> dict[str, Any]:
        row = self.rows[record["index"]]
        paths = self._paths(row)
        images: list[Any] = [decode_or_skip(p.read_bytes(), f"image {p}") if load else None for p in paths]
        turns = row.get("conversations", row.get("messages"))
        return conversation_sample(
            self.key(record), turns, images, source=self.name, system=self.config.system or None
        )

    def text_sample(self, record: Record) -> dict[str, Any]:
        return self._sample(record, load=False)

    def full_sample(self, record: Record) -> dict[str, Any]:
        return self._sample(record, load=True)
