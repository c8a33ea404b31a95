"""Thinking models: a response budget per mode, the thought a chat template opens, truncated thoughts.

A model that thinks writes `<think> ... </think>` before its answer. The answer is read only after the last
`</think>` (`extraction.strip_reasoning`), so a thought is never scanned for the answer, and a thought cut at the
response budget has no answer: its failure kind is `truncated` (`grading.failure_kind`), reported as
`thinking.unfinished_rate` beside the truncation rate.

Budgets: `--max-new-tokens` when given; otherwise ANSWER_BUDGET tokens in answer mode (no `--thinking`, or
`--no-thinking`) and THINKING_BUDGET with `--thinking`.

Some chat templates open the thought themselves (the generation prompt ends with `<think>`), so the model's own
text holds only `</think>`. In-process, a response to such a prompt that has neither tag is an unfinished thought
and is stored with the `<think>` that opened it; through a server (which does not show the prompt), so is a
response cut at the budget in thinking mode with neither tag.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from .extraction import unfinished_thought

ANSWER_BUDGET = 32
THINKING_BUDGET = 8192
_TURN = re.compile(r"<\|im_start\|>assistant|<\|assistant\|>|<start_of_turn>model|\[/INST\]")


def response_budget(max_new_tokens: int | None, enable_thinking: bool | None) -> dict[str, Any]:
    """{"mode", "max_new_tokens", "source"}: the response token budget for this mode."""
    mode = "thinking" if enable_thinking else "answer"
    if max_new_tokens is not None:
        if max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
        return {"mode": mode, "max_new_tokens": int(max_new_tokens), "source": "--max-new-tokens"}
    default = THINKING_BUDGET if enable_thinking else ANSWER_BUDGET
    return {"mode": mode, "max_new_tokens": default, "source": f"default for {mode} mode"}


def prompt_opens_think(chat_text: str) -> bool:
    """Whether the generation prompt (the text after the last assistant turn marker) leaves a `<think>` open."""
    turns = list(_TURN.finditer(chat_text))
    tail = chat_text[turns[-1].end():] if turns else chat_text[-64:]
    return tail.rfind("<think>") > tail.rfind("</think>")


def as_thought(text: str, opened: bool) -> str:
    """The response as its turn reads: `<think>` + text when a thought was opened for it and it has neither tag."""
    if opened and "<think>" not in text and "</think>" not in text:
        return "<think>" + text
    return text


def thinking_stats(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Share of responses with a thought, share ending inside one (truncated thoughts), thought length in chars."""
    with_thought = [s for s in samples if "<think>" in (s.get("response") or "") or "</think>" in (s.get("response") or "")]
    lengths = [len((s["response"] or "").split("</think>")[0]) for s in with_thought]
    n = max(1, len(samples))
    return {
        "with_thought_rate": len(with_thought) / n,
        "unfinished_rate": sum(unfinished_thought(s.get("response") or "") for s in samples) / n,
        "mean_thought_chars": (sum(lengths) / len(lengths)) if lengths else None,
    }
