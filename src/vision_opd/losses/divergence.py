"""The divergence the training loop calls: per-token values of a `DivergenceSpec`, chunked or plain.

    spec = DivergenceSpec(kind="jsd", alpha=0.5, temperature=1.0)
    values_N, metrics = token_divergence_from_hidden(student_hidden_N_H, teacher_hidden_N_H, lm_head.weight, ids_N, spec)
    loss = masked_token_mean(values_N, torch.ones_like(values_N), num_tokens)

The math is in `losses.py` (pure functions, float32, the equations and sign conventions); by default it runs
chunk by chunk over tokens (`losses_chunked.py`): forward saves only its inputs and backward recomputes each
chunk, so the extra memory is a few chunks of [tokens, V] instead of several full [N, V] tensors. With
`spec.chunk_size=None` the plain autograd reference runs (used by the tests and the benchmark).

Run the tests: `python -m pytest tests/test_losses.py`; the benchmark: `python perf/bench_divergence.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .chunked import METRICS, ChunkedHiddenDivergence, ChunkedLogitsDivergence
from .pure import (
    DEFAULT_CHUNK_SIZE,
    DivergenceSpec,
    check_alpha,
    check_ids,
    cross_entropy_plain,
    generalized_jsd_plain,
    logprobs,
    sampled_token_loss_plain,
    topk_tail_jsd_plain,
)

# ---------------------------------------------------------------------------------------------
# Public per-kind functions on logits [..., T, V] -> [..., T].


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, alpha: float, temperature: float = 1.0,
                    chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Generalized Jensen-Shannon divergence per token: logits [..., T, V] -> values [..., T].

    With S = softmax(student_logits / temperature), T = softmax(teacher_logits / temperature):
        a = alpha in (0, 1):  M = (1-a)*S + a*T,   value = (1-a)*KL(S||M) + a*KL(T||M)
        a = 0:                value = KL(T||S)   (forward KL, mode-covering), computed exactly
        a = 1:                value = KL(S||T)   (reverse KL, mode-seeking), computed exactly
    This is TRL's `GKDTrainer.generalized_jsd_loss` with beta = a, and the reference code's alpha.
    a = 0.5 is the symmetric JSD (0 <= value <= log 2).

    Limits, precisely: the mixture formula itself vanishes at both ends. As a -> 0 it behaves as
    a * KL(T||S) (value / a -> KL(T||S)) and as a -> 1 as (1-a) * KL(S||T) (value / (1-a) ->
    KL(S||T)), so the *shape* of the loss (the direction of its gradient) tends continuously to
    forward resp. reverse KL, while its *scale* jumps at a = 0 and a = 1. Scale is what the
    optimizer's learning rate absorbs; compare losses across alphas after dividing by a or 1-a.

    Gradients reach only the student; the teacher is detached here. Computed chunk by chunk over
    tokens with backward recomputation (`chunk_size` tokens at a time, None = plain autograd).
    """
    check_alpha(alpha)
    spec = DivergenceSpec("jsd", alpha=alpha, temperature=temperature, chunk_size=chunk_size)
    return _per_kind(student_logits, teacher_logits, None, spec)


def topk_tail_jsd(student_logits: Tensor, teacher_logits: Tensor, alpha: float, temperature: float = 1.0,
                  top_k: int = 100, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Generalized JSD (same alpha convention) on K+1 buckets: logits [..., T, V] -> [..., T].

    Support = the student's top-k token ids at each position (chosen without gradient) plus one
    tail bucket. Student bucket probs: its full-vocabulary softmax at those ids (so gradients pass
    through the full normaliser) and tail = 1 - their sum. Teacher: its full-vocabulary log-probs
    gathered at the same ids, tail = 1 - its mass there. Tails are log(1 - mass) with the mass
    clamped to <= 1 - 1e-7, so k = V (tail mass 0) gives the full JSD up to ~1e-7, never NaN.
    top_k larger than V is clamped to V. This is the reference recipe's loss (k = 100, a = 0.5).
    """
    check_alpha(alpha)
    spec = DivergenceSpec("topk", alpha=alpha, temperature=temperature, top_k=top_k, chunk_size=chunk_size)
    return _per_kind(student_logits, teacher_logits, None, spec)


def sampled_token_loss(student_logits: Tensor, teacher_logits: Tensor, sampled_ids: Tensor,
                       temperature: float = 1.0, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> Tensor:
    """Single-sample reverse-KL surrogate on the sampled tokens: [..., T, V], ids [..., T] -> [..., T].

    value = adv * log p_S(y),  adv = (log p_S(y) - log p_T(y)).detach()
    The VALUE is a surrogate, not a divergence (it can be negative; its mean is not KL). Its
    GRADIENT is the policy-gradient estimate of grad KL(S||T) when y ~ S, as in Thinking Machines'
    on-policy distillation / tinker. Log `reverse_kl` from `token_divergence` to monitor the KL.
    """
    spec = DivergenceSpec("sampled", temperature=temperature, chunk_size=chunk_size)
    return _per_kind(student_logits, teacher_logits, sampled_ids, spec)


def _per_kind(student_logits: Tensor, teacher_logits: Tensor, sampled_ids: Tensor | None,
              spec: DivergenceSpec) -> Tensor:
    assert student_logits.shape == teacher_logits.shape and student_logits.dim() >= 2, (
        f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
        "must have the same shape [..., T, V]: align the response positions of the two views first")
    lead, vocab = student_logits.shape[:-1], student_logits.shape[-1]
    assert sampled_ids is None or sampled_ids.shape == lead, (
        f"sampled_ids {tuple(sampled_ids.shape)} must have the logits' leading shape {tuple(lead)}")
    ids_N = None if sampled_ids is None else sampled_ids.reshape(-1)
    values_N, _ = _divergence(student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab), ids_N,
                              spec, want_metrics=False)
    return values_N.reshape(lead)


# ---------------------------------------------------------------------------------------------
# The dispatch used by the training loop.


def token_divergence(student_logits_N_V: Tensor, teacher_logits_N_V: Tensor, sampled_ids_N: Tensor | None,
                     spec: DivergenceSpec) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token divergence of `spec` over N response tokens.

    Returns (values [N] float32 with grad to the student only, metrics) where metrics are detached
    per-token tensors [N]: `reverse_kl` = KL(S||T) over the full vocabulary (for monitoring, at
    the same temperature), `top1_agree` = 1.0 where argmax S == argmax T, else 0.0, `student_entropy` and
    `teacher_entropy` = -sum p log p of each view (nats, same temperature); when
    `sampled_ids_N` is given, also `student_logprob` and `teacher_logprob` = the sampled token's
    log-prob under each view at the same temperature, log_softmax(logits / temperature)[id].
    `sampled_ids_N` is required for kinds "sampled" and "ce"; the others use it only for those two metrics.
    """
    assert student_logits_N_V.dim() == 2 and student_logits_N_V.shape == teacher_logits_N_V.shape, (
        f"token_divergence wants [N, V] logits of the same shape, got {tuple(student_logits_N_V.shape)} "
        f"and {tuple(teacher_logits_N_V.shape)}")
    return _divergence(student_logits_N_V, teacher_logits_N_V, sampled_ids_N, spec, want_metrics=True)


def _divergence(zs_N_V: Tensor, zt_N_V: Tensor, ids_N: Tensor | None, spec: DivergenceSpec,
                want_metrics: bool) -> tuple[Tensor, dict[str, Tensor]]:
    check_ids(ids_N, spec, zs_N_V.shape[0])
    ids_N = None if ids_N is None else ids_N.long()
    zt_N_V = zt_N_V.detach()
    if spec.chunk_size is not None:
        values, *metrics = ChunkedLogitsDivergence.apply(zs_N_V, zt_N_V, ids_N, spec, want_metrics)
        return values, (_named(metrics, ids_N) if want_metrics else {})
    if spec.kind == "jsd":
        values = generalized_jsd_plain(zs_N_V, zt_N_V, spec.alpha, spec.temperature)
    elif spec.kind == "topk":
        values = topk_tail_jsd_plain(zs_N_V, zt_N_V, spec.alpha, spec.temperature, spec.top_k)
    elif spec.kind == "sampled":
        values = sampled_token_loss_plain(zs_N_V, zt_N_V, ids_N, spec.temperature, spec.advantage_clip)
    else:
        values = cross_entropy_plain(zs_N_V, ids_N, spec.temperature)
    if not want_metrics:
        return values, {}
    with torch.no_grad():
        logp_s, logp_t = logprobs(zs_N_V, spec.temperature), logprobs(zt_N_V, spec.temperature)
        metrics = {"reverse_kl": (logp_s.exp() * (logp_s - logp_t)).sum(-1),
                   "top1_agree": (logp_s.argmax(-1) == logp_t.argmax(-1)).float(),
                   "student_entropy": -(logp_s.exp() * logp_s).sum(-1), "teacher_entropy": -(logp_t.exp() * logp_t).sum(-1)}
        if ids_N is not None:
            metrics["student_logprob"] = logp_s.gather(-1, ids_N[:, None]).squeeze(-1)
            metrics["teacher_logprob"] = logp_t.gather(-1, ids_N[:, None]).squeeze(-1)
    return values, metrics


def _named(metrics: list[Tensor], ids_N: Tensor | None) -> dict[str, Tensor]:
    """The chunked Functions' metric outputs by name; the sampled-token log-probs only when ids were given."""
    return {name: m for name, m in zip(METRICS, metrics, strict=True)
            if ids_N is not None or name not in ("student_logprob", "teacher_logprob")}


def token_divergence_from_hidden(student_hidden_N_H: Tensor, teacher_hidden_N_H: Tensor, lm_head_weight_V_H: Tensor,
                                 sampled_ids_N: Tensor | None, spec: DivergenceSpec, lm_head_bias: Tensor | None = None,
                                 teacher_lm_head_weight: Tensor | None = None,
                                 teacher_lm_head_bias: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """`token_divergence` on logits = hidden @ W.T (+ bias), fused: full [N, V] logits never exist.

    Chunk by chunk over tokens, the logits of both views are computed in forward and computed
    again in backward (custom autograd.Function), giving grads for `student_hidden_N_H`,
    `lm_head_weight_V_H` and `lm_head_bias` (each only if it requires grad). The teacher side is a
    constant: `teacher_hidden_N_H` is detached, and so is its weight, which by default is the
    same `lm_head_weight_V_H` (and `lm_head_bias`); pass `teacher_lm_head_weight` (and
    `teacher_lm_head_bias`) for a separate teacher head (e.g. an EMA copy). With
    `spec.chunk_size=None` it materialises the logits and runs the plain reference.
    Returns (values [N], metrics) exactly as `token_divergence`.
    """
    n, hidden = student_hidden_N_H.shape
    assert teacher_hidden_N_H.shape == (n, hidden), (
        f"teacher hidden {tuple(teacher_hidden_N_H.shape)} != student hidden {(n, hidden)}: "
        "align the response positions of the two views first")
    assert lm_head_weight_V_H.dim() == 2 and lm_head_weight_V_H.shape[1] == hidden, (
        f"lm_head weight {tuple(lm_head_weight_V_H.shape)} must be [V, {hidden}]")
    if teacher_lm_head_weight is None:
        teacher_w, teacher_b = lm_head_weight_V_H, lm_head_bias
    else:
        teacher_w, teacher_b = teacher_lm_head_weight, teacher_lm_head_bias
    assert teacher_w.shape == lm_head_weight_V_H.shape, (
        f"teacher lm_head weight {tuple(teacher_w.shape)} != student {tuple(lm_head_weight_V_H.shape)}")
    teacher_w = teacher_w.detach()
    teacher_b = None if teacher_b is None else teacher_b.detach()
    teacher_hidden_N_H = teacher_hidden_N_H.detach()
    if spec.chunk_size is None:
        zs = _linear(student_hidden_N_H, lm_head_weight_V_H, lm_head_bias)
        zt = _linear(teacher_hidden_N_H, teacher_w, teacher_b)
        return token_divergence(zs, zt, sampled_ids_N, spec)
    check_ids(sampled_ids_N, spec, n)
    sampled_ids_N = None if sampled_ids_N is None else sampled_ids_N.long()
    values, *metrics = ChunkedHiddenDivergence.apply(
        student_hidden_N_H, lm_head_weight_V_H, lm_head_bias, teacher_hidden_N_H, teacher_w, teacher_b,
        sampled_ids_N, spec, True)
    return values, _named(metrics, sampled_ids_N)


def _linear(hidden_N_H: Tensor, weight_V_H: Tensor, bias_V: Tensor | None) -> Tensor:
    logits = hidden_N_H.to(weight_V_H.dtype) @ weight_V_H.t()
    return logits if bias_V is None else logits + bias_V
