"""Label-free crop proposers: where is the evidence, when the record has no box (docs/method.md).

A proposer is a callable (model, processor, image: PIL.Image, question: str) -> Proposal, with the box in
pixels of the image, a confidence in [0, 1], the forward passes it spent and (attention) the relevance
map over the image-token grid. Proposers fall back to the full image when they are not confident.

- AttentionProposer (attention.py): ViCrop relative attention at a middle layer, read by a hook on one
  attention module (no eager attention), searched with multi-scale sliding windows (window.py). 2 forwards.
- GroundingProposer (grounding.py): ask the model for the box as JSON; `parse_box` reads Qwen2-VL box
  tokens, Qwen2.5-VL pixel JSON, Qwen3-VL/3.5 0-1000 JSON and broken variants. One forward per token.
- ConfidenceProposer (confidence.py): the sliding window whose crop the model answers most confidently
  (the model's own confidence as the signal; no attention, no grounding). One forward per window.
- RarityProposer (rarity.py): the region least like any other in the model's own image-token features (kNN
  rarity), searched with the same windows; question-agnostic, one vision-tower forward.
- ProposalCache / propose_records / evaluate_proposals (cache.py): compute once per record, score by IoU.
"""

from .attention import GENERIC_PROMPT, AttentionProposer, relative_attention
from .confidence import ConfidenceProposer, sliding_windows
from .rarity import RarityProposer, rarity_map
from .cache import ProposalCache, apply_proposals, attach_proposals, evaluate_proposals, propose_records, propose_with
from .grounding import GROUNDING_PROMPT, GroundingProposer, parse_box
from .window import Proposal, WindowConfig, best_window, iou, window_proposal

PROPOSERS = {"attention": AttentionProposer, "grounding": GroundingProposer, "confidence": ConfidenceProposer,
             "rarity": RarityProposer}



def make_proposer(name: str, views=None):
    """The proposer called `name`; confidence search crops its windows like the teacher's crop of `views`."""
    if name not in PROPOSERS:
        raise ValueError(f"unknown proposer {name!r}; choose one of {sorted(PROPOSERS)}")
    if name == "confidence" and views is not None:
        return ConfidenceProposer(expand_ratio=views.expand_ratio, min_side=views.min_side, target_pixels=views.teacher_pixels,
                                  upscale=views.teacher_upscale)
    return PROPOSERS[name]()


__all__ = [
    "GENERIC_PROMPT", "GROUNDING_PROMPT", "PROPOSERS", "AttentionProposer", "ConfidenceProposer", "GroundingProposer",
    "Proposal", "RarityProposer", "make_proposer", "rarity_map", "sliding_windows",
    "ProposalCache", "WindowConfig", "apply_proposals", "propose_with", "best_window", "evaluate_proposals", "iou", "parse_box", "propose_records",
    "relative_attention", "window_proposal",
]
