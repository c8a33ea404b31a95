"""Table-driven tests of answer extraction (the final answer wins, never a guess), grading, failure kinds, and the
bootstraps."""

from __future__ import annotations

import numpy as np
import pytest

from vision_opd.eval.choice import extract_choice, read_choice
from vision_opd.eval.extraction import EXTRACTION_RULE, extract_open, extract_yes_no, strip_reasoning
from vision_opd.eval.grading import FAILURE_KINDS, failure_kind, score_choice, score_open, score_yes_no
from vision_opd.eval.statistics import bootstrap_ci, paired_bootstrap_ci

ABCD = ["red", "blue", "green", "black"]
AB = ["left", "right"]
ABCDE = ["458", "457", "459", "456", "This image doesn't feature the data."]
CDBF = ["cat", "dog", "bird", "fish"]
GLOVE = ["rubber", "cotton", "kevlar", "leather"]
ZH = ["猫", "狗", "鸟", "鱼"]
NUM = ["2", "3", "4", "5"]

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
    ("The answer is a red one.", ABCD, "A"),  # "a" is an article; "red" names option A
    ("I think the glove is red.", ABCD, "A"),  # one option's text inside a sentence (rule v2)
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
    # the review's cases: a later remark never overrides the stated answer
    ("The answer is B, so A and C are wrong.", CDBF, "B"),
    ("Answer: C. Thus B is not correct.", CDBF, "C"),
    ("Answer: D\nHence, B and C can be excluded.", CDBF, "D"),
    ("The answer is B. It is C-shaped though.", CDBF, "B"),
    # weak markers (so / thus / hence / therefore / it is) never outrank an explicit statement
    ("The answer is C. So A is out.", CDBF, "C"),
    ("Answer: B. Thus, A would be a mistake.", CDBF, "B"),
    ("The answer is A. It is B-like in shape, but no.", CDBF, "A"),
    ("Answer: (A). Thus (B) and (C) are incorrect.", CDBF, "A"),
    ("So the answer is C. It's B? No.", CDBF, "C"),
    ("The answer is C.\nThus, A is not possible.", CDBF, "C"),
    ("B is correct. So A is not.", CDBF, "B"),
    ("Answer: A\n\nExplanation: B shows a dog, so B is not the answer.", CDBF, "A"),
    ("Answer: B\nReason: it is C that looks similar, but it is a dog.", CDBF, "B"),
    ("The answer is A. Hence, D.", CDBF, "A"),
    ("I choose A. Therefore C is wrong.", CDBF, "A"),
    ("Final answer: D. So it is not C.", CDBF, "D"),
    ("The correct option is B; hence A and D can be ruled out.", CDBF, "B"),
    ("I'd pick C, so B is incorrect.", CDBF, "C"),
    ("\\boxed{D}. Thus C is not it.", CDBF, "D"),
    ("<answer>B</answer> So A is wrong.", CDBF, "B"),
    # a letter that a sentence rejects is not an answer
    ("The answer is B, not A.", CDBF, "B"),
    ("Not A, not C: the answer is B.", CDBF, "B"),
    ("Option C is wrong, so the answer is A.", CDBF, "A"),
    ("Options A and B are wrong; D is the answer.", CDBF, "D"),
    ("I choose A. B is not correct, C is not correct.", CDBF, "A"),
    ("Answer: C - A and B are incorrect.", CDBF, "C"),
    ("The final answer is D, thus not C.", CDBF, "D"),
    ("The answer is B rather than A.", CDBF, "B"),
    ("Answer: D. (A) and (B) can be eliminated.", CDBF, "D"),
    ("The answer is B. Wait, B is wrong.", CDBF, None),  # the stated answer withdrawn: no guess
    ("The answer is C. Hmm, C is incorrect; the answer is D.", CDBF, "D"),
    ("Option A is incorrect. Option B is incorrect. Option C is correct.", CDBF, "C"),
    ("So it is not A.", CDBF, None),  # only a rejection
    # other explicit forms
    ("Answer - B", CDBF, "B"),
    ("answer is b", CDBF, "B"),
    ("The answer: option D.", CDBF, "D"),
    ("My answer: C", CDBF, "C"),
    ("The right choice is B.", CDBF, "B"),
    ("I would select option D.", CDBF, "D"),
    ("Thus, the answer must be C rather than A.", CDBF, "C"),
    ("So, B.", CDBF, "B"),  # a weak marker alone still answers
    ("It's C.", CDBF, "C"),
    ("Therefore D", CDBF, "D"),
    # one option's text inside a sentence (no letter): that option; two options' texts: no answer
    ("It looks like a dog to me.", CDBF, "B"),
    ("The animal in the picture is a bird.", CDBF, "C"),
    ("This is clearly a fish swimming in the water.", CDBF, "D"),
    ("I see a cat and a dog.", CDBF, None),
    ("It is not a cat, it is a dog.", CDBF, "B"),
    ("Neither a cat nor a dog.", CDBF, None),
    ("The glove is made of rubber.", GLOVE, "A"),
    ("The glove is made of rubber, not leather.", GLOVE, "A"),
    ("The light is dark red.", ["red", "dark red", "blue", "green"], "B"),
    ("There are 3 cars.", NUM, "B"),
    ("There are 13 cars.", NUM, None),
    ("The dog is on the left.", AB, "A"),
    ("It's on the left side, not the right.", AB, "A"),
    ("Red or blue, hard to say.", ABCD, None),
    ("The object is purple.", ABCD, None),
    ("I cannot tell whether it is a dog.", CDBF, None),  # a refusal names no answer
    ("The catalogue shows a bird.", CDBF, "C"),  # "cat" inside a word is not the option
    # Chinese
    ("答案是B，所以A和C是错误的。", CDBF, "B"),
    ("答案：C。因此B不正确。", CDBF, "C"),
    ("答案是D，可以排除B和C。", CDBF, "D"),
    ("选B，A不对。", CDBF, "B"),
    ("答案是A，因此不选C。", CDBF, "A"),
    ("正确答案是B，而不是D。", CDBF, "B"),
    ("排除A和D，答案为C。", CDBF, "C"),
    ("A选项错误，B选项正确。", ABCD, "B"),
    ("所以答案是A，B和C都不对。", ABCD, "A"),
    ("答案是：C，故D错误。", ABCD, "C"),
    ("最终答案：D", ABCD, "D"),
    ("我选C。", ABCD, "C"),
    ("答案应该是（B）", ABCD, "B"),
    ("图中是一只狗。", ZH, "B"),
    ("这不是猫，是狗。", ZH, "B"),
    ("猫和狗都有。", ZH, None),
    ("我无法确定图中是不是狗。", ZH, None),  # a refusal
    ("答案是B。不过C也有可能。", CDBF, "B"),
    ("因此选D，而非A。", CDBF, "D"),
    ("A和B都不正确，所以答案是C。", CDBF, "C"),
    ("The best choice is C, since A and B are ruled out.", CDBF, "C"),
    ("I'll go with D. It is not A because the tail is too long.", CDBF, "D"),
    ("B\nA and C are wrong.", CDBF, "B"),
    ("The answer is (B).\n\nSo it can't be (C).", CDBF, "B"),
    ("Answer: A. It's B or C otherwise.", CDBF, "A"),
    ("Therefore, the answer is D, and thus C cannot be right.", CDBF, "D"),
    ("It is a bird, so the answer is C.", CDBF, "C"),
]


# A hedge is not an answer: a statement naming two letters gives None (the first letter used to be scored).
HEDGE_CASES = [
    ("The answer is A or B", ABCD, None),
    ("Answer: B, C", ABCD, None),
    ("The answer is B/C.", ABCD, None),
    ("Answer: (A) or (B)", ABCD, None),
    ("The answer is option A or option B.", ABCD, None),
    ("The answer is A, B, or C", ABCD, None),
    ("So A or B.", ABCD, None),
    ("A or B is correct.", ABCD, None),
    ("答案是A或B", ZH, None),
    ("答案是B、C", ZH, None),
    # not hedges: a later statement answers, a rejection, a pronoun or an article after the comma
    ("The answer is A or B. Final answer: B", ABCD, "B"),
    ("The answer is B. A or C is wrong.", ABCD, "B"),
    ("Answer: A, I think.", ABCD, "A"),
    ("Answer: B, a blue one.", ABCD, "B"),
    ("The answer is B, because C is green.", ABCD, "B"),
]


@pytest.mark.parametrize("response,options,expected", HEDGE_CASES)
def test_a_hedge_is_not_an_answer(response, options, expected):
    assert extract_choice(response, options) == expected


@pytest.mark.parametrize("response,options,expected", CHOICE_CASES)
def test_extract_choice(response, options, expected):
    assert extract_choice(response, options) == expected


def test_enough_cases():
    assert len(CHOICE_CASES) + len(YES_NO_CASES) >= 2 * 90  # the v1 table had 73 + 17 cases
    assert EXTRACTION_RULE == "vision_opd.final-answer-v3"


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
    ("Yes. No other animals are visible, so the answer is yes.", "yes"),
    ("Answer: yes. No doubt.", "yes"),
    ("There is no dog here; the answer is no.", "no"),
    ("Yes and no.", None),
    ("Yes, definitely.", "yes"),
    ("<think>yes</think>", None),
    ("I cannot determine that from the image.", None),
    ("是的，图中有一只狗。", "yes"),
    ("不是，图中没有狗。", "no"),
    ("没有。", "no"),
    ("Answer: No", "no"),
    ("No. There is no snowboard.", "no"),
    ("The answer is yes.\nNo further objects are visible.", "yes"),
    ("<answer>no</answer> Yes, I am sure.", "no"),
]


@pytest.mark.parametrize("response,expected", YES_NO_CASES)
def test_extract_yes_no(response, expected):
    assert extract_yes_no(response) == expected


def test_read_choice_says_how_the_answer_was_decided():
    assert read_choice("The answer is B", CDBF) == ("B", "rule")
    assert read_choice("dog", CDBF) == ("B", "option_text")
    assert read_choice("It looks like a dog.", CDBF) == ("B", "option_text")
    assert read_choice("The answer is bird.", CDBF) == ("C", "option_text")
    assert read_choice("I see a cat and a dog.", CDBF) == (None, "none")
    assert read_choice("E", CDBF) == (None, "none")


FAILURE_CASES = [
    # response, truncated, error, expected kind
    ("", False, None, "empty"),
    ("   \n", False, None, "empty"),
    ("<think>The glove looks like rubber.</think>", False, None, "empty"),  # nothing after the reasoning
    ("", False, "APIConnectionError: connection refused", "request_failed"),
    ("<think>Option A is red, option B", True, None, "truncated"),  # a thought cut at the budget
    ("The image shows several objects, the first of which", True, None, "truncated"),
    ("<think>never closed, yet stopped", False, None, "unextractable"),
    ("I cannot determine the colour from this image.", False, None, "refused"),
    ("I'm sorry, but I can't help with that.", False, None, "refused"),
    ("我无法确定。", False, None, "refused"),
    ("The picture is blurry and full of shapes.", False, None, "unextractable"),
    ("Perhaps A or B.", False, None, "unextractable"),
]


@pytest.mark.parametrize("response,truncated,error,expected", FAILURE_CASES)
def test_each_failure_kind_is_recognised_and_never_an_option(response, truncated, error, expected):
    s = score_choice(response, CDBF, "A")
    assert s["extracted"] is None and not s["correct"] and s["method"] == "none"
    assert failure_kind(response, s["extracted"], truncated=truncated, error=error) == expected
    assert expected in FAILURE_KINDS


def test_an_answer_is_not_a_failure():
    assert failure_kind("The answer is B. Because the tail", "B", truncated=True) is None
    assert failure_kind("B", "B") is None
    assert set(FAILURE_KINDS) == {k for *_, k in FAILURE_CASES}


def test_strip_reasoning():
    assert strip_reasoning("<think>a</think> b") == " b"
    assert strip_reasoning("<think>a") is None
    assert strip_reasoning("plain") == "plain"


def test_score_choice():
    assert score_choice("Answer: B", ABCD, "B") == {"extracted": "B", "correct": True, "unextracted": False,
                                                    "method": "rule"}
    assert score_choice("A man", ABCD, "A") == {"extracted": None, "correct": False, "unextracted": True,
                                                "method": "none"}
    assert score_choice("It is green.", ABCD, "C")["method"] == "option_text"
    assert score_choice("C", ABCD, "green")["correct"]  # gold given as the option's text
    with pytest.raises(ValueError, match="neither a letter"):
        score_choice("A", ABCD, "Z")


def test_score_yes_no_and_open():
    assert score_yes_no("Yes.", "yes")["correct"]
    assert score_yes_no("maybe", "no") == {"extracted": None, "correct": False, "unextracted": True, "method": "none"}
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


def test_thinking_budgets_and_opened_thoughts():
    from vision_opd.eval.thinking import (ANSWER_BUDGET, THINKING_BUDGET, as_thought, prompt_opens_think,
                                          response_budget, thinking_stats)

    assert response_budget(None, None)["max_new_tokens"] == ANSWER_BUDGET == 32
    assert response_budget(None, False) == {"mode": "answer", "max_new_tokens": 32, "source": "default for answer mode"}
    assert response_budget(None, True)["max_new_tokens"] == THINKING_BUDGET == 8192
    assert response_budget(100, True) == {"mode": "thinking", "max_new_tokens": 100, "source": "--max-new-tokens"}
    with pytest.raises(ValueError, match="max-new-tokens"):
        response_budget(0, None)
    assert prompt_opens_think("<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_think("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # thinking switched off
    assert not prompt_opens_think("<|im_start|>user\n<think> in the question<|im_end|>\n<|im_start|>assistant\n")
    assert as_thought("Option A looks", True) == "<think>Option A looks"  # cut inside the opened thought
    assert as_thought("reasoning</think>B", True) == "reasoning</think>B"
    assert as_thought("B", False) == "B"
    # the thought is never scanned: a letter inside an unfinished thought is no answer, and it counts as truncated
    s = score_choice(as_thought("The answer is B, I think, but", True), ABCD, "B")
    assert s["extracted"] is None and failure_kind(as_thought("The answer is B, I think, but", True), None,
                                                   truncated=True) == "truncated"
    stats = thinking_stats([{"response": "<think>abc</think>B"}, {"response": "<think>abcdef"}, {"response": "C"}])
    assert stats["with_thought_rate"] == pytest.approx(2 / 3) and stats["unfinished_rate"] == pytest.approx(1 / 3)


def test_a_chat_template_that_opens_the_thought(synth_records):
    """Qwen-style thinking templates end the generation prompt with `<think>`: the response is stored with it, so
    a response cut before `</think>` is an unfinished thought, never scanned for a letter."""
    from vision_opd.eval.hf_backend import HFGenerator
    from vision_opd.eval.views import view_of
    from vision_opd.models.tiny import build_tiny

    model, processor = build_tiny("qwen2_5_vl")
    processor.chat_template = processor.chat_template.replace(
        "<|im_start|>assistant\\n", "<|im_start|>assistant\\n<think>\\n") if "<|im_start|>assistant\\n" in \
        processor.chat_template else processor.chat_template + "<think>\n"
    gen = HFGenerator(model.eval(), processor, max_new_tokens=3)
    out = gen([view_of(r, "full") for r in synth_records[:3]])
    for g in out:
        assert g.text.startswith("<think>") and failure_kind(g.text, None, truncated=g.truncated) in ("truncated",
                                                                                                       "unextractable")
