"""LoMo data transform: span localisation, rendering (incl. OCR), distortion, transform, shards, rendered eval."""

from __future__ import annotations

import dataclasses
import io
import logging
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vlmlab.config import DataSourceConfig
from vlmlab.data.lomo import (
    DISTORTIONS,
    POSITIONS,
    DistortionConfig,
    LomoConfig,
    LomoTransform,
    RenderConfig,
    SpanRenderer,
    apply_distortion,
    chunk,
    contains_math,
    distort,
    localize_spans,
    mixture_weights,
    natural_image_text_ratio,
    read_rendered_shard,
    resolve_math_engine,
    sample_group,
    sentence_count,
    write_rendered_shards,
)
from vlmlab.data.lomo import render as render_module
from vlmlab.data.lomo import transform as transform_module
from vlmlab.data.lomo.mathtex import MathTypesetter, Unsupported, find_latex, parse_formula
from vlmlab.data.lomo.spans import scan_fragments
from vlmlab.data.lomo.synthetic import random_formula, random_prompt
from vlmlab.data.sources import open_source
from vlmlab.errors import ConfigError
from vlmlab.eval import rendered as rendered_module
from vlmlab.eval.rendered import (
    render_question,
    rendered_eval_sample,
    rendered_gap_table,
    rendered_question_segments,
)

LONG = (
    "On a Mars supply mission, the crew loads food boxes and water tanks. The trip takes three days. "
    r"The rover can cross the rocky valley only if $\frac{x+3}{4}+\frac{2y}{5} \leq 15$, and the total "
    "number of supplies is given by $x+y=28$. The crew has e.g. two drivers. Determine whether the rover "
    "can carry the supplies safely. Give the answer as an integer."
)


@pytest.fixture(scope="module")
def renderer() -> SpanRenderer:
    return SpanRenderer(RenderConfig())


@pytest.fixture(scope="module")
def rendered(renderer: SpanRenderer) -> Image.Image:
    return renderer.render(LONG)


def _ink(img: Image.Image) -> int:
    """Number of clearly dark pixels: the text that must survive any distortion."""
    return int((np.asarray(img.convert("L")) < 128).sum())


# --------------------------------------------------------------------------------------------------
# Span localisation
# --------------------------------------------------------------------------------------------------


def test_scanner_recognises_every_delimiter() -> None:
    text = (
        r"A $x^2$ b $$\int_0^1 x\,dx$$ c \(a+b\) d \[c^2\] e \begin{align} a &= b \\ c &= d \end{align} "
        r"f \frac{1}{2} g ```py\nprint(1)\n``` h"
    )
    kinds = [(f.kind, f.source) for f in scan_fragments(text) if f.kind != "text"]
    assert kinds == [
        ("math", "$x^2$"),
        ("math", r"$$\int_0^1 x\,dx$$"),
        ("math", r"\(a+b\)"),
        ("math", r"\[c^2\]"),
        ("math", r"\begin{align} a &= b \\ c &= d \end{align}"),
        ("math", r"\frac{1}{2}"),
        ("code", r"```py\nprint(1)\n```"),
    ]


def test_currency_and_escaped_dollars_are_prose() -> None:
    assert not contains_math("It costs $5 and $10 in total.")
    assert not contains_math(r"Escaped \$x\$ is not math.")
    assert contains_math("Solve $x+1=2$ now.")


def test_sentence_count_ignores_periods_in_formulas_and_abbreviations() -> None:
    assert sentence_count(r"Let $x = 3.5$. Then e.g. Dr. Smith computes $y$. Done!") == 3
    assert sentence_count("One. Two? Three! Four.") == 4
    assert sentence_count("Question: which is larger?\nA. 3\nB. 4") == 3


@settings(max_examples=300)
@given(rng=st.randoms(use_true_random=False), math_prob=st.sampled_from((0.0, 0.3, 0.9)))
def test_property_chunker_never_splits_formulas(rng: random.Random, math_prob: float) -> None:
    """Random mixes of prose and formulas in every delimiter: formulas stay whole blocks."""
    text, formulas = random_prompt(rng, math_prob=math_prob)
    blocks = chunk(text)
    assert "".join(b.text for b in blocks) == text
    assert all(text[b.start : b.end] == b.text for b in blocks)
    spans = {(b.start, b.end) for b in blocks if b.kind == "math"}
    assert spans == set(formulas), text
    for position in POSITIONS:
        split = localize_spans(text, position)
        assert split.text == text
        cut = 0
        for piece in split.pieces[:-1]:
            cut += len(piece.text)
            assert not any(a < cut < b for a, b in formulas), (position, text, cut)


@settings(max_examples=150)
@given(rng=st.randoms(use_true_random=False), sentences=st.integers(1, 3))
def test_property_short_prompts_render_whole(rng: random.Random, sentences: int) -> None:
    text, _ = random_prompt(rng, n_sentences=sentences, math_prob=0.5)
    assert sentence_count(text) <= 3
    for position in POSITIONS:
        split = localize_spans(text, position)
        assert split.whole and split.spans == [text.strip()]
        assert split.prefix + split.span + split.suffix == text


def test_positions_follow_table_4() -> None:
    n = len(LONG)
    middle = localize_spans(LONG, "middle")
    assert not middle.whole and len(middle.spans) == 1
    assert middle.prefix and middle.suffix
    assert middle.prefix + middle.span + middle.suffix == LONG
    assert n / 6 < len(middle.prefix) < n / 2  # starts around the first third

    prefix = localize_spans(LONG, "prefix")
    assert prefix.prefix == "" and prefix.pieces[0].render and prefix.suffix
    suffix = localize_spans(LONG, "suffix")
    assert suffix.suffix == "" and suffix.pieces[-1].render and suffix.prefix

    multi = localize_spans(LONG, "multi")
    assert len(multi.spans) == 2 and len(multi.between) == 1
    assert [p.render for p in multi.pieces] == [False, True, False, True, False]
    assert multi.text == LONG

    with pytest.raises(ConfigError, match="position"):
        localize_spans(LONG, "center")


def test_blank_prompt_has_no_span() -> None:
    assert localize_spans("   \n ").spans == []


# Punctuation that closes the word or formula before it; the test's own list, not the module's.
_CLOSING = set(".,;:!?)]}%'\"")
_WORDS = "apple train speed value box sum each find total number price rover crew only".split()


def _fuzz_prompt(rng: random.Random) -> tuple[str, int, int, list[tuple[int, int]]]:
    """A prompt of 1-12 sentences of 1-15 words with formulas glued to punctuation ("$x$.", "($y$),").

    Returns (text, sentences, words + formulas, formula spans): the generator knows its own counts, so
    the test does not need the module's chunker to decide what "long enough" means.
    """
    n_sent = rng.choice((1, 2, 3, 4, 4, 5, 6, 8, 12))
    one_word = rng.random() < 0.25  # very short sentences: "Yes. Why? Go! Stop." has 4 units only
    sentences, formulas, units, pos = [], [], 0, 0
    for k in range(n_sent):
        n_words = 1 if one_word else rng.randint(1, 15)
        tokens: list[str] = []
        for w in range(n_words):
            if w and rng.random() < 0.2:
                tokens.append(
                    "\x00".join(rng.choice((("", ""), ("", ","), ("(", ")"), ("(", "),"), ("", ":"))))
                )
            word = rng.choice(_WORDS)
            tokens.append((word.capitalize() if w == 0 else word) + rng.choice(("", "", "", ",", ";")))
        if rng.random() < 0.3:
            tokens.append("\x00")  # a formula right before the sentence end: "... $x=1$."
        end = rng.choice((".", ".", "?", "!", ".)", '."'))
        sep = "" if k == 0 else rng.choice((" ", " ", "\n", "\n\n"))
        sentence = sep
        for t_idx, token in enumerate(tokens):
            sentence += " " if t_idx else ""
            if "\x00" in token:
                formula = random_formula(rng)
                head, tail = token.split("\x00")
                start = pos + len(sentence) + len(head)
                formulas.append((start, start + len(formula)))
                token = head + formula + tail
            sentence += token
            units += 1
        sentence += end
        pos += len(sentence)
        sentences.append(sentence)
    return "".join(sentences), n_sent, units, formulas


def _check_pieces(text: str, split, formulas: list[tuple[int, int]]) -> None:  # noqa: ANN001
    assert split.text == text
    cut = 0
    for k, piece in enumerate(split.pieces):
        inside = [(a, b) for a, b in formulas if a < cut + len(piece.text) and b > cut]
        if piece.render:
            assert any(ch.isalnum() for ch in piece.text) or inside, (text, piece)
        if k:
            assert not any(a < cut < b for a, b in formulas), (text, cut)
            glued = text[cut] in _CLOSING and not text[cut - 1].isspace()
            assert not glued, (f"piece starts with orphaned {text[cut]!r}", text[cut - 5 : cut + 10])
        cut += len(piece.text)


def test_property_multi_span_is_text_image_text_image_text() -> None:
    """Several hundred generated prompts: every long-enough prompt gives T-I-T-I-T, the rest say why."""
    rng = random.Random(2024)
    seen = {"multi": 0, "fallback": 0, "whole": 0}
    for _ in range(600):
        text, n_sent, units, formulas = _fuzz_prompt(rng)
        assert sentence_count(text) == n_sent, text
        split = localize_spans(text, "multi")
        _check_pieces(text, split, formulas)
        flags = [p.render for p in split.pieces]
        if n_sent <= 3:
            assert split.whole, text
            seen["whole"] += 1
        elif units >= 5:
            assert flags == [False, True, False, True, False] and not split.fallback, (text, split.pieces)
            assert all(any(ch.isalnum() for ch in p.text) or "\\" in p.text for p in split.pieces)
            seen["multi"] += 1
        else:
            assert flags == [False, True, False] and split.fallback.startswith("multi->middle"), text
            seen["fallback"] += 1
        for position in ("middle", "prefix", "suffix"):
            _check_pieces(text, localize_spans(text, position), formulas)
    assert min(seen.values()) >= 10, seen  # the generator exercises every branch
    for _ in range(200):  # 4-9 long sentences, often prose only: where the last text piece used to vanish
        text, formulas = random_prompt(
            rng, n_sentences=rng.randint(4, 9), math_prob=rng.choice((0, 0.3, 0.9))
        )
        split = localize_spans(text, "multi")
        _check_pieces(text, split, formulas)
        assert [p.render for p in split.pieces] == [False, True, False, True, False], text


def test_multi_span_on_four_short_sentences() -> None:
    text = "One is here. Two is here. Three is here. Four is here."
    split = localize_spans(text, "multi")
    assert [p.render for p in split.pieces] == [False, True, False, True, False]
    assert split.text == text and not split.fallback
    assert split.pieces[0].text == "One is here. " and split.spans[0] == "Two is here."  # sentence cuts
    short = localize_spans("Yes. Why? Go! Stop.", "multi")  # four words cannot make five pieces
    assert [p.render for p in short.pieces] == [False, True, False]
    assert short.fallback == "multi->middle: 4 words/formulas < 5 needed for two spans"
    t = LomoTransform(LomoConfig(rewrite_ratio=1.0, position="multi", distortion=False))
    out = t({"prompt": "Yes. Why? Go! Stop.", "response": "x"}, 0, render_images=False)
    assert [s["type"] for s in out["segments"]] == ["text", "image", "text"]
    assert out["lomo"]["fallback"] == short.fallback and t.layout_fallbacks == 1  # counted, not silent


def test_cut_after_a_formula_keeps_its_punctuation() -> None:
    text = r"Let $x=1$. Then find y. We know $y = x+2$. So y is three. Check it now."
    pieces = [p.text for p in localize_spans(text, "multi").pieces]
    assert pieces[0] == "Let $x=1$. " and pieces[2] == " $y = x+2$. "
    assert not any(p.lstrip()[:1] in _CLOSING for p in pieces)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def test_render_trims_and_keeps_native_size(renderer: SpanRenderer, rendered: Image.Image) -> None:
    assert rendered.mode == "L"
    arr = np.asarray(rendered)
    rows, cols = np.where(arr < 200)
    m = renderer.config.margin
    # Trimmed: ink comes within the margin (+ antialiasing slack) of every edge.
    assert rows.min() <= m + 1 and cols.min() <= m + 1
    assert arr.shape[0] - 1 - rows.max() <= m + 1 and arr.shape[1] - 1 - cols.max() <= m + 1
    assert rendered.width <= renderer.config.max_width + 2 * m + 4
    short = renderer.render("Short line.")
    assert short.width < rendered.width / 3 and short.height < rendered.height
    assert short.height <= renderer.config.line_height + 2 * m + 4


def test_math_fallback_never_drops_the_span(renderer: SpanRenderer) -> None:
    """Math neither LaTeX nor mathtext can typeset is drawn as its source text, and counted."""
    before = renderer.math_failures
    img = renderer.render(r"Env \begin{nosuchenv} 1 & 2 \end{nosuchenv} and $\notacommand{x}$ still render.")
    assert renderer.math_failures >= before + 2
    assert _ink(img) > 200
    no_math = SpanRenderer(RenderConfig(render_math=False)).render(r"Plain $x^2$ source.")
    assert _ink(no_math) > 50


MALFORMED = [*"ab xy 12 .,;!?", "$", "$$", "\\", "{", "}", "^", "_", "&", "\n", r"\frac", r"\(", r"\)"]
MALFORMED += [r"\[", r"\]", r"\begin{align}", r"\end{align}", "```", r"\alpha", r"\left(", "\u6f22", "%"]


@settings(max_examples=100)
@given(text=st.lists(st.sampled_from(MALFORMED), min_size=1, max_size=60).map("".join))
def test_fuzz_render_and_split_never_fail(renderer: SpanRenderer, text: str) -> None:
    """Malformed LaTeX (unbalanced delimiters, stray braces, unknown glyphs) never raises or loses text."""
    img = renderer.render(text)
    assert img.mode == "L" and img.width > 0 and img.height > 0
    for position in POSITIONS:
        assert localize_spans(text, position).text == text


def test_a_glyph_mathtext_lacks_is_counted_as_a_failure(renderer: SpanRenderer) -> None:
    before = renderer.math_failures
    renderer.render("A glyph mathtext lacks: $\u6f22$.")  # mathtext would draw a dummy box: count a failure
    assert renderer.math_failures == before + 1


def _ink_extent(img: Image.Image) -> tuple[int, int]:
    """(height, width) of the ink's bounding box."""
    rows, cols = np.where(np.asarray(img.convert("L")) < 128)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


SUM = r"\sum_{k=1}^{n} k"
needs_tex = pytest.mark.skipif(
    find_latex() is None,
    reason="latex or dvipng not on PATH (Debian: apt-get install texlive-latex-base texlive-latex-extra "
    "cm-super dvipng)",
)


@needs_tex
def test_latex_renders_display_math_in_display_style() -> None:
    """Display math puts the limits of a sum above and below it: taller and narrower than inline."""
    r = SpanRenderer(RenderConfig())
    assert r.math_engine == "latex"
    inline = _ink_extent(r.render(f"${SUM}$"))
    assert r.latex_runs == 1 and r.latex_formulas == 1  # the LaTeX path, not mathtext
    for source in (f"$${SUM}$$", f"\\[{SUM}\\]", f"\\begin{{equation}}{SUM}\\end{{equation}}"):
        height, width = _ink_extent(r.render(source))
        assert height > 1.5 * inline[0] and width < inline[1], (source, (height, width), inline)
    # mathtext, the fallback, has no display style: both come out the same size, as inline LaTeX does.
    mt = SpanRenderer(RenderConfig(math_engine="mathtext"))
    assert _ink_extent(mt.render(f"$${SUM}$$")) == _ink_extent(mt.render(f"${SUM}$"))
    assert r.math_failures == 0 and r.latex_failures == 0


@needs_tex
def test_latex_batches_formulas_and_recovers_from_errors() -> None:
    r = SpanRenderer(RenderConfig())
    span = r"Let $a^2$ and $\frac{x+3}{4} \le 15$ and \begin{align} a &= b \\ c &= d \end{align} hold."
    r.render(span)
    assert r.latex_runs == 1 and r.latex_formulas == 3  # three formulas, one latex run
    r.render(span)
    assert r.latex_runs == 1  # cached: latex is not spawned again
    r.prefetch([r"First $y_1$.", r"Second $y_2$ and $$y_3$$."])
    r.render(r"First $y_1$.")
    r.render(r"Second $y_2$ and $$y_3$$.")
    assert r.latex_runs == 2 and r.latex_formulas == 6  # two spans' formulas in one run
    # Each formula LaTeX rejects costs one more run for the formulas after it, which still come out right;
    # mathtext draws the one it knows (\mathdefault is mathtext-only), the unknown one becomes text.
    r.render(r"Now $z_1$, $\mathdefault{q}$, $z_2$, $\notacommand{x}$ and $z_3$.")
    assert r.latex_runs == 2 + 3 and r.latex_formulas == 9 and r.latex_failures == 2
    assert r.math_failures == 1
    fresh = SpanRenderer(RenderConfig())
    assert fresh.render("$z_3$").tobytes() == r.render("$z_3$").tobytes()
    # File access and macro definitions never reach latex.
    runs = r.latex_runs
    r.render(r"Read $\input{/etc/hostname}$ or $\def\x{\x}\x$.")
    assert r.latex_runs == runs and r.latex_failures == 4


def test_mathtext_is_the_fallback_without_tex(monkeypatch: pytest.MonkeyPatch) -> None:
    """With latex/dvipng missing (the lookup patched), math goes to mathtext and latex is never run."""
    monkeypatch.setattr(render_module, "find_latex", lambda: None)
    r = SpanRenderer(RenderConfig())
    assert r.math_engine == "mathtext"
    img = r.render(f"Sum $${SUM}$$ and $x^2$.")
    reference = SpanRenderer(RenderConfig(math_engine="mathtext")).render(f"Sum $${SUM}$$ and $x^2$.")
    assert img.tobytes() == reference.tobytes()
    assert r.latex_runs == 0 and r.latex_formulas == 0 and r.math_failures == 0
    with pytest.raises(ConfigError, match="math_engine='latex' needs latex and dvipng"):
        SpanRenderer(RenderConfig(math_engine="latex"))
    with pytest.raises(ConfigError, match="Unknown math engine 'tex'.*Valid choices: auto, latex, mathtext"):
        RenderConfig(math_engine="tex")
    with pytest.raises(ConfigError, match="math_fontset='stix'"):
        RenderConfig(math_engine="latex", math_fontset="stix")


# A prompt short enough to be rendered whole, whose display sum LaTeX and mathtext typeset differently.
POLICY_SAMPLE = {"prompt": f"Compute $${SUM}$$ for n = 4.", "response": "10"}
POLICY_CONFIG = LomoConfig(rewrite_ratio=1.0, distortion=False, seed=1)


def _image_and_source(sample: dict) -> tuple[bytes, str]:
    seg = next(s for s in sample["segments"] if s["type"] == "image")
    return seg["image"].convert("RGB").tobytes(), seg["source"]


def _reference(engine: str, text: str) -> bytes:
    """The span typeset by a renderer with ``engine`` named explicitly: the truth each path is held to."""
    return SpanRenderer(RenderConfig(math_engine=engine)).render(text).convert("RGB").tobytes()


def _notes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "math_engine='auto' renders math" in r.getMessage()]


@needs_tex
def test_auto_engine_per_path_with_tex(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TeX installed: auto is LaTeX offline (shards, rendered eval) and mathtext online, noted once."""
    monkeypatch.setattr(transform_module, "_ONLINE_AUTO_NOTED", False)
    monkeypatch.setattr(rendered_module, "_DEFAULT_RENDERER", None)
    caplog.set_level(logging.INFO, logger=transform_module.__name__)
    assert resolve_math_engine(RenderConfig()) == "latex"

    online = LomoTransform(POLICY_CONFIG)
    image, span = _image_and_source(online(POLICY_SAMPLE, 0))
    latex, mathtext = _reference("latex", span), _reference("mathtext", span)
    assert latex != mathtext  # else the comparisons below could not tell the engines apart
    assert online.online and online.renderer.math_engine == "mathtext"
    assert image == mathtext and online.renderer.latex_runs == 0
    assert len(_notes(caplog)) == 1
    LomoTransform(POLICY_CONFIG)  # every worker builds one: the note is not repeated
    assert len(_notes(caplog)) == 1
    # The training stream's LoMo wrapper takes the online path.
    source = DataSourceConfig(kind="synthetic", task="ring", mode="tqa", difficulty={"num_objects": 4})
    assert open_source(source, lomo={"rewrite_ratio": 1.0}).transform.renderer.math_engine == "mathtext"

    forced = LomoTransform(dataclasses.replace(POLICY_CONFIG, math_engine="latex"))  # online, by name
    assert forced.renderer.math_engine == "latex"
    assert _image_and_source(forced(POLICY_SAMPLE, 0))[0] == latex

    offline = LomoTransform(POLICY_CONFIG, online=False)
    assert offline.renderer.math_engine == "latex"
    assert _image_and_source(offline(POLICY_SAMPLE, 0))[0] == latex
    (path,) = write_rendered_shards([POLICY_SAMPLE], tmp_path, POLICY_CONFIG)
    (record,) = read_rendered_shard(path)
    assert _image_and_source(record) == (latex, span)
    assert render_question(span).tobytes() == latex  # rendered evaluation is offline too
    assert len(_notes(caplog)) == 1  # the offline paths log nothing


def test_auto_engine_per_path_without_tex(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """latex/dvipng missing (the lookup patched): every path takes mathtext, and asking for latex fails."""
    monkeypatch.setattr(render_module, "find_latex", lambda: None)
    monkeypatch.setattr(transform_module, "_ONLINE_AUTO_NOTED", False)
    monkeypatch.setattr(rendered_module, "_DEFAULT_RENDERER", None)
    caplog.set_level(logging.INFO, logger=transform_module.__name__)
    assert resolve_math_engine(RenderConfig()) == "mathtext"

    online = LomoTransform(POLICY_CONFIG)
    image, span = _image_and_source(online(POLICY_SAMPLE, 0))
    mathtext = _reference("mathtext", span)
    assert online.renderer.math_engine == "mathtext" and image == mathtext
    assert _notes(caplog) == []  # nothing to note: auto would be mathtext offline as well
    offline = LomoTransform(POLICY_CONFIG, online=False)
    assert offline.renderer.math_engine == "mathtext" and offline.renderer.latex_runs == 0
    (path,) = write_rendered_shards([POLICY_SAMPLE], tmp_path, POLICY_CONFIG)
    (record,) = read_rendered_shard(path)
    assert _image_and_source(record) == (mathtext, span)
    assert render_question(span).tobytes() == mathtext
    for is_online in (True, False):
        with pytest.raises(ConfigError, match="math_engine='latex' needs latex and dvipng"):
            LomoTransform(dataclasses.replace(POLICY_CONFIG, math_engine="latex"), online=is_online)
    with pytest.raises(ConfigError, match="math_engine='latex' needs latex and dvipng"):
        resolve_math_engine(RenderConfig(math_engine="latex"))


def test_formula_composer_matches_mathtext_extent() -> None:
    """The fast composer lays out formulas about as mathtext does (same fonts, comparable boxes)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.mathtext import MathTextParser

    ts = MathTypesetter(26)
    parser = MathTextParser("agg")
    prop = FontProperties(size=26, math_fontfamily="cm")
    for body in [
        r"x+y=28",
        r"\frac{x+3}{4}+\frac{2y}{5} \leq 15",
        r"a_{n+1} = a_n^2 - 3",
        r"\sqrt{17} \approx 4.12",
    ]:
        ours = ts.render(body).ink
        ref = np.asarray(parser.parse("$" + body + "$", dpi=72, prop=prop).image)
        assert abs(ours.shape[1] - ref.shape[1]) <= 0.15 * ref.shape[1], body
        assert abs(ours.shape[0] - ref.shape[0]) <= 0.25 * ref.shape[0] + 3, body
        assert abs(int((ours > 127).sum()) - int((ref > 127).sum())) <= 0.25 * (ref > 127).sum(), body
    with pytest.raises(Unsupported):
        parse_formula(r"\frac{1}{2")


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog while the committee reviews forty-two proposals. "
    "Each proposal must include a budget, a timeline, and a short summary of expected outcomes.",
    "A train leaves the station at 9:15 and travels 180 kilometres at a constant speed. "
    "How long does the journey take if the average speed is 72 kilometres per hour?",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules. "
    "Plants absorb carbon dioxide through small openings in their leaves called stomata.",
    "Write a short letter to your neighbour explaining why the garden fence needs repair, "
    "and suggest two possible dates for the work to begin next month.",
]


def test_ocr_character_error_rate_of_clean_renderings(renderer: SpanRenderer, tmp_path: Path) -> None:
    """Clean renderings must be machine-readable: tesseract's CER over several paragraphs < 5%.

    Measured when written: 0.0% on these four paragraphs (tesseract 5.3, --psm 6).
    """
    binary = shutil.which("tesseract")
    if binary is None:
        pytest.skip("tesseract binary not found on PATH (Debian: apt-get install tesseract-ocr)")
    errors = total = 0
    for k, text in enumerate(PARAGRAPHS):
        path = tmp_path / f"p{k}.png"
        renderer.render(text).save(path)
        result = subprocess.run(
            [binary, str(path), "-", "--psm", "6"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        ocr = " ".join(result.stdout.split())
        errors += _levenshtein(ocr, text)
        total += len(text)
    cer = errors / total
    print(f"OCR character error rate on clean renderings: {cer:.2%}")
    assert cer < 0.05


# --------------------------------------------------------------------------------------------------
# Perceptual distortion
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DISTORTIONS)
def test_distortions_keep_ink_and_are_deterministic(name: str, rendered: Image.Image) -> None:
    base_ink = _ink(rendered)
    outputs = []
    for seed in range(6):  # several seeds: every blur kind / shadow-or-stain branch gets exercised
        a = apply_distortion(rendered, name, random.Random(seed))
        b = apply_distortion(rendered, name, random.Random(seed))
        assert a.tobytes() == b.tobytes() and a.size == b.size
        assert a.width * a.height >= rendered.width * rendered.height  # nothing is cropped away
        ink = _ink(a)
        assert ink > 0.3 * base_ink, (name, seed, ink, base_ink)  # not blank: the text survives
        assert np.asarray(a.convert("L")).max() >= 200  # and the paper is still light
        outputs.append(a.tobytes())
    if name != "clean":
        assert len(set(outputs)) == len(outputs)


def test_distort_is_seeded_locally_not_globally(rendered: Image.Image) -> None:
    cfg = DistortionConfig()
    random.seed(1)
    np.random.seed(1)
    first = distort(rendered, "sample-7", cfg)
    random.seed(2)
    np.random.seed(2)
    again = distort(rendered, "sample-7", cfg)
    assert first[1] == again[1] and first[0].tobytes() == again[0].tobytes()
    names = {distort(rendered, seed, cfg)[1] for seed in range(40)}
    assert names == set(DISTORTIONS)
    only_wave = DistortionConfig(weights={"Wave": 2.0})
    assert {distort(rendered, s, only_wave)[1] for s in range(5)} == {"wave"}


def test_distortion_config_errors() -> None:
    with pytest.raises(ConfigError, match="distortion"):
        DistortionConfig(weights={"sparkle": 1.0})
    with pytest.raises(ConfigError):
        DistortionConfig(weights={"blur": -1.0})
    with pytest.raises(ConfigError):
        DistortionConfig(
            weights={"blur": 0.0, "clean": 0.0, "rotate": 0.0, "wave": 0.0, "shadow_or_stain": 0.0}
        )


# --------------------------------------------------------------------------------------------------
# Transform
# --------------------------------------------------------------------------------------------------


def _reassemble(segments: list[dict]) -> str:
    return "".join(s["text"] if s["type"] == "text" else s["source"] for s in segments)


def test_config_validation() -> None:
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(ConfigError, match="rewrite_ratio"):
            LomoConfig(rewrite_ratio=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Did you mean 'middle'"):
        LomoConfig(position="midle")
    with pytest.raises(ConfigError, match="distortion"):
        LomoConfig(distortion_weights={"blurr": 1.0})
    with pytest.raises(ConfigError):
        LomoConfig(image_text_ratio=0.0)
    with pytest.raises(ConfigError, match="rewrite_ratio"):
        LomoConfig.from_mapping({"rewrite_ration": 0.5})
    assert LomoConfig.from_mapping({"rewrite_ratio": 0.25, "position": "multi"}).position == "multi"


@pytest.mark.parametrize("position", POSITIONS)
def test_transform_produces_interleaved_segments(position: str) -> None:
    t = LomoTransform(LomoConfig(rewrite_ratio=1.0, position=position, seed=3))
    sample = {"prompt": LONG, "response": "Yes, 12 boxes.", "id": 5}
    out = t(sample, sample_seed=11)
    assert out["response"] == sample["response"] and out["prompt"] == LONG and out["id"] == 5
    assert "segments" not in sample  # the input is not mutated
    segs = out["segments"]
    assert _reassemble(segs) == LONG
    images = [s for s in segs if s["type"] == "image"]
    assert len(images) == (2 if position == "multi" else 1)
    assert all(isinstance(s["image"], Image.Image) and s["image"].mode == "RGB" for s in images)
    types = [s["type"] for s in segs]
    expected = {
        "middle": ["text", "image", "text"],
        "prefix": ["image", "text"],
        "suffix": ["text", "image"],
        "multi": ["text", "image", "text", "image", "text"],
    }[position]
    assert types == expected
    assert out["lomo"]["position"] == position and len(out["lomo"]["distortions"]) == len(images)
    again = LomoTransform(LomoConfig(rewrite_ratio=1.0, position=position, seed=3))(sample, sample_seed=11)
    assert [s["image"].tobytes() for s in again["segments"] if s["type"] == "image"] == [
        s["image"].tobytes() for s in images
    ]


def test_transform_selection_and_passthrough() -> None:
    t = LomoTransform(LomoConfig(rewrite_ratio=0.5, seed=0))
    picks = [t.selects(i) for i in range(400)]
    assert 0.4 < sum(picks) / len(picks) < 0.6
    assert picks == [LomoTransform(LomoConfig(rewrite_ratio=0.5, seed=0)).selects(i) for i in range(400)]
    assert picks != [LomoTransform(LomoConfig(rewrite_ratio=0.5, seed=1)).selects(i) for i in range(400)]
    assert not any(LomoTransform(LomoConfig(rewrite_ratio=0.0)).selects(i) for i in range(50))

    always = LomoTransform(LomoConfig(rewrite_ratio=1.0, distortion=False))
    img = Image.new("RGB", (4, 4))
    multimodal = {"prompt": "Describe the image.", "image": img, "response": "A square."}
    assert always(multimodal, 0) == multimodal
    assert "segments" not in always({"prompt": "   ", "response": "x"}, 0)
    short = always({"prompt": "What is 2+2? Answer briefly.", "response": "4"}, 0)
    assert [s["type"] for s in short["segments"]] == ["image"] and short["lomo"]["whole"]
    assert short["lomo"]["distortions"] == ["clean"]
    assert sample_group(short) == "rendered" and sample_group(multimodal) == "multimodal"
    assert sample_group({"prompt": "hi", "response": "x"}) == "text_only"


def test_mixture_weights_match_table_5() -> None:
    # The paper: 2M multimodal + 2M text-only, half the text rewritten -> 3M image-bearing : 1M text = 3:1.
    assert natural_image_text_ratio(2_000_000, 2_000_000, 0.5) == pytest.approx(3.0)
    assert mixture_weights(2_000_000, 2_000_000, LomoConfig()) == {
        "multimodal": 1.0,
        "rendered": 1.0,
        "text_only": 1.0,
    }
    w = mixture_weights(2_000_000, 2_000_000, LomoConfig(image_text_ratio=1.0))
    # Matched 1:1 at the same 4M total: 2M image-bearing drawn from 3M (2/3 each), 2M text from 1M (x2).
    assert w["multimodal"] == pytest.approx(2 / 3) and w["rendered"] == pytest.approx(2 / 3)
    assert w["text_only"] == pytest.approx(2.0)
    with pytest.raises(ConfigError):
        mixture_weights(10, 10, LomoConfig(rewrite_ratio=1.0, image_text_ratio=1.0))


def test_write_and_read_shards_atomically(tmp_path: Path) -> None:
    rng = random.Random(5)
    samples = [{"prompt": random_prompt(rng, 6, 0.4)[0], "response": f"answer {i}"} for i in range(7)]
    samples[3] = {"prompt": "Look.", "image": "not-text-only", "response": "ok"}
    cfg = LomoConfig(rewrite_ratio=1.0, seed=2)
    paths = write_rendered_shards(samples, tmp_path / "out", cfg, samples_per_shard=3)
    assert [p.name for p in paths] == ["lomo-000000.tar", "lomo-000001.tar", "lomo-000002.tar"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in paths]  # no temp files
    records = [r for p in paths for r in read_rendered_shard(p)]
    assert [r["__key__"] for r in records] == [f"{i:09d}" for i in range(7)]
    assert [r["response"] for r in records] == [s["response"] for s in samples]
    direct = LomoTransform(cfg, online=False)(samples[0], 0)  # the shard writer's (offline) engine
    assert _reassemble(records[0]["segments"]) == samples[0]["prompt"]
    img_direct = next(s["image"] for s in direct["segments"] if s["type"] == "image")
    img_shard = next(s["image"] for s in records[0]["segments"] if s["type"] == "image")
    assert img_shard.convert("RGB").tobytes() == img_direct.tobytes()
    assert "segments" not in records[3]

    import webdataset as wds

    first = next(iter(wds.WebDataset(str(paths[0]), shardshuffle=False)))
    assert first["__key__"] == "000000000" and "json" in first and "img0.png" in first
    assert Image.open(io.BytesIO(first["img0.png"])).size == img_direct.size


def test_failed_write_leaves_no_partial_shard(tmp_path: Path) -> None:
    def broken():
        yield {"prompt": LONG, "response": "a"}
        yield {"prompt": LONG, "response": "b"}
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        write_rendered_shards(broken(), tmp_path, LomoConfig(rewrite_ratio=1.0), samples_per_shard=10)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# Rendered evaluation
# --------------------------------------------------------------------------------------------------


def test_rendered_question_segments() -> None:
    question = "Which shape has more corners, a triangle or a square? Answer with one word."
    original = Image.new("RGB", (32, 32), "red")
    segs = rendered_question_segments(question, original)
    assert [s["type"] for s in segs] == ["image", "image"]
    assert segs[0]["image"] is original and segs[1]["source"] == question and segs[1]["image"].mode == "RGB"
    sample = {"question": question, "image": original, "answer": "square"}
    out = rendered_eval_sample(sample)
    assert out["answer"] == "square" and len(out["segments"]) == 2
    assert render_question(question).tobytes() == segs[1]["image"].tobytes()  # deterministic, undistorted
    assert len(rendered_question_segments(question)) == 1
    with pytest.raises(ConfigError):
        rendered_eval_sample({"prompt": question})


def test_rendered_gap_table() -> None:
    standard = {"MMMU": 51.78, "DocVQA": 73.06, "OCR": 40.0}
    table = rendered_gap_table(standard, {"MMMU": 21.22, "DocVQA": 15.38, "V*": 8.1})
    assert table.splitlines() == [
        "| Benchmark | Standard | Rendered | Gap |",
        "|---|---:|---:|---:|",
        "| MMMU | 51.78 | 21.22 | -30.56 |",
        "| DocVQA | 73.06 | 15.38 | -57.68 |",
        "| OCR | 40.00 | – | – |",
        "| V* | – | 8.10 | – |",
        "| **Average** (2) | 62.42 | 18.30 | -44.12 |",  # averages over the benchmarks in both
    ]
