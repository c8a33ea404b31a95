"""Answer extraction and scoring: the FINAL answer wins, a failed extraction is None, never a guess.

The reference code reads a multiple-choice answer as "the first capital letter" when nothing else
matches, so "Answer: B" scores as A and a chain of thought that lists the options locks onto the first
one (docs/method.md). The rule here, named by `EXTRACTION_RULE` and recorded in every result:

1. NFKC-normalise (full-width "（Ｃ）" and "：" become ASCII), drop markdown emphasis (`**B**`).
2. Reasoning: keep only the text after the last `</think>`; a `<think>` that is never closed -> None.
3. `<answer>...</answer>` (the last one), else `\\boxed{...}` (the last one): extract from its content.
4. Explicit answer statements ("the answer is B", "Answer: (C)", "I choose D", "Therefore, B",
   "B is correct", "答案是C", "选C"): the LAST one that names a letter or an option's text wins.
   A letter out of range (E with 4 options) -> None, with no fallback to an earlier statement.
5. Otherwise lines that are a letter ("B", "(C)", "b") or start with one ("B. red", "(B) red"): the last
   line if it is a bare letter, else the letter if all such lines agree (a listing of options -> None).
6. Otherwise the whole response equal to exactly one option's text (case-insensitive) -> its letter.
An English article is not an answer: "A man is standing" gives None, and so does "The answer is a
red car" (the letter "A"/"I" followed by a plain word is read as a word, not a choice).

Run the table-driven tests with `python -m pytest tests/test_scoring.py`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Sequence

import numpy as np

EXTRACTION_RULE = "vision_opd.final-answer-v1"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# ----------------------------------------------------------------------------- text preparation

_THINK_OPEN = re.compile(r"<think>", re.I)
_THINK_CLOSE = re.compile(r"</think>", re.I)
_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.I | re.S)
_BOXED = re.compile(r"\\boxed\s*\{")
_LATEX_WRAP = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\s*\{([^{}]*)\}")


def strip_reasoning(text: str) -> str | None:
    """Return the text after the last `</think>`; None if a `<think>` block is left unfinished."""
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end() :]
        reopened = _THINK_OPEN.search(text)  # a new block that never closes: keep what precedes it
        return text[: reopened.start()] if reopened else text
    return None if _THINK_OPEN.search(text) else text


def _prepare(response: str) -> str | None:
    if not isinstance(response, str):
        return None
    text = unicodedata.normalize("NFKC", response)
    text = strip_reasoning(text)
    if text is None:
        return None
    return text.replace("*", "").replace("`", "").strip()


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces matched; None if there is none or it is unclosed."""
    starts = list(_BOXED.finditer(text))
    for m in reversed(starts):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            inner = text[m.end() : i - 1]
            while _LATEX_WRAP.search(inner):
                inner = _LATEX_WRAP.sub(r"\1", inner)
            return inner.strip()
    return None


def _enclosed(text: str) -> str | None:
    """The answer-tag content, else the boxed content, else None."""
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    return _last_boxed(text)


# ----------------------------------------------------------------------------- multiple choice

# Phrases after which a final answer follows. Each match marks a position; what follows it is read
# as a letter or an option's text. Sentence-level words ("so", "therefore") only count when a letter
# or an option's text follows them directly.
_MARKERS = [
    re.compile(
        r"\banswer\b(?:\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be))?\s*(?:[:=]\s*)?"
        r"(?:(?:option|choice)\s+)?",
        re.I,
    ),
    re.compile(
        r"\b(?:correct|best|right|final)\s+(?:option|choice)(?:\s+(?:is|would\s+be|should\s+be))?\s*:?\s*", re.I
    ),
    re.compile(
        r"\b(?:i\s+(?:would\s+|will\s+)?|i'd\s+|i'll\s+)(?:choose|pick|select|go\s+with|say|guess)\s+(?:(?:option|choice)\s+)?",
        re.I,
    ),
    re.compile(r"\b(?:therefore|thus|hence|so)\b\s*,?\s*(?:(?:it\s+is|it's)\s+)?(?:(?:option|choice)\s+)?", re.I),
    re.compile(r"\b(?:it\s+is|it's)\s+(?:(?:option|choice)\s+)?", re.I),
    re.compile(r"答案\s*(?:应该|应|应当)?\s*(?:是|为|选)?\s*:?\s*(?:选项)?\s*"),
    re.compile(r"(?:正确|最佳)(?:选项|答案)\s*(?:是|为)?\s*:?\s*"),
    re.compile(r"(?<!项)选(?:择)?(?!项|择)\s*:?\s*(?:选项)?\s*"),
]
# "B is correct", "Option C is the best answer", "B正确": the letter precedes the statement.
_LETTER_FIRST = [
    re.compile(
        r"(?<![A-Za-z])(?:(?i:option|choice)\s+)?[(\[]?([A-Z])[)\]]?\s+(?i:is\s+(?:the\s+)?(?:correct|right|best|answer))\b"
    ),
    re.compile(r"(?<![A-Za-z])(?:选项)?([A-Z])\s*(?:项)?\s*(?:是)?\s*正确"),
]
_TOKEN = re.compile(r"\s*[(\[]?\s*([A-Za-z])\s*[)\]]?(?![A-Za-z0-9])(?!\.[A-Za-z])")  # not "e.g."
_WORD_AFTER = re.compile(r"\s+([a-z][a-z'-]*)")
# Words that may follow a letter answer ("A because ...", "B is right"); any other plain word after
# "A" or "I" makes it an article or a pronoun ("a red car", "I think").
_CONNECTIVES = set(
    "is was because since as and or but which that with for it seems would should looks matches fits appears "
    "here there in on from per according based given due".split()
)
_LINE_BARE = re.compile(r"^(?:(?i:option|choice)\s+)?[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:]?$")
_OTHER_MARK = re.compile(r"[(\[][A-Z][)\]]")
_LINE_PREFIXED = re.compile(r"^[(\[]?([A-Z])(?:[)\]]|[.:])(?:\s|$)")
_STRIP_CHARS = " \t\n.!。\"'“”‘’:;,"
_CLAUSE_END = re.compile(r"\s*[.,;!?)]|\s+(?:because|since|as)\b")


def _is_article(letter: str, rest: str) -> bool:
    if letter not in "AaIi":
        return False
    m = _WORD_AFTER.match(rest)
    return bool(m) and m.group(1) not in _CONNECTIVES


def _norm_option(s: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", s).casefold().split()).strip(_STRIP_CHARS)


def _match_option_text(span: str, options: Sequence[str], *, prefix: bool) -> str | None:
    """Letter of the one option whose text is `span` (case-insensitive), else None.

    With `prefix`, an option may also start `span` if a clause boundary follows it ("red, because ...").
    Exact matches take precedence; two matching options, or two options with the same text, give None.
    """
    span_n = _norm_option(span)
    norm = [_norm_option(o) for o in options]
    exact = [i for i, o in enumerate(norm) if o and span_n == o]
    hits = exact or [
        i for i, o in enumerate(norm) if prefix and o and span_n.startswith(o) and _CLAUSE_END.match(span_n[len(o) :])
    ]
    if len(hits) == 1 and norm.count(norm[hits[0]]) == 1:
        return LETTERS[hits[0]]
    return None


def _read_after(text: str, pos: int, options: Sequence[str]) -> str | None:
    """What an answer statement ending at `pos` names: a letter, an option's letter, or None."""
    rest = text[pos:]
    m = _TOKEN.match(rest)
    if m and not _is_article(m.group(1), rest[m.end() :]):
        return m.group(1).upper()
    window = max(len(o) for o in options) + 40  # bounded, so a long response stays linear
    line = rest[:window].split("\n", 1)[0]
    return _match_option_text(line, options, prefix=True)


def _explicit_answer(text: str, options: Sequence[str]) -> str | None:
    """The letter of the last explicit answer statement; '' if none was found."""
    found: list[tuple[int, str]] = []
    for pattern in _MARKERS:
        for m in pattern.finditer(text):
            letter = _read_after(text, m.end(), options)
            if letter:
                found.append((m.start(), letter))
    for pattern in _LETTER_FIRST:
        for m in pattern.finditer(text):
            found.append((m.start(), m.group(1)))
    if not found:
        return ""
    return max(found, key=lambda t: t[0])[1]


def _line_letters(text: str) -> str | None:
    lines = [ln.strip().lstrip("#>-").strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return None
    bare_last = _LINE_BARE.match(lines[-1])
    if bare_last:
        return bare_last.group(1).upper()
    letters = []
    for ln in lines:
        m = _LINE_BARE.match(ln) or _LINE_PREFIXED.match(ln)
        if m and not _OTHER_MARK.search(ln[m.end() :]):  # "(A) red (B) blue" lists, it does not answer
            letters.append(m.group(1).upper())
    return letters[0] if letters and len(set(letters)) == 1 else None


def _extract_letter(text: str, options: Sequence[str], depth: int = 0) -> str | None:
    inner = _enclosed(text) if depth == 0 else None
    if inner is not None:
        return _extract_letter(inner, options, depth + 1)
    explicit = _explicit_answer(text, options)
    if explicit != "":
        return explicit
    by_line = _line_letters(text)
    if by_line:
        return by_line
    return _match_option_text(text, options, prefix=False)


def extract_choice(response: str, options: Sequence[str]) -> str | None:
    """The chosen option letter (A, B, ...) of `response`, or None when no final answer can be read.

    See the module docstring for the rule. A letter outside the options' range gives None.
    """
    if not options:
        raise ValueError("extract_choice needs the list of options (at least one)")
    text = _prepare(response)
    if not text:
        return None
    letter = _extract_letter(text, options)
    if letter is None or letter not in LETTERS[: len(options)]:
        return None
    return letter


# ----------------------------------------------------------------------------- yes / no

_YN_MARKER = re.compile(r"\banswer\b(?:\s+(?:is|would\s+be|should\s+be))?\s*[:=]?\s*(yes|no)\b", re.I)
_YN_MARKER_ZH = re.compile(r"答案\s*(?:是|为)?\s*:?\s*(是|否|不是|有|没有)")
_YN_ZH = {"是": "yes", "是的": "yes", "有": "yes", "对": "yes", "否": "no", "不是": "no", "没有": "no", "不": "no"}
_WORD = re.compile(r"[A-Za-z]+")


def extract_yes_no(response: str) -> str | None:
    """'yes', 'no', or None (unreadable, or a mixed answer such as "Yes... actually no" with no final statement).

    Order: answer tag / boxed content; the last explicit "answer is yes/no" (or 答案是/否); else the first
    and the last word of the response: either may be yes/no, and if both are they must agree.
    """
    text = _prepare(response)
    if not text:
        return None
    inner = _enclosed(text)
    if inner is not None:
        text = inner
    marks = [(m.start(), m.group(1).lower()) for m in _YN_MARKER.finditer(text)]
    marks += [(m.start(), _YN_ZH[m.group(1)]) for m in _YN_MARKER_ZH.finditer(text)]
    if marks:
        return max(marks)[1]
    bare = text.strip(_STRIP_CHARS + "，、")
    if bare in _YN_ZH:
        return _YN_ZH[bare]
    words = _WORD.findall(text)
    if not words:
        return None
    said = {w.lower() for w in (words[0], words[-1]) if w.lower() in ("yes", "no")}
    return said.pop() if len(said) == 1 else None


# ----------------------------------------------------------------------------- open answers

_OPEN_MARKER = re.compile(r"\banswer\b(?:\s+(?:is|would\s+be|should\s+be))?\s*[:=]?\s*", re.I)
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}


def extract_open(response: str, max_words: int = 8) -> str | None:
    """The final short answer of a free-form response: tag/boxed content, the text after the last
    "answer is"/"Answer:" to the end of its line, or the whole response if it has at most `max_words`."""
    text = _prepare(response)
    if not text:
        return None
    inner = _enclosed(text)
    if inner is not None:
        return inner.strip(_STRIP_CHARS) or None
    marks = list(_OPEN_MARKER.finditer(text))
    for m in reversed(marks):
        span = text[m.end() :].split("\n", 1)[0].strip(_STRIP_CHARS)
        if span:
            return span
    if len(text.split()) <= max_words:
        return text.strip(_STRIP_CHARS) or None
    return None


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


def score_open(response: str, gold: str) -> dict[str, Any]:
    """Exact match after normalisation (case, punctuation, articles; numbers compared as numbers).

    An approximation of ZoomBench's official open-question grading (mathruler + an LLM judge).
    """
    extracted = extract_open(response)
    correct = False
    if extracted is not None:
        a, b = _normalise_open(extracted), _normalise_open(str(gold))
        na, nb = _as_number(a), _as_number(b)
        correct = a == b or (na is not None and nb is not None and math.isclose(na, nb))
    return {"extracted": extracted, "correct": correct, "unextracted": extracted is None}


# ----------------------------------------------------------------------------- scores


def score_choice(response: str, options: Sequence[str], gold: str) -> dict[str, Any]:
    """{'extracted': letter | None, 'correct': bool, 'unextracted': bool}; `gold` is a letter or an option's text."""
    gold = str(gold).strip()
    if gold not in LETTERS[: len(options)]:
        if gold in options:
            gold = LETTERS[list(options).index(gold)]
        else:
            raise ValueError(f"gold answer {gold!r} is neither a letter A-{LETTERS[len(options) - 1]} nor an option")
    extracted = extract_choice(response, options)
    return {"extracted": extracted, "correct": extracted == gold, "unextracted": extracted is None}


def score_yes_no(response: str, gold: str) -> dict[str, Any]:
    gold_n = str(gold).strip().lower()
    if gold_n not in ("yes", "no"):
        raise ValueError(f"gold answer {gold!r} is not 'yes' or 'no'")
    extracted = extract_yes_no(response)
    return {"extracted": extracted, "correct": extracted == gold_n, "unextracted": extracted is None}


# ----------------------------------------------------------------------------- bootstrap


def _bootstrap_means(x_N: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = x_N.shape[0]
    rows = max(1, 4_000_000 // n)  # bound the index matrix to ~32 MB
    out = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = x_N[idx].mean(axis=1)
    return out


def _check(values: Sequence[float], n_boot: int, level: float, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name}: need a non-empty 1-D list of numbers, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: values contain NaN or infinity")
    if not 0 < level < 1:
        raise ValueError(f"{name}: level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"{name}: n_boot must be >= 1, got {n_boot}")
    return x


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of `values` (resampling items)."""
    x = _check(values, n_boot, level, "bootstrap_ci")
    means = _bootstrap_means(x, n_boot, seed)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Bootstrap CI of mean(a) - mean(b) for paired per-item values (the same items resampled in both)."""
    xa = _check(a, n_boot, level, "paired_bootstrap_ci")
    xb = _check(b, n_boot, level, "paired_bootstrap_ci")
    if xa.shape != xb.shape:
        raise ValueError(f"paired_bootstrap_ci: a and b must have the same length ({xa.size} != {xb.size})")
    return bootstrap_ci(xa - xb, n_boot=n_boot, seed=seed, level=level)
