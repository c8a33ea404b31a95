"""Multiple choice: which option letter a response states as its FINAL answer (None when it states none).

The reference code reads a multiple-choice answer as "the first capital letter" when nothing else matches, so
"Answer: B" scores as A and a chain of thought that lists the options locks onto the first one. The rule here
(part of `extraction.EXTRACTION_RULE`), on the answer part of the response (`extraction.prepare`):

1. `<answer>...</answer>`, else `\\boxed{...}`: read from its content.
2. Statements. Explicit ones ("the answer is B", "Answer: (C)", "I choose D", "the correct option is B",
   "final answer", "B is correct", 答案是C, 选C, 正确答案为D) outrank weak ones ("so B", "thus B", "hence B",
   "therefore B", "it is B"): the LAST explicit statement wins, and a weak one counts only when there is no
   explicit one. A letter that a sentence rejects ("A and C are wrong", "B is not correct", "can be excluded",
   "not A", "rule out A", 排除A, A不对, 不选C) is never an answer; a stated answer that is rejected after it
   ("The answer is B. Wait, B is wrong.") gives None. A letter out of range (E with 4 options) gives None,
   with no fallback to an earlier statement. A hedge is not an answer: a statement naming two or more letters
   ("The answer is A or B", "Answer: B, C", "A or B is correct") gives None unless a later statement answers.
3. Otherwise lines that are a letter ("B", "(C)", "b") or start with one ("B. red", "(B) red"): the last line
   if it is a bare letter, else the letter if all such lines agree (a listing of options -> None).
4. Otherwise the whole response equal to exactly one option's text (case-insensitive) -> its letter.
5. Otherwise, unless the response is a refusal, exactly one option's text named inside it (whole words, not
   negated as in "not a cat", a longer option winning over one it contains) -> its letter; two -> None.
An English article is not an answer: "A man is standing" gives None, and so does "The answer is a red car"
unless "a red car" is an option (the letter "A"/"I" followed by a plain word is read as a word, not a choice);
nor is a letter glued to a word ("C-shaped").

`read_choice` also says how the letter was decided: "rule" (a letter was read) or "option_text".
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple, Sequence

from .extraction import LETTERS, STRIP_CHARS, enclosed, prepare, refuses

# Explicit answer statements: each match ends where the answer follows.
_STRONG = [
    re.compile(
        r"\banswer\b(?:\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be))?\s*(?:[:=\-–—]\s*)?"
        r"(?:(?:option|choice)\s+)?",
        re.I,
    ),
    re.compile(
        r"\b(?:correct|best|right|final)\s+(?:option|choice)(?:\s+(?:is|would\s+be|should\s+be))?\s*:?\s*", re.I
    ),
    re.compile(
        r"\b(?:i\s+(?:would\s+|will\s+)?|i'd\s+|i'll\s+)(?:choose|pick|select|go\s+with|say|guess)\s+"
        r"(?:(?:option|choice)\s+)?",
        re.I,
    ),
    re.compile(r"答案\s*(?:应该|应|应当)?\s*(?:是|为|选)?\s*:?\s*(?:选项)?\s*"),
    re.compile(r"(?:正确|最佳)(?:选项|答案)\s*(?:是|为)?\s*:?\s*"),
    re.compile(r"(?<!不)(?<!项)选(?:择)?(?!项|择)\s*:?\s*(?:选项)?\s*"),
]
# Weak markers: they answer only when no explicit statement does.
_WEAK = [
    re.compile(r"\b(?:therefore|thus|hence|so)\b\s*,?\s*(?:(?:it\s+is|it's)\s+)?(?:(?:option|choice)\s+)?", re.I),
    re.compile(r"\b(?:it\s+is|it's)\s+(?:(?:option|choice)\s+)?", re.I),
]
# "B is correct", "Option C is the best answer", "B正确", "B选项正确": the letter precedes the statement.
_LETTER_FIRST = [
    re.compile(
        r"(?<![A-Za-z])(?:(?i:option|choice)\s+)?[(\[]?([A-Z])[)\]]?\s+"
        r"(?i:is\s+(?:the\s+)?(?:correct|right|best|answer))\b"
    ),
    re.compile(r"(?<![A-Za-z])(?:选项)?([A-Z])\s*(?:选项|项)?\s*(?:是)?\s*正确"),
]

# Rejections: the letters of `_LIST` are named as wrong.
_ONE = r"(?:(?i:options?|choices?)\s+|选项)?[(\[]?[A-Z][)\]]?(?![A-Za-z0-9'-])"
_LIST = rf"(?<![A-Za-z]){_ONE}(?:\s*(?:,|/|&|\band\b|\bor\b|\bnor\b|和|与|或|、|及)\s*{_ONE})*"
_LIST_ZH = rf"(?<![A-Za-z]){_ONE}(?:\s*(?:和|与|或|、|及)\s*{_ONE})*"  # a comma ends a Chinese clause
_REJECT = [
    re.compile(
        rf"({_LIST})\s+(?:(?i:is|are|was|were|would\s+be|seems?|must\s+be)\s+(?i:also\s+|clearly\s+|definitely\s+)?"
        r"(?i:not\b(?=\s*(?:$|[.,;:!?)]|correct|right|true|valid|possible|accurate|it\b|the\s+(?:correct\s+)?answer|an?\s"
        r"+(?:correct|valid|possible)))|incorrect|wrong|false|invalid|impossible|ruled\s+out|excluded|eliminated|out\b"
        r"|a\s+mistake|unlikely)"
        r"|(?i:isn't|aren't|can(?:not|'t|\s+not)\s+be)"
        r"|(?i:can|could|should|must|may)\s+be\s+(?i:excluded|ruled\s+out|eliminated|discarded|dismissed))"
    ),
    re.compile(
        r"(?:(?i:\bnot\b|\brule\s+out\b|\bruling\s+out\b|\beliminat(?:e|ing)\b|\bexclud(?:e|ing)\b|\bexcept\b"
        rf"|\bneither\b|\brather\s+than\b|\binstead\s+of\b|\bother\s+than\b)|不是|排除|不选|而非|并非)\s*({_LIST})"
    ),
    re.compile(rf"({_LIST_ZH})\s*(?:选项|项)?\s*(?:是|都|也|均)?\s*(?:错误|错的|不正确|不对|不是正确|可以排除|被排除)"),
]
# A second letter right after a stated one ("A or B", "B, C", "B/C", "B and C"): a hedge, not an answer.
_HEDGE_AFTER = re.compile(
    r"\s*(?:,|/|&|\bor\b|\band\b|\band/or\b|或|或者|和|、)\s*(?:(?i:option|choice)\s+|选项)?[(\[]?([A-Z])[)\]]?(?![A-Za-z0-9'-])"
)
_HEDGE_BEFORE = re.compile(r"(?<![A-Za-z])[(\[]?[A-Z][)\]]?\s*(?:\bor\b|/)\s*(?:(?i:option|choice)\s+)?$")
_LETTER_IN_LIST = re.compile(r"(?<![A-Za-z])[(\[]?([A-Z])[)\]]?(?![A-Za-z0-9'-])")

_TOKEN = re.compile(r"\s*[(\[]?\s*([A-Za-z])\s*[)\]]?(?![A-Za-z0-9])(?!\.[A-Za-z])(?!-[A-Za-z])(?!'[a-z])")
_WORD_AFTER = re.compile(r"\s+([a-z][a-z'-]*)")
# Words that may follow a letter answer ("A because ...", "B is right"); any other plain word after
# "A" or "I" makes it an article or a pronoun ("a red car", "I think").
_CONNECTIVES = set(
    "is was because since as and or but which that with for it seems would should looks matches fits appears "
    "here there in on from per according based given due rather not".split()
)
_LINE_BARE = re.compile(r"^(?:(?i:option|choice)\s+)?[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:]?$")
_OTHER_MARK = re.compile(r"[(\[][A-Z][)\]]")
_LINE_PREFIXED = re.compile(r"^[(\[]?([A-Z])(?:[)\]]|[.:])(?:\s|$)")
_CLAUSE_END = re.compile(r"\s*[.,;!?)]|\s+(?:because|since|as)\b")
_NEGATION = re.compile(r"(?:\b(?:not|no|never|neither|nor|without|isn't|aren't|wasn't)\W+(?:\w+\W+)?$"
                       r"|(?:不是|不|没有|并非|而非|非)$)")


class Choice(NamedTuple):
    letter: str | None
    method: str  # "rule" | "option_text" | "none"


class _Found(NamedTuple):
    at: int  # where the answer token starts
    letter: str
    strong: bool
    by_text: bool
    others: tuple[int, ...] = ()  # where other letters named alongside it start (a hedge)


def _is_article(letter: str, rest: str) -> bool:
    if letter not in "AaIi":
        return False
    m = _WORD_AFTER.match(rest)
    return bool(m) and m.group(1) not in _CONNECTIVES


def _norm_option(s: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", s).casefold().split()).strip(STRIP_CHARS)


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


def _hedged_with(text: str, end: int) -> tuple[int, ...]:
    """Where the letters listed right after a letter ending at `end` start ("A or B, C" -> B's and C's)."""
    others = []
    while (h := _HEDGE_AFTER.match(text, end)) and not _is_article(h.group(1), text[h.end() :]):
        others.append(h.start(1))
        end = h.end()
    return tuple(others)


def _read_after(text: str, pos: int, options: Sequence[str]) -> tuple[int, str, bool, tuple[int, ...]] | None:
    """What an answer statement ending at `pos` names: (where, letter, by option text, where the letters listed
    with it start), or None."""
    rest = text[pos:]
    m = _TOKEN.match(rest)
    if m and not _is_article(m.group(1), rest[m.end() :]):
        return pos + m.start(1), m.group(1).upper(), False, _hedged_with(text, pos + m.end())
    window = max(len(o) for o in options) + 40  # bounded, so a long response stays linear
    line = rest[:window].split("\n", 1)[0]
    letter = _match_option_text(line, options, prefix=True)
    return (pos, letter, True, ()) if letter else None


def _rejections(text: str) -> list[tuple[int, int, str]]:
    """(start, end, letter) of every letter a sentence rejects."""
    out = []
    for pattern in _REJECT:
        for m in pattern.finditer(text):
            for t in _LETTER_IN_LIST.finditer(m.group(1)):
                out.append((m.start(1) + t.start(1), m.start(1) + t.end(1), t.group(1)))
    return out


def _statements(text: str, options: Sequence[str]) -> list[_Found]:
    found = []
    for strong, patterns in ((True, _STRONG), (False, _WEAK)):
        for pattern in patterns:
            for m in pattern.finditer(text):
                got = _read_after(text, m.end(), options)
                if got:
                    found.append(_Found(*got[:2], strong, *got[2:]))
    for pattern in _LETTER_FIRST:
        for m in pattern.finditer(text):
            before = _HEDGE_BEFORE.search(text, max(0, m.start() - 40), m.start())  # "A or B is correct"
            found.append(_Found(m.start(1), m.group(1), True, False, (before.start(),) if before else ()))
    return found


def _explicit_answer(text: str, options: Sequence[str]) -> Choice | None:
    """The final statement's letter (Choice(None, ...) when it was withdrawn); None if there is no statement."""
    rejected = _rejections(text)
    at_rejection = {start for start, _, _ in rejected}
    found = [f for f in _statements(text, options) if f.at not in at_rejection or f.by_text]
    if not found:
        return None
    strong = [f for f in found if f.strong]
    final = max(strong or found, key=lambda f: f.at)
    if any(letter == final.letter and start > final.at for start, _, letter in rejected):
        return Choice(None, "none")
    if any(at not in at_rejection for at in final.others):  # "A or B": a hedge names no answer
        return Choice(None, "none")
    return Choice(final.letter, "option_text" if final.by_text else "rule")


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


def _edge_pattern(option: str) -> re.Pattern:
    """The option's text as a whole-word pattern (no word boundary on a side that is not a letter or digit)."""
    body = re.escape(option)
    left = r"(?<!\w)" if option[0].isascii() and option[0].isalnum() else ""
    right = r"(?!\w)" if option[-1].isascii() and option[-1].isalnum() else ""
    return re.compile(left + body + right)


def _named_option(text: str, options: Sequence[str]) -> str | None:
    """The letter of the one option whose text the response names (not negated), else None."""
    norm_text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    norm = [_norm_option(o) for o in options]
    spans = []
    for i, o in enumerate(norm):
        if o and norm.count(o) == 1:
            spans += [(m.start(), m.end(), i) for m in _edge_pattern(o).finditer(norm_text)]
    inside = [any(a2 <= a and b <= b2 and (a2, b2) != (a, b) for a2, b2, _ in spans) for a, b, _ in spans]
    named = {i for (a, _, i), contained in zip(spans, inside, strict=True)
             if not contained and not _NEGATION.search(norm_text[max(0, a - 24) : a])}
    return LETTERS[named.pop()] if len(named) == 1 else None


def _read(text: str, options: Sequence[str], depth: int = 0) -> Choice:
    inner = enclosed(text) if depth == 0 else None
    if inner is not None:
        return _read(inner, options, depth + 1)
    explicit = _explicit_answer(text, options)
    if explicit is not None:
        return explicit
    by_line = _line_letters(text)
    if by_line:
        return Choice(by_line, "rule")
    whole = _match_option_text(text, options, prefix=False)
    if whole:
        return Choice(whole, "option_text")
    if not refuses(text):
        named = _named_option(text, options)
        if named:
            return Choice(named, "option_text")
    return Choice(None, "none")


def read_choice(response: str, options: Sequence[str]) -> Choice:
    """(letter or None, how it was decided) for `response`; see the module docstring for the rule."""
    if not options:
        raise ValueError("extract_choice needs the list of options (at least one)")
    text = prepare(response)
    if not text:
        return Choice(None, "none")
    choice = _read(text, options)
    if choice.letter is None or choice.letter not in LETTERS[: len(options)]:
        return Choice(None, "none")
    return choice


def extract_choice(response: str, options: Sequence[str]) -> str | None:
    """The chosen option letter (A, B, ...) of `response`, or None when no final answer can be read."""
    return read_choice(response, options).letter
