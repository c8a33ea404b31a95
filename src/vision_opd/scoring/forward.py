"""Scoring: each view's forward pass on [its prompt + the sampled response], read at the response tokens only.

The teacher and student prompts have different lengths (a crop and a full image give different numbers
of image tokens), so positions are aligned on the *response*: with left-padded prompts of padded length
Lp, the hidden state at position Lp - 1 + t predicts response token t, for both views. We return the
backbone's hidden states at those T positions; the divergence applies the lm_head chunk by chunk
(`divergence.token_divergence_from_hidden`), so full [tokens x vocab] logits are never held for both views.

The loop calls `score_responses`: with `train.share_prompts` each distinct prompt of a micro-batch runs once and
its rows continue from its cache (`scoring_shared.py`, equal to the per-row path to fp32 rounding); otherwise, and
for a model that cannot share, every row runs [its prompt + its response] here (the reference path).
"""

from __future__ import annotations

import torch

from ..models.parts import backbone_and_head, unwrap
from .shared import shared_response_hidden, shared_response_logits, sharing_blocker


def select_prompts(inputs, rows: torch.Tensor, vision_start_id: int):
    """Rows `rows` (prompt indices, may repeat) of a processor batch, pixel_values included.

    pixel_values is a flat [sum of patches, D] tensor in image order; image_grid_thw gives each image's
    patch count; the images of prompt p are those whose <|vision_start|> markers are in its input_ids.
    """
    ids = inputs["input_ids"]
    out = {k: v[rows] for k, v in inputs.items() if k not in ("pixel_values", "image_grid_thw") and torch.is_tensor(v) and v.shape[:1] == ids.shape[:1]}
    if "pixel_values" in inputs and inputs["pixel_values"] is not None:
        grid = inputs["image_grid_thw"]
        n_img = (ids == vision_start_id).sum(-1).tolist()  # images per prompt
        patches = grid.prod(-1).tolist()
        img_start = [0]
        for n in n_img:
            img_start.append(img_start[-1] + n)
        patch_start = [0]
        for p in patches:
            patch_start.append(patch_start[-1] + p)
        pix, grids = [], []
        for r in rows.tolist():
            for i in range(img_start[r], img_start[r + 1]):
                pix.append(inputs["pixel_values"][patch_start[i]:patch_start[i + 1]])
                grids.append(grid[i])
        out["pixel_values"] = torch.cat(pix)
        out["image_grid_thw"] = torch.stack(grids)
    return out


def with_response(prompt_inputs: dict, response_ids_B_T: torch.Tensor, response_mask_B_T: torch.Tensor) -> dict:
    """Append responses to left-padded prompts; mm_token_type_ids (Qwen3-VL, Qwen3.5) is extended with zeros."""
    out = dict(prompt_inputs)
    out["input_ids"] = torch.cat([prompt_inputs["input_ids"], response_ids_B_T], dim=1)
    out["attention_mask"] = torch.cat(
        [prompt_inputs["attention_mask"], response_mask_B_T.to(prompt_inputs["attention_mask"].dtype)], dim=1
    )
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in prompt_inputs:
            out[key] = torch.cat([prompt_inputs[key], torch.zeros_like(response_ids_B_T, dtype=prompt_inputs[key].dtype)], dim=1)
    return out


def response_hidden(model, prompt_inputs: dict, response_ids_B_T: torch.Tensor, response_mask_B_T: torch.Tensor) -> torch.Tensor:
    """Final hidden states [B, T, H] at the positions that predict each response token."""
    full = with_response(prompt_inputs, response_ids_B_T, response_mask_B_T)
    Lp = prompt_inputs["input_ids"].shape[1]
    T = response_ids_B_T.shape[1]
    if model is not unwrap(model):
        # a DDP/accelerate wrapper must see the forward (its gradient hooks are armed there): go through the
        # whole model, keep the final hidden states, and compute the lm_head on one position only
        out = model(**full, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[-1]
    else:
        backbone, _ = backbone_and_head(model)
        out = backbone(**full, use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden[:, Lp - 1 : Lp - 1 + T]


def response_logits_forward(model, prompt_inputs: dict, response_ids_B_T: torch.Tensor,
                            response_mask_B_T: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] of the response positions through the model's own forward (FSDP: sharded weights
    are only whole inside it). logits_to_keep=T+1 keeps positions Lp-1 .. Lp+T-1; the first T predict the response."""
    full = with_response(prompt_inputs, response_ids_B_T, response_mask_B_T)
    T = response_ids_B_T.shape[1]
    return model(**full, use_cache=False, logits_to_keep=T + 1).logits[:, :T]


def response_logits(model, prompt_inputs: dict, response_ids_B_T: torch.Tensor, response_mask_B_T: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, V] predicting each response token (materialised; for tests and small vocabularies)."""
    _, head = backbone_and_head(model)
    return head(response_hidden(model, prompt_inputs, response_ids_B_T, response_mask_B_T))


_SAID: set[str] = set()  # reasons for not sharing already printed (once per process)


def _can_share(model) -> bool:
    why = sharing_blocker(model)
    if why and why not in _SAID:
        _SAID.add(why)
        print(f"[vision-opd] train.share_prompts: {why}; scoring every response row with its own prompt instead")
    return why is None


def score_responses(model, inputs, prompt_index_B: torch.Tensor, response_ids_B_T: torch.Tensor,
                    response_mask_B_T: torch.Tensor, *, vision_start_id: int, shared: bool, logits: bool = False,
                    device: torch.device | None = None) -> torch.Tensor:
    """What the loop calls: hidden states [B, T, H] (logits [B, T, V] with `logits`: the FSDP path) at the positions
    that predict each response token; row b answers prompt `prompt_index_B[b]` of the processor batch `inputs`.

    shared=True (`train.share_prompts`): each distinct prompt of the rows runs once (`scoring_shared`); shared=False,
    or a model that cannot share (the reason is printed once): every row runs with its own prompt (the reference).
    `device`: where to score (the teacher's device), the inputs are moved there. Both paths read a prompt's last
    column as its last real token, so right-padded prompts are refused with a clear error.
    """
    if not bool(inputs["attention_mask"][:, -1].all()):
        raise ValueError("scoring: the prompts must be left-padded (the last column real in every row), as "
                         "data.views.encode_views pads them; set processor.tokenizer.padding_side = 'left'")
    shared = shared and _can_share(model)
    if shared:
        prompts_P, prompt_of_row_B = torch.unique(prompt_index_B, return_inverse=True)
    selected = select_prompts(inputs, prompts_P if shared else prompt_index_B, vision_start_id)
    if device is not None:
        selected = {k: v.to(device) for k, v in selected.items()}
        response_ids_B_T, response_mask_B_T = response_ids_B_T.to(device), response_mask_B_T.to(device)
    if shared:
        score = shared_response_logits if logits else shared_response_hidden
        return score(model, selected, prompt_of_row_B.to(response_ids_B_T.device), response_ids_B_T, response_mask_B_T)
    score = response_logits_forward if logits else response_hidden
    return score(model, selected, response_ids_B_T, response_mask_B_T)
