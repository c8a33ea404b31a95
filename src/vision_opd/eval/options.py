"""How an evaluation runs (not what it evaluates): item limit, batch size, progress bar, judge, response budget.

    evaluate(generator, "vstar", "/data/vstar", "runs/eval/vstar", EvalOptions(batch_size=16, limit=100))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class EvalOptions:
    limit: int | None = None  # the first N items of the benchmark
    batch_size: int = 8
    progress: bool = True
    judge: Any = None  # eval.judge.Judge: an LLM judge for the responses no rule could read
    response_budget: dict[str, Any] | None = None  # max_new_tokens / thinking, recorded in the settings
    command_line: Sequence[str] | None = None  # recorded in results.json's provenance
    box_format: str = "auto"  # how the Records JSONL writes its boxes (data/doctor.py); recorded in the settings
