"""Table-driven tests of answer extraction (the final answer wins, never a guess) and of the bootstraps."""

from __future__ import annotations

import numpy as np
import pytest

from vision_opd.eval.answers import (
    EXTRACTION_RULE,
    bootstrap_ci,
    extract_choice,
    extract_open,
    extract_yes_no,
    paired_bootstrap_ci,
    score_choice,
    score_open,
    score_yes_no,
    strip_reasoning,
)

ABCD = ["red", "blue", "green", "black"]
AB = ["left", "right"]
ABCDE = ["458", "457", "459", "456", "This image doesn't feature the data."]

CHOICE_CASES = [
    # plain forms
    ("B", ABCD, "B"),
    ("B.", ABCD, "B"),
    ("(C)", ABCD, "C"),
    ("c", ABCD, "C"),
    (" d \n", ABCD, "D"),
    ("**B**", ABCD, "B"),
    ("[D]", ABCD, "D"),
    ("B. blue", ABCD, "B"),
    ("(B) blue", ABCD, "B"),
    ("C) green", ABCD, "C"),
    ("Ｃ", ABCD, "C"),  # full-width letter
    # explicit statements
    ("Answer: B", ABCD, "B"),  # the reference code reads this as A
    ("ANSWER: c", ABCD, "C"),
    ("The answer is D", ABCD, "D"),
    ("The answer is (A).", ABCD, "A"),
    ("The correct answer is option C.", ABCD, "C"),
    ("The best answer is: A", ABCD, "A"),
    ("**Answer:** C", ABCD, "C"),
    ("Final answer: B) blue", ABCD, "B"),
    ("I choose D.", ABCD, "D"),
    ("I'd go with option B.", ABCD, "B"),
    ("Therefore, C.", ABCD, "C"),
    ("Option B is the correct answer.", ABCD, "B"),
    ("The answer is A because the glove is made of rubber.", ABCD, "A"),
    # tags and boxes
    ("<answer>A</answer>", ABCD, "A"),
    ("I think about it. <answer>(C) green</answer>", ABCD, "C"),
    ("<answer>The answer is D</answer>", ABCD, "D"),
    ("\\boxed{C}", ABCD, "C"),
    ("So the final answer is $\\boxed{\\text{B}}$.", ABCD, "B"),
    # reasoning blocks
    ("<think>Option A is red, so maybe A.</think>\nB", ABCD, "B"),
    ("<think>The answer is A? No.</think>The answer is C.", ABCD, "C"),
    ("<think>Option A looks right, the answer is A", ABCD, None),  # unfinished reasoning
    ("reasoning without an opening tag</think> D", ABCD, "D"),
    ("<think>The answer is B.</think>", ABCD, None),  # nothing follows the reasoning
    # the final answer wins over earlier mentions
    ("Option A is red, option B is blue... so the answer is B", ABCD, "B"),
    ("A. red is unlikely. C. green fits. The answer is C.", ABCD, "C"),
    ("The answer is B. Let me double-check the answer, yes.", ABCD, "B"),
    ("First I thought the answer is A, but looking closer the answer is D.", ABCD, "D"),
    ("Looking at the image...\n\nB", ABCD, "B"),
    ("Both A and B are plausible, but C is correct.", ABCD, "C"),
    ("So the answer is B. So, to summarize, A is red and B is blue.", ABCD, "B"),
    ("I'm not sure, but I'd guess B.", ABCD, "B"),
    ("B is the answer.", ABCD, "B"),
    ("Choice B.", ABCD, "B"),
    ("(A) red (B) blue", ABCD, None),  # one-line listing
    ("A. red\nB. blue\nC. green\nD. black", ABCD, None),  # a listing of options is not an answer
    # English articles are not answers
    ("A man is standing next to a car.", ABCD, None),
    ("A man is standing next to a car. The answer is C.", ABCD, "C"),
    ("The answer is a red car.", ["a red car", "a blue car"], "A"),  # read as the option's text
    ("The answer is a red one.", ABCD, None),
    ("I think the glove is red.", ABCD, None),
    # option text instead of its letter
    ("blue", ABCD, "B"),
    ("Green.", ABCD, "C"),
    ("The answer is black.", ABCD, "D"),
    ("right", AB, "B"),
    ("red", ["red", "Red", "blue"], None),  # ambiguous option texts
    ("The answer is 457.", ABCDE, "B"),
    ("purple", ABCD, None),
    # Chinese
    ("答案是C", ABCD, "C"),
    ("答案：C", ABCD, "C"),
    ("选C", ABCD, "C"),
    ("故选：C", ABCD, "C"),
    ("选项A是红色，选项B是蓝色，所以选B。", ABCD, "B"),
    ("正确答案是（D）", ABCD, "D"),
    ("最佳答案为：E", ABCDE, "E"),
    # out of range
    ("E", ABCD, None),
    ("The answer is E.", ABCD, None),
    ("The answer is C. Actually, the answer is E.", ABCD, None),  # final answer invalid: no fallback
    ("C", AB, None),
    # nothing to read
    ("", ABCD, None),
    ("I cannot tell from the image.", ABCD, None),
]


@pytest.mark.parametrize("response,options,expected", CHOICE_CASES)
def test_extract_choice(response, options, expected):
    assert extract_choice(response, options) == expected


def test_enough_cases():
    assert len(CHOICE_CASES) >= 40
    assert EXTRACTION_RULE == "vision_opd.final-answer-v1"


YES_NO_CASES = [
    ("Yes.", "yes"),
    ("no", "no"),
    ("NO", "no"),
    ("The answer is yes", "yes"),
    ("Answer: no.", "no"),
    ("No, there is no snowboard in the image.", "no"),
    ("Yes, there is a dog. No other animals are visible.", "yes"),
    ("Yes... wait, actually no.", None),  # mixed, no final statement
    ("Yes at first glance, but the answer is no.", "no"),  # final explicit answer
    ("<think>maybe yes</think>No", "no"),
    ("<think>it is probably yes", None),
    ("<answer>yes</answer>", "yes"),
    ("There is a snowboard in the image.", None),
    ("是", "yes"),
    ("否。", "no"),
    ("答案是：否", "no"),
    ("", None),
]


@pytest.mark.parametrize("response,expected", YES_NO_CASES)
def test_extract_yes_no(response, expected):
    assert extract_yes_no(response) == expected


def test_strip_reasoning():
    assert strip_reasoning("<think>a</think> b") == " b"
    assert strip_reasoning("<think>a") is None
    assert strip_reasoning("plain") == "plain"


def test_score_choice():
    assert score_choice("Answer: B", ABCD, "B") == {"extracted": "B", "correct": True, "unextracted": False}
    assert score_choice("A man", ABCD, "A") == {"extracted": None, "correct": False, "unextracted": True}
    assert score_choice("C", ABCD, "green")["correct"]  # gold given as the option's text
    with pytest.raises(ValueError, match="neither a letter"):
        score_choice("A", ABCD, "Z")


def test_score_yes_no_and_open():
    assert score_yes_no("Yes.", "yes")["correct"]
    assert score_yes_no("maybe", "no") == {"extracted": None, "correct": False, "unextracted": True}
    assert extract_open("The answer is 4.") == "4"
    assert score_open("There are four lamps. Answer: four", "4")["correct"]
    assert score_open("<answer>3</answer>", "4")["correct"] is False
    assert score_open("The Red Sign", "red sign")["correct"]
    assert score_open("word " * 20, "word")["unextracted"]


def test_bootstrap_contains_mean_and_is_deterministic():
    rng = np.random.default_rng(1)
    values = (rng.random(200) < 0.7).astype(float).tolist()
    lo, hi = bootstrap_ci(values, n_boot=500, seed=3)
    assert lo <= np.mean(values) <= hi
    assert 0.5 < lo < hi < 0.9
    assert bootstrap_ci(values, n_boot=500, seed=3) == (lo, hi)
    assert bootstrap_ci(values, n_boot=500, seed=4) != (lo, hi)


def test_bootstrap_constant_and_errors():
    assert bootstrap_ci([0.1] * 37) == (pytest.approx(0.1), pytest.approx(0.1))
    lo, hi = bootstrap_ci([1.0] * 10)
    assert lo == hi == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0], level=1.5)


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    a = (rng.random(300) < 0.8).astype(float)
    b = a.copy()
    b[:60] = 0.0  # b is worse on the first 60 items only
    lo, hi = paired_bootstrap_ci(a.tolist(), b.tolist(), n_boot=500)
    diff = a.mean() - b.mean()
    assert lo <= diff <= hi and lo > 0
    assert paired_bootstrap_ci(a, a) == (0.0, 0.0)  # identical systems: zero width at zero
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_ci([1.0, 0.0], [1.0])
