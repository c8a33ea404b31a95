"""The negative teacher view in a step: its scoring, and the weights it puts on the loss (docs/method.md, section 8).

    neg = negative_teacher(cfg, ctx, records, resp, score)      # None when views.negative=none
    n_out = neg.score(t_model, prompts, ids, mask)                # in the teacher's no-grad block, per micro-batch
    loss = neg.loss(MicroBatchTokens(...), num_tokens)           # instead of the plain token mean
    metrics.update(neg.metrics(global_sum)); token_values.update(neg.rows_in_order(B))

The same teacher weights read each prompt's negative view (`data/negatives.py`) along the same sampled responses,
through the same scoring path as the positive view (each prompt once with `train.share_prompts`). `loss.weighting`
turns the two views into weights (`losses/contrastive.py`):

- `none`: the plain token mean; the negative view is only measured (its log-prob gap);
- `opdv`: each token's loss times sg[max(0, l+_t - l-_t)];
- `cvopd`: the token mean plus lambda x the gated margin [mu + d+_t - d-_t]_+; the gate's threshold is the mean of
  d+ over the micro-batch (the batch, when one micro-batch holds the step's responses), and each micro-batch's gated
  mean is weighted by its share of the step's tokens, so the micro-batches sum to the paper's term with one;
- `vzero`: each response's loss times its sequence weight, from a no-grad pre-pass over the step's responses that
  scores both teacher views (the z-score needs all G responses of a prompt before any backward).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..data.negatives import negative_view
from ..data.views import encode_views
from ..losses.contrastive import (
    contrastive_margin,
    gated_mean,
    margin_gate,
    opdv_token_weights,
    sequence_scores,
    vzero_sequence_weights,
)
from ..losses.divergence import token_divergence, token_divergence_from_hidden
from ..losses.pure import DivergenceSpec, masked_token_mean
from ..models.parts import backbone_and_head, is_fsdp
from ..rollout.mismatch import sampled_token_logprobs, sampled_token_logprobs_from_hidden

# per-token values the negative view adds to samples.jsonl / tokens.jsonl
NEGATIVE_TOKEN_METRICS = ("negative_logprob", "weight")
_SUMS = ("tokens", "gap", "weight", "zero", "gated", "margin", "margin_term", "fallbacks")


@dataclass
class MicroBatchTokens:
    """One micro-batch's response tokens as the step holds them (N = its loss-mask tokens, `sel`)."""
    values_N: Tensor  # the configured divergence D_t per token (with grad), importance weights applied
    student_N: Tensor  # the student's hidden states [N, H] (logits [N, V] under FSDP), with grad
    positive_N: Tensor  # the positive teacher's output at the same tokens, detached
    negative_N: Tensor  # the negative teacher's output at the same tokens (`NegativeTeacher.score`)
    ids_N: Tensor
    rows: Tensor  # the micro-batch's response rows [b]
    lengths: list  # tokens per row (for the per-sample token values)
    counted_N: Tensor  # the tokens that count (not padding prompts)


@dataclass
class NegativeTeacher:
    cfg: object
    inputs: dict = field(repr=False)  # processor outputs of the negative views
    spec: DivergenceSpec
    score_fn: object  # scoring.forward.score_responses with the step's settings
    heads: tuple | None  # (student lm_head, teacher lm_head weight); None under FSDP (logits)
    seq_weights_B: Tensor | None = None  # vzero
    sums: dict = field(default_factory=lambda: dict.fromkeys(_SUMS, 0.0))
    token_values: dict = field(default_factory=lambda: {n: {} for n in NEGATIVE_TOKEN_METRICS})  # {name: {row: values}}

    def score(self, t_model, prompts: Tensor, ids: Tensor, mask: Tensor, device) -> Tensor:
        """The negative view's hidden states (logits under FSDP) at the response positions; call under the teacher's
        `scoring()` context, as the positive view is scored."""
        return self.score_fn(t_model, self.inputs, prompts, ids, mask, logits=self.heads is None, device=device)

    def _logprobs(self, out_N: Tensor, ids_N: Tensor) -> Tensor:
        if self.heads is None:
            return sampled_token_logprobs(out_N, ids_N, self.spec.temperature)
        return sampled_token_logprobs_from_hidden(out_N, self.heads[1], ids_N, self.spec.temperature)

    def _against(self, mb: MicroBatchTokens, teacher_N: Tensor) -> tuple[Tensor, dict]:
        """JSD(student, teacher_N) per token, full vocabulary, alpha 0.5, with grad to the student (CV-OPD's d)."""
        spec = DivergenceSpec("jsd", alpha=0.5, temperature=self.spec.temperature, chunk_size=self.spec.chunk_size)
        if self.heads is None:
            return token_divergence(mb.student_N, teacher_N.detach(), mb.ids_N, spec)
        return token_divergence_from_hidden(mb.student_N, teacher_N.detach(), self.heads[0].weight, mb.ids_N, spec,
                                            teacher_lm_head_weight=self.heads[1])

    def loss(self, mb: MicroBatchTokens, num_tokens: Tensor) -> Tensor:
        """This micro-batch's share of the step's loss under `loss.weighting` (see the module's docstring)."""
        loss_cfg, counted = self.cfg.loss, mb.counted_N
        with torch.no_grad():  # l+ read as l- is: equal views give exactly equal values
            pos_lp, neg_lp = self._logprobs(mb.positive_N, mb.ids_N), self._logprobs(mb.negative_N, mb.ids_N)
        if loss_cfg.weighting == "opdv":
            weight = opdv_token_weights(pos_lp, neg_lp)
        elif loss_cfg.weighting == "vzero":
            weight = torch.repeat_interleave(self.seq_weights_B[mb.rows], torch.tensor(mb.lengths, device=mb.rows.device))
        else:
            weight = torch.ones_like(pos_lp)
        loss = masked_token_mean(mb.values_N * weight, counted, num_tokens)
        if loss_cfg.weighting == "cvopd":
            d_neg = self._against(mb, mb.negative_N)[0]
            plain_jsd = self.spec.kind == "jsd" and self.spec.alpha == 0.5  # then D_t is d+_t itself
            d_pos = mb.values_N if plain_jsd else self._against(mb, mb.positive_N)[0]
            gate = margin_gate(d_pos, counted)
            n_mb = counted.sum().to(torch.float32)
            share = n_mb / num_tokens.to(n_mb.device).clamp(min=1.0)  # this micro-batch's share of the step's tokens
            margin_term = loss_cfg.margin_lambda * share * gated_mean(contrastive_margin(d_pos, d_neg, loss_cfg.margin_mu), gate)
            loss = loss + margin_term
            self._add(gated=gate.sum(), margin=(d_neg - d_pos).detach()[counted].sum(), margin_term=margin_term.detach())
        self._add(tokens=counted.sum(), gap=(pos_lp - neg_lp)[counted].sum(), weight=weight[counted].sum(),
                  zero=(weight[counted] == 0).sum())
        for name, v in (("negative_logprob", neg_lp), ("weight", weight)):  # by row: micro-batches may reorder rows
            for b, x in zip(mb.rows.tolist(), torch.split(v.detach().float().cpu(), mb.lengths), strict=True):
                self.token_values[name][b] = x.tolist()
        return loss

    def rows_in_order(self, B: int) -> dict:
        """The per-token values of every response row 0..B-1, in row order (as the step's own token values)."""
        return {name: [by_row.get(b) for b in range(B)] for name, by_row in self.token_values.items()}

    def _add(self, **values) -> None:
        for k, v in values.items():
            self.sums[k] += float(v)

    def metrics(self, global_sum) -> dict:
        """The step's negative-view metrics over all ranks (`global_sum` maps a tensor to its sum over the ranks)."""
        tot = global_sum(torch.tensor([self.sums[k] for k in _SUMS], dtype=torch.float64))
        s = dict(zip(_SUMS, tot.tolist(), strict=True))
        n = max(1.0, s["tokens"])
        out = {"negative_logprob_gap": s["gap"] / n, "negative_fallbacks": int(s["fallbacks"])}
        weighting = self.cfg.loss.weighting
        if weighting in ("opdv", "vzero"):
            out.update(weight_mean=s["weight"] / n, weight_zero_share=s["zero"] / n)
        if weighting == "cvopd":
            out.update(gated_share=s["gated"] / n, negative_margin=s["margin"] / n, margin_term=s["margin_term"])
        return out


def negative_teacher(cfg, ctx, views, resp, score_fn, n_real: int | None = None) -> NegativeTeacher | None:
    """The step's negative views (of `views.records`, a `StepViews`), encoded like the positive ones (None when
    `views.negative=none`); for V-Zero also the sequence weights, from a no-grad pre-pass over the step's responses
    (`resp`, the step's `Responses`) that scores `views.teacher_inputs` and the negatives. Fallbacks are counted on the
    first `n_real` records (the rest pad a rank's share)."""
    records, positive_inputs = views.records, views.teacher_inputs
    if cfg.views.negative == "none":
        return None
    negatives = [negative_view(r, cfg.views, cfg.train.seed) for r in records]
    inputs = encode_views(ctx.processor, [n.view for n in negatives]).to(ctx.device)
    fsdp = is_fsdp(ctx.model)
    heads = None if fsdp else (backbone_and_head(ctx.model)[1], ctx.teacher.lm_head_weight().to(ctx.device))
    spec = DivergenceSpec.of_loss(cfg.loss, cfg.rollout.temperature)
    neg = NegativeTeacher(cfg, inputs, spec, score_fn, heads)
    neg.sums["fallbacks"] = float(sum(n.fell_back for n in negatives[:n_real]))
    if cfg.loss.weighting == "vzero":
        neg.seq_weights_B = _vzero_weights(neg, ctx, resp, positive_inputs)
    return neg


def _vzero_weights(neg: NegativeTeacher, ctx, resp, positive_inputs) -> Tensor:
    """V-Zero's w_i for every response row: l+ and l- along each response (no grad), S_i, z within its prompt."""
    ro, mb = resp.rollout, neg.cfg.train.micro_batch_size
    B, T_all = ro.response_ids_B_T.shape
    pos = torch.zeros(B, T_all, device=ctx.device)
    negl = torch.zeros(B, T_all, device=ctx.device)
    t_device = ctx.teacher.device or ctx.device
    for start in range(0, B, mb):
        rows = torch.arange(start, min(B, start + mb), device=ctx.device)
        mask = resp.loss_mask_B_T[rows]
        T = max(1, int(mask.sum(-1).max().item()))
        ids, mask, prompts = ro.response_ids_B_T[rows, :T], mask[:, :T], ro.prompt_index_B[rows]
        sel = mask.bool()
        with ctx.teacher.scoring() as t_model:
            for inputs, out in ((positive_inputs, pos), (neg.inputs, negl)):
                h = neg.score_fn(t_model, inputs, prompts, ids, mask, logits=neg.heads is None, device=t_device)
                block = torch.zeros(len(rows), T, device=ctx.device)
                block[sel] = neg._logprobs(h.to(ctx.device)[sel], ids[sel]).float()
                out[rows, :T] = block
    mask_all = resp.loss_mask_B_T.to(ctx.device)
    scores = sequence_scores(pos, negl, mask_all)
    return vzero_sequence_weights(scores, ro.prompt_index_B.to(ctx.device), mask_all.sum(-1) > 0,
                                  neg.cfg.loss.vzero_scale, neg.cfg.loss.vzero_max)
