"""Visual rendering: LoMo stage 2 (Algorithm 1, "Visual rendering"; report Appendix B.2 / B.5).

A span is typeset into a grayscale image -- black ink on white paper -- the way a scanned page shows it:

* prose with a real TrueType font (default: matplotlib's bundled DejaVu Sans, always installed with
  matplotlib) at font size 20 px and a 22 px line pitch, greedily word-wrapped at ``max_width``; the
  image keeps its *native* size, i.e. its width and height follow from the text length;
* math fragments (``$..$``, ``$$..$$``, ``\\(..\\)``, ``\\[..\\]``, ``align``-like environments, bare
  ``\\frac{..}{..}``...) at 26 px, display math on its own line and in display style: with **real LaTeX**
  (latex + dvipng, Latin Modern -- the report's font) when both are on PATH, else with matplotlib's
  *mathtext* in the Computer Modern fontset (the closest always-available match); see ``math_engine``
  (the online ``LomoTransform`` takes mathtext unless LaTeX is asked for by name);
* fenced code blocks in DejaVu Sans Mono with their line structure;
* finally the margins are trimmed to the ink bounding box plus a small pad (TrimMargin).

Why this design (speed): the report rendered 2M prompts on 256 cores.  Typesetting a whole span through
``mathtext.math_to_image`` costs ~25 ms (it builds a matplotlib figure), and even mathtext's parser alone
costs ~0.25 ms per formula character.  Instead prose is drawn by PIL (one ``draw.text`` call per run of
words, ~0.3 ms a line, cached word widths) and only the math fragments are typeset, by
:class:`~vlmlab.data.lomo.mathtex.MathTypesetter`, which composes formulas from mathtext-rendered leaves
(characters, symbols, ``\\sqrt{..}``...) cached per (leaf, size); whole formulas are cached in an LRU too.
See ``benchmarks/bench_lomo.py`` for the throughput.

Why LaTeX first, in batches: mathtext has no display style (``\\sum`` limits stay beside the sign), no
amsmath environments and small spacing glitches; real LaTeX has none of these, but one latex + dvipng
run costs ~0.15 s however little it typesets, while each extra formula in the same run costs ~2-5 ms.  So
all not-yet-cached formulas of a span -- or of many spans, :meth:`SpanRenderer.prefetch` -- go into one
run (one page each, :class:`~vlmlab.data.lomo.mathtex.LatexTypesetter`) and results are cached per formula.
A formula LaTeX rejects takes the mathtext path below (counted in ``latex_failures``).

Why per-fragment fallback: mathtext supports a subset of LaTeX.  Common spellings it lacks are rewritten
(``\\le`` -> ``\\leq``, ``\\text`` -> ``\\mathrm``...); a formula that still fails is drawn as its raw source
with the text font, so the sample is never dropped and the rest of the span keeps its typeset math.  If
layout itself fails unexpectedly the whole span falls back to plain text (Algorithm 1's fallback).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlmlab.data.lomo.mathtex import LATEX_FONT_PACKAGES, LatexTypesetter, MathTypesetter, find_latex
from vlmlab.data.lomo.spans import ALIGN_ENVS, Fragment, scan_fragments
from vlmlab.errors import ConfigError, unknown_choice

MATH_ENGINES: tuple[str, ...] = ("auto", "latex", "mathtext")
"""``auto``: real LaTeX when latex and dvipng are on PATH (and the fontset has a TeX font), else mathtext;
``latex``: LaTeX or a ConfigError; ``mathtext``: never spawn latex (fast, identical on every machine).
A :class:`SpanRenderer` resolves ``auto`` as above (see :func:`resolve_math_engine`); the *online*
``LomoTransform`` (one sample at a time, in the data-loader workers) resolves it to ``mathtext`` instead,
because a latex run per sample costs ~0.15 s -- see ``LomoConfig.math_engine``."""


@lru_cache(maxsize=1)
def _mpl_font_dir() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def default_font_path() -> str:
    """matplotlib's bundled DejaVu Sans: present wherever matplotlib is, unlike system fonts."""
    return os.path.join(_mpl_font_dir(), "DejaVuSans.ttf")


def default_mono_font_path() -> str:
    return os.path.join(_mpl_font_dir(), "DejaVuSansMono.ttf")


@dataclass(frozen=True)
class RenderConfig:
    """Typesetting parameters.  Defaults follow LoMo's Appendix B.2 (text 20/22, math 26)."""

    font_size: int = 20
    line_height: int = 22
    math_font_size: int = 26
    max_width: int = 800
    """Wrap width in pixels; shorter spans produce narrower images (native size)."""
    margin: int = 6
    """Pad kept around the ink bounding box after trimming."""
    font_path: str | None = None
    mono_font_path: str | None = None
    math_fontset: str = "cm"
    render_math: bool = True
    """False routes everything to the text renderer (math drawn as its LaTeX source)."""
    math_cache_size: int = 4096
    max_formula_chars: int = 600
    """Longer formulas skip mathtext (slow, and too wide to read anyway) and are drawn as text."""
    math_engine: str = "auto"
    """One of :data:`MATH_ENGINES`."""

    def __post_init__(self) -> None:
        for name in ("font_size", "line_height", "math_font_size", "max_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"RenderConfig.{name} must be a positive integer, got {value!r}.")
        if self.margin < 0 or self.math_cache_size < 0 or self.max_formula_chars < 0:
            raise ConfigError("RenderConfig.margin, math_cache_size and max_formula_chars must be >= 0.")
        if self.max_width < 4 * self.font_size:
            raise ConfigError(
                f"RenderConfig.max_width={self.max_width} is too narrow for font_size={self.font_size}."
            )
        if self.math_fontset not in ("cm", "stix", "stixsans", "dejavusans", "dejavuserif"):
            raise unknown_choice(
                "math fontset", self.math_fontset, ("cm", "stix", "stixsans", "dejavusans", "dejavuserif")
            )
        if self.math_engine not in MATH_ENGINES:
            raise unknown_choice("math engine", self.math_engine, MATH_ENGINES)
        if self.math_engine == "latex" and self.math_fontset not in LATEX_FONT_PACKAGES:
            raise ConfigError(
                f"RenderConfig.math_engine='latex' has no TeX font for math_fontset={self.math_fontset!r}; "
                f"valid with LaTeX: {', '.join(sorted(LATEX_FONT_PACKAGES))}."
            )


def resolve_math_engine(config: RenderConfig) -> str:
    """``"latex"`` or ``"mathtext"``: the engine a :class:`SpanRenderer` built from ``config`` typesets
    math with on this machine.

    Raises :class:`ConfigError` when ``math_engine="latex"`` is asked for and latex or dvipng is missing:
    a run that asked for real LaTeX must not silently train on mathtext images.
    """
    if config.math_engine == "mathtext" or not config.render_math:
        return "mathtext"
    if find_latex() is None or config.math_fontset not in LATEX_FONT_PACKAGES:
        if config.math_engine == "latex":
            raise ConfigError(
                "RenderConfig.math_engine='latex' needs latex and dvipng on PATH (Debian: apt-get install "
                "texlive-latex-base texlive-latex-extra cm-super dvipng); valid choices: "
                f"{', '.join(MATH_ENGINES)}."
            )
        return "mathtext"
    return "latex"


# --------------------------------------------------------------------------------------------------
# LaTeX -> mathtext source
# --------------------------------------------------------------------------------------------------

_SIMPLE_SUBS = [
    (re.compile(r"\\\\(?:\[[^\]]*\])?"), " "),  # a LaTeX line break inside inline math
    (re.compile(r"\\le(?![A-Za-z])"), r"\\leq"),
    (re.compile(r"\\ge(?![A-Za-z])"), r"\\geq"),
    (re.compile(r"\\lt(?![A-Za-z])"), "<"),
    (re.compile(r"\\gt(?![A-Za-z])"), ">"),
    (re.compile(r"\\implies(?![A-Za-z])"), r"\\Longrightarrow"),
    (re.compile(r"\\impliedby(?![A-Za-z])"), r"\\Longleftarrow"),
    (re.compile(r"\\iff(?![A-Za-z])"), r"\\Longleftrightarrow"),
    (re.compile(r"\\land(?![A-Za-z])"), r"\\wedge"),
    (re.compile(r"\\lor(?![A-Za-z])"), r"\\vee"),
    (re.compile(r"\\lnot(?![A-Za-z])"), r"\\neg"),
    (re.compile(r"\\gets(?![A-Za-z])"), r"\\leftarrow"),
    (re.compile(r"\\[lr]vert(?![A-Za-z])"), "|"),
    (re.compile(r"\\[lr]Vert(?![A-Za-z])"), r"\\Vert"),
    (re.compile(r"\\[dt]frac(?![A-Za-z])"), r"\\frac"),
    (re.compile(r"\\bmod(?![A-Za-z])"), r"\\ \\mathrm{mod}\\ "),
    (re.compile(r"\\text(?:rm|normal)?(?![A-Za-z])|\\mbox(?![A-Za-z])"), r"\\mathrm"),
    (re.compile(r"\\textbf(?![A-Za-z])"), r"\\mathbf"),
    (re.compile(r"\\textit(?![A-Za-z])|\\emph(?![A-Za-z])"), r"\\mathit"),
    (re.compile(r"\\operatorname\*"), r"\\operatorname"),
    (re.compile(r"\\(?:displaystyle|textstyle|scriptstyle|limits|nolimits|nonumber|notag)(?![A-Za-z])"), ""),
    (re.compile(r"\\(?:label|tag)\{[^{}]*\}"), ""),
    (re.compile(r"\\(?:boxed|cancel|bcancel|underbrace|overbrace)(?![A-Za-z])"), ""),
    (re.compile(r"\\pmod\{([^{}]*)\}"), r"\\ (\\mathrm{mod}\\ \1)"),
    (re.compile(r"\\frac\s*([0-9A-Za-z])\s*([0-9A-Za-z])"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\sqrt\s*([0-9A-Za-z])"), r"\\sqrt{\1}"),
]


def _strip_delimiters(frag: Fragment) -> tuple[str, str]:
    """Return (kind, body) where kind is 'inline', 'display' or 'env' and body has no delimiters."""
    s = frag.source
    if frag.env:
        head = len("\\begin{" + frag.env + "}")
        return "env", s[head : len(s) - len("\\end{" + frag.env + "}")]
    if s.startswith("$$"):
        return "display", s[2:-2]
    if s.startswith("\\[") or s.startswith("\\("):
        return ("display" if s[1] == "[" else "inline"), s[2:-2]
    if s.startswith("$"):
        return "inline", s[1:-1]
    return "inline", s  # a bare command such as \frac{a}{b}


def to_mathtext(latex: str) -> str:
    """Rewrite common LaTeX spellings mathtext lacks into ones it knows (body only, no delimiters)."""
    s = latex.replace("\n", " ").replace("\t", " ")
    for pattern, repl in _SIMPLE_SUBS:
        s = pattern.sub(repl, s)
    return s.strip()


def math_lines(frag: Fragment) -> tuple[bool, list[str]]:
    """(display, list of mathtext bodies, one per output line) for a math fragment.

    ``align``-like environments are split at ``\\\\`` and lose their ``&`` markers; other environments
    (matrices, cases, tabular...) are returned with their source so that mathtext fails and the fragment
    falls back to text.
    """
    kind, body = _strip_delimiters(frag)
    if kind == "env":
        if frag.env not in ALIGN_ENVS:
            return True, [frag.source]
        raw = re.split(r"\\\\(?:\[[^\]]*\])?", body)
        lines = [to_mathtext(r.replace("&", " ")) for r in raw]
        return True, [ln for ln in lines if ln]
    if kind == "display":
        raw = re.split(r"\\\\", body) if "\\\\" in body else [body]
        lines = [to_mathtext(r.replace("&", " ")) for r in raw]
        return True, [ln for ln in lines if ln]
    body = to_mathtext(body)
    return False, [body] if body else []


# Environments that are displays of their own (they start a paragraph in LaTeX); their starred form is
# typeset so that no equation numbers appear.  Every other environment (aligned, cases, pmatrix...) needs
# math mode and is wrapped in display-style math.
_TOP_LEVEL_ENVS = frozenset({"equation", "align", "gather", "multline", "flalign", "alignat", "eqnarray"})
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def latex_page(frag: Fragment) -> str | None:
    """The LaTeX source typesetting one math fragment on its own page, or None if it can't go to LaTeX.

    Inline math stays in text style; ``$$..$$``, ``\\[..\\]`` and environments are display style (limits
    above and below ``\\sum``, full-size fractions).  A closing newline before the final delimiter keeps a
    ``%`` in the formula from commenting it out.
    """
    kind, body = _strip_delimiters(frag)
    body = re.sub(r"\n\s*\n", "\n", body)  # a blank line ends a paragraph: an error inside math
    if not body.strip():
        return None
    if kind == "inline":
        return None if _UNESCAPED_DOLLAR.search(body) else "$" + body + "\n$"
    if kind == "display":
        if _UNESCAPED_DOLLAR.search(body):
            return None
        if "\\\\" in body or "&" in body:  # several lines or alignment points need an environment
            env = "aligned" if "&" in body else "gathered"
            return f"$\\displaystyle\\begin{{{env}}}{body}\n\\end{{{env}}}$"
        return "$\\displaystyle " + body + "\n$"
    base = frag.env.rstrip("*")
    if base in _TOP_LEVEL_ENVS:
        env = base + "*"
        return f"\\begin{{{env}}}{body}\n\\end{{{env}}}"
    if base in ("displaymath", "math"):
        return "$\\displaystyle " + body + "\n$"
    env = "aligned" if base == "split" else frag.env  # split is only legal inside another display
    return f"$\\displaystyle\\begin{{{env}}}{body}\n\\end{{{env}}}$"


# --------------------------------------------------------------------------------------------------
# Layout items
# --------------------------------------------------------------------------------------------------


@dataclass
class _Box:
    """An inline box: a word of text (``text`` set) or a math bitmap (``image`` set)."""

    width: float
    ascent: int
    descent: int
    text: str = ""
    image: Image.Image | None = None
    mono: bool = False
    space_before: bool = False
    indent: float = 0.0


@dataclass
class _Line:
    boxes: list[_Box]


class _LRU:
    """A small LRU map (functools.lru_cache can't be sized per renderer instance or hold None cleanly)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.data: OrderedDict[str, tuple[Image.Image, int] | None] = OrderedDict()

    def get(self, key: str) -> tuple[bool, tuple[Image.Image, int] | None]:
        if key in self.data:
            self.data.move_to_end(key)
            return True, self.data[key]
        return False, None

    def put(self, key: str, value: tuple[Image.Image, int] | None) -> None:
        if self.maxsize <= 0:
            return
        self.data[key] = value
        if len(self.data) > self.maxsize:
            self.data.popitem(last=False)


class SpanRenderer:
    """Renders text spans (prose + LaTeX math + code) into trimmed grayscale PIL images.

    One instance holds fonts and caches; reuse it (the transform keeps one per worker process).
    """

    def __init__(self, config: RenderConfig | None = None) -> None:
        self.config = config or RenderConfig()
        c = self.config
        self.font = ImageFont.truetype(c.font_path or default_font_path(), c.font_size)
        self.mono = ImageFont.truetype(c.mono_font_path or default_mono_font_path(), c.font_size)
        asc, desc = self.font.getmetrics()
        # Split the line pitch between ascent and descent in the font's proportions so that a line of
        # plain text advances exactly line_height pixels.
        self.text_ascent = round(c.line_height * asc / (asc + desc))
        self.text_descent = c.line_height - self.text_ascent
        self.space = self.font.getlength(" ")
        self.mono_space = self.mono.getlength(" ")
        self._widths: dict[tuple[bool, str], float] = {}
        self._math = _LRU(c.math_cache_size)
        self._typesetter: MathTypesetter | None = None
        self._latex = self._latex_typesetter()
        self.math_engine = "latex" if self._latex is not None else "mathtext"
        """The engine actually used for math: ``latex`` or ``mathtext`` (see ``RenderConfig.math_engine``)."""
        self.math_failures = 0
        """Count of formulas no engine could typeset (drawn as text instead); for monitoring."""
        self.latex_formulas = 0
        """Formulas typeset by LaTeX (cache misses only)."""
        self.latex_failures = 0
        """Formulas LaTeX rejected, handed to mathtext instead (cache misses only)."""

    def _latex_typesetter(self) -> LatexTypesetter | None:
        c = self.config
        tools = find_latex() if resolve_math_engine(c) == "latex" else None
        return LatexTypesetter(c.math_font_size, c.math_fontset, tools) if tools else None

    @property
    def latex_runs(self) -> int:
        """How many times latex was spawned (0 on the mathtext engine)."""
        return self._latex.runs if self._latex is not None else 0

    # -- measurement ----------------------------------------------------------------------------
    def _width(self, word: str, mono: bool = False) -> float:
        key = (mono, word)
        w = self._widths.get(key)
        if w is None:
            if len(self._widths) > 200_000:
                self._widths.clear()
            w = (self.mono if mono else self.font).getlength(word)
            self._widths[key] = w
        return w

    # -- math -----------------------------------------------------------------------------------
    def _latex_lookup(self, fragments: list[Fragment]) -> dict[str, tuple[Image.Image, int] | None]:
        """LaTeX results per page source for the math ``fragments``; all cache misses share one latex run."""
        found: dict[str, tuple[Image.Image, int] | None] = {}
        if self._latex is None:
            return found
        missing: list[str] = []
        for frag in fragments:
            if frag.kind != "math" or frag.length > self.config.max_formula_chars:
                continue
            page = latex_page(frag)
            if page is None or page in found:
                continue
            hit, value = self._math.get("latex\0" + page)
            found[page] = value
            if not hit:
                missing.append(page)
        if missing:
            for page, bmp in zip(missing, self._latex.render_many(missing)):
                value = None
                if bmp is not None:
                    value = (Image.fromarray(bmp.ink, mode="L"), int(round(bmp.baseline)))
                    self.latex_formulas += 1
                else:
                    self.latex_failures += 1
                found[page] = value
                self._math.put("latex\0" + page, value)
        return found

    def prefetch(self, texts: list[str]) -> None:
        """Typeset the formulas of many texts in one latex run, so that rendering them hits the cache.

        Use before rendering a batch of spans (the transform does so per sample, the shard writer per
        chunk of samples).  A no-op on the mathtext engine or without a formula cache.
        """
        if self._latex is None or self._math.maxsize <= 0:
            return
        self._latex_lookup([f for text in texts for f in scan_fragments(text) if f.kind == "math"])

    def _ensure_typesetter(self) -> MathTypesetter:
        if self._typesetter is None:
            c = self.config
            self._typesetter = MathTypesetter(
                c.math_font_size, c.math_fontset, max(64, 2 * c.math_cache_size)
            )
        return self._typesetter

    def render_formula(self, body: str) -> tuple[Image.Image, int] | None:
        """Typeset one mathtext body; returns (ink mask image, baseline row) or None if unsupported.

        Cached per formula string: prompts repeat formulas like ``$x$`` very often.
        """
        hit, value = self._math.get(body)
        if hit:
            return value
        value = None
        if body and len(body) <= self.config.max_formula_chars:
            try:
                bmp = self._ensure_typesetter().render(body)
                if bmp.ink.size and bmp.ink.max() > 0:
                    baseline = int(round(bmp.baseline))
                    value = (Image.fromarray(np.ascontiguousarray(bmp.ink), mode="L"), baseline)
            except Exception:  # Unsupported, or any mathtext error (ValueError, ParseException...)
                value = None
        if value is None:
            self.math_failures += 1
        self._math.put(body, value)
        return value

    # -- tokenisation ---------------------------------------------------------------------------
    def _text_boxes(self, text: str, mono: bool = False) -> list[_Box | str]:
        """Words of ``text`` as boxes; '\\n' strings mark hard line breaks."""
        out: list[_Box | str] = []
        parts = re.split(r"(\s+)", text.replace("\t", "    "))
        pending_space = False
        asc, desc = self.text_ascent, self.text_descent
        for part in parts:
            if not part:
                continue
            if part.isspace():
                breaks = part.count("\n")
                for _ in range(min(breaks, 2)):
                    out.append("\n")
                pending_space = breaks == 0
                continue
            out.append(
                _Box(self._width(part, mono), asc, desc, text=part, mono=mono, space_before=pending_space)
            )
            pending_space = False
        return out

    def _math_box(self, body: str, source: str, space_before: bool) -> list[_Box | str]:
        rendered = self.render_formula(body) if self.config.render_math else None
        if rendered is None:
            boxes = self._text_boxes(source)
            if boxes and isinstance(boxes[0], _Box):
                boxes[0].space_before = space_before or boxes[0].space_before
            return boxes
        img, baseline = rendered
        return [_Box(img.width, baseline, img.height - baseline, image=img, space_before=space_before)]

    def _latex_box(
        self, frag: Fragment, latex: dict[str, tuple[Image.Image, int] | None], space_before: bool
    ) -> _Box | None:
        page = latex_page(frag) if latex else None
        rendered = latex.get(page) if page is not None else None
        if rendered is None:
            return None
        img, baseline = rendered
        box = _Box(img.width, baseline, img.height - baseline, image=img, space_before=space_before)
        if frag.display:
            box.space_before = False
            box.indent = 2 * self.config.font_size  # display math is indented
            box.width += box.indent
        return box

    def _items(self, text: str) -> list[_Box | str]:
        items: list[_Box | str] = []
        fragments = scan_fragments(text)
        latex = self._latex_lookup(fragments) if self.config.render_math else {}
        for frag in fragments:
            prev_space = frag.start > 0 and text[frag.start - 1].isspace()
            if frag.kind == "text":
                items.extend(self._text_boxes(frag.source))
            elif frag.kind == "code":
                body = frag.source[3:-3]
                lines = body.split("\n")
                if lines and lines[0].strip() and " " not in lines[0].strip():
                    lines = lines[1:]  # ```python language tag
                items.append("\n")
                for ln in lines:
                    if ln.strip():
                        lead = len(ln) - len(ln.lstrip(" "))
                        boxes = self._text_boxes(ln.strip(), mono=True)
                        if boxes and isinstance(boxes[0], _Box):
                            boxes[0].space_before = False
                            boxes[0].width += lead * self.mono_space  # keep indentation
                            boxes[0].text = " " * lead + boxes[0].text
                        items.extend(boxes)
                    items.append("\n")
            elif (box := self._latex_box(frag, latex, prev_space)) is not None:
                if frag.display:
                    items.extend(["\n", box, "\n"])
                else:
                    items.append(box)
            else:
                display, bodies = math_lines(frag)
                if not bodies:
                    continue
                if display:
                    items.append("\n")
                    per_line = len(bodies) > 1 or frag.env in ALIGN_ENVS
                    for body in bodies:
                        boxes = self._math_box(body, body if per_line else frag.source, False)
                        if boxes and isinstance(boxes[0], _Box) and boxes[0].image is not None:
                            boxes[0].indent = 2 * self.config.font_size  # display math is indented
                            boxes[0].width += boxes[0].indent
                        items.extend(boxes)
                        items.append("\n")
                else:
                    items.extend(self._math_box(bodies[0], frag.source, prev_space))
        return items

    # -- layout ---------------------------------------------------------------------------------
    def _break_lines(self, items: list[_Box | str]) -> list[_Line]:
        max_w = self.config.max_width
        lines: list[_Line] = [_Line([])]
        x = 0.0
        for item in items:
            if isinstance(item, str):
                if lines[-1].boxes or (len(lines) > 1 and lines[-2].boxes):
                    lines.append(_Line([]))
                x = 0.0
                continue
            gap = (
                (self.mono_space if item.mono else self.space)
                if (item.space_before and lines[-1].boxes)
                else 0.0
            )
            if lines[-1].boxes and x + gap + item.width > max_w:
                lines.append(_Line([]))
                x, gap = 0.0, 0.0
            if item.image is None and item.width > max_w:
                # A word wider than the page (a URL, a long number): break it by characters.
                for piece in self._split_long_word(item):
                    piece_gap = gap if piece.space_before else 0.0
                    if lines[-1].boxes and x + piece_gap + piece.width > max_w:
                        lines.append(_Line([]))
                        x, piece_gap = 0.0, 0.0
                    piece.space_before = piece_gap > 0
                    lines[-1].boxes.append(piece)
                    x += piece_gap + piece.width
                continue
            item.space_before = gap > 0
            lines[-1].boxes.append(item)
            x += gap + item.width
        while lines and not lines[-1].boxes:
            lines.pop()
        return lines

    def _split_long_word(self, box: _Box) -> list[_Box]:
        max_w = self.config.max_width
        font = self.mono if box.mono else self.font
        pieces: list[_Box] = []
        current = ""
        for ch in box.text:
            if current and font.getlength(current + ch) > max_w:
                pieces.append(
                    _Box(font.getlength(current), box.ascent, box.descent, text=current, mono=box.mono)
                )
                current = ""
            current += ch
        if current:
            pieces.append(_Box(font.getlength(current), box.ascent, box.descent, text=current, mono=box.mono))
        if pieces:
            pieces[0].space_before = box.space_before
        return pieces

    def _draw(self, lines: list[_Line]) -> Image.Image:
        """Draw lines as white ink on black (so Image.getbbox finds the ink), then trim and invert."""
        c = self.config
        m = c.margin
        plans: list[tuple[int, list[tuple[float, str, object]]]] = []
        y = m
        width = 0
        for line in lines:
            asc = max([self.text_ascent] + [b.ascent for b in line.boxes])
            desc = max([self.text_descent] + [b.descent for b in line.boxes])
            ops: list[tuple[float, str, object]] = []
            x = float(m)
            run: list[str] = []
            run_x, run_mono = x, False
            for b in line.boxes:
                gap = ((self.mono_space if b.mono else self.space) if b.space_before else 0.0) + b.indent
                if b.image is None and run and b.mono == run_mono:
                    run.append((" " if b.space_before else "") + b.text)
                    continue
                if run:  # flush the pending run of words with one draw call, measured exactly
                    text = "".join(run)
                    ops.append((run_x, "mono" if run_mono else "text", text))
                    x = run_x + (self.mono if run_mono else self.font).getlength(text)
                    run = []
                if b.image is None:
                    run_x, run_mono = x + gap, b.mono
                    run.append(b.text)
                else:
                    ops.append((x + gap, "math", (b.image, b.ascent)))
                    x += gap + b.image.width
            if run:
                text = "".join(run)
                ops.append((run_x, "mono" if run_mono else "text", text))
                x = run_x + (self.mono if run_mono else self.font).getlength(text)
            width = max(width, int(np.ceil(x)))
            plans.append((y + asc, ops))
            y += asc + desc
        img = Image.new("L", (max(1, width + m), max(1, y + m + 2)), 0)
        draw = ImageDraw.Draw(img)
        for baseline, ops in plans:
            for x, kind, payload in ops:
                if kind == "math":
                    mask, ascent = payload  # type: ignore[misc]
                    img.paste(255, (int(round(x)), baseline - ascent), mask)
                else:
                    font = self.mono if kind == "mono" else self.font
                    draw.text((x, baseline), str(payload), font=font, fill=255, anchor="ls")
        return img

    # -- public ---------------------------------------------------------------------------------
    def render(self, text: str) -> Image.Image:
        """Render ``text`` to a trimmed black-on-white ``L`` image (never empty, never raises on content)."""
        try:
            items = self._items(text)
        except Exception:  # pragma: no cover - defensive: Algorithm 1's whole-span text fallback
            items = self._text_boxes(text)
        lines = self._break_lines(items)
        if not lines:
            lines = [_Line([_Box(self.space, self.text_ascent, self.text_descent, text=" ")])]
        ink = self._draw(lines)
        return trim_margin(ink, self.config.margin, ink_is_white=True)


def trim_margin(img: Image.Image, margin: int, ink_is_white: bool = False) -> Image.Image:
    """Crop to the ink bounding box plus ``margin`` px and return black ink on white paper (TrimMargin).

    Working on white-on-black lets PIL's C ``getbbox`` find the ink without a numpy pass.
    """
    ink = img if ink_is_white else img.convert("L").point(_INVERT_LUT)
    box = ink.getbbox()
    if box is None:
        box = (0, 0, min(ink.width, 1), min(ink.height, 1))
    left, top, right, bottom = box
    cropped = ink.crop(
        (left - margin, top - margin, right + margin, bottom + margin)
    )  # out-of-range areas are 0 (paper)
    return cropped.point(_INVERT_LUT)


_INVERT_LUT = [255 - v for v in range(256)]
