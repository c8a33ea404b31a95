"""The step's responses: who writes the tokens the loss is read on (`rollout.source`), and which of them count.

    resp = collect_responses(cfg.rollout, ctx, StepViews(records, s_views, s_inputs, t_inputs))
    resp.rollout          # all P x G responses, prompt-major (as `engine.sample`), with their own masks
    resp.loss_mask_B_T    # the rollout's mask with left-out responses zeroed: what the loss reads
    resp.counts           # for the metrics (`response_metrics`)

- `student` (Vision-OPD, on-policy): the student samples G responses per prompt on its own (full-image) view,
  through the rollout engine (`rollout.engine`: HF generate or vLLM).
- `teacher` (off-policy): the teacher answers on its own view (the crop), sampled at the rollout's temperature and
  top_p or greedy (`teacher_do_sample`); the student is then scored on those tokens with its full image: soft targets
  with jsd / topk, or `loss.kind=ce`, the cross-entropy on the teacher's tokens (sequence-level KD, the SFT of the
  teacher's answers). The teacher generates with its own weights (frozen / EMA / live) under `teacher.scoring()`,
  with HF generate whatever the engine (the engine holds the student's weights).
- `mix` (GKD): per prompt, the student with probability `student_fraction`, else the teacher: each step takes
  k = floor(P f) + Bernoulli(P f - floor(P f)) student prompts, chosen at random, so the expected share is exactly f
  in every step (and exact when P f is a whole number). The choice draws from torch's RNG (saved in checkpoints).

Then, per response: a teacher response with no extractable answer (`eval.choice.extract_choice` for multiple
choice, `extract_open` otherwise) is left out when `drop_unanswered`; degenerate responses (degenerate.py) are
counted and left out when `drop_degenerate`. With `keep_solved_prompts` (CV-OPD's prompt filter; it READS THE
LABELS, `record.answer`, so the run is no longer label-free) a prompt none of whose G responses is right by its
answer key is left out whole (counted as `unsolved_prompts`). A left-out response keeps its row (so the logs see
every response) with an all-zero loss mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..rollout import HFLoop, Rollout, sample
from ..rollout.degenerate import degenerate_flags
from ..scoring.forward import select_prompts
from .context import StepContext, StepViews

COUNTS = ("prompts", "student_prompts", "responses", "teacher_responses", "unanswered", "repetitive", "runaway",
          "degenerate", "left_out", "unsolved_prompts")


@dataclass
class Responses:
    rollout: Rollout  # every response, its own mask (lengths, truncation and sample logs read this)
    loss_mask_B_T: torch.Tensor  # rollout mask with left-out responses zeroed
    from_teacher_B: torch.Tensor  # bool: the teacher wrote this response
    counts: dict[str, int]  # COUNTS, this process's share


def student_prompts(P: int, fraction: float) -> torch.Tensor:
    """bool [P]: which prompts the student answers (rollout.source=mix), k = floor(P f) + Bernoulli(frac) of them."""
    base = math.floor(P * fraction)
    k = base + int(torch.rand(()).item() < P * fraction - base)
    chosen = torch.zeros(P, dtype=torch.bool)
    chosen[torch.randperm(P)[:k]] = True
    return chosen


def collect_responses(cfg, ctx: StepContext, views: StepViews) -> Responses:
    """The step's responses as configured by `cfg` (a RolloutConfig); see the module docstring."""
    records, s_inputs, s_views, t_inputs = views.records, views.student_inputs, views.student_views, views.teacher_inputs
    teacher, processor, vision_start_id = ctx.teacher, ctx.processor, ctx.vision_start_id
    P, G = len(records), cfg.samples_per_prompt
    if cfg.source == "student":
        by_teacher_P = torch.zeros(P, dtype=torch.bool)
    elif cfg.source == "teacher":
        by_teacher_P = torch.ones(P, dtype=torch.bool)
    else:
        by_teacher_P = ~student_prompts(P, cfg.student_fraction)
    kw = dict(samples_per_prompt=G, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
              suppress_ids=ctx.suppress_ids)
    parts = []
    if not by_teacher_P.all():
        rows = torch.nonzero(~by_teacher_P).flatten()
        inputs = s_inputs if len(rows) == P else select_prompts(s_inputs, rows.to(s_inputs["input_ids"].device), vision_start_id)
        parts.append((rows, ctx.rollout_engine(cfg).sample(ctx.model, inputs, [s_views[int(i)] for i in rows])))
    if by_teacher_P.any():
        rows = torch.nonzero(by_teacher_P).flatten()
        t_device = teacher.device or t_inputs["input_ids"].device
        inputs = t_inputs if len(rows) == P else select_prompts(t_inputs, rows.to(t_inputs["input_ids"].device), vision_start_id)
        with teacher.scoring() as t_model:
            ro = sample(t_model, processor, {k: v.to(t_device) for k, v in inputs.items()}, do_sample=cfg.teacher_do_sample,
                        loop=HFLoop(cfg.hf_decoder, synced_gpus=ctx.synced_gpus and teacher.mode == "live"), **kw)
        parts.append((rows, ro))
    rollout = _merge(parts, P, G, processor.tokenizer.pad_token_id, s_inputs["input_ids"].device)
    from_teacher_B = by_teacher_P.repeat_interleave(G)
    keep_B = torch.ones(P * G, dtype=torch.bool)
    unanswered_B = torch.zeros(P * G, dtype=torch.bool)
    if cfg.drop_unanswered and from_teacher_B.any():
        unanswered_B = from_teacher_B & ~_answered(processor, records, rollout)
        keep_B &= ~unanswered_B
    repetitive_B, runaway_B = degenerate_flags(rollout.response_ids_B_T, rollout.response_mask_B_T, rollout.truncated_B,
                                               ngram=cfg.repeat_ngram, count=cfg.repeat_count,
                                               runaway_tokens=cfg.runaway_tokens)
    degenerate_B = repetitive_B | runaway_B
    if cfg.drop_degenerate:
        keep_B &= ~degenerate_B
    unsolved_P = torch.zeros(P, dtype=torch.bool)
    if cfg.keep_solved_prompts:  # reads the labels (checked present when the data loaded)
        unsolved_P = ~_correct(processor, records, rollout).view(P, G).any(1)
        keep_B &= ~unsolved_P.repeat_interleave(G)
    loss_mask = rollout.response_mask_B_T * keep_B.to(rollout.response_mask_B_T)[:, None]
    counts = {"prompts": P, "student_prompts": int((~by_teacher_P).sum()), "responses": P * G,
              "teacher_responses": int(from_teacher_B.sum()), "unanswered": int(unanswered_B.sum()),
              "repetitive": int(repetitive_B.sum()), "runaway": int(runaway_B.sum()),
              "degenerate": int(degenerate_B.sum()), "left_out": int((~keep_B).sum()),
              "unsolved_prompts": int(unsolved_P.sum())}
    return Responses(rollout, loss_mask, from_teacher_B, counts)


def response_metrics(counts: dict[str, float]) -> dict[str, float]:
    """Rates for metrics.jsonl from (globally summed) `COUNTS`."""
    n = max(1.0, counts["responses"])
    teacher = counts["teacher_responses"]
    return {"student_share": counts["student_prompts"] / max(1.0, counts["prompts"]),
            "unanswered_rate": counts["unanswered"] / teacher if teacher else 0.0,
            "repetitive_rate": counts["repetitive"] / n, "runaway_rate": counts["runaway"] / n,
            "degenerate_rate": counts["degenerate"] / n, "left_out": int(counts["left_out"]),
            "unsolved_prompt_rate": counts["unsolved_prompts"] / max(1.0, counts["prompts"])}


def _merge(parts: list[tuple[torch.Tensor, Rollout]], P: int, G: int, pad_id: int, device) -> Rollout:
    """One prompt-major Rollout of P x G rows from per-source Rollouts over subsets of the prompts."""
    if len(parts) == 1 and len(parts[0][0]) == P:
        ro = parts[0][1]
        return Rollout(ro.response_ids_B_T.to(device), ro.response_mask_B_T.to(device), ro.truncated_B.to(device),
                       ro.prompt_index_B.to(device), _on(ro.logprobs_B_T, device))
    T = max(ro.response_ids_B_T.shape[1] for _, ro in parts)
    ids = torch.full((P * G, T), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(P * G, T, device=device)
    truncated = torch.zeros(P * G, dtype=torch.bool, device=device)
    logprobs = torch.zeros(P * G, T, device=device)  # each part's engine log-probs (the teacher's own on its rows)
    for prompts, ro in parts:
        dest = (prompts[:, None] * G + torch.arange(G)[None, :]).flatten().to(device)  # this part's rows, prompt-major
        t = ro.response_ids_B_T.shape[1]
        ids[dest, :t] = ro.response_ids_B_T.to(device)
        mask[dest, :t] = ro.response_mask_B_T.to(device, mask.dtype)
        truncated[dest] = ro.truncated_B.to(device)
        if ro.logprobs_B_T is not None:
            logprobs[dest, :t] = ro.logprobs_B_T.to(device, logprobs.dtype)
    return Rollout(ids, mask, truncated, torch.arange(P, device=device).repeat_interleave(G), logprobs)


def _on(x: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if x is None else x.to(device)


def _texts(processor, rollout: Rollout) -> list[str]:
    lengths = rollout.response_mask_B_T.sum(-1).long().tolist()
    return [processor.tokenizer.decode(rollout.response_ids_B_T[b, :n].tolist(), skip_special_tokens=True)
            for b, n in enumerate(lengths)]


def _correct(processor, records, rollout: Rollout) -> torch.Tensor:
    """bool [B]: the response is right by its record's answer key (the evaluation's grading). Reads labels."""
    from ..eval.benchmarks.common import score_record

    texts = _texts(processor, rollout)
    return torch.tensor([bool(score_record(records[int(rollout.prompt_index_B[b])], t)["correct"])
                         for b, t in enumerate(texts)], dtype=torch.bool)


def _answered(processor, records, rollout: Rollout) -> torch.Tensor:
    """bool [B]: the response holds an extractable final answer (a letter of the record's options, or an open answer)."""
    from ..eval.choice import extract_choice
    from ..eval.extraction import extract_open

    out = []
    for b, text in enumerate(_texts(processor, rollout)):
        r = records[int(rollout.prompt_index_B[b])]
        out.append((extract_choice(text, r.options) if r.options else extract_open(text)) is not None)
    return torch.tensor(out, dtype=torch.bool)
