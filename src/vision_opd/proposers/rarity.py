"""Rarity crop proposer: the region of the image least like any other region, in the model's own visual features.

relevance[i] = 1 - mean of the k largest cosine similarities between image token i and the other image tokens,
on the merged image embeddings the language model receives (`model.model.get_image_features`, one forward of
the vision tower only, no language model). A token that has no look-alike anywhere in the image scores high;
repeated texture, background and look-alike objects score low. The map [h, w] (the merged token grid) is
searched with the same multi-scale sliding windows and full-image fallback as the attention proposer
(window.py).

What it is for and where it fails: it finds what is visually singular (a marker, an odd-one-out object, a sign
on a plain wall), with no labels, no question and no grounding ability; it is question-agnostic, so on an image
with several distinctive regions it proposes the most distinctive one whatever is asked. On the demo's
synthetic world (one framed object among look-alikes) it finds the framed target, where the attention and
confidence proposers of the tiny model are at chance (docs/demo.md); on natural images its value is unmeasured
here (no benchmark images offline).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.views import View, encode_views
from ..models.parts import unwrap
from .window import Proposal, WindowConfig, window_proposal


@torch.no_grad()
def image_token_features(model, processor, image) -> tuple[torch.Tensor, tuple[int, int]]:
    """The merged image embeddings [h * w, D] of one image (row-major over the merged grid) and (h, w)."""
    m = unwrap(model)
    inputs = encode_views(processor, [View([image], "")]).to(next(m.parameters()).device)
    grid = inputs["image_grid_thw"]
    out = m.model.get_image_features(inputs["pixel_values"], grid)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    if isinstance(feats, (list, tuple)):
        feats = feats[0]
    merge = getattr(getattr(m.config, "vision_config", None), "spatial_merge_size", 2)
    t, h, w = (int(v) for v in grid[0])
    h, w = h // merge, w // merge
    if feats.shape[0] != t * h * w:
        raise RuntimeError(f"{feats.shape[0]} image features but the merged grid {t}x{h}x{w} needs {t * h * w}")
    return feats.float().view(t, h * w, -1).mean(0), (h, w)


def rarity_map(feats_N_D: torch.Tensor, hw: tuple[int, int], k: int = 3) -> np.ndarray:
    """1 - mean cosine similarity to the k most similar other tokens, as an [h, w] map."""
    n = feats_N_D.shape[0]
    if n < 2:
        return np.ones(hw)
    x = torch.nn.functional.normalize(feats_N_D, dim=-1)
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    kk = max(1, min(k, n - 1))
    r = 1.0 - sim.topk(kk, dim=-1).values.mean(-1)
    return r.view(*hw).cpu().double().numpy()


@dataclass(frozen=True)
class RarityProposer:
    """kNN rarity of the model's image-token features + multi-scale sliding windows; one vision-tower forward."""

    k: int = 3  # neighbours: a token is rare when even its k closest look-alikes are far
    window: WindowConfig = field(default_factory=WindowConfig)
    name: str = "rarity"

    def __call__(self, model, processor, image, question: str) -> Proposal:
        feats, hw = image_token_features(model, processor, image)
        rel = rarity_map(feats, hw, self.k)
        p = window_proposal(rel, image.size, self.window, forward_passes=1)
        p.extra["k"] = self.k
        return p
