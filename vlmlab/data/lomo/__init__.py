"""LoMo (Local Modality Substitution): render part of a text-only prompt as an image, same answer.

Stages (report Algorithm 1): :mod:`.spans` picks the span(s), :mod:`.render` typesets them, :mod:`.distort`
applies one perceptual distortion, :mod:`.transform` assembles the interleaved sample and writes shards.

Math is typeset with real LaTeX (:func:`find_latex`) or matplotlib's mathtext, per :data:`MATH_ENGINES`;
under ``auto`` the offline paths take LaTeX when installed and the online transform takes mathtext
(:func:`resolve_math_engine`, ``LomoConfig.math_engine``).
"""

from vlmlab.data.lomo.distort import (
    DEFAULT_WEIGHTS,
    DISTORTIONS,
    DistortionConfig,
    DistortionParams,
    apply_distortion,
    distort,
)
from vlmlab.data.lomo.mathtex import find_latex
from vlmlab.data.lomo.render import MATH_ENGINES, RenderConfig, SpanRenderer, resolve_math_engine, trim_margin
from vlmlab.data.lomo.spans import (
    POSITIONS,
    Block,
    Piece,
    SpanSplit,
    chunk,
    contains_math,
    localize_spans,
    sentence_count,
)
from vlmlab.data.lomo.transform import (
    LomoConfig,
    LomoTransform,
    is_text_only,
    mixture_weights,
    natural_image_text_ratio,
    read_rendered_shard,
    sample_group,
    write_rendered_shards,
)

__all__ = [
    "DEFAULT_WEIGHTS",
    "DISTORTIONS",
    "POSITIONS",
    "Block",
    "DistortionConfig",
    "DistortionParams",
    "LomoConfig",
    "LomoTransform",
    "MATH_ENGINES",
    "Piece",
    "RenderConfig",
    "SpanRenderer",
    "SpanSplit",
    "apply_distortion",
    "chunk",
    "contains_math",
    "distort",
    "find_latex",
    "is_text_only",
    "localize_spans",
    "mixture_weights",
    "natural_image_text_ratio",
    "read_rendered_shard",
    "resolve_math_engine",
    "sample_group",
    "sentence_count",
    "trim_margin",
    "write_rendered_shards",
]
