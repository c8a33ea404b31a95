"""`vision_opd_step`: one optimizer step of Vision-OPD, numbered 1-6, top to bottom.

    ctx = StepContext(model, teacher, processor, optimizer, scheduler, suppress_ids, device, engine, accelerator)
    result = vision_opd_step(cfg, ctx, records)   # result.metrics, result.rollout, result.token_values

Take P prompts; the student samples G responses each on the full image (on-policy; or the teacher on its crop, or a
mix per prompt: `rollout.source`, responses.py); the teacher (frozen / ema / live weights) reads the same responses
on the crop under no_grad; the student reads them on the full image with grad; the loss is a token-level divergence
at the response tokens, summed per micro-batch and divided by the step's total response-token count (so
micro-batching gives the same gradient as one big batch); backward, clip, AdamW, schedule, EMA update, weight sync.
No labels are read: `Record.answer` is never touched here. The run loop around it is loop.py.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from functools import partial

import torch

from ..config import Config
from ..data.records import Record
from ..data.views import encode_views, student_view, teacher_view
from ..losses.divergence import token_divergence, token_divergence_from_hidden
from ..losses.pure import DivergenceSpec, masked_token_mean
from ..models.parts import backbone_and_head, is_fsdp
from ..rollout.mismatch import (
    MismatchStats,
    sampled_token_logprobs,
    sampled_token_logprobs_from_hidden,
    truncated_is_weights,
)
from ..scoring.forward import score_responses
from .batching import PLAN_COUNTS, padding_metrics, step_plan
from .context import StepContext, StepViews
from .distributed import grad_sync
from .guards import SKIP_NO_TOKENS, SKIP_NON_FINITE
from .negatives import MicroBatchTokens, negative_teacher
from .responses import COUNTS, collect_responses, response_metrics


def autocast(cfg: Config, device: torch.device):
    """bf16 compute over fp32 master weights when train.mixed_precision=bf16 (the divergence itself is float32)."""
    if cfg.train.mixed_precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@dataclass
class StepResult:
    metrics: dict
    rollout: object
    token_values: dict  # {metric: per-sample lists of per-token values} for the sample log (TOKEN_METRICS)
    responses: object = None  # responses.Responses: who wrote each response, the loss mask


# per-token values kept for samples.jsonl and tokens.jsonl ("divergence" = the loss value of each token)
TOKEN_METRICS = ("reverse_kl", "student_logprob", "teacher_logprob", "student_entropy", "teacher_entropy", "divergence")


def vision_opd_step(cfg: Config, ctx: StepContext, records: list[Record], n_real: int | None = None) -> StepResult:
    """One optimizer step of Vision-OPD on `records` (this rank's share of the step's prompts).

    With an accelerate `accelerator` over N processes, the loss of each rank is its token sum divided by the
    *global* response-token count, times N (DDP averages gradients over ranks), so N ranks give the same
    gradient as one process over all prompts; gradients sync once, on the last micro-batch. Only the first
    `n_real` records (default: all) count: the rest pad this rank's share to the others' size (`Ranks.shard`), so
    every rank runs the same forwards, and their tokens are left out of the loss, the token count and the metrics.
    Whether the step is skipped (a non-finite loss or gradient, or no loss token at all) is decided from all ranks'
    values together; `metrics["skip_reason"]` says which.
    `ctx.engine` samples the rollouts and receives the new weights after the optimizer step (default: the HF engine).
    """
    model, teacher, processor, device, accelerator = ctx.model, ctx.teacher, ctx.processor, ctx.device, ctx.accelerator
    optimizer, scheduler, suppress_ids, world = ctx.optimizer, ctx.scheduler, ctx.suppress_ids, ctx.world
    engine = ctx.rollout_engine(cfg.rollout)

    def global_sum(x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return accelerator.reduce(x.detach().clone().to(device), reduction=reduction) if world > 1 else x

    temperature = 1.0 if cfg.loss.kind == "ce" else cfg.rollout.temperature  # ce is an SFT loss: logits as they are
    spec = DivergenceSpec.of_loss(cfg.loss, temperature)
    # each view's forward at the response positions: each prompt once for its rows (train.share_prompts) or per row
    score = partial(score_responses, vision_start_id=ctx.vision_start_id, shared=cfg.train.share_prompts)
    t0 = time.perf_counter()
    # 1. the two views, through one preprocessing path
    s_views = [student_view(r, cfg.views) for r in records]
    s_inputs = encode_views(processor, s_views).to(device)
    t_inputs = encode_views(processor, [teacher_view(r, cfg.views) for r in records]).to(device)
    t1 = time.perf_counter()
    # 2. responses: on-policy, the student samples G per prompt on its own (full-image) view; or the teacher on its
    #    view, or a mix per prompt (rollout.source); left-out responses (unanswered, degenerate) get a zero loss mask
    views = StepViews(records, s_views, s_inputs, t_inputs)
    with autocast(cfg, device):
        resp = collect_responses(cfg.rollout, ctx, views)
    ro = resp.rollout
    t2 = time.perf_counter()
    neg = negative_teacher(cfg, ctx, views, resp, score, n_real)  # views.negative: a second teacher view (negatives.py)
    real_B = ro.prompt_index_B < (len(records) if n_real is None else n_real)  # padding prompts: no loss, no metrics
    loss_mask_B_T = resp.loss_mask_B_T * real_B[:, None]  # left-out responses and padding prompts: not counted
    num_tokens = global_sum(loss_mask_B_T.sum())  # the step's token count (all ranks): every micro-batch divides by it
    fsdp = is_fsdp(model)
    t_device = teacher.device or device
    if not fsdp:
        _, s_head = backbone_and_head(model)
        t_weight = teacher.lm_head_weight().to(device)  # once per step (a copy only when the teacher lives elsewhere)
    optimizer.zero_grad(set_to_none=True)
    model.train()
    sums = {"loss": 0.0, "reverse_kl": 0.0, "top1_agree": 0.0, "teacher_entropy": 0.0}
    mismatch, temp = MismatchStats(), cfg.rollout.temperature if cfg.rollout.do_sample else 1.0  # as the engines record
    t_teacher = t_student = 0.0
    B = ro.response_ids_B_T.shape[0]
    token_values: dict = {name: [None] * B for name in TOKEN_METRICS}
    # micro-batches of rows: train.micro_batch_size rows, or a budget of positions (train.micro_batch_tokens)
    plan = step_plan(cfg.train, model, resp.loss_mask_B_T, ro.prompt_index_B, s_inputs["attention_mask"])
    plan = plan.split_to(int(global_sum(torch.tensor(len(plan.rows)), "max").item()))  # as many on every rank
    for i, rows in enumerate(plan.rows):
        rows = rows.to(device)
        mask = resp.loss_mask_B_T[rows]
        T = max(1, int(mask.sum(-1).max().item()))  # trim trailing padding of this micro-batch
        ids, mask, counted = ro.response_ids_B_T[rows, :T], mask[:, :T], loss_mask_B_T[rows, :T]
        prompts = ro.prompt_index_B[rows]
        # 3. teacher: crop view, no grad, read at the same response tokens
        ta = time.perf_counter()
        with teacher.scoring() as t_model, autocast(cfg, t_device):  # FSDP: logits through the forward
            t_out = score(t_model, t_inputs, prompts, ids, mask, logits=fsdp, device=t_device).to(device)
            n_out = neg.score(t_model, prompts, ids, mask, t_device).to(device) if neg else None
        tb = time.perf_counter()
        # 4. student: full view, with grad; 5. divergence at response tokens only
        last = i == len(plan.rows) - 1
        with grad_sync(model, accelerator, enabled=last or world == 1):
            sel = mask.bool()
            if fsdp:
                with autocast(cfg, device):
                    s_logits = score(model, s_inputs, prompts, ids, mask, logits=True)
                per_tok, tok_metrics = token_divergence(s_logits[sel], t_out[sel].detach(), ids[sel], spec)
                lp_train = sampled_token_logprobs(s_logits[sel], ids[sel], temp, suppress_ids)
            else:
                with autocast(cfg, device):
                    s_hidden = score(model, s_inputs, prompts, ids, mask)
                per_tok, tok_metrics = token_divergence_from_hidden(
                    s_hidden[sel], t_out[sel].detach(), s_head.weight, ids[sel], spec, teacher_lm_head_weight=t_weight)
                lp_train = sampled_token_logprobs_from_hidden(s_hidden[sel], s_head.weight, ids[sel], temp, suppress_ids)
            counted_N = counted[sel].bool()  # False on the tokens of padding prompts
            # the rollout-vs-trainer mismatch (mismatch.py); optional truncated importance weights on the loss
            lp_roll = ro.logprobs_B_T[rows, :T][sel]
            is_w = truncated_is_weights(lp_train, lp_roll, cfg.rollout.is_threshold) if cfg.rollout.is_correction else None
            own_N = counted_N & ~resp.from_teacher_B.to(device)[rows][:, None].expand_as(mask)[sel]  # student-written
            mismatch.add(lp_train[own_N], lp_roll[own_N], None if is_w is None else is_w[own_N], cfg.rollout.is_threshold)
            if neg:  # the negative view's token / sequence weights or margin (training/negatives.py)
                loss = neg.loss(MicroBatchTokens(per_tok if is_w is None else per_tok * is_w, s_logits[sel] if fsdp
                                                 else s_hidden[sel], t_out[sel], n_out[sel], ids[sel], rows,
                                                 mask.sum(-1).long().tolist(), counted_N), num_tokens)
            else:
                loss = masked_token_mean(per_tok if is_w is None else per_tok * is_w, counted_N, num_tokens)
            (loss * world).backward()
        tok_metrics["divergence"] = per_tok
        t_teacher += tb - ta
        t_student += time.perf_counter() - tb
        sums["loss"] += loss.item()
        sums["reverse_kl"] += tok_metrics["reverse_kl"][counted_N].sum().item()
        sums["top1_agree"] += tok_metrics["top1_agree"][counted_N].sum().item()
        sums["teacher_entropy"] += tok_metrics["teacher_entropy"][counted_N].sum().item()
        lengths = mask.sum(-1).long().tolist()
        for name in TOKEN_METRICS:  # back in row order
            for b, v in zip(rows.tolist(), torch.split(tok_metrics[name].detach().cpu(), lengths), strict=True):
                token_values[name][b] = v.tolist()
    # 6. clip, step, schedule, EMA, weight sync to the rollout engine
    tc = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
    finite = bool(torch.isfinite(grad_norm)) and math.isfinite(sums["loss"])
    finite = global_sum(torch.tensor(0.0 if finite else 1.0, device=device)).item() == 0  # every rank decides alike
    # a step is skipped (no optimizer, schedule or EMA update, no sync) when its loss or gradient is not finite on any
    # rank, or when no response token reached the loss (every response left out: AdamW would still move the weights
    # with its old moments and the weight decay)
    skip_reason = "" if finite else SKIP_NON_FINITE
    skip_reason = SKIP_NO_TOKENS if num_tokens.item() == 0 else skip_reason
    lr = optimizer.param_groups[0]["lr"]  # the lr this step uses (the schedule then moves on to the next)
    if not skip_reason:
        optimizer.step()
        scheduler.step()
        teacher.update()
    optimizer.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    sec_sync = 0.0 if skip_reason else engine.sync(model)
    n = max(1.0, num_tokens.item())
    lengths = ro.lengths_B.float()[real_B]
    tot = global_sum(torch.tensor([sums["loss"], sums["reverse_kl"], sums["top1_agree"], lengths.sum().item(),
                                   float(lengths.numel()), ro.truncated_B[real_B].float().sum().item(),
                                   sums["teacher_entropy"]], device=device))
    len_max = lengths.max() if lengths.numel() else torch.zeros((), device=device)
    counts = global_sum(torch.tensor([float(resp.counts[k]) for k in COUNTS], device=device))
    positions = global_sum(torch.tensor([float(plan.counts[k]) for k in PLAN_COUNTS], device=device))
    if world > 1:
        len_max = accelerator.reduce(len_max.clone(), reduction="max")
    metrics = {
        "loss": tot[0].item(),
        "kl": tot[1].item() / n,  # mean per-token KL(student || teacher) on the sampled responses
        "top1_agree": tot[2].item() / n,
        "teacher_entropy": tot[6].item() / n,  # the positive teacher's mean entropy (nats): guards.TeacherSignalGuard
        "response_len": tot[3].item() / tot[4].item(),
        "response_len_max": len_max.item(),
        "truncation_rate": tot[5].item() / tot[4].item(),
        "tokens": int(num_tokens.item()),  # tokens the loss read (left-out responses excluded)
        "grad_norm": grad_norm.item(),
        "lr": lr,
        "skipped": 1 if skip_reason else 0,
        "skip_reason": skip_reason,  # "", SKIP_NON_FINITE or SKIP_NO_TOKENS
        "sec_views": t1 - t0,
        "sec_rollout": t2 - t1,
        "sec_teacher": t_teacher,
        "sec_student": t_student,
        "sec_optim": t3 - tc,
        "sec_sync": sec_sync,
        "sec_step": time.perf_counter() - t0,
        **response_metrics(dict(zip(COUNTS, counts.tolist(), strict=True))),
        **padding_metrics(dict(zip(PLAN_COUNTS, positions.tolist(), strict=True))),
        **mismatch.metrics(global_sum, lambda x: global_sum(x, "max"), cfg.rollout.is_correction),
        **(neg.metrics(global_sum) if neg else {}),
    }
    if neg:
        token_values.update(neg.rows_in_order(B))
    return StepResult(metrics, ro, token_values, resp)
