"""Per-token divergences between the student S and the (stop-gradient) teacher T, and one reducer.

The loss family of on-policy distillation (docs METHOD.md section 2). For every response position,
S and T are next-token distributions over the vocabulary, from logits divided by the rollout
`temperature`; everything is computed in float32; gradients reach only the student.

- `generalized_jsd`: full-vocabulary generalized JSD with weight `alpha` (TRL GKD `beta`):
  M = (1-a)*S + a*T,  value = (1-a)*KL(S||M) + a*KL(T||M);  a = 0 is exactly KL(T||S) (forward),
  a = 1 exactly KL(S||T) (reverse), a = 0.5 the symmetric JSD. See its docstring for the limits.
- `topk_tail_jsd`: the same JSD on K+1 buckets (the student's top-k ids + one tail bucket).
- `sampled_token_loss`: the policy-gradient surrogate of reverse KL on the sampled token.
- `token_divergence` / `token_divergence_from_hidden`: the dispatch the training loop uses,
  from logits [N, V] or from final hidden states [N, H] and the lm_head weight (fused: full
  [N, V] logits never exist). Both return per-token values [N] and detached per-token metrics.
- `masked_token_mean`: the one reducer, sum over unmasked tokens / a token count passed in.

By default the divergences run chunk by chunk over tokens (`losses_chunked.py`): forward saves
only its inputs and backward recomputes each chunk, so the extra memory is a few chunks of
[tokens, V] instead of several full [N, V] tensors. `chunk_size=None` runs the plain autograd
reference (used by the tests and the benchmark).

Run the tests: `python -m pytest tests/test_losses.py`; the benchmark: see docs/performance.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vision_opd.losses_chunked import (
    ChunkedHiddenDivergence,
    ChunkedLogitsDivergence,
    gjsd_from_logprobs,
    with_tail_bucket,
)

# Tokens per chunk; chosen by measurement (docs/performance.md). It sets the lm_head matmul size of
# the fused path: on the 2-core CPU 128 was 10-20% slower than 256, 512 was 4-10% faster at twice
# the memory of the two [chunk, V] float32 logits buffers (2 x 155 MB at 256 and V = 151936); on
# accelerators the element-wise temporaries also scale with the chunk, so 256 is kept. The CPU
# additionally blocks the element-wise math by rows inside a chunk (losses_chunked.py).
DEFAULT_CHUNK_SIZE = 256

KINDS = ("jsd", "topk", "sampled")


@dataclass(frozen=True)
class DivergenceSpec:
    """Which divergence, with which knobs. Forward KL is jsd with alpha=0, reverse KL alpha=1."""

    kind: str = "jsd"  # "jsd" | "topk" | "sampled"
    alpha: float = 0.5  # JSD weight (jsd, topk); unused by "sampled"
    temperature: float = 1.0  # rollout temperature; logits of both views are divided by it
    top_k: int = 100  # support size of "topk" (clamped to V)
    chunk_size: int | None = DEFAULT_CHUNK_SIZE  # tokens per chunk; None = plain autograd

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"DivergenceSpec.kind={self.kind!r}: use one of {KINDS}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"DivergenceSpec.alpha={self.alpha}: must lie in [0, 1] (0 = forward KL, 1 = reverse KL)")
        if not self.temperature > 0.0:
            raise ValueError(f"DivergenceSpec.temperature={self.temperature}: must be > 0")
        if self.top_k < 1:
            raise ValueError(f"DivergenceSpec.top_k={self.top_k}: must be >= 1")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"DivergenceSpec.chunk_size={self.chunk_size}: must be >= 1, or None for plain")


# ---------------------------------------------------------------------------------------------
# Plain (unchunked) references: straightforward autograd, materialise everything.


def _logprobs(logits: Tensor, temperature: float) -> Tensor:
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def generalized_jsd_plain(student_logits: Tensor, teacher_logits: Tensor, alpha: float,
                          temperature: float = 1.0) -> Tensor:
    """Unchunked reference of `generalized_jsd` (same convention, same shapes)."""
    _check_alpha(alpha)
    return gjsd_from_logprobs(_logprobs(student_logits, temperature),
                              _logprobs(teacher_logits.detach(), temperature), alpha)


def _topk_tail_jsd_plain(student_logits: Tensor, teacher_logits: Tensor, alpha: float, temperature: float,
                         top_k: int) -> Tensor:
    logp_s = _logprobs(student_logits, temperature)
    logp_t = _logprobs(teacher_logits.detach(), temperature)
    k = min(top_k, logp_s.shape[-1])
    ids = torch.topk(logp_s.detach(), k, dim=-1, sorted=False).indices  # the support: no gradient
    return gjsd_from_logprobs(with_tail_bucket(logp_s.gather(-1, ids)),
                              with_tail_bucket(logp_t.gather(-1, ids)), alpha)


def _sampled_token_loss_plain(student_logits: Tensor, teacher_logits: Tensor, sampled_ids: Tensor,
                              temperature: float) -> Tensor:
    logp_s_y = _logprobs(student_logits, temperature).gather(-1, sampled_ids[..., None]).squeeze(-1)
    logp_t_y = _logprobs(teacher_logits.detach(), temperature).gather(-1, sampled_ids[..., None]).squeeze(-1)
    return (logp_s_y - logp_t_y).detach() * logp_s_y


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
    _check_alpha(alpha)
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
    _check_alpha(alpha)
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
    the same temperature) and `top1_agree` = 1.0 where argmax S == argmax T, else 0.0.
    `sampled_ids_N` is required for kind "sampled" and ignored otherwise.
    """
    assert student_logits_N_V.dim() == 2 and student_logits_N_V.shape == teacher_logits_N_V.shape, (
        f"token_divergence wants [N, V] logits of the same shape, got {tuple(student_logits_N_V.shape)} "
        f"and {tuple(teacher_logits_N_V.shape)}")
    return _divergence(student_logits_N_V, teacher_logits_N_V, sampled_ids_N, spec, want_metrics=True)


def _divergence(zs_N_V: Tensor, zt_N_V: Tensor, ids_N: Tensor | None, spec: DivergenceSpec,
                want_metrics: bool) -> tuple[Tensor, dict[str, Tensor]]:
    _check_ids(ids_N, spec, zs_N_V.shape[0])
    ids_N = None if ids_N is None or spec.kind != "sampled" else ids_N.long()
    zt_N_V = zt_N_V.detach()
    if spec.chunk_size is not None:
        values, reverse_kl, agree = ChunkedLogitsDivergence.apply(zs_N_V, zt_N_V, ids_N, spec, want_metrics)
        return values, ({"reverse_kl": reverse_kl, "top1_agree": agree} if want_metrics else {})
    if spec.kind == "jsd":
        values = generalized_jsd_plain(zs_N_V, zt_N_V, spec.alpha, spec.temperature)
    elif spec.kind == "topk":
        values = _topk_tail_jsd_plain(zs_N_V, zt_N_V, spec.alpha, spec.temperature, spec.top_k)
    else:
        values = _sampled_token_loss_plain(zs_N_V, zt_N_V, ids_N, spec.temperature)
    if not want_metrics:
        return values, {}
    with torch.no_grad():
        logp_s, logp_t = _logprobs(zs_N_V, spec.temperature), _logprobs(zt_N_V, spec.temperature)
        metrics = {"reverse_kl": (logp_s.exp() * (logp_s - logp_t)).sum(-1),
                   "top1_agree": (logp_s.argmax(-1) == logp_t.argmax(-1)).float()}
    return values, metrics


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
    _check_ids(sampled_ids_N, spec, n)
    sampled_ids_N = None if sampled_ids_N is None or spec.kind != "sampled" else sampled_ids_N.long()
    values, reverse_kl, agree = ChunkedHiddenDivergence.apply(
        student_hidden_N_H, lm_head_weight_V_H, lm_head_bias, teacher_hidden_N_H, teacher_w, teacher_b,
        sampled_ids_N, spec, True)
    return values, {"reverse_kl": reverse_kl, "top1_agree": agree}


def _linear(hidden_N_H: Tensor, weight_V_H: Tensor, bias_V: Tensor | None) -> Tensor:
    logits = hidden_N_H.to(weight_V_H.dtype) @ weight_V_H.t()
    return logits if bias_V is None else logits + bias_V


# ---------------------------------------------------------------------------------------------
# The reducer.


def masked_token_mean(values: Tensor, mask: Tensor, num_tokens: int | float | Tensor) -> Tensor:
    """sum(values where mask) / num_tokens: the token-mean of the global batch.

    `num_tokens` is the number of loss tokens in the whole global batch (all micro-batches, all
    ranks), passed in, so that summing the micro-batch losses (gradient accumulation) or averaging
    over data-parallel ranks (x world size) gives the same gradient as one big batch.
    Masked positions contribute exactly nothing, also when their values are inf/NaN (torch.where,
    not a multiplication), and get an exact zero gradient. Returns exactly 0, with its graph
    intact, when num_tokens == 0 or the mask is all zero.
    """
    assert values.shape == mask.shape, f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ"
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    total = torch.where(mask.bool(), values, zero).sum()
    if isinstance(num_tokens, Tensor):
        count = num_tokens.to(device=total.device, dtype=total.dtype)
        return torch.where(count > 0, total / torch.where(count > 0, count, 1.0), zero)
    assert num_tokens >= 0, f"num_tokens={num_tokens} must be >= 0"
    if num_tokens == 0:
        return torch.where(torch.zeros((), dtype=torch.bool, device=total.device), total, zero)
    return total / num_tokens


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: must lie in [0, 1] (0 = forward KL(T||S), 1 = reverse KL(S||T))")


def _check_ids(ids_N: Tensor | None, spec: DivergenceSpec, n: int) -> None:
    if spec.kind != "sampled":
        return
    assert ids_N is not None, "kind 'sampled' needs sampled_ids (the response token ids, [N])"
    assert ids_N.shape == (n,) and not ids_N.is_floating_point(), (
        f"sampled_ids must be integer [N={n}], got {ids_N.dtype} {tuple(ids_N.shape)}")
