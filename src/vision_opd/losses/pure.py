"""The divergences of on-policy distillation as pure float32 tensor functions, and the one reducer.

For every response position, S and T are the student's and the (stop-gradient) teacher's next-token
distributions over the vocabulary, from logits divided by the rollout temperature (docs/method.md):

- generalized JSD with weight a (TRL GKD's `beta`): M = (1-a)*S + a*T, value = (1-a)*KL(S||M) + a*KL(T||M);
  a = 0 is exactly KL(T||S) (forward), a = 1 exactly KL(S||T) (reverse), a = 0.5 the symmetric JSD
  (`gjsd_from_logprobs`, `generalized_jsd_plain`);
- the same JSD on K+1 buckets: the student's top-k ids plus one tail bucket (`with_tail_bucket`,
  `topk_tail_jsd_plain`);
- the sampled-token estimator: the policy-gradient surrogate of reverse KL (`sampled_token_loss_plain`);
- cross-entropy on the response tokens, value = -log S(y): sequence-level KD / SFT when the tokens are the
  teacher's own responses (`cross_entropy_plain`; the teacher's distribution is not used);
- `masked_token_mean`: sum over unmasked tokens / a token count passed in (the step's, over all ranks).

These are the plain autograd references and the small pieces the memory-saving execution reuses.
The training loop does not call them directly: it calls `divergence.token_divergence_from_hidden`, which
runs the same math chunk by chunk (`losses_chunked.py`) or, with `chunk_size=None`, these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# The top-k mass is clamped to at most 1 - 1e-7 (float32 resolution) before log(1 - mass).
_TAIL_LOG_MASS_MAX = math.log1p(-1e-7)

# Tokens per chunk; chosen by measurement (docs/performance.md). It sets the lm_head matmul size of
# the fused path: on the 2-core CPU 128 was 10-20% slower than 256, 512 was 4-10% faster at twice
# the memory of the two [chunk, V] float32 logits buffers (2 x 155 MB at 256 and V = 151936); on
# accelerators the element-wise temporaries also scale with the chunk, so 256 is kept. The CPU
# additionally blocks the element-wise math by rows inside a chunk (losses_chunked.py).
DEFAULT_CHUNK_SIZE = 256

KINDS = ("jsd", "topk", "sampled", "ce")
NEEDS_IDS = ("sampled", "ce")  # kinds whose value reads the response token ids


@dataclass(frozen=True)
class DivergenceSpec:
    """Which divergence, with which knobs. Forward KL is jsd with alpha=0, reverse KL alpha=1."""

    kind: str = "jsd"  # "jsd" | "topk" | "sampled" | "ce"
    alpha: float = 0.5  # JSD weight (jsd, topk); unused by "sampled" and "ce"
    temperature: float = 1.0  # rollout temperature; logits of both views are divided by it
    top_k: int = 100  # support size of "topk" (clamped to V)
    chunk_size: int | None = DEFAULT_CHUNK_SIZE  # tokens per chunk; None = plain autograd
    advantage_clip: float | None = None  # "sampled": clamp log S(y) - log T(y) to [-c, c] (V-Zero: 10); None = none

    @classmethod
    def of_loss(cls, loss, temperature: float) -> DivergenceSpec:
        """The spec of a run's `loss` config section (kind, alpha, top_k, chunk_size, sampled_clip)."""
        return cls(kind=loss.kind, alpha=loss.alpha, temperature=temperature, top_k=loss.top_k,
                   chunk_size=loss.chunk_size, advantage_clip=loss.sampled_clip)

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
        if self.advantage_clip is not None and not self.advantage_clip > 0.0:
            raise ValueError(f"DivergenceSpec.advantage_clip={self.advantage_clip}: must be > 0, or None for no clamp")


# ---------------------------------------------------------------------------------------------
# Small pure functions shared with the plain reference in losses.py.


def gjsd_from_logprobs(logp_s: Tensor, logp_t: Tensor, alpha: float) -> Tensor:
    """Generalized JSD over the last dim, from log-probabilities (plain autograd).

    M = (1-a)*S + a*T; value = (1-a)*KL(S||M) + a*KL(T||M); a = 0 -> KL(T||S), a = 1 -> KL(S||T)
    exactly (not through the mixture). The mixture's log is a logsumexp of log-probs plus log
    weights, so nothing underflows.
    """
    if alpha == 0.0:
        return (logp_t.exp() * (logp_t - logp_s)).sum(-1)
    if alpha == 1.0:
        return (logp_s.exp() * (logp_s - logp_t)).sum(-1)
    logm = torch.logaddexp(logp_s + math.log1p(-alpha), logp_t + math.log(alpha))
    kl_s = (logp_s.exp() * (logp_s - logm)).sum(-1)
    kl_t = (logp_t.exp() * (logp_t - logm)).sum(-1)
    return (1.0 - alpha) * kl_s + alpha * kl_t


def with_tail_bucket(logp_K: Tensor) -> Tensor:
    """[..., K] log-probs of the top-k ids -> [..., K+1] with log(1 - top-k mass) appended.

    The mass is clamped to <= 1 - 1e-7 (float32 resolution), so the tail is never log(0),
    also when K = V; the clamp stops the gradient only where it is active.
    """
    log_mass = torch.logsumexp(logp_K, dim=-1, keepdim=True).clamp(max=_TAIL_LOG_MASS_MAX)
    log_tail = torch.log(-torch.expm1(log_mass))  # log(1 - mass), accurate when mass is near 0 or 1
    return torch.cat([logp_K, log_tail], dim=-1)


# ---------------------------------------------------------------------------------------------
# Plain (unchunked) references: straightforward autograd, materialise everything.


def logprobs(logits: Tensor, temperature: float) -> Tensor:
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def generalized_jsd_plain(student_logits: Tensor, teacher_logits: Tensor, alpha: float,
                          temperature: float = 1.0) -> Tensor:
    """Unchunked reference of `generalized_jsd` (same convention, same shapes)."""
    check_alpha(alpha)
    return gjsd_from_logprobs(logprobs(student_logits, temperature),
                              logprobs(teacher_logits.detach(), temperature), alpha)


def topk_tail_jsd_plain(student_logits: Tensor, teacher_logits: Tensor, alpha: float, temperature: float,
                         top_k: int) -> Tensor:
    logp_s = logprobs(student_logits, temperature)
    logp_t = logprobs(teacher_logits.detach(), temperature)
    k = min(top_k, logp_s.shape[-1])
    ids = torch.topk(logp_s.detach(), k, dim=-1, sorted=False).indices  # the support: no gradient
    return gjsd_from_logprobs(with_tail_bucket(logp_s.gather(-1, ids)),
                              with_tail_bucket(logp_t.gather(-1, ids)), alpha)


def sampled_token_loss_plain(student_logits: Tensor, teacher_logits: Tensor, sampled_ids: Tensor,
                              temperature: float, advantage_clip: float | None = None) -> Tensor:
    """value = sg[clamp(log S(y) - log T(y), -c, c)] * log S(y) (no clamp when advantage_clip is None)."""
    logp_s_y = logprobs(student_logits, temperature).gather(-1, sampled_ids[..., None]).squeeze(-1)
    logp_t_y = logprobs(teacher_logits.detach(), temperature).gather(-1, sampled_ids[..., None]).squeeze(-1)
    adv = (logp_s_y - logp_t_y).detach()
    if advantage_clip is not None:
        adv = adv.clamp(-advantage_clip, advantage_clip)
    return adv * logp_s_y


def cross_entropy_plain(student_logits: Tensor, target_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-token cross-entropy on given tokens: value = -log S(y), S = softmax(student_logits / temperature).

    The SFT loss: with the teacher's own responses as y it is sequence-level KD (the teacher's distribution
    is not read). Its token-mean at temperature 1 is `F.cross_entropy` on the response tokens; the loop builds
    the spec of `loss.kind=ce` with temperature 1 (the sampling temperature is not part of an SFT target).
    """
    return -logprobs(student_logits, temperature).gather(-1, target_ids[..., None]).squeeze(-1)


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


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: must lie in [0, 1] (0 = forward KL(T||S), 1 = reverse KL(S||T))")


def check_ids(ids_N: Tensor | None, spec: DivergenceSpec, n: int) -> None:
    """Kinds "sampled" and "ce" need the response token ids; given ids (any kind) must be integer [N]."""
    if ids_N is None:
        assert spec.kind not in NEEDS_IDS, f"kind {spec.kind!r} needs sampled_ids (the response token ids, [N])"
        return
    assert ids_N.shape == (n,) and not ids_N.is_floating_point(), (
        f"sampled_ids must be integer [N={n}], got {ids_N.dtype} {tuple(ids_N.shape)}")
