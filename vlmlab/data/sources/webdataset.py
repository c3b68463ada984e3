"""Samples in webdataset tar shards, streamed sequentially through the webdataset library.

Sharding: in every epoch the shard list is shuffled with (seed, source, epoch); reader g of G (G = ranks x
loader workers, g = rank + ranks x worker, as webdataset's `split_by_node` then `split_by_worker`) reads
shards g, g+G, ... of that order, each front to back. With fewer shards than readers every reader walks all
shards and keeps the samples at its own positions (position + shard) mod G = g, so shares stay disjoint and
their union is the epoch. The reader's position is (epoch, shard, offset in samples, byte offset of the next
sample): resuming reopens one shard and seeks there (local uncompressed tars), or skips `offset` samples
undecoded where the stream cannot seek (`.tar.gz`, `pipe:`, `http(s)://`): at most one shard's worth.

Sample layout (a sample = the members sharing a key, the member name up to the first dot of its base name):

- `<key>.json`: the sample (vlmlab/data/samples.py schema) with every field but the images. An image
  segment is `{"type": "image", "image": "<suffix>"}` naming the member `<key>.<suffix>` (e.g. `"0.jpg"`,
  `"png"`, LoMo's `"img0.png"`); without a name, the i-th image segment is `<key>.<i>.<ext>`, or
  `<key>.<ext>` for a single image, ext one of jpg / jpeg / png / webp. `id` defaults to the key,
  `source` to the source's name.
- a raw synthetic record (`vlmlab data synth` output: `question`, `answer`, ... + `<key>.png`) is converted
  with the source's `mode`.
- img2dataset's layout (`<key>.jpg` + `<key>.txt` caption + `<key>.json` metadata, e.g. COYO-700M or
  LAION as img2dataset downloads them): a caption sample, the caption from `.txt` or the JSON field
  `caption_field`, the user text `instruction` ("Describe the image." by default).
- `messages` (multi-turn) with image segments in user turns name their members like `segments` do.
- interleaved documents (MINT-1T's shards; OBELICS written as shards): `<key>.json` holding aligned `texts`
  and `images` lists (None where the other modality sits) -> a `document` sample (sources/documents.py);
  image k is frame k of one multi-page `<key>.tiff` (MINT-1T PDF), else the member an `images` entry names,
  else `<key>.<k>.<ext>`. `max_images` caps the images per sample.

Bad data is skipped and counted (DataHealth): a sample whose JSON or schema is broken or whose image member
is missing or not an image when read, an image that fails to decode when its batch is built, and the rest
of a shard that cannot be read to its end (truncated, corrupt, unreachable: the samples before stay).
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

from vlmlab.config import DataSourceConfig
from vlmlab.data.samples import CAPTION_INSTRUCTION, check_sample, is_synthetic_record, synthetic_to_sample
from vlmlab.data.shards import ENCODED_KEY, ShardList, ShardReadError, expand_shards, iter_shard
from vlmlab.data.sources.base import (
    BadSample,
    DataHealth,
    Record,
    Source,
    SourceReader,
    log,
    readable,
    source_name,
)
from vlmlab.data.sources.documents import document_sample
from vlmlab.errors import ConfigError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_MODES = ("tqa", "text")  # modes that mark a source of text-only samples


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB faithfully: 16- and 32-bit integer images are scaled to 8 bits (PIL's convert would clip them to
    white), float images from [0, 1]; transparency is composited on white."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0
        elif image.mode.startswith("I;16") or array.max(initial=0) <= 65535:
            top = 65535.0
        else:
            top = 2.0**32 - 1
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes) -> Image.Image:
    """Encoded bytes -> RGB PIL image carrying its original bytes (so writing it back keeps the JPEG)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    image = to_rgb(image)
    image.info[ENCODED_KEY] = data
    return image


def decode_or_skip(data: bytes, what: str) -> Image.Image:
    """`decode_image`, with a failure as a BadSample naming `what` (skipped and counted by the stream)."""
    try:
        return decode_image(data)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadSample(f"{what} cannot be decoded ({readable(error)})") from error


class WebDatasetSource(Source):
    def __init__(self, config: DataSourceConfig) -> None:
        self.name = source_name(config)
        if not config.path:
            raise ConfigError(
                f"webdataset source {self.name!r} needs a `path` (shards, a brace pattern or a manifest)."
            )
        self.config = config
        self.text_only = config.mode in TEXT_MODES
        self.shards: ShardList = expand_shards(str(config.path))

    def num_samples(self) -> int | None:
        return self.shards.num_samples

    def reader(
        self, reader_id: int, num_readers: int, seed: int, health: DataHealth, shuffle: bool = True
    ) -> ShardReader:
        return ShardReader(self, reader_id, num_readers, seed, health, shuffle)

    def key(self, record: Record) -> str:
        return str(record["__key__"])

    def where(self, record: Record) -> str:
        return str(record.get("__url__", self.config.path))

    # -- record -> sample
    def _json(self, record: Record) -> dict[str, Any]:
        if "json" not in record:
            raise BadSample(f"no {record['__key__']}.json member (members: {', '.join(_members(record))})")
        try:
            value = json.loads(record["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadSample(f"{record['__key__']}.json is not valid JSON ({error})") from error
        if not isinstance(value, dict):
            raise BadSample(f"{record['__key__']}.json must hold a JSON object")
        return value

    def _image(self, record: Record, suffix: str, load: bool) -> Image.Image | None:
        data = record[suffix]
        try:
            if not load:
                Image.open(io.BytesIO(data))  # the header only: catches what is not an image at all
                return None
            return decode_image(data)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise BadSample(
                f"image {record['__key__']}.{suffix} cannot be decoded ({readable(error)})"
            ) from error

    def _image_suffix(self, record: Record, reference: Any, position: int, count: int) -> str:
        if reference is None:
            candidates = [f"{position}.{ext}" for ext in IMAGE_EXTENSIONS]
            if count == 1:
                candidates += list(IMAGE_EXTENSIONS)
            reference = next((c for c in candidates if c in record), candidates[0])
        if not isinstance(reference, str) or reference not in record:
            raise BadSample(
                f"sample refers to image {reference!r} but the shard has no member {record['__key__']}."
                f"{reference} (members: {', '.join(_members(record))})"
            )
        return reference

    def _sample(self, record: Record, load: bool) -> dict[str, Any]:
        key = str(record["__key__"])
        if "json" not in record and "txt" not in record:
            raise BadSample(f"no {key}.json or {key}.txt member (members: {', '.join(_members(record))})")
        sample = self._json(record) if "json" in record else {}
        sample.pop("__key__", None)
        if is_synthetic_record(sample):
            if self.config.mode != "tqa":
                sample["image"] = self._image(record, self._image_suffix(record, None, 0, 1), load)
            sample.setdefault("id", key)
            try:
                return synthetic_to_sample(sample, self.config.mode, source=self.name)
            except (KeyError, TypeError) as error:
                raise BadSample(f"synthetic record lacks {error}") from error
        if not any(field in sample for field in ("segments", "prompt", "messages")):
            if isinstance(sample.get("texts"), list):  # an interleaved document (MINT-1T, OBELICS-style)
                return document_sample(
                    key,
                    sample["texts"],
                    sample.get("images"),
                    lambda value, k: self._document_image(record, value, k, load),
                    source=self.name,
                    max_images=self.config.max_images,
                )
            return self._caption_sample(record, sample, load)
        # image segments may stand in `segments` or in the content lists of `messages`
        lists = [sample["segments"]] if isinstance(sample.get("segments"), list) else []
        for message in sample.get("messages") or []:
            if isinstance(message, dict) and isinstance(message.get("content"), list):
                lists.append(message["content"])
        count = sum(isinstance(s, dict) and s.get("type") == "image" for part in lists for s in part)
        position = 0
        for part in lists:
            for index, segment in enumerate(part):
                if isinstance(segment, dict) and segment.get("type") == "image":
                    suffix = self._image_suffix(record, segment.get("image"), position, count)
                    part[index] = {**segment, "image": self._image(record, suffix, load)}
                    position += 1
        sample.setdefault("id", key)
        if self.config.name or "source" not in sample:
            sample["source"] = self.name
        try:
            return check_sample(sample)
        except ConfigError as error:
            raise BadSample(str(error)) from error

    def _document_image(self, record: Record, value: Any, k: int, load: bool) -> Image.Image | None:
        """The k-th image of an interleaved document: frame k of the document's one multi-page `<key>.tiff`
        (MINT-1T's PDF shards), else the member the `images` entry names (`<key>.<entry>`), else
        `<key>.<k>.<ext>` (webdataset's numbering), else `<key>.<ext>` for a document's only image."""
        key = str(record["__key__"])
        for suffix in ("tiff", "tif"):
            if suffix in record:
                try:
                    image = Image.open(io.BytesIO(record[suffix]))
                    frames = getattr(image, "n_frames", 1)
                    if k >= frames:
                        raise BadSample(
                            f"{key}.{suffix} holds {frames} frame(s); the document needs image {k}"
                        )
                    if not load:
                        return None
                    image.seek(k)
                    image.load()
                    return to_rgb(image)
                except BadSample:
                    raise
                except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
                    raise BadSample(f"image {k} of {key}.{suffix} cannot be decoded ({error})") from error
        if isinstance(value, str) and value in record:
            return self._image(record, value, load)
        candidates = [f"{k}.{ext}" for ext in IMAGE_EXTENSIONS]
        if k == 0:
            candidates += list(IMAGE_EXTENSIONS)
        suffix = next((c for c in candidates if c in record), None)
        if suffix is None:
            raise BadSample(
                f"the document's image {k} ({value!r:.60}) has no member: neither {key}.tiff nor {key}.{k}.jpg "
                f"(or png, webp) (members: {', '.join(_members(record))})"
            )
        return self._image(record, suffix, load)

    def _caption_sample(self, record: Record, meta: dict[str, Any], load: bool) -> dict[str, Any]:
        """img2dataset's layout: `<key>.jpg` + `<key>.txt` (the caption) + `<key>.json` (metadata, which may
        hold the caption in `caption_field`) -> a stage-1 caption sample."""
        key = str(record["__key__"])
        if "txt" in record:
            try:
                caption = record["txt"].decode("utf-8")
            except UnicodeDecodeError as error:
                raise BadSample(f"{key}.txt is not UTF-8 text ({error})") from error
        else:
            caption = meta.get(self.config.caption_field)
        if not isinstance(caption, str) or not caption.strip():
            raise BadSample(
                f"no caption: neither a {key}.txt member nor a string JSON field {self.config.caption_field!r}, "
                "and no 'segments' / 'prompt' / 'messages'"
            )
        suffix = next((ext for ext in IMAGE_EXTENSIONS if ext in record), None)
        if suffix is None:
            raise BadSample(f"no image member (jpg, jpeg, png, webp) among {', '.join(_members(record))}")
        instruction = self.config.instruction or CAPTION_INSTRUCTION
        return {
            "id": key,
            "source": self.name,
            "segments": [
                {"type": "image", "image": self._image(record, suffix, load)},
                {"type": "text", "text": instruction},
            ],
            "response": caption.strip(),
            "answer": caption.strip(),
            "kind": "caption",
        }

    def text_sample(self, record: Record) -> dict[str, Any]:
        """The sample with image segments left as None: nothing is decoded (headers are checked)."""
        return self._sample(record, load=False)

    def full_sample(self, record: Record) -> dict[str, Any]:
        """The sample with decoded RGB images."""
        return self._sample(record, load=True)

    def compact(self, record: Record) -> Record:
        # a sample of a local uncompressed shard is kept as where it starts (a few dozen bytes instead of its
        # images: the stream state travels from each loader worker with every batch and into checkpoints)
        if record.get(START_KEY) is None:
            return record
        return {REFERENCE_KEY: [record["__url__"], record[START_KEY], record["__key__"]]}

    def expand(self, kept: Record) -> Record:
        if REFERENCE_KEY not in kept:
            return kept
        url, start, key = kept[REFERENCE_KEY]
        try:
            record, _ = next(iter_shard(url, start=int(start)))
        except (StopIteration, ShardReadError) as error:
            raise ConfigError(
                f"source {self.name!r}: {url!r} no longer holds sample {key!r} at byte {start} ({error or 'ended'}); "
                "a resumed run must read the shards it was checkpointed on."
            ) from error
        if record.get("__key__") != key:
            raise ConfigError(
                f"source {self.name!r}: {url!r} holds {record.get('__key__')!r} at byte {start} where the "
                f"checkpoint's stream had {key!r}: the shard changed; resume on the same shards (or start a new run)."
            )
        record[START_KEY] = int(start)
        return record

    def samples_in_order(self, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Full samples in shard order (validation sets); bad ones are skipped and logged."""
        health = DataHealth(1.0)
        reader = self.reader(0, 1, 0, health, shuffle=False)
        produced = 0
        while limit is None or produced < limit:
            record = next(reader)
            if reader.epoch > 0:
                return
            try:
                yield self.full_sample(record)
                produced += 1
            except BadSample as error:
                health.skip(self.name, self.place(record, error), self.key(record), "bad sample", str(error))


START_KEY = "__start__"  # the byte offset a sample of a seekable shard starts at (WebDatasetSource.compact)
REFERENCE_KEY = "__shard_sample__"  # a compacted sample: [url, start, key]


def _members(record: Record) -> list[str]:
    return sorted(k for k in record if not k.startswith("__"))


class ShardReader(SourceReader):
    """Reader g of G over a WebDatasetSource (module docstring): endless, epoch after epoch."""

    def __init__(
        self,
        source: WebDatasetSource,
        reader_id: int,
        num_readers: int,
        seed: int,
        health: DataHealth,
        shuffle: bool = True,
    ) -> None:
        self.source, self.reader_id, self.num_readers = source, reader_id, num_readers
        self.seed, self.health, self.shuffle = seed, health, shuffle
        self.epoch, self.shard, self.offset = 0, 0, 0
        self.byte: int | None = 0  # where the shard's next sample starts (None: not seekable)
        self.produced_in_epoch = 0
        self._assigned: tuple[int, list[int], bool] | None = None  # (epoch, shard indices, modulo)
        self._samples: Iterator[tuple[Record, int | None]] | None = None

    @property
    def urls(self) -> tuple[str, ...]:
        return self.source.shards.urls

    def assignment(self, epoch: int) -> tuple[list[int], bool]:
        """This reader's shards (indices into the shard list) in `epoch`, and whether shards are shared."""
        if self._assigned is None or self._assigned[0] != epoch:
            order = list(range(len(self.urls)))
            if self.shuffle:
                random.Random(f"vlmlab.shards:{self.seed}:{self.source.name}:{epoch}").shuffle(order)
            if len(order) >= self.num_readers:
                self._assigned = (epoch, order[self.reader_id :: self.num_readers], False)
            else:
                self._assigned = (epoch, order, True)
        return self._assigned[1], self._assigned[2]

    def _close(self) -> None:
        if self._samples is not None:
            self._samples.close()  # type: ignore[attr-defined]
            self._samples = None

    def _next_shard(self) -> None:
        self._close()
        self.shard, self.offset, self.byte = self.shard + 1, 0, 0
        shards, _ = self.assignment(self.epoch)
        if self.shard >= len(shards):
            if self.produced_in_epoch == 0:
                raise ConfigError(
                    f"source {self.source.name!r}: reader {self.reader_id} of {self.num_readers} found no "
                    f"readable sample in its {len(shards)} shard(s) ({self.urls[shards[0]]}, ...)."
                )
            self.epoch, self.shard, self.produced_in_epoch = self.epoch + 1, 0, 0

    def _shard_ended(self, url: str, error: ShardReadError | None) -> None:
        if error is not None:
            self.health.skip(
                self.source.name, url, f"after {self.offset} samples", "unreadable shard rest", str(error)
            )
        counts = self.source.shards.counts
        index = self.assignment(self.epoch)[0][self.shard]
        if error is None and counts is not None and counts[index] != self.offset:
            log.warning(
                "source %r: shard %s holds %d samples, the manifest says %d; re-run `vlmlab data index`",
                self.source.name,
                url,
                self.offset,
                counts[index],
            )
        self._next_shard()

    def _open(self) -> tuple[str, bool]:
        shards, modulo = self.assignment(self.epoch)
        url = self.urls[shards[self.shard]]
        if self._samples is None:
            if self.offset and self.byte:  # resume by seeking to the next sample
                self._samples = iter_shard(url, start=self.byte)
            else:
                self._samples = iter_shard(url)
                for _ in range(self.offset):  # resume where seeking is impossible: skip, undecoded
                    next(self._samples)
        return url, modulo

    def __next__(self) -> Record:
        while True:
            try:
                url, modulo = self._open()
                start = self.byte
                record, self.byte = next(self._samples)  # type: ignore[arg-type]
            except StopIteration:
                self._shard_ended(self.urls[self.assignment(self.epoch)[0][self.shard]], None)
                continue
            except ShardReadError as error:
                self._shard_ended(self.urls[self.assignment(self.epoch)[0][self.shard]], error)
                continue
            position = self.offset
            self.offset += 1
            if modulo and (position + self.shard) % self.num_readers != self.reader_id:
                continue
            self.produced_in_epoch += 1
            self.health.read(self.source.name)
            if start is not None and self.byte is not None:  # a seekable shard: where the sample starts
                record[START_KEY] = start
            return record

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "shard": self.shard,
            "offset": self.offset,
            "byte": self.byte,
            "produced_in_epoch": self.produced_in_epoch,
            "num_shards": len(self.urls),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_shards", len(self.urls)) != len(self.urls):
            raise ConfigError(
                f"source {self.source.name!r}: the checkpoint's stream read {state['num_shards']} shards, this "
                f"path has {len(self.urls)}; a resumed run must see the same shards (or start a new run)."
            )
        self._close()
        self.epoch, self.shard, self.offset = int(state["epoch"]), int(state["shard"]), int(state["offset"])
        self.byte = state.get("byte")
        self.produced_in_epoch = int(state.get("produced_in_epoch", 0))
