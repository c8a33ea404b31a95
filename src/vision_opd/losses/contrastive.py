"""Weights from a negative teacher view, as pure float32 tensor functions (docs/method.md, section 8).

Notation, along the student's sampled response y: p+ = the teacher on the positive view (the crop), p- = the same
teacher weights on the negative view, l+_t = log p+(y_t), l-_t = log p-(y_t) (both at the rollout temperature),
D_t = the configured per-token divergence between the student and p+, sg = stop-gradient.

- OPD-V, token weights (`opdv_token_weights`):          loss_t = D_t * sg[max(0, l+_t - l-_t)]
- CV-OPD, margin + gate (`margin_gate`, `contrastive_margin`):
      d+_t = JSD(S, p+)_t, d-_t = JSD(S, p-)_t (full vocabulary, alpha 0.5, natural log),
      g_t = 1[d+_t > mean of d+],   CDL_t = max(0, mu + d+_t - d-_t),
      L = mean_t D_t + lambda * sum_t g_t CDL_t / sum_t g_t
- V-Zero, sequence weights (`sequence_scores`, `vzero_sequence_weights`):
      S_i = mean over response i's tokens of (l+_t - l-_t),
      z_i = (S_i - mean_g S) / (std_g S + 1e-6) over the G responses of the same prompt (population std; a group
      of one gets z = 0),   w_i = sg[clip(1 + scale * z_i, 0, w_max)]   (scale 0.5, w_max 2),
      loss_t = w_i * D_t for the tokens of response i.

All weights are detached: the gradient reaches the student only through D_t (and, for CV-OPD, d+_t and d-_t).
"""

from __future__ import annotations

import torch
from torch import Tensor

WEIGHTINGS = ("none", "opdv", "cvopd", "vzero")
_STD_EPS = 1e-6


def opdv_token_weights(pos_logprob_N: Tensor, neg_logprob_N: Tensor) -> Tensor:
    """w_t = sg[max(0, l+_t - l-_t)]: [N], [N] -> [N] float32. No normalisation and no upper cap (as OPD-V);
    a token the negative view predicts as well as the crop gets weight 0 (and still counts in the token mean)."""
    return (pos_logprob_N.detach().float() - neg_logprob_N.detach().float()).clamp(min=0.0)


def sequence_scores(pos_logprob_B_T: Tensor, neg_logprob_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """S_i = sum_t m_it (l+_it - l-_it) / sum_t m_it: [B, T] x3 -> [B] float32 (0 for a response with no tokens)."""
    m = mask_B_T.float()
    gap = torch.where(m > 0, pos_logprob_B_T.float() - neg_logprob_B_T.float(), torch.zeros_like(m))
    return gap.sum(-1) / m.sum(-1).clamp(min=1.0)


def vzero_sequence_weights(score_B: Tensor, group_B: Tensor, valid_B: Tensor, scale: float = 0.5,
                           max_weight: float = 2.0) -> Tensor:
    """w_i = clip(1 + scale * z_i, 0, max_weight), z_i the z-score of S_i among the valid responses of its group:
    [B] scores, [B] group ids (the prompt), [B] bool valid -> [B] float32, detached.

    z_i = (S_i - mean) / (std + 1e-6) with the population std over the group's valid responses; a group with one
    valid response gets z = 0 (weight 1), and an invalid response (no loss tokens) weight 1 (it adds nothing).
    All S_i of a group equal gives z = 0, so every weight is exactly 1.
    """
    score_B, valid_B = score_B.detach().float(), valid_B.bool()
    z_B = torch.zeros_like(score_B)
    for g in torch.unique(group_B):
        members = (group_B == g) & valid_B
        if int(members.sum()) < 2:
            continue
        s = score_B[members]
        z_B[members] = (s - s.mean()) / (s.std(unbiased=False) + _STD_EPS)
    return (1.0 + scale * z_B).clamp(0.0, max_weight)


def margin_gate(d_pos_N: Tensor, mask_N: Tensor) -> Tensor:
    """g_t = 1[d+_t > mean of d+ over the masked tokens] (strict), False off the mask: [N], [N] -> [N] bool."""
    mask_N = mask_N.bool()
    if not bool(mask_N.any()):
        return mask_N.clone()
    d = d_pos_N.detach().float()
    return mask_N & (d > d[mask_N].mean())


def contrastive_margin(d_pos_N: Tensor, d_neg_N: Tensor, mu: float) -> Tensor:
    """CDL_t = max(0, mu + d+_t - d-_t): [N], [N] -> [N] float32, with gradient through both divergences.
    It vanishes wherever d-_t - d+_t >= mu: the student is already mu closer to the positive than to the negative."""
    return (mu + d_pos_N.float() - d_neg_N.float()).clamp(min=0.0)


def gated_mean(values_N: Tensor, gate_N: Tensor) -> Tensor:
    """sum_t g_t v_t / sum_t g_t (exactly 0, graph intact, when no token is gated): [N], [N] -> scalar float32."""
    zero = torch.zeros((), dtype=torch.float32, device=values_N.device)
    total = torch.where(gate_N.bool(), values_N.float(), zero).sum()
    count = gate_N.bool().sum()
    return total / count.clamp(min=1).to(total.dtype)
