"""Training sources: one reader per kind behind one interface (`base.Source`), chosen by `config.kind`.

Adding a format is one file here that defines a `Source` subclass, plus one line in `SOURCE_KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlmlab.config import DataSourceConfig
from vlmlab.data.sources.base import (
    BadSample,
    DataHealth,
    Record,
    Source,
    SourceReader,
    merge_health,
    source_name,
)
from vlmlab.data.sources.hf import HFSource
from vlmlab.data.sources.llava import LlavaSource
from vlmlab.data.sources.lomo import LomoSource
from vlmlab.data.sources.synthetic import SyntheticSource
from vlmlab.data.sources.vqa import STAGE2_DATASETS, VQASource
from vlmlab.data.sources.webdataset import WebDatasetSource
from vlmlab.errors import ConfigError, unknown_choice

# kind -> factory(config, seed, image_size)
SOURCE_KINDS: dict[str, Callable[[DataSourceConfig, int, int | None], Source]] = {
    "synthetic": lambda config, seed, image_size: SyntheticSource(config, seed, image_size),
    "webdataset": lambda config, seed, image_size: WebDatasetSource(config),
    "llava": lambda config, seed, image_size: LlavaSource(config),
    "hf": lambda config, seed, image_size: HFSource(config),
    "vqa": lambda config, seed, image_size: VQASource(config),
}


def open_source(
    config: DataSourceConfig,
    *,
    seed: int = 0,
    image_size: int | None = None,
    lomo: dict[str, Any] | None = None,
) -> Source:
    """The reader for one DataSourceConfig; with `lomo` settings its text-only samples are rewritten."""
    factory = SOURCE_KINDS.get(config.kind)
    if factory is None:
        raise unknown_choice(f"data source kind (source {source_name(config)!r})", config.kind, SOURCE_KINDS)
    source = factory(config, seed, image_size)
    return LomoSource(source, lomo) if lomo else source


def first_sample(config: DataSourceConfig, *, seed: int = 0, image_size: int | None = None) -> dict[str, Any]:
    """Open a source and build its first sample, images decoded: a wrong path, kind, field mapping or image
    folder fails here, in seconds and naming the source, instead of in a data-loader worker."""
    source = open_source(config, seed=seed, image_size=image_size)
    reader = source.reader(0, 1, seed, DataHealth(1.0))
    record = next(reader)
    try:
        return source.full_sample(record)
    except BadSample as error:
        raise ConfigError(
            f"source {source.name!r}: its first sample ({source.key(record)} in {source.where(record)}) is "
            f"unusable: {error}"
        ) from error


__all__ = [
    "first_sample",
    "SOURCE_KINDS",
    "STAGE2_DATASETS",
    "HFSource",
    "LlavaSource",
    "VQASource",
    "BadSample",
    "DataHealth",
    "LomoSource",
    "Record",
    "Source",
    "SourceReader",
    "SyntheticSource",
    "WebDatasetSource",
    "merge_health",
    "open_source",
    "source_name",
]
