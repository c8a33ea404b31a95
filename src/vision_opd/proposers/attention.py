"""Attention-based crop proposer (ViCrop-style relative attention, docs/method.md).

relevance[i] = mean over heads of A(last token -> image token i | question prompt)
             / (mean over heads of A(last token -> image token i | generic prompt) + eps * mean_i(...))
at one middle decoder layer, with the generic prompt "Write a general description of the image.".
Dividing by the generic attention removes what the layer attends to whatever the question (attention
sinks, salient objects); what is left is where *this question* looks. The map [h, w] lives on the merged
image-token grid (image_grid_thw / spatial merge 2x2) and is searched with sliding windows (window.py).

How the attention is read, without forcing eager attention on the model: a forward pre-hook on the
chosen layer's self-attention module receives its input hidden states and `position_embeddings`
(cos, sin of the model's rotary embedding, M-RoPE already composed). It recomputes the query of the
last position and the keys of all positions with the module's own q/k projections, q/k norms (Qwen3-VL,
Qwen3.5) and rotary function (`apply_rotary_pos_emb` of the module's own modeling file, so Qwen3.5's
partial rotary is honoured), repeats the key/value heads (GQA), and takes
softmax(q k^T * scaling) over every key: the last query is causal-masked by nothing, so this equals
the eager attention row exactly (tests/test_proposers.py checks it against attn_implementation="eager").
Cost: one forward per prompt (two per proposal), stopped right after the hooked layer
(stop_early=True) since nothing later is needed; the model's own attention kernel (sdpa, flash) is
untouched.

    from vision_opd.proposers import AttentionProposer
    p = AttentionProposer()(model, processor, pil_image, "What is written on the sign?")
    p.box, p.confidence, p.relevance.shape
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.views import View, encode_views
from ..models.parts import backbone_and_head, unwrap
from .window import Proposal, WindowConfig, window_proposal

GENERIC_PROMPT = "Write a general description of the image."


class _Stop(Exception):
    """Raised by the hook after the attention is captured, to end the forward early."""


def decoder_layers(model) -> torch.nn.ModuleList:
    """The language model's decoder layers of a Qwen-VL image-text-to-text model."""
    backbone, _ = backbone_and_head(model)
    lm = getattr(backbone, "language_model", None)
    layers = getattr(lm, "layers", None)
    if layers is None:
        raise TypeError(f"{type(unwrap(model)).__name__}: expected .model.language_model.layers (a Qwen-VL model)")
    return layers


def attention_layer(model, layer: int | None = None) -> tuple[int, torch.nn.Module]:
    """(index, self-attention module) of `layer`, or of the softmax-attention layer nearest the middle.

    Qwen3.5 mixes linear-attention (gated delta) layers, which have no attention weights, with
    full-attention ones: only layers with a `self_attn` module qualify.
    """
    layers = decoder_layers(model)
    usable = [i for i, lay in enumerate(layers) if hasattr(lay, "self_attn")]
    if not usable:
        raise TypeError("no decoder layer has a self_attn module")
    if layer is None:
        middle = (len(layers) - 1) / 2
        layer = min(usable, key=lambda i: (abs(i - middle), i))
    if layer < 0:
        layer += len(layers)
    if layer not in usable:
        raise ValueError(f"layer {layer} has no softmax self-attention; choose one of {usable}")
    return layer, layers[layer].self_attn


def last_query_attention(attn: torch.nn.Module, hidden_B_L_D: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         key_mask_B_L: torch.Tensor | None = None) -> torch.Tensor:
    """Attention weights [B, heads, L] of the last position over all positions, recomputed from the inputs
    of a Qwen-VL self-attention module (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5), in float32."""
    rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb  # the family's own rotary function
    hd = attn.head_dim
    n_heads = attn.config.num_attention_heads
    B, L, _ = hidden_B_L_D.shape
    q = attn.q_proj(hidden_B_L_D[:, -1:])
    if q.shape[-1] == 2 * n_heads * hd:  # Qwen3.5: q_proj also yields an output gate, per head [q | gate]
        q = q.view(B, 1, n_heads, 2 * hd)[..., :hd]
    q = q.reshape(B, 1, n_heads, hd)
    k = attn.k_proj(hidden_B_L_D).view(B, L, -1, hd)
    if hasattr(attn, "q_norm"):
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, heads, 1, hd], [B, kv_heads, L, hd]
    q, _ = rope(q, q, cos[:, -1:], sin[:, -1:])
    _, k = rope(k, k, cos, sin)
    k = k.repeat_interleave(n_heads // k.shape[1], dim=1)  # GQA: head h reads kv head h // groups (= repeat_kv)
    scores = torch.matmul(q.float(), k.float().transpose(2, 3)).squeeze(2) * attn.scaling  # [B, heads, L]
    if key_mask_B_L is not None:  # left padding: padded keys get no attention
        scores = scores.masked_fill(~key_mask_B_L.bool()[:, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1)


@torch.no_grad()
def capture_last_query_attention(model, inputs, layer: int | None = None, *, stop_early: bool = True) -> torch.Tensor:
    """One forward of the backbone on `inputs`; attention [B, heads, L] of the last position at `layer`."""
    _, attn = attention_layer(model, layer)
    backbone, _ = backbone_and_head(model)
    captured = {}

    def hook(module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cos, sin = kwargs["position_embeddings"]
        captured["attn"] = last_query_attention(module, hidden, cos, sin, inputs.get("attention_mask"))
        if stop_early:
            raise _Stop

    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        backbone(**inputs, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    assert "attn" in captured, "the attention hook never ran: is the layer part of the forward?"
    return captured["attn"]


def image_grid(model, inputs) -> tuple[int, int, int]:
    """(t, h, w) of the single image's merged token grid (spatial merge of model.config.vision_config)."""
    grid = inputs["image_grid_thw"]
    assert grid.shape[0] == 1, f"one image per prompt expected, got {grid.shape[0]}"
    merge = unwrap(model).config.vision_config.spatial_merge_size
    t, gh, gw = (int(v) for v in grid[0].tolist())
    return t, gh // merge, gw // merge


def image_attention_map(model, processor, image, text: str, layer: int | None = None, *,
                        stop_early: bool = True) -> np.ndarray:
    """Head-mean attention [h, w] of the prompt's last token over the image-token grid, one forward."""
    inputs = encode_views(processor, [View([image], text)]).to(next(unwrap(model).parameters()).device)
    att_L = capture_last_query_attention(model, inputs, layer, stop_early=stop_early)[0].mean(0)
    image_token_id = unwrap(model).config.image_token_id
    is_image_L = inputs["input_ids"][0] == image_token_id
    t, h, w = image_grid(model, inputs)
    n = int(is_image_L.sum())
    assert n == t * h * w, f"{n} image tokens but the grid {t}x{h}x{w} needs {t * h * w}"
    # image tokens are in row-major order over (t, h, w) of the merged grid; average over t (1 for images)
    return att_L[is_image_L].view(t, h, w).mean(0).cpu().double().numpy()


def relative_attention(model, processor, image, question: str, *, layer: int | None = None,
                       generic_prompt: str = GENERIC_PROMPT, eps: float = 1e-3,
                       stop_early: bool = True) -> np.ndarray:
    """ViCrop relative attention [h, w]: question attention / (generic attention + eps * its mean)."""
    a_q = image_attention_map(model, processor, image, question, layer, stop_early=stop_early)
    a_g = image_attention_map(model, processor, image, generic_prompt, layer, stop_early=stop_early)
    return a_q / (a_g + eps * a_g.mean() + 1e-12)


@dataclass(frozen=True)
class AttentionProposer:
    """Relative attention at one layer + multi-scale sliding windows; 2 forwards per proposal."""

    layer: int | None = None  # decoder layer index; None = the self-attention layer nearest the middle
    generic_prompt: str = GENERIC_PROMPT
    eps: float = 1e-3  # relative floor of the generic attention in the ratio
    window: WindowConfig = field(default_factory=WindowConfig)
    stop_early: bool = True  # end each forward after the hooked layer
    name: str = "attention"

    def __call__(self, model, processor, image, question: str) -> Proposal:
        rel = relative_attention(model, processor, image, question, layer=self.layer,
                                 generic_prompt=self.generic_prompt, eps=self.eps, stop_early=self.stop_early)
        p = window_proposal(rel, image.size, self.window, forward_passes=2)
        p.extra["layer"] = attention_layer(model, self.layer)[0]
        return p
