"""The demo's example items: what the student and the teacher see and answer, before and after Vision-OPD.

    rows = view_answers(model, teacher, processor, records, views)   # one phase (before or after training)
    write_examples(out / "examples.json", records, {"before": rows_before, "after": rows_after}, views, note)

For each item, greedy decoding: the student's response on the full image, its per-token KL to the teacher
and both views' log-probs of its tokens (the teacher reads the same tokens on the crop, as in training,
`scoring.response_hidden` + `divergence.token_divergence_from_hidden`), and the teacher's own response on
the crop. The answers are read with `eval.choice.extract_choice`. `vision-opd report` draws the page.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..data.records import LETTERS, Record
from ..data.views import ViewConfig, encode_views, student_view, teacher_view
from ..eval.choice import extract_choice
from ..losses.divergence import token_divergence_from_hidden
from ..losses.pure import DivergenceSpec
from ..models.loading import vision_token_ids
from ..models.parts import backbone_and_head, unwrap
from ..rollout import sample
from ..scoring.forward import response_hidden
from ..training.run_log import sample_rows

MAX_NEW_TOKENS = 8  # the demo's evaluation budget (demo.pretrain.evaluate_views)


def _answer(text: str, record: Record) -> dict:
    got = extract_choice(text, record.options) if record.options else None
    return {"extracted": got, "correct": got is not None and got == record.answer}


@torch.no_grad()
def view_answers(student, teacher, processor, records: list[Record], views: ViewConfig = ViewConfig()) -> list[dict]:
    """Per record: {"student": sample row (tokens, token_kl, both log-probs) + answer, "teacher": response + answer}."""
    suppress = vision_token_ids(unwrap(student), processor)
    s_in = encode_views(processor, [student_view(r, views) for r in records])
    t_in = encode_views(processor, [teacher_view(r, views) for r in records])
    ro = sample(student, processor, s_in, samples_per_prompt=1, max_new_tokens=MAX_NEW_TOKENS, suppress_ids=suppress,
                do_sample=False)
    mask = ro.response_mask_B_T
    sel = mask.bool()
    s_hidden = response_hidden(student, s_in, ro.response_ids_B_T, mask)
    t_hidden = response_hidden(teacher, t_in, ro.response_ids_B_T, mask)
    _, s_head = backbone_and_head(student)
    _, t_head = backbone_and_head(teacher)
    _, metrics = token_divergence_from_hidden(s_hidden[sel], t_hidden[sel], s_head.weight, ro.response_ids_B_T[sel],
                                              DivergenceSpec("jsd", alpha=1.0), teacher_lm_head_weight=t_head.weight)
    lengths = mask.sum(-1).long().tolist()
    values = {k: [v.tolist() for v in torch.split(metrics[k], lengths)]
              for k in ("reverse_kl", "student_logprob", "teacher_logprob")}
    rows = sample_rows(processor, records, ro, values, k=len(records))
    crop = sample(teacher, processor, t_in, samples_per_prompt=1, max_new_tokens=MAX_NEW_TOKENS, suppress_ids=suppress,
                  do_sample=False)
    out = []
    for b, r in enumerate(records):
        n = int(crop.response_mask_B_T[b].sum())
        t_text = processor.tokenizer.decode(crop.response_ids_B_T[b, :n].tolist(), skip_special_tokens=True)
        s_text = processor.tokenizer.decode(ro.response_ids_B_T[b, :lengths[b]].tolist(), skip_special_tokens=True)
        out.append({"student": {**rows[b], **_answer(s_text, r)}, "teacher": {"response": t_text, **_answer(t_text, r)}})
    return out


def write_examples(path: Path, records: list[Record], phases: dict[str, list[dict]], views: ViewConfig,
                   teacher_note: dict[str, str]) -> Path:
    """examples.json: the records (absolute image paths), the view config, and each phase's answers."""
    items = []
    for i, r in enumerate(records):
        rec = r.to_json()
        items.append({"record": rec, "gold_option": None if r.answer is None or not r.options
                      else r.options[LETTERS.index(r.answer)], **{p: rows[i] for p, rows in phases.items()}})
    path.write_text(json.dumps({"view_config": asdict(views), "teacher": teacher_note, "items": items}, indent=1),
                    encoding="utf-8")
    return path
