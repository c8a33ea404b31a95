"""Answer extraction shared by every answer type: text preparation, reasoning blocks, tags, refusals, yes/no and
short open answers. Multiple choice is read in `choice.py`; grading against the gold answer is `grading.py`.

The rule, named by `EXTRACTION_RULE` and recorded in every result, reads the FINAL answer and never guesses:

1. NFKC-normalise (full-width "（Ｃ）" and "：" become ASCII), drop markdown emphasis (`**B**`).
2. Reasoning: keep only the text after the last `</think>`; a `<think>` that is never closed gives no answer
   (its content is never scanned: a thinking model's scratch work is not its answer).
3. `<answer>...</answer>` (the last one), else `\\boxed{...}` (the last one): read from its content.
4. Then the type's own rule: `choice.extract_choice`, `extract_yes_no`, `extract_open`.

Run the table-driven tests with `python -m pytest tests/test_extraction.py`.
"""

from __future__ import annotations

import re
import unicodedata

EXTRACTION_RULE = "vision_opd.final-answer-v3"  # v3: a hedge ("A or B") is no answer; v2: explicit statements
# outrank weak markers, rejected letters, one option's text inside a sentence, Chinese yes/no openers
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
STRIP_CHARS = " \t\n.!。\"'“”‘’:;,"

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


def unfinished_thought(response: str) -> bool:
    """Whether `response` ends inside a `<think>` block (opened and never closed)."""
    return isinstance(response, str) and strip_reasoning(unicodedata.normalize("NFKC", response)) is None


def prepare(response: str) -> str | None:
    """The answer part of a response: normalised, reasoning removed, emphasis dropped; None if unreadable."""
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


def enclosed(text: str) -> str | None:
    """The answer-tag content, else the boxed content, else None."""
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    return _last_boxed(text)


# ----------------------------------------------------------------------------- refusals

_REFUSAL = re.compile(
    r"\b(?:i\s+(?:can(?:not|'t|\s+not)|am\s+(?:unable|not\s+able)|'m\s+(?:unable|not\s+able)|am\s+sorry|'m\s+sorry)"
    r"|(?:cannot|can't|unable\s+to|not\s+possible\s+to|impossible\s+to)\s+(?:determine|tell|identify|see|answer|say|"
    r"know|read|be\s+determined|make\s+out|discern|confirm)"
    r"|(?:sorry|apologi[sz]e),?\s+(?:but\s+)?i\b)"
    r"|无法(?:确定|判断|回答|识别|看清|辨认|得知)|不能(?:确定|判断|回答)|抱歉|对不起|看不清|不确定",
    re.I,
)


def refuses(text: str) -> bool:
    """Whether the answer part says the model cannot or will not answer ("I cannot determine ...", "无法确定")."""
    return bool(_REFUSAL.search(text))


# ----------------------------------------------------------------------------- yes / no

_YN_MARKER = re.compile(r"\banswer\b(?:\s+(?:is|would\s+be|should\s+be))?\s*[:=]?\s*(yes|no)\b", re.I)
_YN_MARKER_ZH = re.compile(r"答案\s*(?:是|为)?\s*:?\s*(是|否|不是|有|没有)")
_YN_ZH = {"是": "yes", "是的": "yes", "有": "yes", "对": "yes", "否": "no", "不是": "no", "没有": "no", "不": "no"}
_YN_ZH_OPENER = re.compile(r"^(是的|不是|没有|是|有|对|否|不)\s*[,，。.!！;；]")
_WORD = re.compile(r"[A-Za-z]+")


def extract_yes_no(response: str) -> str | None:
    """'yes', 'no', or None (unreadable, or a mixed answer such as "Yes... actually no" with no final statement).

    Order: answer tag / boxed content; the last explicit "answer is yes/no" (or 答案是/否); a Chinese reply that
    opens with 是的 / 不是 / 没有 ... and a comma; else the first and the last word of the response: either may be
    yes/no, and if both are they must agree.
    """
    text = prepare(response)
    if not text:
        return None
    inner = enclosed(text)
    if inner is not None:
        text = inner
    marks = [(m.start(), m.group(1).lower()) for m in _YN_MARKER.finditer(text)]
    marks += [(m.start(), _YN_ZH[m.group(1)]) for m in _YN_MARKER_ZH.finditer(text)]
    if marks:
        return max(marks)[1]
    bare = text.strip(STRIP_CHARS + "，、")
    if bare in _YN_ZH:
        return _YN_ZH[bare]
    opener = _YN_ZH_OPENER.match(text)
    if opener:
        return _YN_ZH[opener.group(1)]
    words = _WORD.findall(text)
    if not words:
        return None
    said = {w.lower() for w in (words[0], words[-1]) if w.lower() in ("yes", "no")}
    return said.pop() if len(said) == 1 else None


# ----------------------------------------------------------------------------- open answers

_OPEN_MARKER = re.compile(r"\banswer\b(?:\s+(?:is|would\s+be|should\s+be))?\s*[:=]?\s*", re.I)


def extract_open(response: str, max_words: int = 8) -> str | None:
    """The final short answer of a free-form response: tag/boxed content, the text after the last
    "answer is"/"Answer:" to the end of its line, or the whole response if it has at most `max_words`."""
    text = prepare(response)
    if not text:
        return None
    inner = enclosed(text)
    if inner is not None:
        return inner.strip(STRIP_CHARS) or None
    marks = list(_OPEN_MARKER.finditer(text))
    for m in reversed(marks):
        span = text[m.end() :].split("\n", 1)[0].strip(STRIP_CHARS)
        if span:
            return span
    if len(text.split()) <= max_words:
        return text.strip(STRIP_CHARS) or None
    return None
