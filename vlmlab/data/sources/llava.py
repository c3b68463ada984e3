"""LLaVA / ShareGPT conversations: one JSON list or a JSONL file, images in a folder.

Each entry: `{"id": ..., "image": "coco/train2017/x.jpg" | [paths...], "conversations": [{"from": "human",
"value": "<image>\\nWhat is ..."}, {"from": "gpt", "value": "..."}, ...]}` (or `"messages"` of role/content
turns). Paths are relative to `image_root` (default: the JSON file's folder). Multi-turn: the loss covers
every assistant turn; an entry without an image is a text sample. The file is read once per node into a
memory-mapped Arrow index that every process shares (`json_index.py`: no per-worker copy of the list, start-up
independent of the file's size); records are indices (`IndexedReader`). A missing image is counted at its
folder (the highest missing one under `image_root`), so a whole missing folder is named as such.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmlab.config import DataSourceConfig
from vlmlab.data.sources.base import BadSample, DataHealth, IndexedReader, Record, Source, source_name
from vlmlab.data.sources.conversation import conversation_sample
from vlmlab.data.sources.json_index import JsonRows
from vlmlab.data.sources.webdataset import decode_or_skip
from vlmlab.errors import ConfigError


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
        self.rows = JsonRows(self.path, self.name)

    def num_samples(self) -> int:
        return len(self.rows)

    def reader(self, reader_id: int, num_readers: int, seed: int, health: DataHealth) -> IndexedReader:
        return IndexedReader(self.name, len(self.rows), reader_id, num_readers, seed, health)

    def key(self, record: Record) -> str:
        return self.rows.id(int(record["index"]))

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
                raise self._missing(path)
            paths.append(path)
        return paths

    def _missing(self, path: Path) -> BadSample:
        """The missing image as a bad sample counted at its folder: the highest missing one under the image
        root when folders are missing (a subset's images not unpacked), else the image's own folder."""
        top, folder = None, path.parent
        while folder != self.image_root and folder != folder.parent and not folder.exists():
            top, folder = folder, folder.parent
        if top is not None:
            return BadSample(
                f"image folder {str(top)!r} does not exist (image {str(path)!r}; image_root "
                f"{str(self.image_root)!r})",
                place=f"{top}/ (missing folder)",
            )
        return BadSample(
            f"image file {str(path)!r} does not exist (image_root {str(self.image_root)!r})",
            place=f"{path.parent}/",
        )

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
