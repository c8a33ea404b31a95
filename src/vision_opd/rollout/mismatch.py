"""The rollout-vs-trainer mismatch: the trainer's log-prob of each sampled token against the engine's.

The engine draws token y_t from its own copy of the student (vLLM: other kernels, perhaps another dtype, weights
pushed after each step; HF: the same weights read through a KV cache) and records log p_rollout(y_t). The trainer
reads the same response with grad: log p_trainer(y_t) = log_softmax(z_t / temperature)[y_t], over the tokens that
can be sampled (the vision specials excluded, as in the engines). Logged every step: the mean and the max of
|log p_trainer(y_t) - log p_rollout(y_t)| over the step's response tokens (`rollout_logprob_diff_mean/max`).

Optional correction (`rollout.is_correction`): each token's loss is weighted by the truncated importance weight
    w_t = min(exp(log p_trainer(y_t) - log p_rollout(y_t)), C),   C = rollout.is_threshold, w_t detached,
since the sample came from p_rollout while the loss assumes it came from p_trainer. With top_p < 1 the engine's
log-prob is the nucleus-renormalised one, so the difference also holds the nucleus' missing mass.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def sampled_token_logprobs(logits_N_V: Tensor, ids_N: Tensor, temperature: float,
                           suppressed_ids: list[int] | tuple[int, ...] = ()) -> Tensor:
    """log_softmax(logits / temperature) at ids, the suppressed tokens excluded: [N, V], [N] -> [N] float32."""
    z = logits_N_V.float() / temperature
    if suppressed_ids:
        z[:, list(suppressed_ids)] = float("-inf")
    return torch.log_softmax(z, dim=-1).gather(-1, ids_N.long()[:, None]).squeeze(-1)


@torch.no_grad()
def sampled_token_logprobs_from_hidden(hidden_N_H: Tensor, weight_V_H: Tensor, ids_N: Tensor, temperature: float,
                                       suppressed_ids=(), chunk_size: int = 256) -> Tensor:
    """`sampled_token_logprobs` of logits = hidden @ W.T, chunk by chunk over tokens (never [N, V] at once)."""
    out = [sampled_token_logprobs(hidden_N_H[i:i + chunk_size].to(weight_V_H.dtype) @ weight_V_H.t(),
                                  ids_N[i:i + chunk_size], temperature, suppressed_ids)
           for i in range(0, hidden_N_H.shape[0], chunk_size)]
    return torch.cat(out) if out else hidden_N_H.new_zeros(0, dtype=torch.float32)


def truncated_is_weights(trainer_logprobs_N: Tensor, rollout_logprobs_N: Tensor, threshold: float) -> Tensor:
    """w = min(exp(log p_trainer - log p_rollout), threshold), detached: [N] -> [N] float32."""
    ratio = torch.exp(trainer_logprobs_N.detach().float() - rollout_logprobs_N.detach().float())
    return ratio.clamp(max=threshold)


class MismatchStats:
    """Sums over a step's micro-batches: |difference| sum / max / count, IS weight sum, tokens clipped."""

    def __init__(self):
        self.abs_sum, self.abs_max, self.n, self.w_sum, self.clipped = 0.0, 0.0, 0, 0.0, 0

    def add(self, trainer_logprobs_N: Tensor, rollout_logprobs_N: Tensor, weights_N: Tensor | None = None,
            threshold: float | None = None) -> None:
        d = (trainer_logprobs_N.float() - rollout_logprobs_N.float()).abs()
        if d.numel():
            self.abs_sum += d.sum().item()
            self.abs_max = max(self.abs_max, d.max().item())
            self.n += d.numel()
        if weights_N is not None:
            self.w_sum += weights_N.sum().item()
            self.clipped += int((weights_N >= threshold).sum().item()) if threshold is not None else 0

    def metrics(self, reduce_sum, reduce_max, correction: bool) -> dict:
        """Over all ranks: `reduce_sum` / `reduce_max` map a float tensor to its global sum / max."""
        tot = reduce_sum(torch.tensor([self.abs_sum, float(self.n), self.w_sum, float(self.clipped)], dtype=torch.float64))
        n = max(1.0, tot[1].item())
        out = {"rollout_logprob_diff_mean": tot[0].item() / n,
               "rollout_logprob_diff_max": reduce_max(torch.tensor(self.abs_max, dtype=torch.float64)).item()}
        if correction:
            out.update(is_weight_mean=tot[2].item() / n, is_clipped_rate=tot[3].item() / n)
        return out
