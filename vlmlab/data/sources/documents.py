"""Interleaved web documents as OBELICS and MINT-1T publish them -> the sample schema's `document` form.

Both write a document as two aligned lists, `texts` and `images`, where each position holds a text or an
image and the other list holds None there (OBELICS: HF datasets, `images` as image cells or URLs; MINT-1T:
webdataset shards, one `<key>.json` with both lists and the images as members). The document's segments
follow that order; adjacent text entries are separate paragraphs, joined with a blank line.

`max_images` caps images per sample (the cost of a document grows with its images; Idefics2 and MM1 cap
them): the document is cut just before its (max_images + 1)-th image, so every kept image keeps the text
around it that came before the cut.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlmlab.data.samples import check_sample
from vlmlab.data.sources.base import BadSample
from vlmlab.errors import ConfigError

PARAGRAPH = "\n\n"


def document_sample(
    key: str,
    texts: Any,
    images: Any,
    image: Callable[[Any, int], Any],
    *,
    source: str,
    max_images: int | None = None,
) -> dict[str, Any]:
    """A `document` sample from aligned `texts` / `images` lists; `image(value, k)` resolves the k-th image
    (a PIL image, or None when pixels are not loaded) and raises BadSample when it cannot."""
    if not isinstance(texts, list):
        raise BadSample(f"`texts` is not a list: {texts!r:.80}")
    if images is None:
        images = [None] * len(texts)
    if not isinstance(images, list) or len(images) != len(texts):
        raise BadSample(
            f"`texts` ({len(texts)}) and `images` "
            f"({len(images) if isinstance(images, list) else type(images).__name__}) are not aligned lists"
        )
    segments: list[dict[str, Any]] = []
    count = 0
    for position, (text, value) in enumerate(zip(texts, images)):
        if text is not None and value is not None:
            raise BadSample(f"position {position} holds both a text and an image")
        if value is not None:
            if max_images is not None and count >= max_images:
                break  # the cap: cut before this image
            segments.append({"type": "image", "image": image(value, count)})
            count += 1
        elif isinstance(text, str) and text:
            if segments and segments[-1]["type"] == "text":
                segments[-1] = {"type": "text", "text": segments[-1]["text"] + PARAGRAPH + text}
            else:
                segments.append({"type": "text", "text": text})
        elif text is not None and not isinstance(text, str):
            raise BadSample(f"text entry {position} is a {type(text).__name__}, not a string")
    sample = {"id": key, "source": source, "document": segments, "kind": "interleaved"}
    try:
        return check_sample(sample)
    except ConfigError as error:
        raise BadSample(str(error)) from error


__all__ = ["PARAGRAPH", "document_sample"]
