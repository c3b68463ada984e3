"""Per-sample scoring functions for the paper's academic benchmarks (Tables 1-5).

Every metric follows the benchmark's official evaluation code, because numbers are only comparable with
published ones when the answer normalisation matches to the character. Each function's docstring names the
official source it follows and lists any deliberate difference. The official scripts were read for
reference only; nothing here is copied from them.

The functions score ONE sample and return a float in [0, 1]; `aggregate` turns a list of sample scores into
the benchmark score, and `score_benchmark` does both for a benchmark by name, using the uniform records
yielded by `vlmlab.data.benchmarks` (`answers` for open-ended sets, `options` + `answer` for
multiple-choice sets).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from vlmlab.errors import ConfigError, unknown_choice

__all__ = [
    "METRICS",
    "aggregate",
    "anls",
    "aokvqa_accuracy",
    "extract_choice",
    "get_metric",
    "levenshtein",
    "mathvista_free_form",
    "relaxed_accuracy",
    "score_benchmark",
    "score_multiple_choice",
    "vqa_accuracy",
    "vqa_normalize",
]

# ---------------------------------------------------------------------------------------------------------
# VQA answer normalisation (VQAv2 / TextVQA)
# ---------------------------------------------------------------------------------------------------------

# Contractions written without an apostrophe, mapped to the spelling the VQA annotations use. The table is
# the one published with the VQA evaluation tools (GT-Vision-Lab/VQA, vqaEval.py), with its odd entries kept
# (e.g. "somebody'd" -> "somebodyd") because they are part of the definition.
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip

# Number words -> digits ("manual map"); only zero..ten, and "none" counts as 0, as in the official tools.
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
# Characters that are deleted (when touching a space, or anywhere once the text holds a digit-comma-digit)
# or else replaced by a space. Note: no period, colon or apostrophe -- periods have their own rule.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                ",", "?", "!")  # fmt: skip
# A period is removed unless a digit follows it, so "3.5" keeps its decimal point while "yes." and a
# trailing "3.5." lose theirs. (The official pattern starts with a malformed look-behind, "(?!<=\d)",
# which never fires; the effective rule is just "period not followed by a digit".)
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")


def _process_punctuation(text: str) -> str:
    """The official `processPunctuation`: strip or space out punctuation, then drop non-decimal periods."""
    has_digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        # The test looks at the *input* text, as the official code does, not at the partially edited one.
        if mark + " " in text or " " + mark in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    # The official call passes re.UNICODE (= 32) positionally, i.e. as `count`: at most 32 periods go.
    return _PERIOD_STRIP.sub("", out, count=32)


def _process_digit_article(text: str) -> str:
    """The official `processDigitArticle`: lowercase, number words -> digits, drop articles, contractions."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES]
    return " ".join(words)


def vqa_normalize(text: str, *, evalai: bool = True) -> str:
    """Normalise a VQA answer the way the official evaluation does before comparing strings.

    With `evalai=True` (default) this is the EvalAI answer processor that scores VQAv2 test-dev on the
    challenge server and TextVQA (`EvalAIAnswerProcessor` in facebookresearch/mmf `m4c_evaluators.py`):
    lowercase, delete every ',' and '?', split "'s" off ("man's" -> "man 's"), newlines/tabs -> spaces,
    then the punctuation rule, number words -> digits, articles removed, contractions restored. With
    `evalai=False` it is the GT-Vision-Lab/VQA `vqaEval.py` pair `processPunctuation` + `processDigitArticle`
    only (no comma/question-mark/"'s" pre-pass), used by `vqa_accuracy(..., always_normalize=False)`.

    Worked examples: "1,000" -> "1000"; "3.5" -> "3.5"; "Two." -> "2"; "The dog" -> "dog"; "dont" -> "don't".
    """
    if evalai:
        text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def _leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Mean over the n leave-one-out subsets of the human answers of min(1, #matches / 3).

    Fewer than 10 answers (a documented choice; the official code assumes 10): with n >= 4 answers the same
    leave-one-out formula is used, which stays well defined and can still reach 1.0; with 1 <= n <= 3 a
    subset of n - 1 answers could never hold 3 matches, so the score is the matched fraction min(1, m / n)
    (one answer -> exact match).
    """
    n = len(answers)
    matches = sum(answer == prediction for answer in answers)
    if n <= 3:
        return min(1.0, matches / n)
    total = 0.0
    for left_out in range(n):
        others = matches - (answers[left_out] == prediction)
        total += min(1.0, others / 3.0)
    return total / n


def vqa_accuracy(prediction: str, answers: Sequence[str], *, always_normalize: bool = True) -> float:
    """VQAv2 / TextVQA accuracy of one prediction against the (usually ten) human answers.

    Source: GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py` (the accuracy formula and
    normalisation tables) and facebookresearch/mmf `mmf/utils/m4c_evaluators.py` (`TextVQAAccuracyEvaluator`,
    the official TextVQA evaluator, whose `EvalAIAnswerProcessor` mirrors the EvalAI challenge server).

    accuracy = mean over the leave-one-out subsets (drop one human answer at a time) of min(1, #humans in the
    subset who gave the prediction / 3). With ten answers: 1 match -> 0.3, 2 -> 0.6, 3 -> 0.9, 4+ -> 1.0.

    Deliberate choices:
      * Default (`always_normalize=True`): the prediction and every human answer go through
        `vqa_normalize(evalai=True)`, as the TextVQA evaluator and the EvalAI server do.
        `always_normalize=False` reproduces the GitHub `vqaEval.py` exactly: it normalises (without the EvalAI
        pre-pass) only when the humans disagree, so "Yes" against ten "yes" scores 0 there.
      * Fewer than ten answers: see `_leave_one_out_accuracy` (n >= 4 leave-one-out, n <= 3 matched fraction).
      * No answers at all (e.g. VQAv2 test-dev, scored only on the server) raises ValueError rather than
        returning a misleading 0.
    """
    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise ValueError(
            "vqa_accuracy needs at least one human answer (test splits are scored on the server)."
        )
    if always_normalize:
        pred = vqa_normalize(prediction)
        refs = [vqa_normalize(answer) for answer in answers]
    else:
        pred = prediction.replace("\n", " ").replace("\t", " ").strip()
        refs = [answer.replace("\n", " ").replace("\t", " ").strip() for answer in answers]
        if len(set(refs)) > 1:
            pred = vqa_normalize(pred, evalai=False)
            refs = [vqa_normalize(answer, evalai=False) for answer in refs]
    return _leave_one_out_accuracy(pred, refs)


def aokvqa_accuracy(prediction: str, answers: Sequence[str], *, normalize: bool = False) -> float:
    """A-OKVQA direct-answer accuracy: min(1, #direct answers equal to the prediction / 3).

    Source: allenai/aokvqa `evaluation/eval_predictions.py` (`eval_aokvqa`, direct-answer branch).
    How it differs from VQAv2:
      * no leave-one-out averaging: 1 match -> 1/3, 2 -> 2/3, 3+ -> 1.0 (VQAv2 gives 0.3 / 0.6 / 0.9);
      * no normalisation at all: plain `==` on the strings, so "Cab", "cab." and " cab" do not match "cab"
        (the released direct answers are already lowercase and clean).
    `normalize=True` is an opt-in deviation that applies `vqa_normalize` to both sides, as several VLM
    evaluation harnesses do for free-form generations; the default is the official behaviour.
    """
    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise ValueError("aokvqa_accuracy needs the list of direct answers.")
    if normalize:
        prediction = vqa_normalize(prediction)
        answers = [vqa_normalize(answer) for answer in answers]
    matches = sum(prediction == answer for answer in answers)
    return min(1.0, matches / 3.0)


# ---------------------------------------------------------------------------------------------------------
# DocVQA: ANLS
# ---------------------------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1), two-row dynamic programme."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: Sequence[str] | str, threshold: float = 0.5) -> float:
    """DocVQA Average Normalized Levenshtein Similarity of one prediction (the per-question term).

    Source: the Robust Reading Competition DocVQA evaluation script (rrc.cvc.uab.es, Task 1 "evaluate_method";
    also the ANLS definition of Biten et al., ICCV 2019, eq. 1):
      * both strings are compared after `" ".join(s.strip().lower().split())` (case-insensitive, runs of
        whitespace collapsed);
      * NL = edit distance / max(len(answer), len(prediction)) with the lengths of the *raw* strings (the
        official script measures `len(s.upper())` of the un-normalised text; kept as is), 0 if both empty;
      * score = 1 - min over answers of NL, set to 0 when it falls below `threshold` (so exactly 0.5 is kept).
    Example: "12/15/89" vs "12/15/88" -> 1 - 1/8 = 0.875; "Denver" vs "Denver Broncos" -> 1 - 8/14 < 0.5 -> 0.
    """
    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise ValueError("anls needs at least one ground-truth answer.")
    pred_norm = " ".join(prediction.strip().lower().split())
    distances = []
    for answer in answers:
        gt_norm = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(prediction.upper()))
        distances.append(0.0 if length == 0 else levenshtein(gt_norm, pred_norm) / length)
    score = 1.0 - min(distances)
    return 0.0 if score < threshold else score


# ---------------------------------------------------------------------------------------------------------
# ChartQA: relaxed accuracy
# ---------------------------------------------------------------------------------------------------------


def _to_float(text: str) -> float | None:
    """Parse a number; a trailing '%' divides by 100 ("45%" -> 0.45), as the reference code does."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, target: str | Sequence[str], tolerance: float = 0.05) -> float:
    """ChartQA relaxed accuracy: numbers within `tolerance` relative error of the target, else exact match.

    Source: the ChartQA paper (Masry et al., 2022, sec. 5.1, following Methani et al. 2020); vis-nlp/ChartQA
    ships no scorer, so the reference implementation is google-research/pix2struct `pix2struct/metrics.py`
    (`relaxed_correctness`), which the ChartQA numbers of later VLM papers use. Its rules, kept here:
      * a string ending in '%' is a number divided by 100: "45%" == "0.45", but "45%" != "45";
      * numeric comparison only when both parse as floats AND the target is non-zero:
        |pred - target| / |target| <= tolerance (5% by default);
      * otherwise (text answers, or a zero target) case-insensitive exact string match, so for target "0"
        the prediction "0" is right and "0.0" is wrong.
    Deliberate differences: surrounding whitespace is stripped from both strings first (generations often
    end in a newline; the reference callers strip the prediction too), and a list of targets (the Hugging
    Face copy stores `label` as a list) scores the best match.
    """
    targets = [target] if isinstance(target, str) else list(target)
    if not targets:
        raise ValueError("relaxed_accuracy needs a target answer.")
    pred = prediction.strip()
    pred_float = _to_float(pred)
    best = 0.0
    for item in targets:
        tgt = str(item).strip()
        tgt_float = _to_float(tgt)
        if pred_float is not None and tgt_float:
            correct = abs(pred_float - tgt_float) / abs(tgt_float) <= tolerance
        else:
            correct = pred.lower() == tgt.lower()
        best = max(best, float(correct))
    return best


# ---------------------------------------------------------------------------------------------------------
# Multiple choice (MathVista, MMT-Bench, RealWorldQA, MMMU-style)
# ---------------------------------------------------------------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# "answer is (B)", "Answer: B", "final answer: [d]"; then "correct option is C", "choice (b)".
_LABEL = r"(?:\(\s*([A-Za-z])\s*\)|\[\s*([A-Za-z])\s*\]|([A-Z])(?![A-Za-z0-9]))"
_EXPLICIT_ANSWER = re.compile(r"(?i:answer)\s*(?i:is)?\s*[:：=]?\s*(?:(?i:option|choice)\s*)?" + _LABEL)
_EXPLICIT_OPTION = re.compile(r"(?i:option|choice)\s*(?i:is)?\s*[:：=]?\s*" + _LABEL)
_ONLY_LETTER = re.compile(r"^[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*[.:)]?$")
_LEADING_LETTER = re.compile(r"^[\(\[]?([A-Z])[\)\].:]\s")
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'])[\(\[]?([A-Z])[\)\]]?(?![A-Za-z0-9'])")
_WORD_AFTER = re.compile(r"\s+[a-z]")


def _option_map(options: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    if isinstance(options, Mapping):
        mapping = {str(key).strip().upper(): str(value) for key, value in options.items()}
    else:
        if len(options) > len(_LETTERS):
            raise ValueError(f"At most {len(_LETTERS)} options are supported, got {len(options)}.")
        mapping = {_LETTERS[i]: str(text) for i, text in enumerate(options)}
    if not mapping:
        raise ValueError("extract_choice needs at least one option.")
    return mapping


def _is_prose_letter(text: str, match: re.Match[str]) -> bool:
    """'A' or 'I' used as an English word ("A man is ...", "I think ...") rather than as an option label."""
    letter = match.group(match.lastindex or 1)
    bracketed = text[match.start()] in "([" or text[match.end() - 1] in ")]"
    return letter in "AI" and not bracketed and _WORD_AFTER.match(text, match.end()) is not None


def _normalise_text(text: str) -> str:
    return " ".join(re.sub(r"[^\w%°.\-/ ]+", " ", text.lower()).split()).strip(" .")


def extract_choice(response: str, options: Sequence[str] | Mapping[str, str]) -> str | None:
    """The option letter a free-form response picks, or None when no single option can be identified.

    Rule-based, in this order (first rule that yields exactly one valid letter wins):
      1. an explicit statement: "answer is (B)", "Answer: B" (last one wins), else "the correct option is C";
      2. the whole response is a letter: "B", "(b)", "B.", "B)";
      3. the response starts with a label: "B. 145°", "(B) 145°";
      4. exactly one distinct capital letter standing alone ("I'd pick B here"), ignoring the words "A"/"I"
         ("A man ...", "I think ...");
      5. the option text: the response equals one option, or contains exactly one option as a whole phrase
         (case/punctuation-insensitive; an option contained in another matched option is discarded).
    Letters outside the given options are ignored. Options are a list (labelled A, B, ...) or a mapping
    letter -> text (MMT-Bench columns).

    Source: this follows the approach of the official multiple-choice scorers (MathVista `extract_answer` /
    `normalize_extracted_answer`, MMBench/VLMEvalKit `can_infer_option` + `can_infer_text`) without their
    LLM-based fallback. Deliberate difference: where MathVista maps any unmatched text to the most similar
    option (Levenshtein), this returns None, so a free-form answer with no letter never counts as a guess.
    """
    mapping = _option_map(options)
    text = response.strip()
    if not text:
        return None

    # "answer ..." statements outrank "option ..." ones ("option C is wrong, so the answer is B"); within a
    # tier the last statement wins, as chain-of-thought responses end with their final answer.
    for pattern in (_EXPLICIT_ANSWER, _EXPLICIT_OPTION):
        for match in reversed(list(pattern.finditer(text))):
            if match.group(3) and _is_prose_letter(text, match):
                continue
            letter = next(group for group in match.groups() if group).upper()
            if letter in mapping:
                return letter

    for pattern in (_ONLY_LETTER, _LEADING_LETTER):
        match = pattern.match(text)
        if match and match.group(1).upper() in mapping:
            return match.group(1).upper()

    standalone = {
        m.group(1)
        for m in _STANDALONE.finditer(text)
        if m.group(1) in mapping and not _is_prose_letter(text, m)
    }
    if len(standalone) == 1:
        return standalone.pop()

    response_norm = _normalise_text(text)
    normalised = {letter: _normalise_text(option) for letter, option in mapping.items()}
    exact = [letter for letter, option in normalised.items() if option and option == response_norm]
    if len(exact) == 1:
        return exact[0]
    contained = [
        letter
        for letter, option in normalised.items()
        if option and re.search(rf"(?<!\w){re.escape(option)}(?!\w)", response_norm)
    ]
    contained = [
        letter
        for letter in contained
        if not any(other != letter and normalised[letter] in normalised[other] for other in contained)
    ]
    if len(contained) == 1:
        return contained[0]
    return None


def _answer_letter(answer: str, mapping: Mapping[str, str]) -> str | None:
    """The gold letter, accepting either a letter or the option text as the stored answer."""
    candidate = answer.strip()
    if candidate.upper() in mapping and len(candidate) == 1:
        return candidate.upper()
    matches = [
        letter for letter, text in mapping.items() if _normalise_text(text) == _normalise_text(candidate)
    ]
    return matches[0] if len(matches) == 1 else None


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")


def mathvista_free_form(
    prediction: str, answer: str, answer_type: str = "text", precision: int | None = None
) -> float:
    """MathVista free-form accuracy: normalise the prediction by answer type, then compare as strings.

    Source: lupantech/MathVista `evaluation/calculate_score.py` (`normalize_extracted_answer`, `safe_equal`):
    integer -> str(int(float(x))); float -> round(float(x), precision); list/text -> the string itself.
    (Floats are compared as rounded numbers rather than as strings, so a gold "1.50" matches "1.5".)
    Deliberate difference: MathVista first asks an LLM to extract the answer from the response; here the
    last number in the response is taken for numeric types, and the stripped response (case-insensitive)
    for text, so verbose responses with several numbers can be mis-extracted.
    """
    answer = str(answer).strip()
    if answer_type in ("integer", "float"):
        numbers = _NUMBER.findall(prediction.replace("−", "-"))
        if not numbers:
            return 0.0
        try:
            value = float(numbers[-1].replace(",", ""))
            if answer_type == "integer":
                return float(str(int(value)) == str(int(float(answer))))
            digits = int(precision) if precision is not None else 1
            return float(round(value, digits) == round(float(answer), digits))
        except ValueError:
            return 0.0
    return float(prediction.strip().strip(".").lower() == answer.lower())


def score_multiple_choice(prediction: str, sample: Mapping[str, Any]) -> float:
    """Score a MathVista / MMT-Bench / RealWorldQA record: letter extraction for multiple-choice items,
    `mathvista_free_form` (numbers) or VQA-normalised exact match (text) for the free-form ones."""
    options = sample.get("options")
    if options:
        mapping = _option_map(options)
        gold = _answer_letter(str(sample.get("answer", "")), mapping)
        if gold is None:
            raise ValueError(
                f"Sample {sample.get('id')!r}: answer {sample.get('answer')!r} is not an option."
            )
        return float(extract_choice(prediction, mapping) == gold)
    meta = sample.get("meta") or {}
    answers = sample.get("answers") or ([sample["answer"]] if sample.get("answer") is not None else [])
    if not answers:
        raise ValueError(f"Sample {sample.get('id')!r} has neither options nor answers.")
    answer_type = meta.get("answer_type", "text")
    if answer_type in ("integer", "float"):
        return max(mathvista_free_form(prediction, a, answer_type, meta.get("precision")) for a in answers)
    return float(vqa_normalize(prediction) in {vqa_normalize(str(a)) for a in answers})


# ---------------------------------------------------------------------------------------------------------
# Registry and aggregation
# ---------------------------------------------------------------------------------------------------------

SampleMetric = Callable[[str, Mapping[str, Any]], float]

# Benchmark name -> fn(prediction, record) -> score in [0, 1]; records are the uniform ones yielded by
# `vlmlab.data.benchmarks` ("answers" for open-ended sets; "options" + "answer" for multiple choice).
METRICS: dict[str, SampleMetric] = {
    "vqav2": lambda prediction, sample: vqa_accuracy(prediction, sample["answers"]),
    "textvqa": lambda prediction, sample: vqa_accuracy(prediction, sample["answers"]),
    "aokvqa": lambda prediction, sample: aokvqa_accuracy(prediction, sample["answers"]),
    "docvqa": lambda prediction, sample: anls(prediction, sample["answers"]),
    "chartqa": lambda prediction, sample: relaxed_accuracy(prediction, sample["answers"]),
    "mathvista": score_multiple_choice,
    "mmtbench": score_multiple_choice,
    "realworldqa": score_multiple_choice,
}


def get_metric(benchmark: str) -> SampleMetric:
    """The per-sample scorer of `benchmark`; unknown names raise ConfigError listing the known ones."""
    try:
        return METRICS[benchmark]
    except KeyError:
        raise unknown_choice("benchmark", benchmark, METRICS) from None


def aggregate(scores: Iterable[float]) -> float | None:
    """Mean of per-sample scores (the benchmark score in [0, 1]); None when there is nothing to average,
    so an empty evaluation shows up as a gap rather than as 0. NaN scores are an error, not skipped."""
    values = list(scores)
    if not values:
        return None
    if any(math.isnan(value) for value in values):
        raise ValueError("aggregate got a NaN score.")
    return sum(values) / len(values)


def score_benchmark(
    benchmark: str, predictions: Mapping[str, str], samples: Iterable[Mapping[str, Any]]
) -> float | None:
    """Score a benchmark from `{sample id: prediction}` and its records.

    A record without a prediction counts as wrong (0), as the official A-OKVQA script does in non-strict
    mode, so a partial generation run cannot inflate the score. Records without references (e.g. test-dev)
    raise, because they cannot be scored locally.
    """
    metric = get_metric(benchmark)
    scores = []
    for sample in samples:
        prediction = predictions.get(str(sample["id"]))
        scores.append(0.0 if prediction is None else metric(prediction, sample))
    if not scores:
        raise ConfigError(f"No {benchmark} samples to score.")
    return aggregate(scores)
