"""samples.jsonl: one line per (item, view), appended and flushed per batch, resumable.

A generator is any callable `generate(views: list[View]) -> list[Generation]` (`hf_backend.HFGenerator`,
`openai_backend.OpenAIGenerator`). `generate_samples` feeds it batches of (record, view), grades each response with
the benchmark's `score` and a failure kind (`grading.failure_kind`), and appends one line per sample; a rerun skips
the (id, view) pairs already there, except `request_failed` ones, which it asks again (a truncated last line is
dropped). The fields of a line are listed in `SAMPLE_FIELDS` and documented in docs/eval.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..data.records import Record
from ..data.views import View, ViewConfig
from ..data.writes import write_text_atomic, writing
from .benchmarks.common import format_prompt, score_record
from .grading import failure_kind
from .views import EvalError, view_available, view_of

SAMPLES = "samples.jsonl"
SAMPLE_FIELDS = ("id", "view", "prompt", "response", "extracted", "gold", "correct", "category", "response_tokens",
                 "truncated", "seconds", "method", "failure", "error")


@dataclass
class Generation:
    text: str  # the raw response (special tokens other than EOS kept, so `<think>` survives)
    tokens: int | None  # response tokens up to and including EOS (None: the server did not say)
    truncated: bool  # no EOS within max_new_tokens
    seconds: float  # this item's share of its batch's wall time
    error: str | None = None  # the request failed after its retries (text is then "")


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a samples.jsonl, first of each (id, view); a broken last line is dropped, and so are
    `request_failed` samples (a rerun asks for them again).

    The file is rewritten with only those lines, so the next append never lands on a half line.
    """
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    kept, seen = [], set()
    for n, line in enumerate(lines):
        try:
            s = json.loads(line)
            key = (s["id"], s["view"])
        except (json.JSONDecodeError, KeyError, TypeError):
            if n == len(lines) - 1:  # an interrupted write: redo that item
                break
            raise EvalError(f"{path}: line {n + 1} is not a sample; delete the file to start over") from None
        if key not in seen and s.get("failure") != "request_failed":
            seen.add(key)
            kept.append(s)
    write_samples(path, kept)
    return kept


def write_samples(path: Path, samples: Sequence[dict[str, Any]]) -> None:
    """Replace `path` with `samples` (atomically: a temporary file, then a rename)."""
    write_text_atomic(path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))


def make_sample(record: Record, view: str, g: Generation, score: Callable[[Record, str], dict]) -> dict[str, Any]:
    """One line of samples.jsonl: the raw response, its answer, how it was decided, and the failure kind if none."""
    s = score(record, g.text) if g.error is None else {"extracted": None, "correct": False, "method": "none"}
    return {
        "id": record.id, "view": view, "prompt": format_prompt(record), "response": g.text,
        "extracted": s["extracted"], "gold": record.answer, "correct": bool(s["correct"]),
        "category": record.category, "response_tokens": g.tokens, "truncated": g.truncated,
        "seconds": round(g.seconds, 4), "method": s.get("method", "rule" if s["extracted"] is not None else "none"),
        "failure": failure_kind(g.text, s["extracted"], truncated=g.truncated, error=g.error),
        "error": g.error,
    }


def generate_samples(generate: Callable[[list[View]], list[Generation]], records: Sequence[Record],
                     views: Sequence[str] = ("full",), *, batch_size: int = 8, samples_path: Path | None = None,
                     view_cfg: ViewConfig = ViewConfig(), score: Callable[[Record, str], dict] = score_record,
                     progress: bool = False) -> dict[str, list[dict[str, Any]]]:
    """{view: samples in record order}; pairs already in `samples_path` are read back, not regenerated."""
    from tqdm.auto import tqdm

    done = {(s["id"], s["view"]): s for s in read_samples(samples_path)} if samples_path else {}
    with writing(SAMPLES, samples_path or SAMPLES):
        out = open(samples_path, "a", encoding="utf-8") if samples_path else None
    try:
        for view in views:
            todo = [r for r in records if view_available(r, view) and (r.id, view) not in done]
            for start in tqdm(range(0, len(todo), batch_size), desc=view, disable=not progress, leave=False):
                batch = todo[start:start + batch_size]
                gens = generate([view_of(r, view, view_cfg) for r in batch])
                if len(gens) != len(batch):
                    raise EvalError(f"the generator returned {len(gens)} responses for {len(batch)} prompts")
                for r, g in zip(batch, gens, strict=True):
                    done[(r.id, view)] = make_sample(r, view, g, score)
                if out:
                    with writing(SAMPLES, samples_path):
                        out.write("".join(json.dumps(done[(r.id, view)], ensure_ascii=False) + "\n" for r in batch))
                        out.flush()
    finally:
        if out:
            try:
                out.close()
            except OSError:  # a full disk: the failed write has said so; read_samples drops a torn last line
                pass
    return {v: [done[(r.id, v)] for r in records if (r.id, v) in done] for v in views}
