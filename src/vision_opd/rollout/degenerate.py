"""Degenerate responses: repetition loops and runaway length, per response.

    repetitive_B, runaway_B = degenerate_flags(ids_B_T, mask_B_T, truncated_B, ngram=4, count=4, runaway_tokens=0)

A response is *repetitive* when one n-gram of `ngram` tokens occurs at least `count` times in it (occurrences
may overlap: "b b b b b b b" holds the 4-gram "b b b b" four times), the loop a collapsing teacher or student
falls into ("bbbbbbbb" to the token limit, docs/demo.md; the reference code's retrains produced answers of
94k characters). It is *runaway* when it has no end-of-turn within the rollout's `max_new_tokens`
(`truncated_B`), or, with `runaway_tokens > 0`, when it is at least that many tokens long. The step logs both
rates; `rollout.drop_degenerate` leaves such responses out of the loss (responses.py).
"""

from __future__ import annotations

from collections import Counter

import torch


def max_ngram_count(tokens: list[int], n: int) -> int:
    """How often the most frequent n-gram of `tokens` occurs (overlapping occurrences count); 0 if len < n."""
    if len(tokens) < n:
        return 0
    return max(Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)).values())


def degenerate_flags(ids_B_T: torch.Tensor, mask_B_T: torch.Tensor, truncated_B: torch.Tensor, *, ngram: int = 4,
                     count: int = 4, runaway_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(repetitive_B, runaway_B), bool, on the CPU: see the module docstring. count=0 turns the repetition check off."""
    lengths = mask_B_T.sum(-1).long().cpu()
    rows = ids_B_T.cpu().tolist()
    repetitive = torch.tensor([count > 0 and max_ngram_count(r[:n], ngram) >= count
                               for r, n in zip(rows, lengths.tolist(), strict=True)], dtype=torch.bool)
    runaway = truncated_B.cpu().bool().clone()
    if runaway_tokens > 0:
        runaway |= lengths >= runaway_tokens
    return repetitive, runaway
