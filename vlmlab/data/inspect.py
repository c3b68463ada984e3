"""Look at a source the way the model will: `vlmlab data inspect` and `vlmlab data stats` on any source.

A source is named by a config file (its `data.train` sources, after overrides) or by a path whose form
tells the kind: shards (`.tar`, `.tar.gz`, brace patterns, `shards.json`, a folder of tars) -> webdataset,
`.json` / `.jsonl` -> llava, a `save_to_disk` folder, a hub snapshot folder (`README.md`, `data/`) or
`.parquet` / `.arrow` files -> hf.

A config whose model tiles (model.tiling=anyres) is counted as training counts it: each image on the grid its
size and the budget pick, `--tokens-per-image` placeholders per tile (the connector's count: `vlmlab
describe` prints it), a newline after the thumbnail and after each row of tiles.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageOps

from vlmlab.config import (
    DataConfig,
    DataSourceConfig,
    ExperimentConfig,
    ModelConfig,
    load_config,
    tokenizer_preset,
)
from vlmlab.data.chat_encode import ChatEncoder
from vlmlab.data.encode import Encoder, SampleEncoder
from vlmlab.data.sources import BadSample, DataHealth, open_source
from vlmlab.data.synthetic.generate import DEFAULT_IMAGE_SIZE
from vlmlab.data.text_tokenizer import load_text_tokenizer
from vlmlab.data.tiling import ImageTiler
from vlmlab.errors import ConfigError
from vlmlab.files import atomic_open
from vlmlab.tiling import TilingPlan

IMAGE_MARK = "<image>"
BAD_LISTED = 10  # bad samples `stats` names one by one


def _reason_kind(reason: str) -> str:
    """A reason without its particulars (paths, quoted values, numbers): what bad samples have in common."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", reason.split(" (")[0])
    return re.sub(r"\d+", "N", text)


def source_from_path(path: str, **fields: Any) -> DataSourceConfig:
    """A DataSourceConfig for a bare path, its kind read from the path's form (module docstring)."""
    name = Path(path.rstrip("/")).name.split(".")[0] or "source"
    if path.endswith((".jsonl",)) or (path.endswith(".json") and not path.endswith("shards.json")):
        return DataSourceConfig(name=name, kind="llava", path=path, **fields)
    folder = Path(path)
    is_hf_folder = folder.is_dir() and (
        any((folder / marker).is_file() for marker in ("dataset_dict.json", "state.json", "README.md"))
        or (folder / "data").is_dir()  # a hub snapshot
        or any(folder.glob("*.parquet"))
    )
    if is_hf_folder or path.endswith((".parquet", ".arrow")):
        return DataSourceConfig(name=name, kind="hf", path=path, **fields)
    return DataSourceConfig(name=name, kind="webdataset", path=path, **fields)


def sources_of(
    target: str, overrides: list[str]
) -> tuple[list[DataSourceConfig], DataConfig, ModelConfig | None]:
    """The sources a config file's `data.train` lists, or the one source a path names (and the config's
    model, whose open-weight processor, if it names one, encodes the samples)."""
    if target.endswith((".yaml", ".yml")):
        config = load_config(ExperimentConfig, [target], overrides)
        if not config.data.train:
            raise ConfigError(f"{target!r} lists no data.train sources.")
        return list(config.data.train), config.data, config.model
    return [source_from_path(target)], DataConfig(), None


def _encoder(data: DataConfig, tokens_per_image: int, model: ModelConfig | None = None) -> Encoder:
    """An encoder for token counts only (no image transform): the config's text tokenizer, or the
    open-weight model's own processor and chat template (vlmlab/data/chat_encode.py)."""
    if model is not None and model.open_weight:
        from transformers import AutoProcessor

        trusted = model.open_weight in set(model.trust_remote_code)  # as vlmlab.models.open_weight.trusted
        try:
            processor = AutoProcessor.from_pretrained(model.open_weight, trust_remote_code=trusted)
        except Exception as error:  # noqa: BLE001 (a missing folder, a hub id offline, ...: one line)
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise ConfigError(f"Cannot load the processor of {model.open_weight!r}: {first}") from None
        return ChatEncoder(processor, data.max_length, image_size=DEFAULT_IMAGE_SIZE)
    if data.text_tokenizer == "tiny":
        tokenizer = load_text_tokenizer("tiny", 512, 511)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(data.text_tokenizer)
    image_id = tokenizer.get_vocab().get("<|image_pad|>")
    if image_id is None:
        raise ConfigError(f"text tokenizer {data.text_tokenizer!r} has no <|image_pad|> token.")
    tiler = None if model is None else _token_tiler(model, tokens_per_image)
    return SampleEncoder(tokenizer, None, tokens_per_image, image_id, data.max_length, tiler=tiler)


def _token_tiler(model: ModelConfig, tokens_per_tile: int) -> ImageTiler | None:
    """The model's tiling plan for token counts (tiles of the tokenizer's input size; no pixels are cut)."""
    if model.tiling == "none":
        return None
    tile_size = model.image_size or tokenizer_preset(model.tokenizer)["image_size"]
    grids = tuple(tuple(grid) for grid in model.tile_grids)
    plan = TilingPlan(grids, tile_size, tokens_per_tile, model.max_image_tokens)
    return ImageTiler(plan, normalize=lambda tiles: tiles)


def _grid_name(grid: tuple[int, int]) -> str:
    """`2x1 + thumbnail` (rows x columns of tiles), or `thumbnail` alone (no grid fit the budget)."""
    rows, cols = grid
    return f"{rows}x{cols} + thumbnail" if rows * cols else "thumbnail"


def _tiles(tokens: dict[str, Any]) -> str:
    """`; tiles: 2x1 + thumbnail, thumbnail` for a tiled sample, nothing for an untiled one."""
    if "grids" not in tokens:
        return ""
    return "; tiles: " + ", ".join(_grid_name(grid) for grid in tokens["grids"] if grid)


class Bad:
    """A bad sample as inspect / stats report it: where it was counted and why."""

    def __init__(self, place: str, reason: str) -> None:
        self.place, self.reason = place, reason

    def __str__(self) -> str:
        return f"bad sample in {self.place}: {self.reason}"


class NothingUsable(ConfigError):
    """Every sample read from a source is bad: `vlmlab data inspect` prints its report, then fails."""

    def __init__(self, message: str, report: str) -> None:
        super().__init__(message)
        self.report = report


def samples(
    config: DataSourceConfig, limit: int, seed: int = 0
) -> Iterator[tuple[str, dict[str, Any] | Bad]]:
    """(key, sample) for the first `limit` records a training reader reads (at most one epoch), or
    (key, Bad) for bad ones."""
    source = open_source(config, seed=seed)
    reader = source.reader(0, 1, seed, DataHealth(1.0))
    for _ in range(limit):
        record = next(reader)
        if getattr(reader, "epoch", 0) > 0:
            return
        try:
            yield source.key(record), source.full_sample(record)
        except BadSample as error:
            yield source.key(record), Bad(source.place(record, error), str(error))


def likely_cause(config: DataSourceConfig, bad: list[Bad]) -> str:
    """One line on why every sample of a source is bad: missing images point at `image_root` (LLaVA-Pretrain
    and mix665k ship their images apart from the JSON), else the most common place and reason."""
    places = Counter(b.place for b in bad)
    missing = [b for b in bad if "does not exist" in b.reason]
    if len(missing) == len(bad):
        root = config.image_root or (str(Path(str(config.path)).parent) if config.path else "")
        folders = ", ".join(place for place, _ in places.most_common(3))
        return (
            f"the images are missing under image_root {root!r} (missing: {folders}); set `image_root` to the "
            "folder the entries' image paths are relative to (LLaVA-Pretrain and LLaVA-v1.5's images are a "
            "separate download)"
        )
    place, count = places.most_common(1)[0]
    reason = Counter(b.reason for b in bad).most_common(1)[0][0]
    return f"most in {place} ({count} of {len(bad)}); the commonest reason: {reason}"


def render_text(encoder: Encoder, tokens: dict[str, Any]) -> str:
    """The chat text with image markers; scored spans in [[ ]]."""
    out, scored = [], False
    tokenizer = encoder.tokenizer
    for token, label in zip(tokens["input_ids"], tokens["labels"]):
        if (label != -100) != scored:
            out.append("[[" if not scored else "]]")
            scored = not scored
        out.append(None if token == encoder.image_token_id else token)
    if scored:
        out.append("]]")
    text, run = [], []
    for item in out:
        if isinstance(item, int):
            run.append(item)
            continue
        if run:
            text.append(tokenizer.decode(run))
            run = []
        if item is None:
            if not text or not text[-1].endswith(IMAGE_MARK):
                text.append(IMAGE_MARK)
        else:
            text.append(item)
    if run:
        text.append(tokenizer.decode(run))
    return "".join(text)


def images_of(sample: dict[str, Any]) -> list[Image.Image]:
    from vlmlab.data.samples import turns_of

    return [
        s["image"]
        for _, segments in turns_of(sample)
        for s in segments
        if s["type"] == "image" and s["image"]
    ]


def contact_sheet(entries: list[tuple[str, list[Image.Image], str]], path: Path, cell: int = 160) -> Path:
    """A PNG grid: one row per sample, its images, then its text (wrapped)."""
    columns = max([len(images) for _, images, _ in entries] + [1])
    text_width = 520
    height = cell + 8
    sheet = Image.new("RGB", (columns * (cell + 8) + text_width, max(1, len(entries)) * height), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (key, images, text) in enumerate(entries):
        top = row * height
        for column, image in enumerate(images):
            sheet.paste(ImageOps.contain(image.convert("RGB"), (cell, cell)), (column * (cell + 8), top))
        lines, line = [], ""
        for word in f"{key}: {text}".split():
            if len(line) + len(word) > 80:
                lines.append(line)
                line = ""
            line += word + " "
        lines.append(line)
        draw.multiline_text((columns * (cell + 8), top), "\n".join(lines[: cell // 12]), fill="black")
    with atomic_open(path) as handle:  # the format from the suffix, as `sheet.save(path)` would pick it
        sheet.save(handle, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path


def inspect(target: str, overrides: list[str], limit: int, tokens_per_image: int, sheet: Path | None) -> str:
    """The report `vlmlab data inspect` prints; writes the contact sheet when `sheet` is given."""
    configs, data, model = sources_of(target, overrides)
    encoder = _encoder(data, tokens_per_image, model)
    lines, entries, failed = [], [], []
    for config in configs:
        lines.append(f"== source {config.name or config.kind} ({config.kind}: {config.path or config.task})")
        bad, read = [], 0
        for key, sample in samples(config, limit):
            read += 1
            if isinstance(sample, Bad):
                bad.append(sample)
                lines.append(f"-- {key}: {sample}")
                continue
            tokens = encoder.tokenize(sample)
            if tokens is None:
                lines.append(f"-- {key}: longer than max_length={encoder.max_length} even after truncation")
                continue
            scored = sum(label != -100 for label in tokens["labels"])
            images = images_of(sample)
            image_tokens = sum(token == encoder.image_token_id for token in tokens["input_ids"])
            lines.append(
                f"-- {key}: {len(tokens['input_ids'])} tokens ({scored} scored), {len(images)} image(s), "
                f"{image_tokens} image tokens{_tiles(tokens)}"
            )
            text = render_text(encoder, tokens)
            lines.append(text)
            entries.append((key, images, text))
        if read and len(bad) == read:
            cause = likely_cause(config, bad)
            lines.append(f"every sample read is bad ({read} of {read}): {cause}")
            failed.append(f"source {config.name or config.kind!r}: all {read} samples read are bad; {cause}.")
    if sheet is not None:
        lines.append(f"contact sheet: {contact_sheet(entries, sheet)}")
    report = "\n".join(lines)
    if failed:
        raise NothingUsable(" ".join(failed), report)
    return report


def stats(target: str, overrides: list[str], limit: int, tokens_per_image: int) -> str:
    """Samples, tokens, images per sample and a length histogram over the first `limit` samples per source."""
    configs, data, model = sources_of(target, overrides)
    encoder = _encoder(data, tokens_per_image, model)
    lines = []
    for config in configs:
        lengths, images, grids, too_long = [], Counter(), Counter(), 0
        bad: list[tuple[str, Bad]] = []
        for key, sample in samples(config, limit):
            if isinstance(sample, Bad):
                bad.append((key, sample))
                continue
            tokens = encoder.tokenize(sample)
            if tokens is None:
                too_long += 1
                continue
            lengths.append(len(tokens["input_ids"]))
            images[len(tokens["images"])] += 1
            grids.update(_grid_name(grid) for grid in tokens.get("grids", ()) if grid)
        size = open_source(config).num_samples()
        lines.append(
            f"{config.name or config.kind}: {size if size is not None else 'unknown'} samples per epoch; first "
            f"{limit} read: {len(lengths)} usable, {len(bad)} bad, {too_long} longer than "
            f"max_length={encoder.max_length}"
        )
        if bad:  # name them: a count alone sends the user hunting
            reasons = Counter(_reason_kind(b.reason) for _, b in bad)
            lines.append("  bad by reason: " + ", ".join(f"{r}: {n}" for r, n in reasons.most_common()))
            for key, b in bad[:BAD_LISTED]:
                lines.append(f"  bad {key!r} in {b.place}: {b.reason}")
            if len(bad) > BAD_LISTED:
                lines.append(f"  ... and {len(bad) - BAD_LISTED} more")
            if len(bad) == len(bad) + len(lengths) + too_long:
                lines.append(f"  every sample read is bad: {likely_cause(config, [b for _, b in bad])}")
        if lengths:
            lines.append(
                f"  tokens: mean {statistics.mean(lengths):.1f}, median {statistics.median(lengths):.0f}, "
                f"max {max(lengths)}; images per sample: "
                + ", ".join(f"{n}: {count}" for n, count in sorted(images.items()))
            )
            if grids:  # tiled: how many images each grid took
                lines.append("  tile grids: " + ", ".join(f"{grid}: {n}" for grid, n in grids.most_common()))
            top = max(lengths)
            width = max(1, 2 ** math.ceil(math.log2(max(top / 8, 1))))
            histogram = Counter(length // width for length in lengths)
            for bucket in range(top // width + 1):
                count = histogram.get(bucket, 0)
                bar = "#" * max(1 if count else 0, round(40 * count / len(lengths)))
                lines.append(f"  {bucket * width:>6}-{(bucket + 1) * width - 1:<6} {count:>6} {bar}")
    return "\n".join(lines)


__all__ = ["NothingUsable", "inspect", "likely_cause", "source_from_path", "sources_of", "stats"]
