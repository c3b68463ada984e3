"""Fast math typesetting for LoMo: mathtext glyph atoms composed with a tiny TeX-like layout.

Why: matplotlib's mathtext spends ~0.25 ms *per character* in its pyparsing grammar (a 30-character
formula costs ~7 ms), which alone would cap rendering below the 100 spans/s goal.  Formulas, however, are
built from a small vocabulary of pieces -- letters, digits, operators, Greek letters, fractions, scripts.
So this module

1. parses the common LaTeX subset itself (characters, symbol commands, ``{}`` groups, ``^``/``_`` scripts,
   ``\\frac``, explicit spaces) into a small tree;
2. typesets every *leaf* with mathtext (Computer Modern by default) and caches the bitmap per
   (leaf, size) -- after warm-up almost every leaf is a cache hit;
3. composes the leaves with TeX's inter-atom spacing classes (ord/op/bin/rel/open/close/punct),
   script shifts and fraction stacking at text-style sizes.

Anything outside the subset that still has a clear extent (``\\sqrt{..}``, ``\\left( .. \\right)``,
``\\mathrm{..}``, accents, ``\\binom``...) becomes one leaf typeset by mathtext as a whole; a formula the
composer cannot parse at all is handed to mathtext in one piece.  The composition is visually very
close to mathtext's own output (same fonts, sizes and spacing rules) but costs ~0.1-0.3 ms per formula.

Where TeX Live is installed, :class:`LatexTypesetter` (end of this module) typesets with real LaTeX
instead -- display style, amsmath environments -- and this composer is its fallback.

Leaves are rasterised through matplotlib's ``_mathtext`` internals (``Parser`` + ``ship``) because the
public ``RasterParse`` does not expose where the baseline and the pen origin are inside the bitmap, which
composition needs; if those internals ever change, the public API is used with an estimated baseline.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from vlmlab.lifetime import preexec_die_with_parent

# ---------------------------------------------------------------------------------------------
# Bitmaps
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MathBitmap:
    """Ink (uint8, 255 = ink) with the pen origin column, baseline row and advance width."""

    ink: np.ndarray
    origin: float
    baseline: float
    advance: float

    @property
    def ascent(self) -> float:
        return self.baseline

    @property
    def descent(self) -> float:
        return self.ink.shape[0] - self.baseline


def _hcompose(items: list[tuple[MathBitmap, float, float]]) -> MathBitmap:
    """Paste bitmaps at (pen x, baseline offset below the common baseline) into one canvas.

    Each bitmap's origin column lands on its pen x and its baseline row on the common baseline + dy.
    """
    if not items:
        return MathBitmap(np.zeros((1, 1), np.uint8), 0.0, 0.0, 0.0)
    lefts = [x - b.origin for b, x, _ in items]
    tops = [dy - b.baseline for b, _, dy in items]
    rights = [left + b.ink.shape[1] for left, (b, _, _) in zip(lefts, items)]
    bottoms = [top + b.ink.shape[0] for top, (b, _, _) in zip(tops, items)]
    x0, y0 = math.floor(min(lefts + [0.0])), math.floor(min(tops))
    w = math.ceil(max(rights)) - x0 + 1
    h = math.ceil(max(bottoms)) - y0 + 1
    canvas = np.zeros((h, w), np.uint8)
    for (b, _, _), left, top in zip(items, lefts, tops):
        r, c = int(round(top - y0)), int(round(left - x0))
        hh, ww = b.ink.shape
        region = canvas[r : r + hh, c : c + ww]
        np.maximum(region, b.ink[: region.shape[0], : region.shape[1]], out=region)
    advance = max(x + b.advance for b, x, _ in items)
    return MathBitmap(canvas, float(-x0), float(-y0), advance)


# ---------------------------------------------------------------------------------------------
# Parsing the supported subset
# ---------------------------------------------------------------------------------------------

_BIN = {
    "+",
    "-",
    "*",
    "\\pm",
    "\\mp",
    "\\times",
    "\\cdot",
    "\\div",
    "\\ast",
    "\\circ",
    "\\bullet",
    "\\cup",
    "\\cap",
    "\\wedge",
    "\\vee",
    "\\setminus",
    "\\oplus",
    "\\otimes",
    "\\star",
}
_REL = {
    "=",
    "<",
    ">",
    ":",
    "\\leq",
    "\\geq",
    "\\neq",
    "\\ne",
    "\\approx",
    "\\equiv",
    "\\sim",
    "\\simeq",
    "\\cong",
    "\\propto",
    "\\to",
    "\\rightarrow",
    "\\leftarrow",
    "\\Rightarrow",
    "\\Leftarrow",
    "\\Leftrightarrow",
    "\\leftrightarrow",
    "\\Longrightarrow",
    "\\Longleftarrow",
    "\\Longleftrightarrow",
    "\\mapsto",
    "\\in",
    "\\notin",
    "\\ni",
    "\\subset",
    "\\subseteq",
    "\\supset",
    "\\supseteq",
    "\\mid",
    "\\parallel",
    "\\perp",
    "\\ll",
    "\\gg",
    "\\leqslant",
    "\\geqslant",
    "\\prec",
    "\\succ",
}
_OP = {
    "\\sum",
    "\\prod",
    "\\int",
    "\\oint",
    "\\iint",
    "\\bigcup",
    "\\bigcap",
    "\\lim",
    "\\sin",
    "\\cos",
    "\\tan",
    "\\cot",
    "\\sec",
    "\\csc",
    "\\arcsin",
    "\\arccos",
    "\\arctan",
    "\\sinh",
    "\\cosh",
    "\\tanh",
    "\\log",
    "\\ln",
    "\\lg",
    "\\exp",
    "\\max",
    "\\min",
    "\\sup",
    "\\inf",
    "\\det",
    "\\gcd",
    "\\deg",
    "\\dim",
    "\\ker",
    "\\arg",
    "\\Pr",
    "\\limsup",
    "\\liminf",
}
_OPEN = {"(", "[", "\\{", "\\langle", "\\lfloor", "\\lceil"}
_CLOSE = {")", "]", "\\}", "\\rangle", "\\rfloor", "\\rceil", "!"}
_PUNCT = {",", ";"}
# Commands whose arguments form one leaf typeset by mathtext as a whole: name -> (optional [..], n args).
_ARG_COMMANDS = {
    "sqrt": (True, 1),
    "binom": (False, 2),
    "stackrel": (False, 2),
    "overset": (False, 2),
    "underset": (False, 2),
    "genfrac": (False, 6),
}
_ONE_ARG = (
    "mathrm mathbf mathit mathsf mathtt mathcal mathbb mathfrak mathscr mathdefault boldsymbol operatorname "
    "text textrm textbf textit textsf texttt mbox overline underline hat widehat tilde widetilde bar vec dot "
    "ddot acute grave breve check overrightarrow overleftarrow"
).split()
_ARG_COMMANDS.update({name: (False, 1) for name in _ONE_ARG})
_FRACS = {"frac", "dfrac", "tfrac", "cfrac"}
_SPACES = {"\\,": 3, "\\:": 4, "\\>": 4, "\\;": 5, "\\!": -3, "\\ ": 6, "\\quad": 18, "\\qquad": 36}
_TOKEN_RE = re.compile(r"\\[A-Za-z]+\*?|\\.|[{}^_]|\s+|.", re.S)


class Unsupported(Exception):
    """The composer can't handle this input; the caller typesets the whole formula with mathtext."""


@dataclass
class _Leaf:
    src: str
    cls: str


@dataclass
class _Group:
    children: list


@dataclass
class _Frac:
    num: _Group
    den: _Group


@dataclass
class _Scripts:
    base: object
    sup: object | None
    sub: object | None


@dataclass
class _Space:
    mu: float


def _leaf_class(src: str) -> str:
    if src in _BIN:
        return "bin"
    if src in _REL:
        return "rel"
    if src in _OP:
        return "op"
    if src in _OPEN:
        return "open"
    if src in _CLOSE:
        return "close"
    if src in _PUNCT:
        return "punct"
    return "ord"


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = [
            (m.group(0), m.start(), m.end()) for m in _TOKEN_RE.finditer(src) if not m.group(0).isspace()
        ]
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i][0] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, int, int]:
        if self.i >= len(self.toks):
            raise Unsupported("unexpected end")
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def parse(self) -> _Group:
        group = self.parse_list(top=True)
        if self.i != len(self.toks):
            raise Unsupported("unbalanced braces")
        return group

    def parse_list(self, top: bool = False) -> _Group:
        children = []
        while True:
            tok = self.peek()
            if tok is None:
                if not top:
                    raise Unsupported("missing }")
                break
            if tok == "}":
                if top:
                    raise Unsupported("unbalanced }")
                break
            children.append(self.parse_item())
        return _Group(children)

    def parse_arg(self) -> object:
        tok, start, end = self.take()
        if tok == "{":
            group = self.parse_list()
            self.take()  # "}"
            return group
        if tok in ("}", "^", "_"):
            raise Unsupported("bad argument")
        if tok.startswith("\\") and tok[1:].rstrip("*") in _ARG_COMMANDS | _FRACS:
            raise Unsupported("command as bare argument")
        return _Leaf(tok, _leaf_class(tok))

    def _raw_until_args(self, start: int, optional: bool, nargs: int) -> _Leaf:
        if optional and self.peek() == "[":
            depth = 0
            while True:
                tok, _, _ = self.take()
                depth += tok == "["
                depth -= tok == "]"
                if depth == 0:
                    break
        for _ in range(nargs):
            if self.peek() != "{":
                self.parse_arg()
                continue
            depth = 0
            while True:
                tok, _, _ = self.take()
                depth += tok == "{"
                depth -= tok == "}"
                if depth == 0:
                    break
        end = self.toks[self.i - 1][2]
        return _Leaf(self.src[start:end], "ord")

    def parse_item(self) -> object:
        tok, start, end = self.take()
        if tok == "{":
            node: object = self.parse_list()
            self.take()
        elif tok in ("^", "_"):
            node = _Leaf("", "ord")  # a script with an empty base, e.g. "^{2}" at the start
            self.i -= 1
        elif tok.startswith("\\"):
            name = tok[1:]
            if tok in _SPACES:
                return _Space(_SPACES[tok])
            if name in _FRACS:
                num, den = self.parse_arg(), self.parse_arg()
                num = num if isinstance(num, _Group) else _Group([num])
                den = den if isinstance(den, _Group) else _Group([den])
                node = _Frac(num, den)
            elif name == "left":
                depth = 1
                while depth:
                    t, _, _ = self.take()
                    depth += t == "\\left"
                    depth -= t == "\\right"
                self.take()  # the delimiter after \right
                node = _Leaf(self.src[start : self.toks[self.i - 1][2]], "inner")
            elif name in ("right", "begin", "end", "\\"):
                raise Unsupported(tok)
            elif name.rstrip("*") in _ARG_COMMANDS:
                optional, nargs = _ARG_COMMANDS[name.rstrip("*")]
                node = self._raw_until_args(start, optional, nargs)
            else:
                node = _Leaf(tok, _leaf_class(tok))
        elif tok in ("}", "&"):
            raise Unsupported(tok)
        else:
            node = _Leaf(tok, _leaf_class(tok))
        sup = sub = None
        while self.peek() in ("^", "_"):
            marker, _, _ = self.take()
            arg = self.parse_arg()
            if marker == "^":
                if sup is not None:
                    raise Unsupported("double superscript")
                sup = arg
            else:
                if sub is not None:
                    raise Unsupported("double subscript")
                sub = arg
        if sup is not None or sub is not None:
            return _Scripts(node, sup, sub)
        return node


def parse_formula(body: str) -> _Group:
    """Parse a mathtext body into the composer's tree; raises :class:`Unsupported` outside the subset."""
    return _Parser(body).parse()


# ---------------------------------------------------------------------------------------------
# Typesetting
# ---------------------------------------------------------------------------------------------

# Inter-atom spacing in mu (1/18 em), after TeX but calibrated to mathtext's leaves: mathtext already
# pads a lone relation symbol (=, \leq...) and punctuation with its own space, so only binary operators
# (3 mu, text style only) and operator names (thin space) need explicit spacing here.
_THIN = {("ord", "op"), ("op", "ord"), ("op", "op"), ("close", "op"), ("op", "inner"), ("inner", "op")}
_MED = {("ord", "bin"), ("bin", "ord"), ("close", "bin"), ("bin", "open"), ("bin", "op"), ("op", "bin")}
_MED |= {("inner", "bin"), ("bin", "inner")}


def _space_mu(left: str, right: str, level: int) -> float:
    if (left, right) in _THIN:
        return 3.0
    if level == 0 and (left, right) in _MED:
        return 3.0
    return 0.0


def _public_raster(src: str, prop: object) -> MathBitmap:  # pragma: no cover - only if internals move
    """Public-API leaf: exact advance, baseline estimated (wrong for glyphs floating above it, e.g. '-')."""
    from matplotlib.mathtext import MathTextParser

    parsed = MathTextParser("agg").parse("$" + src + "$", dpi=72, prop=prop)
    ink = np.asarray(parsed.image, dtype=np.uint8)
    return MathBitmap(ink, 1.0, float(round(parsed.height - parsed.depth) - 1), float(parsed.width))


class _GlyphWarnings(logging.Filter):
    """Swallows mathtext's per-glyph warnings and remembers that one happened.

    mathtext substitutes a dummy box for symbols it cannot map (and logs a warning per glyph); for LoMo a
    box instead of a symbol silently changes the content, so such a leaf counts as a failure and the
    formula is drawn as text instead -- and training logs are not flooded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        self.seen = True
        return False


_GLYPH_WARNINGS = _GlyphWarnings()
_MATHTEXT_LOG = logging.getLogger("matplotlib.mathtext")


class MathTypesetter:
    """Typesets mathtext bodies to :class:`MathBitmap`, composing cached leaves (see module doc)."""

    def __init__(self, font_size: int = 26, fontset: str = "cm", cache_size: int = 8192) -> None:
        from matplotlib.font_manager import FontProperties

        self.font_size = font_size
        self.sizes = (font_size, max(6, round(0.7 * font_size)), max(5, round(0.5 * font_size)))
        self.props = [FontProperties(size=s, math_fontfamily=fontset) for s in self.sizes]
        self.cache_size = cache_size
        self._leaves: OrderedDict[tuple[str, int], MathBitmap | None] = OrderedDict()
        self._internal = self._init_internal(fontset)

    # -- leaves -----------------------------------------------------------------------------
    @staticmethod
    def _init_internal(fontset: str) -> tuple | None:
        try:
            from matplotlib import _mathtext
            from matplotlib.backends import backend_agg
            from matplotlib.mathtext import MathTextParser

            fontset_class = MathTextParser._font_type_mapping[fontset]
            return _mathtext.Parser(), _mathtext.ship, fontset_class, backend_agg.get_hinting_flag()
        except Exception:  # pragma: no cover - matplotlib internals moved: use the public API
            return None

    def _raster(self, src: str, level: int) -> MathBitmap:
        """mathtext on one piece; raises on unsupported input."""
        prop = self.props[level]
        if self._internal is not None:
            parser, ship, fontset_class, flags = self._internal
            box = parser.parse("$" + src + "$", fontset_class(prop, flags), self.sizes[level], 72)
            out = ship(box)
            raster = out.to_raster(antialiased=True)
            xmin = (
                min([*[ox + g.metrics.xmin for ox, _, g in out.glyphs], *[x for x, _, _, _ in out.rects], 0])
                - 1
            )
            ymin = (
                min([*[oy - g.metrics.ymax for _, oy, g in out.glyphs], *[y for _, y, _, _ in out.rects], 0])
                - 1
            )
            ink = np.asarray(raster.image, dtype=np.uint8)
            advance = float(box.width)
            if src == ".":  # mathtext pads a lone period as punctuation; inside numbers it has none
                advance = min(advance, ink.shape[1] + xmin)
            # Glyphs are drawn at int() of their float positions; match that for the baseline row.
            return MathBitmap(ink, float(-xmin), float(math.floor(box.height - ymin)), advance)
        return _public_raster(src, prop)  # pragma: no cover

    def leaf(self, src: str, level: int) -> MathBitmap:
        """Cached mathtext bitmap of one piece at a size level (0 text, 1 script, 2 scriptscript)."""
        key = (src, level)
        if key in self._leaves:
            self._leaves.move_to_end(key)
            value = self._leaves[key]
        else:
            _GLYPH_WARNINGS.seen = False
            _MATHTEXT_LOG.addFilter(_GLYPH_WARNINGS)  # only while we typeset: others keep their warnings
            try:
                value = (
                    self._raster(src, level) if src else MathBitmap(np.zeros((1, 1), np.uint8), 0.0, 0.0, 0.0)
                )
            except Exception:
                value = None
            finally:
                _MATHTEXT_LOG.removeFilter(_GLYPH_WARNINGS)
            if _GLYPH_WARNINGS.seen:
                value = None
            self._leaves[key] = value
            if len(self._leaves) > self.cache_size:
                self._leaves.popitem(last=False)
        if value is None:
            raise Unsupported(src)
        return value

    # -- composition ------------------------------------------------------------------------
    def _node(self, node: object, level: int) -> tuple[MathBitmap, str]:
        if isinstance(node, _Leaf):
            return self.leaf(node.src, level), node.cls
        if isinstance(node, _Group):
            return self._hlist(node.children, level), "ord"
        if isinstance(node, _Frac):
            return self._frac(node, level), "inner"
        if isinstance(node, _Scripts):
            return self._scripts(node, level)
        raise Unsupported(type(node).__name__)  # pragma: no cover

    def _hlist(self, children: list, level: int) -> MathBitmap:
        mu = self.sizes[level] / 18.0
        items: list[tuple[MathBitmap, float, float]] = []
        x = 0.0
        prev: str | None = None
        for child in children:
            if isinstance(child, _Space):
                x += child.mu * mu
                continue
            bmp, cls = self._node(child, level)
            if cls == "bin" and prev in (None, "bin", "rel", "open", "punct", "op"):
                cls = "ord"  # unary minus / plus
            if prev is not None:
                x += _space_mu(prev, cls, level) * mu
            items.append((bmp, x, 0.0))
            x += bmp.advance
            prev = cls
        composed = _hcompose(items)
        return MathBitmap(
            composed.ink, composed.origin, composed.baseline, max(x, composed.advance if items else 0.0)
        )

    def _frac(self, node: _Frac, level: int) -> MathBitmap:
        size = self.sizes[level]
        inner = min(level + 1, 2)
        num = self._hlist(node.num.children, inner)
        den = self._hlist(node.den.children, inner)
        thick = max(1, round(size * 0.04))
        gap = max(2, round(size * 0.1))
        pad = max(1, round(size * 0.08))
        axis = round(size * 0.25)
        width = max(num.advance, den.advance) + 2 * pad
        rule_top = -axis - thick / 2  # relative to the baseline, negative is up
        num_dy = rule_top - gap - num.descent
        den_dy = rule_top + thick + gap + den.ascent
        rule = MathBitmap(np.full((thick, int(math.ceil(width))), 255, np.uint8), 0.0, 0.0, width)
        composed = _hcompose(
            [
                (num, (width - num.advance) / 2, num_dy),
                (den, (width - den.advance) / 2, den_dy),
                (rule, 0.0, rule_top),
            ]
        )
        return MathBitmap(composed.ink, composed.origin, composed.baseline, width + size * 0.05)

    def _scripts(self, node: _Scripts, level: int) -> tuple[MathBitmap, str]:
        size = self.sizes[level]
        base, cls = self._node(node.base, level)
        inner = min(level + 1, 2)
        items = [(base, 0.0, 0.0)]
        x = base.advance + size * 0.03
        adv = base.advance
        sup = sub = None
        if node.sup is not None:
            sup, _ = self._node(node.sup, inner)
        if node.sub is not None:
            sub, _ = self._node(node.sub, inner)
        # Bases other than ordinary characters (groups, fractions, big operators) push scripts outwards.
        tall = not isinstance(node.base, _Leaf) or cls in ("op", "inner")
        if sup is not None:
            up = max(size * 0.36, base.ascent - size * 0.25 if tall else 0.0)
            slant = size * 0.25 if isinstance(node.base, _Leaf) and node.base.src.endswith("int") else 0.0
            items.append((sup, x + slant, -up))
            adv = max(adv, x + slant + sup.advance)
            adv = max(adv, x + sup.advance)
        if sub is not None:
            down = size * (0.28 if sup is not None else 0.18)
            if tall:
                down = max(down, base.descent - size * 0.1)
            items.append((sub, x, down))
            adv = max(adv, x + sub.advance)
        composed = _hcompose(items)
        return MathBitmap(composed.ink, composed.origin, composed.baseline, adv + size * 0.03), cls

    def render(self, body: str) -> MathBitmap:
        """Typeset ``body``: composed from cached leaves when possible, else mathtext in one piece.

        Raises :class:`Unsupported` when mathtext cannot typeset it either.
        """
        try:
            return self._hlist(parse_formula(body).children, 0)
        except Unsupported:
            return self.leaf(body, 0)


# ---------------------------------------------------------------------------------------------
# Real LaTeX: latex + dvipng, many formulas per run
# ---------------------------------------------------------------------------------------------
#
# Why a second typesetter: mathtext is a subset of TeX with its own layout -- no display style (limits
# stay beside \sum), no amsmath environments, small spacing glitches.  Where TeX Live is installed the
# report's "LaTeX renderer" can be the real one.  Spawning latex costs ~0.1-0.15 s whatever the input,
# while each extra formula in the same run costs ~2-3 ms, so formulas are typeset in batches: one page
# per formula (preview package), one latex and one dvipng call per batch.

LATEX_FONT_PACKAGES: dict[str, str] = {"cm": "\\usepackage{lmodern}"}
"""Preamble lines per ``RenderConfig.math_fontset``: ``cm`` -> Latin Modern, the report's math font.
The other fontsets (STIX, DejaVu) have no TeX package in Debian's base TeX Live and stay on mathtext."""

_LATEX_PREAMBLE = (
    "\\documentclass[10pt]{article}\n\\usepackage[T1]{fontenc}\n%s\n\\usepackage{amsmath,amssymb}\n"
    "\\usepackage[active,tightpage]{preview}\n\\pagestyle{empty}\n\\begin{document}\n"
)
_MARK = "LOMO-PAGE-"
# Input that could reach outside one page (files, shell, catcodes, page counters, the document itself) is
# never sent to latex; such a formula takes the mathtext path.  latex also runs with -no-shell-escape and
# kpathsea's paranoid file access.
_LATEX_UNSAFE = re.compile(
    r"\\(?:input|include|usepackage|RequirePackage|documentclass|[gex]?def|let|futurelet|catcode|"
    r"write|openout|openin|read|immediate|special|csname|(?:re)?newcommand|providecommand|"
    r"(?:re)?newenvironment|makeatletter|makeatother|loop|output|shipout|stop|bye|endinput|dump|"
    r"(?:batch|nonstop|scroll|errorstop)mode|(?:set|addto|step)counter|pagenumbering|count|global|"
    r"typeout|message|end(?!\s*\{)|(?:begin|end)\s*\{(?:document|preview)\})(?![A-Za-z])"
)
_DVIPNG_DEPTH = re.compile(r"depth=(-?\d+)\s+height=(-?\d+)")
# Report each page's depth/height (the baseline), black on white, and no PNG compression: the files are
# read once, right away, so compressing them would only cost time.
_DVIPNG_ARGS = (
    "-q",
    "--depth",
    "--height",
    "-bg",
    "rgb 1 1 1",
    "-fg",
    "rgb 0 0 0",
    "-z",
    "0",
    "-o",
    "p%d.png",
)


def find_latex() -> tuple[str, str] | None:
    """Paths of ``latex`` and ``dvipng`` when both are on PATH, else None (mathtext is used instead)."""
    latex, dvipng = shutil.which("latex"), shutil.which("dvipng")
    return (latex, dvipng) if latex and dvipng else None


def latex_safe(page: str) -> bool:
    """Whether ``page`` can go into a shared latex run: no dangerous commands, balanced braces/environments.

    A brace left open would swallow the following pages of the batch; catching it here is cheaper than
    recovering from it (latex itself still reports the remaining errors, see :class:`LatexTypesetter`).
    """
    if _LATEX_UNSAFE.search(page):
        return False
    depth = 0
    i = 0
    while i < len(page):
        c = page[i]
        if c == "\\":
            i += 2
            continue
        depth += (c == "{") - (c == "}")
        if depth < 0:
            return False
        i += 1
    if depth:
        return False
    begins = re.findall(r"\\begin\s*\{([^{}]*)\}", page)
    ends = re.findall(r"\\end\s*\{([^{}]*)\}", page)
    return sorted(begins) == sorted(ends) and page.count("\\left") == page.count("\\right")


class LatexTypesetter:
    """Typesets LaTeX pages (``$...$``, ``\\begin{align*}...``) to :class:`MathBitmap` via latex + dvipng.

    ``font_size`` is the em size in pixels, as for :class:`MathTypesetter` (dvipng's resolution is chosen
    so that the 10 pt Latin Modern em spans that many pixels).  Counters ``runs`` (latex invocations) and
    ``pages`` (formulas typeset) are for monitoring and tests.
    """

    def __init__(
        self,
        font_size: int = 26,
        fontset: str = "cm",
        tools: tuple[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        from vlmlab.errors import unknown_choice

        if fontset not in LATEX_FONT_PACKAGES:
            raise unknown_choice("LaTeX math fontset", fontset, LATEX_FONT_PACKAGES)
        found = tools or find_latex()
        if found is None:
            raise RuntimeError("latex and dvipng must both be on PATH for LatexTypesetter.")
        self.latex, self.dvipng = found
        self.font_size = font_size
        self.dpi = max(1, round(font_size * 72.27 / 10))
        self.preamble = _LATEX_PREAMBLE % LATEX_FONT_PACKAGES[fontset]
        self.timeout = timeout
        self.runs = 0
        self.pages = 0
        self.broken = ""
        """Non-empty (the reason) once the preamble itself failed: every later call returns None at once."""

    def render_many(self, pages: list[str]) -> list[MathBitmap | None]:
        """Typeset every page (None where latex fails or the page is unsafe), in as few runs as possible.

        latex recovers from most errors, but recovery may leave TeX in a state that spoils later pages, so
        only pages before the first error of a run are trusted: each failing page costs one more run for
        the pages after it.
        """
        out: list[MathBitmap | None] = [None] * len(pages)
        todo = [i for i, p in enumerate(pages) if p.strip() and latex_safe(p)]
        while todo and not self.broken:
            got, failed = self._run([pages[i] for i in todo])
            for i, bmp in zip(todo, got):
                out[i] = bmp
            if failed is None:
                break
            todo = todo[failed + 1 :]
        return out

    def _run(self, pages: list[str]) -> tuple[list[MathBitmap | None], int | None]:
        """One latex + dvipng run: (bitmaps of the trusted pages, index of the first failing page)."""
        body = "".join(
            f"\\typeout{{{_MARK}{k}}}\\begin{{preview}}{p}\n\\end{{preview}}\n" for k, p in enumerate(pages)
        )
        source = self.preamble + body + f"\\typeout{{{_MARK}{len(pages)}}}\n\\end{{document}}\n"
        env = dict(os.environ, openin_any="p", openout_any="p")
        self.runs += 1
        with tempfile.TemporaryDirectory(prefix="lomo-tex-") as tmp:
            with open(os.path.join(tmp, "f.tex"), "w", encoding="utf-8") as fh:
                fh.write(source)
            try:
                subprocess.run(
                    [self.latex, "-interaction=nonstopmode", "-no-shell-escape", "f.tex"],
                    cwd=tmp,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=preexec_die_with_parent,  # not left running by a killed run
                    capture_output=True,
                    timeout=self.timeout,
                )
            except subprocess.TimeoutExpired:
                return [None] * len(pages), None  # a page loops: give the whole batch to mathtext
            except OSError as err:  # the binary vanished or cannot start: stop trying
                self.broken = f"latex could not run: {err}"
                logging.getLogger(__name__).warning("LoMo: %s; math falls back to mathtext.", self.broken)
                return [None] * len(pages), None
            try:
                with open(os.path.join(tmp, "f.log"), encoding="utf-8", errors="replace") as fh:
                    log = fh.read()
            except OSError:
                log = ""
            failed = _first_failed_page(log, len(pages))
            if failed == -1:
                self.broken = "the LaTeX preamble failed: " + _first_error(log)
                logging.getLogger(__name__).warning("LoMo: %s; math falls back to mathtext.", self.broken)
                return [None] * len(pages), None
            n_good = len(pages) if failed is None else failed
            if n_good == 0 or not os.path.exists(os.path.join(tmp, "f.dvi")):
                return [None] * len(pages), failed
            try:
                res = subprocess.run(
                    [self.dvipng, "-D", str(self.dpi), *_DVIPNG_ARGS, "-pp", f"1-{n_good}", "f.dvi"],
                    cwd=tmp,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=preexec_die_with_parent,  # not left running by a killed run
                    capture_output=True,
                    text=True,
                    timeout=self.timeout,
                )
            except (subprocess.TimeoutExpired, OSError):
                return [None] * len(pages), failed
            metrics = _DVIPNG_DEPTH.findall(res.stdout)
            got: list[MathBitmap | None] = [None] * len(pages)
            for k in range(min(n_good, len(metrics))):
                got[k] = _load_page(os.path.join(tmp, f"p{k + 1}.png"), int(metrics[k][1]))
            self.pages += sum(b is not None for b in got)
        return got, failed


def _first_error(log: str) -> str:
    for line in log.splitlines():
        if line.startswith("!"):
            return line[1:].strip()
    return "no output"


def _first_failed_page(log: str, n: int) -> int | None:
    """Index of the first page with a TeX error or a lost glyph; -1 if the preamble failed, None if none.

    Errors are attributed to the page whose ``\\typeout`` marker precedes them in the log.
    """
    page = -1
    for line in log.splitlines():
        if line.startswith(_MARK):
            try:
                page = int(line[len(_MARK) :].strip())
            except ValueError:
                pass
            continue
        if line.startswith("!") or line.startswith("Missing character"):
            return page if page < n else None  # an error after the last page spoils none of them
    # The final marker never came (latex stopped early, or never started): blame the page it was on.
    return page if page < n else None


def _load_page(path: str, height: int) -> MathBitmap | None:
    """One dvipng page as an ink bitmap cropped to its ink; ``height`` = rows above the baseline."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            ink = 255 - np.asarray(im.convert("L"), dtype=np.uint8)
    except OSError:
        return None
    rows = np.flatnonzero(ink.max(axis=1) > 0)
    cols = np.flatnonzero(ink.max(axis=0) > 0)
    if not rows.size:
        return None  # nothing drawn: the page lost its content
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    ink = np.ascontiguousarray(ink[top:bottom, left:right])
    baseline = float(min(max(height - top, 0), ink.shape[0]))
    return MathBitmap(ink, 0.0, baseline, float(ink.shape[1]))
