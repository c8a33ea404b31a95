"""Confidence-search crop proposer: the window whose crop the model answers most confidently.

For every candidate window (multi-scale sliding windows over the image, `fractions` of its sides, stride
`stride` x the window) the model reads the question on that window's crop, prepared exactly as the
teacher's crop is (`data.crops.crop_image`: expanded, grown to a minimum side, enlarged or resized to the
teacher's pixel budget). The score of a window is the model's confidence in its first answer token: the largest
next-token probability after the prompt. The best-scoring window is the proposal; when no window makes
the model more confident than the full image does, the proposer falls back to the full image (the crop
would add nothing the student does not see).

Why it can find evidence that attention cannot: a model that learned its answers from evidence-centred
crops answers confidently when a crop looks like those (the evidence, centred and large) and hesitates on
crops of anything else. It needs no labels, no boxes and no grounding ability, only the model itself; it
is ZoomEye/ViCrop-style search with the model's own confidence as the signal. On the demo's synthetic world
the attention proposer is at chance while this one finds the framed object (docs/demo.md).

Cost: one forward per candidate window (batched, `batch_size` crops per forward; `Proposal.forward_passes`
counts crops). With the defaults and a square image: 11 x 11 windows of 1/6 + 5 x 5 of 1/3 = 146 crops.

It reads the full prompt (question, options and the answer instruction: `needs_prompt`), because the
confidence is that of answering *this* multiple-choice question.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.crops import crop_image
from ..data.views import View, encode_views
from ..models.parts import unwrap
from .window import Box, Proposal, full_image_box


def sliding_windows(width: int, height: int, fractions=(1 / 6, 1 / 3), stride: float = 0.5) -> list[Box]:
    """Multi-scale windows [x1, y1, x2, y2] in pixels: sides `fraction` x the image's, stride `stride` x the side,
    the last window of each row/column flush with the image's edge."""
    if not fractions or not 0 < stride <= 1:
        raise ValueError(f"sliding_windows: need fractions and 0 < stride <= 1 (got {fractions}, {stride})")
    out: list[Box] = []
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"window fraction {f} is not in (0, 1]")
        ww, wh = width * f, height * f
        xs = _starts(width, ww, stride)
        ys = _starts(height, wh, stride)
        out += [(float(x), float(y), float(x + ww), float(y + wh)) for y in ys for x in xs]
    return out


def _starts(size: float, win: float, stride: float) -> list[float]:
    step = max(1.0, win * stride)
    starts = list(np.arange(0.0, size - win + 1e-6, step))
    if not starts or starts[-1] + win < size - 1e-6:
        starts.append(size - win)
    return [round(s, 3) for s in starts]


@torch.no_grad()
def answer_confidence(model, processor, images, prompt: str, batch_size: int = 64) -> np.ndarray:
    """The largest next-token probability after `prompt` for each image (one forward per image, batched)."""
    device = next(unwrap(model).parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        inputs = encode_views(processor, [View([im], prompt) for im in images[i:i + batch_size]]).to(device)
        logits = model(**inputs).logits[:, -1].float()  # left padding: the last position is every prompt's end
        out.append(logits.softmax(-1).max(-1).values.cpu())
    return torch.cat(out).numpy()


@dataclass(frozen=True)
class ConfidenceProposer:
    """Search windows for the crop the model answers most confidently; full image when none beats it."""

    fractions: tuple[float, ...] = (1 / 6, 1 / 3)
    stride: float = 0.5
    expand_ratio: float = 0.05  # the crop around a window, as the teacher's crop (views.ViewConfig defaults)
    min_side: float = 28
    target_pixels: int | None = None  # the teacher crop's pixel budget (views.teacher_pixels; None: upscale applies)
    upscale: float = 2.0  # the teacher crop's enlargement (views.teacher_upscale)
    batch_size: int = 64
    name: str = "confidence"
    needs_prompt: bool = True  # propose_records passes the full prompt (question + options + instruction)

    def __call__(self, model, processor, image, question: str) -> Proposal:
        W, H = image.size
        boxes = sliding_windows(W, H, self.fractions, self.stride)
        crops = [crop_image(image, b, expand_ratio=self.expand_ratio, min_side=self.min_side,
                            target_pixels=self.target_pixels, upscale=self.upscale) for b in boxes]
        conf = answer_confidence(model, processor, [image] + crops, question, self.batch_size)
        full, win = float(conf[0]), conf[1:]
        best = int(win.argmax())
        extra = {"full_confidence": full, "n_windows": len(boxes), "window": list(boxes[best])}
        if win[best] <= full:
            return Proposal(full_image_box(W, H), full, len(boxes) + 1, fallback=True,
                            note=f"no window beats the full image ({win[best]:.3f} <= {full:.3f})", extra=extra)
        return Proposal(tuple(boxes[best]), float(win[best]), len(boxes) + 1, extra=extra)
