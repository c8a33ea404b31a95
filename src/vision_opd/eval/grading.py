"""Grading a response: its answer, how it was decided, whether it is right, and when it has none, why.

Every score is {"extracted", "correct", "unextracted", "method"}: `method` is "rule" (a rule read the answer),
"option_text" (an option's text was mapped to its letter), "judge" (set later by `judge.py`) or "none".
A response with no answer gets one failure kind (`failure_kind`), and is never mapped to an option:

  request_failed  the request failed after its retries (the server's error is kept; a rerun retries it)
  empty           nothing to read (a blank reply, or nothing after the closing `</think>`)
  truncated       cut at the response budget with no answer (an unfinished `<think>` included)
  refused         the model says it cannot answer ("I cannot determine ...", "无法确定")
  unextractable   text that no rule reads as an answer (the only kind the LLM judge is asked about)
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Sequence

from .choice import read_choice
from .extraction import LETTERS, extract_open, extract_yes_no, prepare, refuses

FAILURE_KINDS = ("empty", "request_failed", "truncated", "refused", "unextractable")

_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}


def failure_kind(response: str, extracted: Any, *, truncated: bool = False, error: str | None = None) -> str | None:
    """Why a response has no answer (one of FAILURE_KINDS), or None when it has one."""
    if error:
        return "request_failed"
    if extracted is not None:
        return None
    answer_part = prepare(response)
    if answer_part is None:  # a <think> that never closed
        return "truncated" if truncated else "unextractable"
    if truncated:
        return "truncated"
    if not answer_part:
        return "empty"
    return "refused" if refuses(answer_part) else "unextractable"


def _score(extracted: Any, correct: bool, method: str) -> dict[str, Any]:
    return {"extracted": extracted, "correct": bool(correct), "unextracted": extracted is None,
            "method": method if extracted is not None else "none"}


def _normalise_open(s: str) -> str:
    s = unicodedata.normalize("NFKC", s).casefold()
    s = re.sub(r"[^\w\s.%-]", " ", s)
    s = re.sub(r"\b(?:a|an|the)\b", " ", s)
    return " ".join(s.split()).strip(". ")


def _as_number(s: str) -> float | None:
    s = s.replace(",", "").strip()
    if s in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[s])
    try:
        return float(s)
    except ValueError:
        return None


def open_matches(extracted: str, gold: str) -> bool:
    """Exact match after normalisation (case, punctuation, articles; numbers compared as numbers)."""
    a, b = _normalise_open(extracted), _normalise_open(str(gold))
    na, nb = _as_number(a), _as_number(b)
    return a == b or (na is not None and nb is not None and math.isclose(na, nb))


def score_open(response: str, gold: str) -> dict[str, Any]:
    """Normalised exact match of the final short answer: an approximation of ZoomBench's official open-question
    grading (mathruler + an LLM judge)."""
    extracted = extract_open(response)
    return _score(extracted, extracted is not None and open_matches(extracted, gold), "rule")


def gold_letter(gold: str, options: Sequence[str]) -> str:
    """The gold answer as a letter; `gold` is a letter or an option's text."""
    gold = str(gold).strip()
    if gold in LETTERS[: len(options)]:
        return gold
    if gold in options:
        return LETTERS[list(options).index(gold)]
    raise ValueError(f"gold answer {gold!r} is neither a letter A-{LETTERS[len(options) - 1]} nor an option")


def score_choice(response: str, options: Sequence[str], gold: str) -> dict[str, Any]:
    """{'extracted': letter | None, 'correct', 'unextracted', 'method'}; `gold` is a letter or an option's text."""
    gold = gold_letter(gold, options)
    choice = read_choice(response, options)
    return _score(choice.letter, choice.letter == gold, choice.method)


def score_yes_no(response: str, gold: str) -> dict[str, Any]:
    gold_n = str(gold).strip().lower()
    if gold_n not in ("yes", "no"):
        raise ValueError(f"gold answer {gold!r} is not 'yes' or 'no'")
    extracted = extract_yes_no(response)
    return _score(extracted, extracted == gold_n, "rule")
