"""On-policy sampling: the student samples G responses per prompt on its own view with HF `generate`.

Vision special tokens (image/video pads, vision start/end) are suppressed: a sampled `<|image_pad|>`
would make the next forward fail ("Image features and image tokens do not match").
The response mask is 1 up to and including the first EOS and 0 after it; a response with no EOS within
`max_new_tokens` is truncated (counted in the metrics).
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


@torch.no_grad()
def sample(model, processor, inputs, *, samples_per_prompt: int, temperature: float = 1.0, top_p: float = 1.0,
           max_new_tokens: int = 64, suppress_ids: list[int] | None = None, do_sample: bool = True,
           synced_gpus: bool = False) -> Rollout:
    """Sample `samples_per_prompt` responses for each of the P prompts in `inputs` (left-padded processor output).

    Returns a Rollout with B = P * G rows, ordered prompt-major (rows p*G .. p*G+G-1 answer prompt p).
    """
    from .models.parts import strip_wrappers

    model = strip_wrappers(model)  # generate runs on the plain module (DDP has no generate); FSDP2 modules stay
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    eos_ids = eos_ids_of(model, processor)
    pad_id = processor.tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    gen_kw = dict(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_return_sequences=samples_per_prompt if do_sample else 1,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        suppress_tokens=suppress_ids or None,
    )
    if synced_gpus:  # FSDP: every rank must run the same number of forward passes
        gen_kw["synced_gpus"] = True
    if do_sample:
        gen_kw.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        gen_kw.update(temperature=None, top_p=None, top_k=None)
    prompt_len = inputs["input_ids"].shape[1]
    out = model.generate(**inputs, **gen_kw)
    if was_training:
        model.train()
    ids = out[:, prompt_len:]
    if not do_sample and samples_per_prompt > 1:  # greedy: the G samples of a prompt are identical
        ids = ids.repeat_interleave(samples_per_prompt, dim=0)
    if ids.shape[1] == 0:  # nothing generated at all (max_new_tokens=0)
        ids = torch.full((out.shape[0], 1), pad_id, dtype=out.dtype, device=out.device)
    mask, truncated = response_mask(ids, eos_ids)
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_id))
    P = inputs["input_ids"].shape[0]
    prompt_index = torch.arange(P, device=ids.device).repeat_interleave(samples_per_prompt)
    return Rollout(ids, mask, truncated, prompt_index)
