"""What every benchmark shares: the task object, the one prompt builder, option parsing, per-item scoring
and the accuracy tables the official aggregations are built from.

A per-item result (what `Benchmark.score` returns and `Benchmark.aggregate` consumes) is a dict with at
least `correct` (bool) and `category`; benchmark-specific keys (HR-Bench `cycle_category`,
MME-RealWorld `task`/`subtask`/`l2_category`, POPE `gold`/`extracted`) are read from the dict itself or
from its `meta` dict, which `score_record` fills with the Record's meta.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from vision_opd.data.records import LETTERS, Record
from vision_opd.data.files import DataFileError, ImageCache, Row, default_cache_dir
from vision_opd.eval.extraction import EXTRACTION_RULE
from vision_opd.eval.grading import score_choice, score_open, score_yes_no
from vision_opd.eval.statistics import bootstrap_ci

MC_SUFFIX = "Answer with the option's letter from the given choices directly."
SHORT_SUFFIX = "Answer the question using a single word or phrase."


def format_prompt(record: Record) -> str:
    """The one prompt of every benchmark: the question, its options as "A. ..." lines, the instruction.

    Without options (POPE, ZoomBench's open questions) the instruction asks for a word or phrase.
    """
    question = record.question.strip()
    if record.options:
        lines = [question] + [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(record.options)] + [MC_SUFFIX]
        return "\n".join(lines)
    return f"{question}\n{SHORT_SUFFIX}"


def score_record(record: Record, response: str) -> dict[str, Any]:
    """Score one response: option letter for multiple choice, yes/no, else a normalised short answer."""
    if record.answer is None:
        raise DataFileError(f"record {record.id!r} has no answer, so it cannot be scored")
    if record.options:
        scored = score_choice(response, record.options, record.answer)
    elif record.answer.strip().lower() in ("yes", "no"):
        scored = score_yes_no(response, record.answer)
    else:
        scored = score_open(response, record.answer)
    return {
        "id": record.id,
        "category": record.category,
        "gold": record.answer,
        **scored,
        "extraction_rule": EXTRACTION_RULE,
        "meta": dict(record.meta),
    }


@dataclass(frozen=True)
class Benchmark:
    """A benchmark task: `load(path_or_id, **kw) -> list[Record]`, the prompt, the target, scoring and
    the official aggregation. Calling the object loads it."""

    name: str
    load: Callable[..., list[Record]]
    aggregate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    description: str = ""
    # The official overall accuracy as a statistic of per-item correctness, for its confidence interval: the mean
    # over `stratum(record)` groups of each group's accuracy (None: the plain mean), resampling whole
    # `cluster(record)` groups (None: items one by one).
    stratum: Callable[[Record], Any] | None = None
    cluster: Callable[[Record], Any] | None = None

    def __call__(self, path_or_id: str | Path, **kw: Any) -> list[Record]:
        return self.load(path_or_id, **kw)

    def format_prompt(self, record: Record) -> str:
        return format_prompt(record)

    def target(self, record: Record) -> str | None:
        return record.answer

    def score(self, record: Record, response: str) -> dict[str, Any]:
        return score_record(record, response)


# ----------------------------------------------------------------------------- options and answers

_OPTION_LINE = re.compile(r"^\s*(?:\(\s*([A-Z])\s*\)|（([A-Z])）|([A-Z])\s*[.)．:：])\s*(.*?)\s*$")
_INSTRUCTION_LINES = (
    "answer with the option",
    "answer the option letter",
    "select the best answer",
    "please select the correct answer",
)


def split_options(text: str) -> tuple[str, list[str] | None]:
    """Split "question\\n(A) x\\n(B) y" (also "A. x", "A) x", "（A）x") into the question and option texts.

    Trailing instruction lines ("Answer with the option's letter ...") are dropped, so a prompt suffix
    never ends up inside the last option. Options on one line ("... (A) left (B) right") are accepted
    too. Returns (text, None) when there are not at least two options lettered A, B, ... in order.
    """
    lines = text.replace("\r\n", "\n").rstrip().split("\n")
    while lines and (not lines[-1].strip() or lines[-1].strip().lower().startswith(_INSTRUCTION_LINES)):
        lines.pop()
    found: list[tuple[str, str]] = []
    i = len(lines)
    while i > 0:
        line = lines[i - 1]
        if not line.strip():
            i -= 1
            continue
        m = _OPTION_LINE.match(line)
        if not m:
            break
        found.append((m.group(1) or m.group(2) or m.group(3), m.group(4)))
        i -= 1
    found.reverse()
    if len(found) < 2 or [letter for letter, _ in found] != list(LETTERS[: len(found)]):
        return _inline_options("\n".join(lines).strip())
    return "\n".join(lines[:i]).strip(), [opt for _, opt in found]


_INLINE_MARK = re.compile(r"(?:^|(?<=\s))[(（]([A-Z])[)）]\s*")


def _inline_options(text: str) -> tuple[str, list[str] | None]:
    """ "Is it left or right? (A) left (B) right": the last run of "(A) .. (B) .." at the end of the text."""
    marks = list(_INLINE_MARK.finditer(text))
    starts = [k for k, m in enumerate(marks) if m.group(1) == "A"]
    if not starts:
        return text, None
    run = marks[starts[-1] :]
    if len(run) < 2 or [m.group(1) for m in run] != list(LETTERS[: len(run)]):
        return text, None
    ends = [m.start() for m in run[1:]] + [len(text)]
    options = [text[m.end() : end].strip() for m, end in zip(run, ends, strict=True)]
    if not all(options):
        return text, None
    return text[: run[0].start()].strip(), options


_PREFIX = re.compile(r"^\s*(?:[(（]\s*([A-Z])\s*[)）]|([A-Z])\s*[.．:：)])\s*")


def strip_option_prefix(option: str, letter: str, where: str) -> str:
    """ "(A) 458" -> "458"; the prefix letter must be `letter`; an option without a prefix is kept as is."""
    m = _PREFIX.match(option)
    if not m:
        return option.strip()
    got = m.group(1) or m.group(2)
    if got != letter:
        raise DataFileError(f"{where}: option {option!r} is labelled {got!r} but is in position {letter!r}")
    return option[m.end() :].strip()


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def letter_columns(row: Row) -> list[str]:
    """Options stored as columns A, B, C, ... (VLMEvalKit TSVs); stops at the first missing or empty one."""
    options = []
    for letter in LETTERS:
        if _empty(row.get(letter)):
            break
        v = row[letter]
        options.append(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v).strip())
    return options


def normalise_letter(value: Any, options: list[str], where: str) -> str:
    """The answer as a letter within the options' range; "(B)", "b", "B." and an option's text are accepted."""
    s = str(value).strip()
    m = re.fullmatch(r"[(（]?\s*([A-Za-z])\s*[)）.]?", s)
    letter = m.group(1).upper() if m else None
    if letter is None and s in options:
        letter = LETTERS[options.index(s)]
    if letter is None or letter not in LETTERS[: len(options)]:
        raise DataFileError(
            f"{where}: answer {s!r} is not one of the option letters "
            f"{LETTERS[0]}-{LETTERS[len(options) - 1]} ({len(options)} options)"
        )
    return letter


def text_of(value: Any) -> str:
    """A cell as text: ints stay ints (a parquet id 3 -> "3", a TSV float 3.0 -> "3")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def cache_for(path: str | Path, cache_dir: str | Path | None) -> ImageCache:
    return ImageCache(cache_dir if cache_dir is not None else default_cache_dir(path))


def unique_ids(records: list[Record], fallback: Callable[[Record], str], what: str) -> list[Record]:
    """Make ids unique: if any id repeats, every record's id becomes `fallback(record)`; error if still not unique."""
    ids = [r.id for r in records]
    if len(set(ids)) == len(ids):
        return records
    for r in records:
        r.id = fallback(r)
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise DataFileError(f"{what}: duplicate id {r.id!r} even after qualifying ids; the file has repeated rows")
        seen.add(r.id)
    return records


def take(rows: Iterable[Any], limit: int | None) -> Iterable[Any]:
    for n, row in enumerate(rows):
        if limit is not None and n >= limit:
            return
        yield row


# ----------------------------------------------------------------------------- aggregation


def result_field(result: dict[str, Any], key: str) -> Any:
    """result[key], falling back to result['meta'][key]."""
    if key in result:
        return result[key]
    return (result.get("meta") or {}).get(key)


def correctness(results: list[dict[str, Any]]) -> list[float]:
    out = []
    for n, r in enumerate(results):
        c = r.get("correct")
        if not isinstance(c, (bool, int, float)) or isinstance(c, float) and c != c:
            raise DataFileError(f"result {n} (id {r.get('id')!r}): 'correct' must be a bool, got {c!r}")
        out.append(float(bool(c)))
    return out


def accuracy_by(results: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> tuple[dict, dict]:
    """(accuracy per group, count per group), groups in sorted order; results whose key is None are skipped."""
    hits: dict[Any, list[float]] = defaultdict(list)
    for r, c in zip(results, correctness(results), strict=True):
        k = key(r)
        if k is not None:
            hits[k].append(c)
    acc = {k: sum(v) / len(v) for k, v in sorted(hits.items(), key=lambda kv: str(kv[0]))}
    counts = {k: len(hits[k]) for k in acc}
    return acc, counts


def micro_summary(name: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Overall accuracy (micro mean over items, with a 95% bootstrap CI) and accuracy per category."""
    if not results:
        raise DataFileError(f"{name}: no per-item results to aggregate")
    values = correctness(results)
    per_category, counts = accuracy_by(results, lambda r: result_field(r, "category"))
    return {
        "benchmark": name,
        "n": len(values),
        "overall": sum(values) / len(values),
        "overall_ci95": list(bootstrap_ci(values)),
        "per_category": per_category,
        "counts": counts,
        "unextracted": sum(bool(r.get("unextracted")) for r in results),
        "extraction_rule": EXTRACTION_RULE,
    }
