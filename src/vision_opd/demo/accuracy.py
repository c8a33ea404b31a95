"""Batched greedy multiple-choice accuracy of a model on Records under one view.

    from vision_opd.data.views import student_view, teacher_view
    acc = accuracy(model, processor, records, student_view)        # full image
    acc = accuracy(model, processor, records, teacher_view)        # evidence crop
    acc["accuracy"], acc["per_category"]["colour"]

Decoding is greedy (no sampling), vision tokens suppressed, `max_new_tokens` tokens at most; the answer
is read with `vision_opd.eval.choice.extract_choice` (the final answer wins; an unreadable response
counts as wrong, never as a guess). Records need `options` and a letter `answer`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch

from ..data.records import Record
from ..data.views import View, encode_views
from ..rollout import sample


def _extract(response: str, options: list[str]) -> str | None:
    from ..eval.choice import extract_choice

    return extract_choice(response, options)


@torch.no_grad()
def accuracy(model, processor, records: list[Record], view_fn: Callable[[Record], View], batch_size: int = 64,
             *, max_new_tokens: int = 4, progress: bool = False, desc: str = "eval") -> dict:
    """{"accuracy", "n", "unreadable", "per_category": {category: accuracy}, "correct": [bool per record]}."""
    from ..models.loading import vision_token_ids
    from ..models.parts import unwrap

    from tqdm.auto import tqdm

    suppress = vision_token_ids(unwrap(model), processor)
    was_training = model.training
    model.eval()
    correct: list[bool] = []
    unreadable = 0
    for start in tqdm(range(0, len(records), batch_size), desc=desc, disable=not progress, leave=False):
        batch = records[start:start + batch_size]
        inputs = encode_views(processor, [view_fn(r) for r in batch]).to(next(model.parameters()).device)
        ro = sample(model, processor, inputs, samples_per_prompt=1, max_new_tokens=max_new_tokens,
                    suppress_ids=suppress, do_sample=False)
        for r, ids, m in zip(batch, ro.response_ids_B_T, ro.response_mask_B_T, strict=True):
            text = processor.tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=True)
            got = _extract(text, r.options or [])
            unreadable += got is None
            correct.append(got is not None and got == r.answer)
    if was_training:
        model.train()
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for r, c in zip(records, correct, strict=True):
        by_cat[r.category or "all"].append(c)
    n = max(1, len(correct))
    return {
        "accuracy": sum(correct) / n,
        "n": len(correct),
        "unreadable": unreadable / n,
        "per_category": {k: sum(v) / len(v) for k, v in sorted(by_cat.items())},
        "correct": correct,
    }
