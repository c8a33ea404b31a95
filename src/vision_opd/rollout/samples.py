"""The `Rollout`: what an engine returns for P prompts x G samples, the same from every engine.

The response mask is 1 up to and including the first EOS and 0 after it; a response with no EOS within
`max_new_tokens` is truncated (counted in the metrics). Rows are prompt-major: rows p*G .. p*G+G-1 answer
prompt p. `logprobs_B_T` is the log-probability of each sampled token under the distribution it was drawn
from: softmax(logits / temperature) over the tokens that may be sampled, top_p applied (greedy rollouts:
temperature 1, the argmax's own log-prob); 0 after the mask ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    response_ids_B_T: torch.Tensor  # sampled tokens, pad after the first EOS
    response_mask_B_T: torch.Tensor  # 1.0 on response tokens up to and including the first EOS
    truncated_B: torch.Tensor  # bool: no EOS within max_new_tokens
    prompt_index_B: torch.Tensor  # which prompt (0..P-1) each sample answers
    logprobs_B_T: torch.Tensor | None = None  # the engine's log-prob of each sampled token (0 off the mask)

    @property
    def lengths_B(self) -> torch.Tensor:
        return self.response_mask_B_T.sum(-1)


def eos_ids_of(model, processor) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = processor.tokenizer.eos_token_id
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def response_mask(ids_B_T: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, truncated): mask is 1 up to and including the first EOS of each row."""
    is_eos = torch.isin(ids_B_T, torch.tensor(eos_ids, device=ids_B_T.device))
    # number of EOS strictly before position t; a token is in the response while that count is 0
    eos_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    mask = (eos_before == 0).float()
    truncated = ~is_eos.any(dim=-1)
    return mask, truncated


def build_rollout(ids_B_T: torch.Tensor, logprobs_B_T: torch.Tensor | None, eos_ids: list[int], pad_id: int,
                  samples_per_prompt: int) -> Rollout:
    """The Rollout of prompt-major sampled ids: mask, truncation, padding after the first EOS, prompt index."""
    mask, truncated = response_mask(ids_B_T, eos_ids)
    ids = torch.where(mask.bool(), ids_B_T, torch.full_like(ids_B_T, pad_id))
    if logprobs_B_T is not None:
        logprobs_B_T = logprobs_B_T.float() * mask
    P = ids.shape[0] // samples_per_prompt
    prompt_index = torch.arange(P, device=ids.device).repeat_interleave(samples_per_prompt)
    return Rollout(ids, mask, truncated, prompt_index, logprobs_B_T)


def response_text(tokenizer, ids_T: list[int], mask_T: list[float], eos_ids: list[int]) -> str:
    """The decoded response: tokens on the mask except EOS, special tokens kept (so `<think>` survives)."""
    eos = set(eos_ids)
    keep = [i for i, m in zip(ids_T, mask_T, strict=True) if m and i not in eos]
    return tokenizer.decode(keep, skip_special_tokens=False)
