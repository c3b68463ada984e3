"""Rendered evaluation (LoMo report Sec. 4.1 and Appendix B.5): the question goes in as pixels.

Standard evaluation feeds (image, text question).  Rendered evaluation renders the *whole* question as
one image with the same typesetting as training (font size 20, line height 22, no distortion) and feeds
(original image(s), rendered question) instead -- the linguistic content is identical, only the carrier
changes, so the accuracy gap measures carrier sensitivity.

Math: the default renderer uses ``math_engine="auto"``, i.e. real LaTeX when latex and dvipng are
installed (the report's renderer; evaluation is offline, so a latex run per question with math is
affordable), else mathtext.  The online training transform resolves ``auto`` to mathtext instead (see
``LomoConfig.math_engine``); to evaluate with the typesetting a run was trained on, pass a renderer
built with that engine, e.g. ``SpanRenderer(RenderConfig(math_engine="mathtext"))``.

The produced samples use the LoMo segment schema (see :mod:`vlmlab.data.lomo.transform`)::

    {"segments": [{"type": "image", "image": <original>}, ...,
                  {"type": "image", "image": <rendered question>, "source": question}], ...}

so the same collator handles both protocols.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from vlmlab.data.lomo.render import RenderConfig, SpanRenderer
from vlmlab.errors import ConfigError

_DEFAULT_RENDERER: SpanRenderer | None = None


def _renderer(renderer: SpanRenderer | None) -> SpanRenderer:
    global _DEFAULT_RENDERER
    if renderer is not None:
        return renderer
    if _DEFAULT_RENDERER is None:
        _DEFAULT_RENDERER = SpanRenderer(RenderConfig())
    return _DEFAULT_RENDERER


def render_question(question: str, renderer: SpanRenderer | None = None) -> Image.Image:
    """The whole question as one clean RGB image (no distortion: evaluation must be deterministic)."""
    if not isinstance(question, str) or not question.strip():
        raise ConfigError(f"A rendered-evaluation question must be a non-blank string, got {question!r}.")
    return _renderer(renderer).render(question).convert("RGB")


def rendered_question_segments(
    question: str,
    images: Image.Image | Sequence[Image.Image] | None = None,
    renderer: SpanRenderer | None = None,
) -> list[dict[str, Any]]:
    """Segments for the rendered protocol: the original image(s) first, then the rendered question."""
    if images is None:
        originals: list[Image.Image] = []
    elif isinstance(images, Image.Image):
        originals = [images]
    else:
        originals = list(images)
    segments: list[dict[str, Any]] = [{"type": "image", "image": img} for img in originals]
    segments.append({"type": "image", "image": render_question(question, renderer), "source": question})
    return segments


def rendered_eval_sample(
    sample: Mapping[str, Any],
    question_key: str = "question",
    image_keys: Sequence[str] = ("image", "images"),
    renderer: SpanRenderer | None = None,
) -> dict[str, Any]:
    """A copy of a benchmark sample with ``segments`` for rendered evaluation; answer keys untouched."""
    if question_key not in sample:
        raise ConfigError(f"Benchmark sample has no {question_key!r} field; keys: {sorted(sample)}.")
    images: list[Image.Image] = []
    for key in image_keys:
        value = sample.get(key)
        if value is None:
            continue
        images.extend([value] if isinstance(value, Image.Image) else list(value))
    out = dict(sample)
    out["segments"] = rendered_question_segments(sample[question_key], images, renderer)
    return out


def _fmt(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def rendered_gap_table(standard: Mapping[str, float], rendered: Mapping[str, float], digits: int = 2) -> str:
    """Markdown table of Standard vs Rendered accuracy per benchmark with Gap = Rendered - Standard.

    A negative gap is the carrier-sensitivity drop of the report's Figure 1(a).  Benchmarks missing
    from one protocol show "–" and are left out of the Average row, which covers only benchmarks
    present in both (so the averages and their gap are comparable).
    """
    names = list(standard) + [k for k in rendered if k not in standard]
    lines = ["| Benchmark | Standard | Rendered | Gap |", "|---|---:|---:|---:|"]
    both: list[str] = []
    for name in names:
        s = standard.get(name)
        r = rendered.get(name)
        gap = None if s is None or r is None else float(r) - float(s)
        if gap is not None:
            both.append(name)
        lines.append(f"| {name} | {_fmt(s, digits)} | {_fmt(r, digits)} | {_fmt(gap, digits, signed=True)} |")
    if both:
        s_avg = sum(float(standard[n]) for n in both) / len(both)
        r_avg = sum(float(rendered[n]) for n in both) / len(both)
        lines.append(
            f"| **Average** ({len(both)}) | {_fmt(s_avg, digits)} | {_fmt(r_avg, digits)} | "
            f"{_fmt(r_avg - s_avg, digits, signed=True)} |"
        )
    return "\n".join(lines)
