"""The LoMo transform: text-only sample -> text / rendered image / text sample with the same answer.

Sample schema
-------------
Input (text-only)::

    {"prompt": str, "response": str, ...any other keys...}

A sample is *text-only* when its prompt is a non-blank string and it carries no ``"image"``,
``"images"`` or ``"segments"`` entry; other samples (already multimodal) pass through unchanged.

Output of a *rewritten* sample: a shallow copy of the input with two added keys::

    "segments": [
        {"type": "text",  "text": "<prefix text>"},
        {"type": "image", "image": PIL.Image.Image (RGB), "source": "<the text it shows>"},
        {"type": "text",  "text": "<suffix text>"},
    ]
    "lomo": {"position": str, "whole": bool, "distortions": [str, ...], "fallback": str}

``response`` (the supervision target) and ``prompt`` are untouched: consumers must build the model input
from ``segments`` when present (``prompt`` stays for paired text/image evaluation and debugging).  Empty
text segments are omitted (e.g. for the ``prefix`` position or a prompt rendered whole), and the ``text``
of text segments together with the ``source`` of image segments, in order, concatenate exactly to the
original prompt.  ``multi`` gives text, image, text, image, text -- except on prompts with more than
``max_whole_sentences`` sentences but fewer than five words/formulas, which get the middle layout and a
non-empty ``fallback`` reason (counted in ``LomoTransform.layout_fallbacks``).  Samples that are not
selected for rewriting are returned as an unchanged shallow copy.

Offline mode (:func:`write_rendered_shards`) writes webdataset-compatible tar shards: per sample
``<key>.json`` (the sample with image segments as ``{"type": "image", "image": "img0.png", ...}``) and
``<key>.img0.png``, ``<key>.img1.png``... .  :func:`read_rendered_shard` loads them back.

Math engine per path (``LomoConfig.math_engine="auto"``): the shard writer typesets formulas with real
LaTeX when it is installed (it batches 64 samples per latex run); the online transform -- one sample at a
time in the data-loader workers -- uses mathtext, since one latex run per sample would cost ~0.15 s.
``math_engine="latex"`` forces LaTeX on both paths, ``"mathtext"`` on neither.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import os
import random
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from PIL import Image

from vlmlab.data.lomo.distort import (
    DEFAULT_WEIGHTS,
    DistortionConfig,
    DistortionParams,
    distort,
    normalize_weights,
)
from vlmlab.data.lomo.render import RenderConfig, SpanRenderer, resolve_math_engine
from vlmlab.data.lomo.spans import POSITIONS, localize_spans
from vlmlab.errors import ConfigError, unknown_choice
from vlmlab.files import atomic_open

_IMAGE_KEYS = ("image", "images", "segments")
_PREFETCH_SAMPLES = 64
"""Samples whose formulas the shard writer typesets in one latex run (a run costs ~0.15 s, a formula ~2 ms)."""

logger = logging.getLogger(__name__)
_ONLINE_AUTO_NOTED = False
"""Whether this process has logged that the online transform resolved ``auto`` to mathtext (once only:
every data-loader worker builds a transform per source)."""


@dataclass(frozen=True)
class LomoConfig:
    """All knobs of LoMo's ablations (report Tables 2-5) plus rendering parameters.

    * ``rewrite_ratio`` -- fraction of text-only samples rewritten (Table 3; 0.5 is the paper's best);
    * ``position`` -- ``middle`` (paper), ``prefix``, ``suffix`` or ``multi`` (Table 4);
    * ``distortion`` / ``distortion_weights`` / ``distortion_params`` -- perceptual distortion on/off
      (Table 2's "w/o PD") and its categorical weights over clean/rotate/blur/shadow_or_stain/wave;
    * ``image_text_ratio`` -- ``None`` keeps the natural mixture; a number (1.0 = Table 5's "matched")
      is the target image-bearing : text-only ratio used by :func:`mixture_weights`;
    * ``math_engine`` -- ``auto``, ``latex`` or ``mathtext`` (:data:`~vlmlab.data.lomo.render.MATH_ENGINES`).
      ``auto`` depends on the path: offline (:func:`write_rendered_shards`, ``LomoTransform(online=False)``)
      it is real LaTeX when latex and dvipng are on PATH, else mathtext; online (the training stream's
      per-sample transform) it is mathtext, logged once, because a latex run costs ~0.15 s and online
      samples come one at a time (``benchmarks/bench_lomo.py``, one core: ~10 samples per CPU second
      with LaTeX against ~200 with mathtext).  ``latex`` uses LaTeX on both paths (a ConfigError
      without it); pick it online only with time to spare;
    * ``seed`` -- the run seed; with the per-sample seed it fixes selection and distortion.
    """

    rewrite_ratio: float = 0.5
    position: str = "middle"
    distortion: bool = True
    distortion_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    distortion_params: DistortionParams = field(default_factory=DistortionParams)
    font_size: int = 20
    line_height: int = 22
    math_font_size: int = 26
    max_width: int = 800
    render_math: bool = True
    math_engine: str = "auto"  # auto: LaTeX offline if installed, mathtext online (see the docstring)
    max_whole_sentences: int = 3
    image_text_ratio: float | None = None
    seed: int = 0
    prompt_key: str = "prompt"

    def __post_init__(self) -> None:
        r = self.rewrite_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) <= 1.0:
            raise ConfigError(f"LoMo rewrite_ratio must be a number in [0, 1], got {r!r}.")
        if self.position not in POSITIONS:
            raise unknown_choice("LoMo position", self.position, POSITIONS)
        object.__setattr__(self, "distortion_weights", normalize_weights(self.distortion_weights))
        if isinstance(self.distortion_params, Mapping):
            object.__setattr__(self, "distortion_params", DistortionParams(**self.distortion_params))
        if self.image_text_ratio is not None:
            v = float(self.image_text_ratio)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"LoMo image_text_ratio must be a positive number or None, got {v!r}.")
        if self.max_whole_sentences < 0:
            raise ConfigError(f"LoMo max_whole_sentences must be >= 0, got {self.max_whole_sentences!r}.")
        self.render_config()  # validates font sizes etc.

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> LomoConfig:
        """Build from a plain mapping (YAML/omegaconf); unknown keys are errors with a did-you-mean hint."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise unknown_choice("LoMo config key", key, known)
        return cls(**dict(values))

    def render_config(self) -> RenderConfig:
        return RenderConfig(
            font_size=self.font_size,
            line_height=self.line_height,
            math_font_size=self.math_font_size,
            max_width=self.max_width,
            render_math=self.render_math,
            math_engine=self.math_engine,
        )

    def distortion_config(self) -> DistortionConfig:
        return DistortionConfig(weights=self.distortion_weights, params=self.distortion_params)


def is_text_only(sample: Mapping[str, Any], prompt_key: str = "prompt") -> bool:
    """A sample LoMo may rewrite: a non-blank string prompt and no image content."""
    prompt = sample.get(prompt_key)
    if not isinstance(prompt, str) or not prompt.strip():
        return False
    for k in _IMAGE_KEYS:
        value = sample.get(k)
        if value is not None and not (isinstance(value, (list, tuple)) and len(value) == 0):
            return False
    return True


class LomoTransform:
    """Callable ``(sample, sample_seed) -> sample`` implementing LoMo (Algorithm 1) on text-only samples.

    Keeps one :class:`SpanRenderer` (fonts and formula cache) per instance; create one per worker.

    ``online`` (the default: the training stream calls it one sample at a time) resolves
    ``math_engine="auto"`` to mathtext; ``online=False`` is for callers that batch samples through
    :meth:`prefetch` (the shard writer) and keeps ``auto``'s LaTeX.  ``renderer.math_engine`` tells
    which engine was chosen.
    """

    def __init__(self, config: LomoConfig | None = None, *, online: bool = True) -> None:
        self.config = config or LomoConfig()
        self.online = online
        render = self.config.render_config()
        if online and render.math_engine == "auto":
            if resolve_math_engine(render) == "latex":
                _note_online_auto()  # only when the choice differs from what auto gives offline
            render = replace(render, math_engine="mathtext")
        self.renderer = SpanRenderer(render)
        self._distortion = self.config.distortion_config()
        self.layout_fallbacks = 0
        """Samples whose requested position could not be laid out (see ``SpanSplit.fallback``)."""

    def selects(self, sample_seed: int | str) -> bool:
        """Whether the sample with this seed is rewritten: a Bernoulli(rewrite_ratio) draw that only
        depends on (config.seed, sample_seed), so every epoch/worker agrees."""
        ratio = float(self.config.rewrite_ratio)
        if ratio >= 1.0:
            return True
        if ratio <= 0.0:
            return False
        return random.Random(f"lomo-select:{self.config.seed}:{sample_seed}").random() < ratio

    def render_span(self, text: str, distortion_seed: int | str | None = None) -> tuple[Image.Image, str]:
        """Render one span (stage 2) and distort it (stage 3); returns (RGB image, distortion name)."""
        img = self.renderer.render(text)
        name = "clean"
        if self.config.distortion and distortion_seed is not None:
            img, name = distort(img, distortion_seed, self._distortion)
        return img.convert("RGB"), name

    def __call__(
        self, sample: Mapping[str, Any], sample_seed: int | str, render_images: bool = True
    ) -> dict[str, Any]:
        """`render_images=False` gives the same segments with `image: None` (cheap: for planning lengths)."""
        out = dict(sample)
        key = self.config.prompt_key
        if not is_text_only(sample, key) or not self.selects(sample_seed):
            return out
        prompt: str = sample[key]
        split = localize_spans(prompt, self.config.position, self.config.max_whole_sentences)
        if not split.spans:
            return out
        if split.fallback:
            self.layout_fallbacks += 1
            if self.layout_fallbacks == 1:  # once: the count (and each sample's "lomo") tells the rest
                logger.warning(
                    "LoMo position %r fell back (%s); further fallbacks are counted in "
                    "LomoTransform.layout_fallbacks and recorded in sample['lomo']['fallback'].",
                    self.config.position,
                    split.fallback,
                )
        if render_images:
            self.renderer.prefetch(split.spans)  # both multi-span images' formulas in one latex run
        segments: list[dict[str, Any]] = []
        names: list[str] = []
        for piece in split.pieces:
            if not piece.render:
                if piece.text:
                    segments.append({"type": "text", "text": piece.text})
                continue
            seed = f"{self.config.seed}:{sample_seed}:{len(names)}"
            img, name = self.render_span(piece.text, seed) if render_images else (None, "unrendered")
            names.append(name)
            segments.append({"type": "image", "image": img, "source": piece.text})
        out["segments"] = segments
        out["lomo"] = {
            "position": self.config.position,
            "whole": split.whole,
            "distortions": names,
            "fallback": split.fallback,
        }
        return out

    def prefetch(self, samples: Iterable[tuple[Mapping[str, Any], int | str]]) -> None:
        """Typeset the formulas of many ``(sample, sample_seed)`` pairs at once (one latex run).

        Only useful with the LaTeX engine; the following ``__call__`` on the same samples hits the cache.
        """
        if self.renderer.math_engine != "latex":
            return  # mathtext is fast per formula: nothing to batch
        key = self.config.prompt_key
        spans: list[str] = []
        for sample, seed in samples:
            if is_text_only(sample, key) and self.selects(seed):
                split = localize_spans(sample[key], self.config.position, self.config.max_whole_sentences)
                spans.extend(split.spans)
        self.renderer.prefetch(spans)


def _note_online_auto() -> None:
    global _ONLINE_AUTO_NOTED
    if _ONLINE_AUTO_NOTED:
        return
    _ONLINE_AUTO_NOTED = True
    logger.info(
        "LoMo: math_engine='auto' renders math with mathtext in the online transform (LaTeX is installed, "
        "but one latex run per sample costs ~0.15 s); set math_engine='latex' to use it online anyway, or "
        "write LaTeX-rendered shards offline (write_rendered_shards)."
    )


# --------------------------------------------------------------------------------------------------
# Mixture control (Table 5)
# --------------------------------------------------------------------------------------------------


def natural_image_text_ratio(n_multimodal: int, n_text_only: int, rewrite_ratio: float) -> float:
    """Image-bearing : text-only ratio after rewriting (the paper's 2M+2M at 50% gives 3:1)."""
    image = n_multimodal + rewrite_ratio * n_text_only
    text = (1.0 - rewrite_ratio) * n_text_only
    return math.inf if text == 0 else image / text


def mixture_weights(n_multimodal: int, n_text_only: int, config: LomoConfig) -> dict[str, float]:
    """Per-group sampling weights (expected draws per source sample) for the data pool.

    Groups: ``multimodal`` (originally image-bearing), ``rendered`` (text-only rewritten by LoMo) and
    ``text_only`` (left as text).  With ``config.image_text_ratio=None`` all weights are 1 (the natural
    mixture).  With a target ratio rho the pool is resampled, keeping its total size, so that
    image-bearing : text-only = rho -- Table 5's "matched" control, which rules out that LoMo helps only
    by adding image-bearing samples.  Use with a weighted sampler: weight(sample) = weights[group].
    """
    if n_multimodal < 0 or n_text_only < 0:
        raise ConfigError(f"Sample counts must be >= 0, got {n_multimodal}, {n_text_only}.")
    r = float(config.rewrite_ratio)
    if config.image_text_ratio is None:
        return {"multimodal": 1.0, "rendered": 1.0, "text_only": 1.0}
    rho = float(config.image_text_ratio)
    total = n_multimodal + n_text_only
    image = n_multimodal + r * n_text_only
    text = (1.0 - r) * n_text_only
    if image == 0 or text == 0:
        raise ConfigError(
            f"image_text_ratio={rho} cannot be reached: the pool has {image:g} image-bearing and {text:g} "
            f"text-only samples after rewriting (rewrite_ratio={r})."
        )
    w_image = total * rho / (1.0 + rho) / image
    w_text = total / (1.0 + rho) / text
    return {"multimodal": w_image, "rendered": w_image, "text_only": w_text}


def sample_group(sample: Mapping[str, Any], prompt_key: str = "prompt") -> str:
    """The :func:`mixture_weights` group of a sample after the transform."""
    if "lomo" in sample and "segments" in sample:
        return "rendered"
    return "text_only" if is_text_only(sample, prompt_key) else "multimodal"


# --------------------------------------------------------------------------------------------------
# Offline shards
# --------------------------------------------------------------------------------------------------


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _encode_sample(key: str, sample: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    record = {k: v for k, v in sample.items() if k != "segments"}
    members: list[tuple[str, bytes]] = []
    if "segments" in sample:
        segs = []
        for seg in sample["segments"]:
            if seg.get("type") == "image":
                ext = f"img{len(members)}.png"
                buf = io.BytesIO()
                seg["image"].save(buf, format="PNG", compress_level=1)
                members.append((f"{key}.{ext}", buf.getvalue()))
                segs.append({**seg, "image": ext})
            else:
                segs.append(dict(seg))
        record["segments"] = segs
    record["__key__"] = key
    body = json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return [(f"{key}.json", body), *members]


def write_rendered_shards(
    samples: Iterable[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    config: LomoConfig | None = None,
    *,
    samples_per_shard: int = 1000,
    prefix: str = "lomo",
    first_seed: int = 0,
) -> list[Path]:
    """Apply LoMo offline and write ``{prefix}-{NNNNNN}.tar`` webdataset shards; returns their paths.

    Sample ``i`` uses ``sample_seed = first_seed + i`` and key ``f"{first_seed + i:09d}"``.  Each shard
    is written through ``vlmlab.files.atomic_open`` (a temporary file in ``out_dir``, renamed into place),
    so readers never see a partial shard and an interrupted run leaves no truncated tar under a final name.  Under
    ``math_engine="auto"`` formulas are typeset with real LaTeX when it is installed, the formulas of
    64 samples per latex run (the transform runs with ``online=False``).
    """
    if samples_per_shard <= 0:
        raise ConfigError(f"samples_per_shard must be > 0, got {samples_per_shard}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    transform = LomoTransform(config, online=False)  # batched below: auto may take LaTeX

    def numbered() -> Iterator[tuple[int, Mapping[str, Any]]]:
        # Chunks of samples share one latex run for their formulas (see LomoTransform.prefetch).
        pending = enumerate(samples)
        while chunk := list(itertools.islice(pending, _PREFETCH_SAMPLES)):
            transform.prefetch((sample, first_seed + i) for i, sample in chunk)
            yield from chunk

    paths: list[Path] = []
    remaining = numbered()
    for first in remaining:  # one shard per pass: this sample and the next samples_per_shard - 1
        path = out / f"{prefix}-{len(paths):06d}.tar"
        with (
            atomic_open(path) as handle,
            tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for i, sample in itertools.chain([first], itertools.islice(remaining, samples_per_shard - 1)):
                seed = first_seed + i
                for name, data in _encode_sample(f"{seed:09d}", transform(sample, seed)):
                    _add_member(tar, name, data)
        paths.append(path)
    return paths


def read_rendered_shard(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Read a shard written by :func:`write_rendered_shards`, restoring PIL images in ``segments``."""
    with tarfile.open(path, "r") as tar:
        groups: dict[str, dict[str, bytes]] = {}
        order: list[str] = []
        for member in tar.getmembers():
            base = os.path.basename(member.name)
            key, _, ext = base.partition(".")
            if key not in groups:
                groups[key] = {}
                order.append(key)
            f = tar.extractfile(member)
            assert f is not None
            groups[key][ext] = f.read()
    for key in order:
        files = groups[key]
        record = json.loads(files["json"])
        for seg in record.get("segments", []):
            if seg.get("type") == "image":
                img = Image.open(io.BytesIO(files[seg["image"]]))
                img.load()
                seg["image"] = img
        yield record
