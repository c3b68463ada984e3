"""Hand-worked cases for the per-sample metrics; each expected value is derived in the comment next to it.

Truth is the official evaluation code (GT-Vision-Lab/VQA vqaEval.py, mmf m4c_evaluators.py for TextVQA and
the EvalAI processor, allenai/aokvqa eval_predictions.py, the RRC DocVQA ANLS script, pix2struct's
relaxed_correctness for ChartQA).
"""

from __future__ import annotations

import pytest

from vlmlab.errors import ConfigError
from vlmlab.scoring.metrics import (
    METRICS,
    aggregate,
    anls,
    aokvqa_accuracy,
    extract_choice,
    get_metric,
    levenshtein,
    mathvista_free_form,
    relaxed_accuracy,
    score_benchmark,
    score_multiple_choice,
    vqa_accuracy,
    vqa_normalize,
)


def ten(*answers: str, filler: str = "other") -> list[str]:
    """Ten human answers: the given ones, then `filler`."""
    return [*answers, *[filler] * (10 - len(answers))]


# --------------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1,000", "1000"),  # comma between digits: all punctuation deleted, not spaced
        ("3.5", "3.5"),  # period followed by a digit is kept
        ("3.5.", "3.5"),  # trailing period removed, decimal point kept
        ("yes.", "yes"),
        ("Two.", "2"),  # lowercase, period stripped, number word -> digit
        ("none", "0"),  # "none" counts as zero in the manual map
        ("The dog", "dog"),  # articles removed
        ("An apple", "apple"),
        ("dont", "don't"),  # contraction map
        ("red-white", "red white"),  # '-' not touching a space -> replaced by a space
        ("red - white", "red white"),  # '-' touching a space -> deleted; whitespace collapses
        ("man's hat", "man 's hat"),  # EvalAI pre-pass splits "'s"
        ("What?", "what"),
        ("  Yes\n", "yes"),
    ],
)
def test_vqa_normalize_evalai(raw: str, expected: str) -> None:
    assert vqa_normalize(raw) == expected


def test_vqa_normalize_github_variant_differs_only_in_the_pre_pass() -> None:
    # GitHub vqaEval.py: "1,000-2,000" holds digit-comma-digit, so every punctuation mark is deleted: "10002000".
    assert vqa_normalize("1,000-2,000", evalai=False) == "10002000"
    # EvalAI deletes commas first ("1000-2000"), so the digit-comma rule no longer fires and '-' becomes a space.
    assert vqa_normalize("1,000-2,000") == "1000 2000"
    assert vqa_normalize("man's hat", evalai=False) == "man's hat"


# ------------------------------------------------------------------------------------------- VQA accuracy


def test_vqa_accuracy_leave_one_out_steps() -> None:
    # m matching humans out of 10: mean over the 10 leave-one-out subsets of min(1, matches_in_subset / 3).
    # m=1: 1 subset drops the match (0/3), 9 keep it (1/3): 9 * (1/3) / 10 = 0.3
    assert vqa_accuracy("cat", ten("cat")) == pytest.approx(0.3)
    # m=2: 2 subsets hold 1 match (1/3), 8 hold 2 (2/3): (2/3 + 16/3) / 10 = 0.6
    assert vqa_accuracy("cat", ten("cat", "cat")) == pytest.approx(0.6)
    # m=3: 3 subsets hold 2 (2/3), 7 hold 3 (1): (2 + 7) / 10 = 0.9
    assert vqa_accuracy("cat", ten("cat", "cat", "cat")) == pytest.approx(0.9)
    # m=4: every subset holds >= 3 matches -> 1.0
    assert vqa_accuracy("cat", ten("cat", "cat", "cat", "cat")) == pytest.approx(1.0)
    assert vqa_accuracy("cat", ten()) == 0.0


def test_vqa_accuracy_numbers_articles_and_punctuation() -> None:
    # "two" -> "2" on both sides; one human said "2": 0.3 (as above)
    assert vqa_accuracy("two", ten("2", filler="3")) == pytest.approx(0.3)
    # "Two." -> "2"; three humans said "2": 0.9
    assert vqa_accuracy("Two.", ten("2", "2", "2", filler="3")) == pytest.approx(0.9)
    # "1,000" -> "1000"; three humans "1000", seven "100": 0.9
    assert vqa_accuracy("1,000", ten("1000", "1000", "1000", filler="100")) == pytest.approx(0.9)
    # "3.5." -> "3.5" (decimal point kept) matches four "3.5" answers: 1.0; but it is not "35"
    assert vqa_accuracy("3.5.", ten("3.5", "3.5", "3.5", "3.5", filler="35")) == pytest.approx(1.0)
    assert vqa_accuracy("3.5", ["35"] * 10) == 0.0
    # "the red car" -> "red car"; two humans: 0.6
    assert vqa_accuracy("the red car", ten("red car", "red car", filler="blue car")) == pytest.approx(0.6)
    # contraction restored: "dont" -> "don't"
    assert vqa_accuracy("dont", ["don't"] * 10) == pytest.approx(1.0)


def test_vqa_accuracy_empty_prediction_scores_zero() -> None:
    assert vqa_accuracy("", ["yes"] * 10) == 0.0
    assert vqa_accuracy("   ", ["yes"] * 10) == 0.0


def test_vqa_accuracy_github_script_skips_normalisation_when_humans_agree() -> None:
    # Default (EvalAI/TextVQA): "Yes!" -> "yes" matches all ten -> 1.0.
    assert vqa_accuracy("Yes!", ["yes"] * 10) == pytest.approx(1.0)
    # GitHub vqaEval.py: all ten humans agree, so nothing is normalised and "Yes!" != "yes" -> 0.0.
    assert vqa_accuracy("Yes!", ["yes"] * 10, always_normalize=False) == 0.0
    # With disagreeing humans it normalises: "Yes!" -> "yes", 4 matches -> 1.0.
    assert vqa_accuracy("Yes!", ten("yes", "yes", "yes", "yes", filler="no"), always_normalize=False) == 1.0


def test_vqa_accuracy_fewer_than_ten_answers() -> None:
    # n=1: exact match.
    assert vqa_accuracy("cat", ["cat"]) == 1.0
    # n=2 (<= 3): matched fraction 1/2.
    assert vqa_accuracy("cat", ["cat", "dog"]) == pytest.approx(0.5)
    # n=5 (>= 4): leave-one-out; m=2: 2 subsets hold 1 (1/3), 3 hold 2 (2/3): (2/3 + 2) / 5 = 0.5333
    assert vqa_accuracy("cat", ["cat", "cat", "dog", "dog", "dog"]) == pytest.approx(8 / 15)
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("cat", [])


# ----------------------------------------------------------------------------------------------- A-OKVQA


def test_aokvqa_no_leave_one_out_and_no_normalisation() -> None:
    # min(1, matches / 3) over all ten direct answers: 1 match -> 1/3 (VQAv2 would give 0.3) ...
    assert aokvqa_accuracy("cab", ten("cab", filler="taxi")) == pytest.approx(1 / 3)
    assert vqa_accuracy("cab", ten("cab", filler="taxi")) == pytest.approx(0.3)
    # ... 3 matches -> 1.0 (VQAv2: 0.9)
    assert aokvqa_accuracy("cab", ten("cab", "cab", "cab", filler="taxi")) == 1.0
    # plain string equality: case, punctuation and whitespace matter
    assert aokvqa_accuracy("Cab", ["cab"] * 10) == 0.0
    assert aokvqa_accuracy("cab.", ["cab"] * 10) == 0.0
    assert aokvqa_accuracy(" cab", ["cab"] * 10) == 0.0
    assert aokvqa_accuracy("", ["cab"] * 10) == 0.0
    # opt-in normalisation: "Cab." -> "cab"
    assert aokvqa_accuracy("Cab.", ["cab"] * 10, normalize=True) == 1.0


# -------------------------------------------------------------------------------------------------- ANLS


def test_levenshtein() -> None:
    assert levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert levenshtein("", "abc") == 3
    assert levenshtein("same", "same") == 0


def test_anls_official_cases() -> None:
    # case-insensitive: "Dear dr. Lobo" == "dear dr. lobo" -> 1.0 (max over the answers)
    assert anls("Dear dr. Lobo", ["Dear Dr. Lobo", "Dr. Lobo"]) == 1.0
    # one substitution in 8 characters: 1 - 1/8 = 0.875
    assert anls("12/15/89", ["12/15/88"]) == pytest.approx(0.875)
    # "Denver" vs "Denver Broncos": 8 deletions / 14 -> similarity 0.43 < 0.5 -> 0
    assert anls("Denver", ["Denver Broncos"]) == 0.0
    # exactly at the threshold is kept: 2 edits / 4 -> 0.5
    assert anls("ab", ["abcd"]) == pytest.approx(0.5)
    # 4 edits / 7 -> 0.43 -> 0
    assert anls("abc", ["abcdefg"]) == 0.0
    # empty prediction: distance 3 / 3 -> similarity 0
    assert anls("", ["abc"]) == 0.0
    # both empty: NL defined as 0 -> 1.0
    assert anls("", [""]) == 1.0


def test_anls_whitespace_rules() -> None:
    # runs of whitespace collapse and ends are stripped before the distance: exact match
    assert anls("  New   York ", ["new york"]) == 1.0
    # ... but the official denominator uses the raw lengths: "ab   " (5 chars) vs "abcd":
    # distance("ab", "abcd") = 2, max(len) = 5 -> 1 - 2/5 = 0.6
    assert anls("ab   ", ["abcd"]) == pytest.approx(0.6)
    # custom threshold
    assert anls("12/15/89", "12/15/88", threshold=0.9) == 0.0


# -------------------------------------------------------------------------------------- relaxed accuracy


@pytest.mark.parametrize(
    ("prediction", "target", "expected"),
    [
        ("104", "100", 1.0),  # 4% off
        ("95", "100", 1.0),  # exactly 5% off is still correct (<=)
        ("106", "100", 0.0),  # 6% off
        ("-10", "-10.4", 1.0),  # |0.4| / 10.4 = 3.8%
        ("45%", "0.45", 1.0),  # '%' divides by 100: 0.45 vs 0.45
        ("45%", "45%", 1.0),
        ("45%", "45", 0.0),  # 0.45 vs 45 (the reference code's rule, kept)
        ("45", "45%", 0.0),
        ("0", "0", 1.0),  # zero target: no relative error, exact string match
        ("0.0", "0", 0.0),
        ("0.01", "0", 0.0),
        ("Yes", "yes", 1.0),  # text: case-insensitive exact match
        ("yes.", "yes", 0.0),
        (" 12 \n", "12", 1.0),  # whitespace stripped (deliberate)
        ("1,000", "1000", 0.0),  # "1,000" is not a float -> string comparison fails
        ("", "12", 0.0),
    ],
)
def test_relaxed_accuracy(prediction: str, target: str, expected: float) -> None:
    assert relaxed_accuracy(prediction, target) == expected


def test_relaxed_accuracy_list_and_tolerance() -> None:
    assert relaxed_accuracy("b", ["a", "b"]) == 1.0
    assert relaxed_accuracy("104", "100", tolerance=0.01) == 0.0


# -------------------------------------------------------------------------------------- multiple choice

OPTIONS = ["red", "blue", "green", "light green"]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("B", "B"),
        ("(b)", "B"),
        ("B.", "B"),
        ("The answer is (C).", "C"),
        ("Answer: D", "D"),
        ("I think it is B.", "B"),  # lone capital letter; "I" is a pronoun
        ("Option C is wrong, so the answer is B", "B"),  # "answer" statements outrank "option" ones
        ("D. light green", "D"),
        ("light green", "D"),  # option text; "green" is inside "light green" and is discarded
        ("It is green.", "C"),
        ("The car is parked next to the building.", None),  # free-form answer, no letter, no option text
        ("A man is walking.", None),  # "A" is the article, not option A
        ("B or C", None),  # ambiguous
        ("E", None),  # not an option
        ("", None),
    ],
)
def test_extract_choice(response: str, expected: str | None) -> None:
    assert extract_choice(response, OPTIONS) == expected


def test_extract_choice_mapping_and_symbols() -> None:
    assert extract_choice("dog", {"A": "cat", "b": "dog"}) == "B"
    assert extract_choice("B. 145°", ["135°", "145°", "155°"]) == "B"
    assert extract_choice("The angle is 155°.", ["135°", "145°", "155°"]) == "C"
    with pytest.raises(ValueError):
        extract_choice("A", [])


def test_score_multiple_choice_and_free_form() -> None:
    sample = {"id": "1", "options": ["cat", "dog"], "answer": "B"}
    assert score_multiple_choice("(B) dog", sample) == 1.0
    assert score_multiple_choice("cat", sample) == 0.0
    assert score_multiple_choice("It is hard to tell.", sample) == 0.0  # None never matches
    # gold stored as the option text is accepted too
    assert score_multiple_choice("B", {"id": "2", "options": ["cat", "dog"], "answer": "dog"}) == 1.0
    # MathVista free-form: integer -> last number; float -> rounded to `precision`
    integer = {"id": "3", "answers": ["12"], "meta": {"answer_type": "integer"}}
    assert score_multiple_choice("There are 3 rows, so the answer is 12.", integer) == 1.0
    assert mathvista_free_form("3.14159", "3.14", "float", 2) == 1.0  # round(3.14159, 2) = 3.14
    assert mathvista_free_form("3.2", "3.14", "float", 2) == 0.0
    assert mathvista_free_form("about 1,234 units", "1234", "integer") == 1.0
    assert mathvista_free_form("no number", "5", "integer") == 0.0
    # text free-form (RealWorldQA): VQA-normalised exact match
    assert score_multiple_choice("Yes.", {"id": "4", "answers": ["yes"]}) == 1.0


# ------------------------------------------------------------------------------------ registry, aggregate


def test_registry_covers_the_paper_benchmarks() -> None:
    expected = {"vqav2", "textvqa", "aokvqa", "docvqa", "chartqa", "mathvista", "mmtbench", "realworldqa"}
    assert set(METRICS) == expected
    assert METRICS["docvqa"]("12/15/89", {"answers": ["12/15/88"]}) == pytest.approx(0.875)
    assert METRICS["chartqa"]("45%", {"answers": ["0.45"]}) == 1.0
    with pytest.raises(ConfigError, match="vqav2"):
        get_metric("vqa2")


def test_aggregate_and_score_benchmark() -> None:
    assert aggregate([1.0, 0.0, 0.5]) == pytest.approx(0.5)
    assert aggregate([]) is None
    samples = [
        {"id": "a", "answers": ["yes"] * 10},
        {"id": "b", "answers": ten("2", "2", "2")},
        {"id": "c", "answers": ["no"] * 10},
    ]
    # a: 1.0, b: "two" -> 0.9, c: no prediction -> 0 (counted as wrong): (1 + 0.9 + 0) / 3
    score = score_benchmark("vqav2", {"a": "Yes", "b": "two"}, samples)
    assert score == pytest.approx(1.9 / 3)
    with pytest.raises(ConfigError):
        score_benchmark("vqav2", {}, [])
