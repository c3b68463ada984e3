"""Structure-aware span localisation: LoMo stage 1 (Algorithm 1, "Span localization").

LoMo replaces one part of a text-only prompt with a rendered image of that part.  Which part matters:
the report's ablation (Table 4) finds the *middle* third best, and a formula cut in half would render as
garbage, so the split points must never fall inside a formula.  This module therefore

1. scans the prompt for atomic regions -- math (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``,
   ``\\begin{env}...\\end{env}``, bare LaTeX commands such as ``\\frac{a}{b}`` with their argument
   groups) and fenced code blocks -- which are never split;
2. cuts the prose between them at sentence boundaries, giving the report's interleaved block
   sequence ``((t1, l1), (m1, l2), ...)`` of text / formula blocks with character lengths;
3. picks the block range closest (in characters) to the requested third(s) -- fifths for multi-span,
   which may cut inside sentences when a prompt has fewer than five blocks (see :func:`localize_spans`).

Prompts of at most ``max_whole_sentences`` (3 in the report) sentences are rendered whole, so short
questions keep their full context inside the image.

Everything is pure string processing on positions of the original text, so the returned pieces
concatenate back to the input exactly (``SpanSplit.text == prompt``); tests check this property.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from vlmlab.errors import ConfigError, unknown_choice

POSITIONS: tuple[str, ...] = ("middle", "prefix", "suffix", "multi")
"""Rendering positions of LoMo's Table 4: middle third, first third, last third, two short spans."""

BLOCK_KINDS: tuple[str, ...] = ("text", "math", "code")

# Environments whose body mathtext can typeset line by line after dropping alignment markers.
ALIGN_ENVS = frozenset(
    {
        "equation",
        "equation*",
        "align",
        "align*",
        "aligned",
        "alignat",
        "alignat*",
        "gather",
        "gather*",
        "gathered",
        "multline",
        "multline*",
        "eqnarray",
        "eqnarray*",
        "flalign",
        "flalign*",
        "split",
        "math",
        "displaymath",
    }
)

# Words whose trailing period does not end a sentence (compared lower-cased, without the final '.').
_ABBREVIATIONS = frozenset(
    {
        "e.g",
        "i.e",
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "fig",
        "figs",
        "eq",
        "eqs",
        "no",
        "nos",
        "approx",
        "cf",
        "al",
        "resp",
        "sec",
        "ch",
        "vol",
        "pp",
    }
)
_TERMINATOR_RE = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s)|\n")
_COMMAND_RE = re.compile(r"\\[A-Za-z]+\*?")
_ENV_RE = re.compile(r"\\begin\{([A-Za-z]+\*?)\}")


@dataclass(frozen=True)
class Fragment:
    """A maximal run of one kind of content.  ``text[start:end] == source``.

    ``display`` marks math that sits on its own line (``$$``, ``\\[``, environments); ``env`` names the
    LaTeX environment for ``\\begin{...}`` math (empty otherwise).
    """

    kind: str
    source: str
    start: int
    end: int
    display: bool = False
    env: str = ""

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Block:
    """One chunker block: a sentence-or-shorter piece of prose, a whole formula, or a whole code block."""

    kind: str
    text: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Piece:
    """A contiguous piece of the prompt; ``render`` pieces become images, the others stay text."""

    text: str
    render: bool


@dataclass(frozen=True)
class SpanSplit:
    """The result of span localisation: alternating kept-text and to-be-rendered pieces.

    ``prefix + "".join(spans interleaved with between) + suffix == text``; for the single-span
    positions this is simply ``prefix + span + suffix``.
    """

    pieces: tuple[Piece, ...]
    whole: bool = False
    """True when the prompt was short enough (<= max_whole_sentences) to be rendered whole."""
    fallback: str = ""
    """Why the requested layout could not be produced (e.g. multi-span on a too short prompt), else ''."""

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces)

    @property
    def spans(self) -> list[str]:
        return [p.text for p in self.pieces if p.render]

    @property
    def span(self) -> str:
        """The rendered text for single-span splits (all rendered pieces joined for multi-span)."""
        return "".join(self.spans)

    @property
    def prefix(self) -> str:
        out = []
        for p in self.pieces:
            if p.render:
                break
            out.append(p.text)
        return "".join(out)

    @property
    def suffix(self) -> str:
        out = []
        for p in reversed(self.pieces):
            if p.render:
                break
            out.append(p.text)
        return "".join(reversed(out))

    @property
    def between(self) -> list[str]:
        """Kept-text pieces strictly between rendered pieces (one entry for multi-span, none otherwise)."""
        idx = [i for i, p in enumerate(self.pieces) if p.render]
        return [p.text for p in self.pieces[idx[0] + 1 : idx[-1]] if not p.render] if idx else []


# --------------------------------------------------------------------------------------------------
# Atomic-region scanner
# --------------------------------------------------------------------------------------------------


def _escaped(text: str, pos: int) -> bool:
    """True if text[pos] is preceded by an odd number of backslashes."""
    n = 0
    pos -= 1
    while pos >= 0 and text[pos] == "\\":
        n += 1
        pos -= 1
    return n % 2 == 1


def _find_unescaped(text: str, needle: str, start: int) -> int:
    while True:
        j = text.find(needle, start)
        if j == -1 or not _escaped(text, j):
            return j
        start = j + 1


def _match_group(text: str, pos: int) -> int | None:
    """End index (exclusive) of the balanced {...} or [...] group opening at ``pos``, or None."""
    open_ch = text[pos]
    close_ch = "}" if open_ch == "{" else "]"
    depth = 0
    i = pos
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == open_ch:
            depth += 1
        elif c == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
        elif c == "\n" and i + 1 < n and text[i + 1] == "\n":
            return None  # a paragraph break never belongs to one argument
        i += 1
    return None


def _command_end(text: str, pos: int) -> int:
    """End of a bare LaTeX command at ``pos`` including its {..}/[..] arguments and ^/_ scripts."""
    m = _COMMAND_RE.match(text, pos)
    assert m is not None
    j = m.end()
    n = len(text)
    while j < n:
        c = text[j]
        if c in "{[":
            k = _match_group(text, j)
            if k is None:
                break
            j = k
        elif c in "^_" and j + 1 < n:
            nxt = text[j + 1]
            if nxt == "{":
                k = _match_group(text, j + 1)
                if k is None:
                    break
                j = k
            elif nxt.isalnum():
                j += 2
            elif nxt == "\\" and _COMMAND_RE.match(text, j + 1):
                j = _COMMAND_RE.match(text, j + 1).end()  # type: ignore[union-attr]
            else:
                break
        else:
            break
    return j


def _inline_dollar_end(text: str, i: int) -> int:
    """End of an inline ``$...$`` opening at ``i`` (pandoc's rule), or -1 when it is a literal dollar.

    The opening ``$`` must be followed by a non-space, the closing one preceded by a non-space and not
    followed by a digit, and no blank line may intervene -- so "costs $5 and $10" stays prose.
    """
    n = len(text)
    if i + 1 >= n or text[i + 1].isspace() or text[i + 1] == "$":
        return -1
    j = _find_unescaped(text, "$", i + 1)
    if j == -1:
        return -1
    if text[j - 1].isspace() or (j + 1 < n and text[j + 1].isdigit()):
        return -1
    if "\n\n" in text[i:j] or (j + 1 < n and text[j + 1] == "$"):
        return -1
    return j + 1


def scan_fragments(text: str) -> list[Fragment]:
    """Split ``text`` into text / math / code fragments covering it exactly (no gaps, no overlaps).

    Why a hand-written scanner: regular expressions cannot match balanced braces of LaTeX arguments,
    and we need exact positions so that span boundaries can be proven to lie outside formulas.
    """
    atoms: list[Fragment] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "`" and text.startswith("```", i):
            j = text.find("```", i + 3)
            if j != -1:
                atoms.append(Fragment("code", text[i : j + 3], i, j + 3, display=True))
                i = j + 3
                continue
            i += 3
            continue
        if c == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt in "([":
                close = "\\)" if nxt == "(" else "\\]"
                j = _find_unescaped(text, close, i + 2)
                if j != -1:
                    atoms.append(Fragment("math", text[i : j + 2], i, j + 2, display=nxt == "["))
                    i = j + 2
                    continue
                i += 2
                continue
            m = _ENV_RE.match(text, i)
            if m is not None:
                env = m.group(1)
                end_tag = "\\end{" + env + "}"
                j = text.find(end_tag, m.end())
                if j != -1:
                    end = j + len(end_tag)
                    atoms.append(Fragment("math", text[i:end], i, end, display=True, env=env))
                    i = end
                    continue
            if nxt.isascii() and nxt.isalpha():
                end = _command_end(text, i)
                atoms.append(Fragment("math", text[i:end], i, end))
                i = end
                continue
            i += 2  # an escaped character such as \$ or \% is prose
            continue
        if c == "$" and not _escaped(text, i):
            if text.startswith("$$", i):
                j = _find_unescaped(text, "$$", i + 2)
                if j != -1:
                    atoms.append(Fragment("math", text[i : j + 2], i, j + 2, display=True))
                    i = j + 2
                    continue
                i += 2
                continue
            end = _inline_dollar_end(text, i)
            if end != -1:
                atoms.append(Fragment("math", text[i:end], i, end))
                i = end
                continue
        i += 1

    out: list[Fragment] = []
    pos = 0
    for a in atoms:
        if a.start > pos:
            out.append(Fragment("text", text[pos : a.start], pos, a.start))
        out.append(a)
        pos = a.end
    if pos < n:
        out.append(Fragment("text", text[pos:], pos, n))
    return out


def contains_math(text: str) -> bool:
    """Whether the LaTeX (math) renderer should be used for ``text`` (Algorithm 1, ContainsMath)."""
    return any(f.kind == "math" for f in scan_fragments(text))


# --------------------------------------------------------------------------------------------------
# Sentences and blocks
# --------------------------------------------------------------------------------------------------


def _is_false_stop(text: str, dot: int) -> bool:
    """Whether the '.' at ``dot`` belongs to an abbreviation, an initial or a list marker."""
    k = dot
    while k > 0 and (text[k - 1].isalnum() or text[k - 1] == "."):
        k -= 1
    token = text[k:dot]
    low = token.lower()
    if low in _ABBREVIATIONS:
        return True
    if len(token) == 1 and token.isalpha() and token.isupper():
        return True  # an initial ("J. Smith") or an option letter ("A. 3")
    if token.isdigit() and len(token) <= 3:
        line_start = text.rfind("\n", 0, k) + 1
        if text[line_start:k].strip() == "":
            return True  # "1. First step" list marker
    return False


def _sentence_boundaries(text: str, a: int, b: int) -> list[int]:
    """Positions inside prose region [a, b) right after a sentence end and its trailing whitespace."""
    out: list[int] = []
    for m in _TERMINATOR_RE.finditer(text, a, b):
        if m.group(0) != "\n" and text[m.start()] == "." and m.end() - m.start() == 1:
            if _is_false_stop(text, m.start()):
                continue
        pos = m.end()
        while pos < b and text[pos].isspace():
            pos += 1
        if a < pos < b and (not out or out[-1] != pos):
            out.append(pos)
    return out


def chunk(text: str) -> list[Block]:
    """FormulaAwareChunk: the interleaved sequence of prose / formula / code blocks of ``text``.

    Prose is cut at sentence boundaries (after the trailing whitespace, so blocks start with content);
    math and code fragments are single blocks.  Blocks cover ``text`` exactly.
    """
    blocks: list[Block] = []
    for f in scan_fragments(text):
        if f.kind != "text":
            blocks.append(Block(f.kind, f.source, f.start, f.end))
            continue
        cuts = [f.start, *_sentence_boundaries(text, f.start, f.end), f.end]
        for s, e in zip(cuts, cuts[1:]):
            blocks.append(Block("text", text[s:e], s, e))
    return blocks


def _has_content(blocks: Sequence[Block]) -> bool:
    return any(b.kind != "text" or any(ch.isalnum() for ch in b.text) for b in blocks)


def sentence_count(text: str) -> int:
    """Number of sentences in ``text`` (Algorithm 1, SentenceCount); periods inside formulas don't count.

    A line break also ends a sentence, so multiple-choice options on their own lines count separately.
    """
    count = 0
    current: list[Block] = []
    for f in scan_fragments(text):
        if f.kind != "text":
            current.append(Block(f.kind, f.source, f.start, f.end))
            continue
        cuts = [f.start, *_sentence_boundaries(text, f.start, f.end), f.end]
        for idx, (s, e) in enumerate(zip(cuts, cuts[1:])):
            current.append(Block("text", text[s:e], s, e))
            if idx < len(cuts) - 2:  # a real sentence boundary follows this piece
                count += _has_content(current)
                current = []
    count += _has_content(current)
    return count


# --------------------------------------------------------------------------------------------------
# Span localisation
# --------------------------------------------------------------------------------------------------


# Characters that close the word or formula before them ("$x=1$." / "x)," / "5%"): a cut right before
# one would orphan it at the start of the next piece (". Then find"), so cuts move past them.
_ATTACHED_PUNCT = frozenset(".,;:!?)]}%'\"\u201d\u2019\u2026")
_CLAUSE_END = frozenset(",;:")

MULTI_MIN_UNITS = 5
"""Multi-span needs five non-empty pieces (text, image, text, image, text), hence five *units* (see
:func:`localize_spans`); a prompt with fewer falls back to the single middle span."""

# Boundary levels, coarsest first: sentence/formula edges (the report's blocks), clause ends, word starts.
_SENTENCE, _CLAUSE, _WORD = 0, 1, 2

logger = logging.getLogger(__name__)


def _past_attached(text: str, pos: int) -> int:
    """Move a cut at ``pos`` past punctuation glued to the previous word or formula, and its blanks.

    The skipped characters are prose: punctuation and whitespace never open a formula (those start with
    ``$``, ``\\`` or a backtick fence), so the moved cut still lies outside every formula.
    """
    n = len(text)
    if pos <= 0 or pos >= n or text[pos - 1].isspace() or text[pos] not in _ATTACHED_PUNCT:
        return pos
    while pos < n and text[pos] in _ATTACHED_PUNCT:
        pos += 1
    while pos < n and text[pos].isspace():
        pos += 1
    return pos


def _candidate_cuts(text: str, blocks: Sequence[Block], max_level: int) -> dict[int, int]:
    """Interior cut positions up to ``max_level`` granularity, mapped to their (coarsest) level.

    Finer cuts are only taken inside prose blocks, so formulas and code stay atomic at every level.
    """
    raw: list[tuple[int, int]] = [(b.start, _SENTENCE) for b in blocks[1:]]
    if max_level >= _CLAUSE:
        for b in blocks:
            if b.kind != "text":
                continue
            for i in range(b.start + 1, b.end):
                if text[i - 1].isspace() and not text[i].isspace():
                    j = i - 1
                    while j > b.start and text[j - 1].isspace():
                        j -= 1
                    if j > b.start and text[j - 1] in _CLAUSE_END:
                        raw.append((i, _CLAUSE))
                    elif max_level >= _WORD:
                        raw.append((i, _WORD))
    cuts: dict[int, int] = {}
    for pos, level in raw:
        pos = _past_attached(text, pos)
        if 0 < pos < len(text):
            cuts[pos] = min(level, cuts.get(pos, level))
    return cuts


def _content_prefix(text: str, fragments: Sequence[Fragment]) -> list[int]:
    """Prefix sums of "visible content" characters: letters/digits in prose, every char of a formula/code.

    A piece without any (only blanks or punctuation) would render as an empty or meaningless image.
    """
    flags = [ch.isalnum() for ch in text]
    for f in fragments:
        if f.kind != "text":
            flags[f.start : f.end] = [True] * f.length
    out = [0]
    for flag in flags:
        out.append(out[-1] + flag)
    return out


def _units(text: str, cuts: dict[int, int], content: Sequence[int]) -> tuple[list[int], list[int]]:
    """Unit boundaries ``[0, c1, ..., len]`` and their levels, every unit holding visible content.

    A content-less unit (e.g. the blank between two formulas) is merged into the unit before it -- into
    the one after it at the very start -- so any choice of boundaries yields non-empty pieces.
    """
    bounds = [0, *sorted(cuts), len(text)]
    keep = [0]
    for k in range(1, len(bounds) - 1):
        start, end = bounds[k], bounds[k + 1]
        if content[end] - content[start] > 0 and content[start] - content[keep[-1]] > 0:
            keep.append(start)
    # The last unit [keep[-1], len) may be content-less only if it is the first one too (blank prompt).
    keep.append(len(text))
    levels = [_SENTENCE, *(cuts[p] for p in keep[1:-1]), _SENTENCE]
    return keep, levels


def _snap(
    bounds: Sequence[int],
    targets: Sequence[float],
    lo: int,
    hi: int,
    penalty: Sequence[float] | None = None,
) -> list[int] | None:
    """Choose strictly increasing boundary indices in [lo, hi] closest to the character targets.

    ``penalty[k]`` (in characters) is added to the distance of boundary ``k``: finer boundaries (inside a
    sentence) only win when they are that much closer to the target than a sentence boundary.
    """
    chosen: list[int] = []
    prev = lo - 1
    for t_idx, target in enumerate(targets):
        remaining = len(targets) - t_idx - 1
        first, last = prev + 1, hi - remaining
        if first > last:
            return None
        best = min(
            range(first, last + 1),
            key=lambda k: (abs(bounds[k] - target) + (penalty[k] if penalty else 0.0), k),
        )
        chosen.append(best)
        prev = best
    return chosen


def _pieces_from_cuts(text: str, cuts: Sequence[int], render_flags: Sequence[bool]) -> tuple[Piece, ...]:
    """Build pieces between character cuts, moving whitespace at rendered-piece edges into the text.

    Whitespace is never part of a formula, so shifting it cannot split one; it keeps the rendered span
    free of invisible leading/trailing blanks.
    """
    cuts = list(cuts)
    for i, flag in enumerate(render_flags):
        if not flag:
            continue
        s, e = cuts[i], cuts[i + 1]
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        cuts[i], cuts[i + 1] = s, e
    pieces = []
    for i, flag in enumerate(render_flags):
        piece = text[cuts[i] : cuts[i + 1]]
        if piece or flag:
            pieces.append(Piece(piece, flag))
    return tuple(pieces)


def _whole(text: str, fallback: str = "") -> SpanSplit:
    return SpanSplit(
        _pieces_from_cuts(text, [0, 0, len(text), len(text)], [False, True, False]), True, fallback
    )


def localize_spans(text: str, position: str = "middle", max_whole_sentences: int = 3) -> SpanSplit:
    """Select the span(s) of ``text`` to render (LoMo stage 1).

    * at most ``max_whole_sentences`` sentences (or fewer than 3 blocks): the whole prompt is the span
      (prefix/suffix empty), for every position -- Algorithm 1's first branch;
    * otherwise blocks from :func:`chunk` are grouped by character length into thirds at block
      granularity: ``middle`` renders the central third, ``prefix`` the first, ``suffix`` the last;
    * ``multi`` (Table 4's "two short spans") renders the 2nd and 4th fifths, always as
      text-image-text-image-text.  Five pieces need five *units*: sentence/formula blocks when there are
      at least five, else clause pieces (cut after ``,;:``), else words -- finer cuts are taken only when
      needed and only where they are clearly closer to a fifth than a sentence boundary.  A prompt that
      is *long enough* for multi-span thus has more than ``max_whole_sentences`` sentences and at least
      :data:`MULTI_MIN_UNITS` words-or-formulas.  A shorter one (e.g. "Yes. Why? Go! Stop.") falls back
      to the middle layout; ``SpanSplit.fallback`` says so (and the transform counts it).

    Cuts never fall inside a formula, never leave punctuation that belongs to the previous word or
    formula at the start of the next piece (``"$x=1$. Then"`` is cut after the ``". "``), and never
    produce a piece without visible content.  A prompt with no visible content yields no span
    (``SpanSplit.spans == []``).
    """
    if position not in POSITIONS:
        raise unknown_choice("LoMo position", position, POSITIONS)
    if max_whole_sentences < 0:
        raise ConfigError(f"max_whole_sentences must be >= 0, got {max_whole_sentences}.")
    if not text.strip():
        return SpanSplit((Piece(text, False),))
    fragments = scan_fragments(text)
    blocks = chunk(text)
    content = _content_prefix(text, fragments)
    bounds, levels = _units(text, _candidate_cuts(text, blocks, _SENTENCE), content)
    n = len(bounds) - 1
    if sentence_count(text) <= max_whole_sentences or n < 3:
        return _whole(text)

    total = float(len(text))
    fallback = ""
    if position == "multi":
        for max_level in (_SENTENCE, _CLAUSE, _WORD):
            if max_level > _SENTENCE:
                bounds, levels = _units(text, _candidate_cuts(text, blocks, max_level), content)
            if len(bounds) - 1 >= MULTI_MIN_UNITS:
                # A clause cut must be 1/20 of the prompt closer to the target than a sentence cut, a word
                # cut 1/10 (half a piece): coarse boundaries keep sentences readable where they can.
                penalty = [level * total / 20 for level in levels]
                idx = _snap(bounds, [total * k / 5 for k in range(1, 5)], 1, len(bounds) - 2, penalty)
                assert idx is not None  # >= 5 units always admit 4 increasing interior cuts
                cuts = [0, *(bounds[k] for k in idx), len(text)]
                return SpanSplit(_pieces_from_cuts(text, cuts, [False, True, False, True, False]))
        words = len(bounds) - 1
        fallback = f"multi->middle: {words} words/formulas < {MULTI_MIN_UNITS} needed for two spans"
        logger.debug("LoMo %s (prompt %r)", fallback, text[:80])
        bounds, levels = _units(text, _candidate_cuts(text, blocks, _SENTENCE), content)
        n = len(bounds) - 1
        position = "middle"

    if position == "middle":
        idx = _snap(bounds, [total / 3, 2 * total / 3], 1, n - 1)
    elif position == "prefix":
        idx = [0, *(_snap(bounds, [total / 3], 1, n - 1) or [])]
    else:
        idx = [*(_snap(bounds, [2 * total / 3], 1, n - 1) or []), n]
    assert idx is not None and len(idx) == 2  # n >= 3 units always admit the cuts
    cuts = [0, *(bounds[k] for k in idx), len(text)]
    pieces = _pieces_from_cuts(text, cuts, [False, True, False])
    return SpanSplit(pieces, False, fallback)
