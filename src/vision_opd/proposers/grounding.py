"""Self-grounding crop proposer: ask the model for the evidence box and parse what it says.

Prompt: "Locate the region needed to answer: {question} Output its bounding box as JSON.", greedy.

What Qwen-VL models answer, and the coordinate systems (`coords`):
- Qwen2.5-VL: JSON `[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]` in absolute pixels of the *resized*
  model input (image_grid_thw * patch size)                                   -> "pixel_resized"
- Qwen3-VL / Qwen3.5: the same JSON, normalised to 0-1000                        -> "norm1000"
- Qwen2-VL: `<|box_start|>(x1,y1),(x2,y2)<|box_end|>`, normalised to 0-1000      -> "norm1000"
- other models sometimes answer in 0-1                                          -> "norm1"
`coords="auto"` in `parse_box` decides per box: box tokens -> norm1000; all four values <= 1 -> norm1;
otherwise pixel_resized. The proposer resolves "auto" from the model family first (COORDS_BY_MODEL),
because 0-1000 and resized pixels cannot be told apart from the numbers alone.

The parser is pattern-based, not a JSON parser: it finds every complete coordinate group, i.e. a
bracketed list of exactly four numbers `[a, b, c, d]` (optionally quoted numbers, a trailing comma) or a
box-token pair, in order of appearance. So broken JSON around the numbers (single quotes, trailing
commas, a missing closing brace, markdown code fences, prose) still parses, while an incomplete group
(`[10, 20, 30` cut off by max_new_tokens) does not. Boxes with x2 <= x1 or y2 <= y1 (inverted or zero
area) are rejected; the others are clamped to the image, and rejected if nothing is left.
`multiple="first"` takes the first valid box, "union" the bounding box of all valid boxes.

Confidence: the mean probability (under the decoding distribution) of the generated tokens that
overlap the digits of the chosen box(es). JSON punctuation and keys are near-certain for any model
that follows the format, so including them would say little; the digits are where the model commits
to a location. Greedy decoding picks the argmax, so this is how peaked each coordinate choice was. An
output with no valid box gives the full image, confidence 0, fallback=True and a note that says so.
forward_passes = the number of generated tokens (one forward each, the first being the prefill).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..data.views import View, encode_views
from ..models.parts import unwrap
from .window import Box, Proposal, full_image_box

GROUNDING_PROMPT = "Locate the region needed to answer: {question} Output its bounding box as JSON."
COORDS = ("pixel_resized", "norm1000", "norm1", "auto")
COORDS_BY_MODEL = {"qwen2_vl": "norm1000", "qwen2_5_vl": "pixel_resized", "qwen3_vl": "norm1000",
                   "qwen3_vl_moe": "norm1000", "qwen3_5": "norm1000", "qwen3_5_moe": "norm1000"}

_NUM = r"""["']?\s*(-?\d+(?:\.\d+)?)\s*["']?"""
_LIST = re.compile(r"\[\s*" + r"\s*,\s*".join([_NUM] * 4) + r"\s*,?\s*\]")
_P = r"\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)"
_BOX_TOKENS = re.compile(r"<\|box_start\|>\s*" + _P + r"\s*,?\s*" + _P + r"\s*<\|box_end\|>")


@dataclass
class FoundBox:
    values: tuple[float, float, float, float]  # as written
    box_tokens: bool  # came from <|box_start|>...<|box_end|> (Qwen2-VL, 0-1000)
    spans: list[tuple[int, int]]  # character spans of the four numbers in the text


def find_boxes(text: str) -> list[FoundBox]:
    """Every complete coordinate group in `text`, in order of appearance."""
    found = []
    for pattern, tokens in ((_BOX_TOKENS, True), (_LIST, False)):
        for m in pattern.finditer(text):
            found.append(FoundBox(tuple(float(m.group(i)) for i in range(1, 5)), tokens,
                                  [m.span(i) for i in range(1, 5)]))
    return sorted(found, key=lambda f: f.spans[0][0])


def to_pixels(values, coords: str, image_size: tuple[int, int], resized_size: tuple[int, int] | None,
              box_tokens: bool = False) -> Box:
    """Convert [x1, y1, x2, y2] in `coords` to pixels of the original image (not clamped)."""
    if coords not in COORDS:
        raise ValueError(f"coords={coords!r}; choose one of {', '.join(COORDS)}")
    W, H = image_size
    if coords == "auto":
        coords = "norm1000" if box_tokens else "norm1" if max(abs(v) for v in values) <= 1 else "pixel_resized"
    if coords == "pixel_resized":
        rw, rh = resized_size or image_size
        sx, sy = W / rw, H / rh
    elif coords == "norm1000":
        sx, sy = W / 1000, H / 1000
    else:
        sx, sy = W, H
    x1, y1, x2, y2 = values
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def _valid_pixel_box(found: FoundBox, image_size, resized_size, coords) -> Box | None:
    x1, y1, x2, y2 = found.values
    if x2 <= x1 or y2 <= y1:  # inverted or zero area, as written
        return None
    b = to_pixels(found.values, coords, image_size, resized_size, found.box_tokens)
    W, H = image_size
    b = (min(max(b[0], 0.0), W), min(max(b[1], 0.0), H), min(max(b[2], 0.0), W), min(max(b[3], 0.0), H))
    if b[2] - b[0] <= 0 or b[3] - b[1] <= 0:  # nothing left inside the image
        return None
    return b


def parse_boxes(text: str, image_size: tuple[int, int], resized_size: tuple[int, int] | None = None,
                coords: str = "auto", multiple: str = "first") -> tuple[Box | None, list[FoundBox]]:
    """(box in original-image pixels or None, the coordinate groups it was made of)."""
    if multiple not in ("first", "union"):
        raise ValueError(f"multiple={multiple!r}; choose first or union")
    valid = []
    for f in find_boxes(text):
        b = _valid_pixel_box(f, image_size, resized_size, coords)
        if b is not None:
            valid.append((b, f))
            if multiple == "first":
                break
    if not valid:
        return None, []
    boxes = [b for b, _ in valid]
    union = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    return union, [f for _, f in valid]


def parse_box(text: str, image_size: tuple[int, int], resized_size: tuple[int, int] | None = None,
              coords: str = "auto", multiple: str = "first") -> Box | None:
    """The evidence box a model wrote in `text`, in pixels of the original image (width, height =
    image_size), or None. `resized_size` = (width, height) of the model's resized input, for
    coords="pixel_resized" (None: the image itself)."""
    return parse_boxes(text, image_size, resized_size, coords, multiple)[0]


def coords_for(model) -> str:
    """The coordinate system the model family writes boxes in ("auto" when unknown)."""
    return COORDS_BY_MODEL.get(unwrap(model).config.model_type, "auto")


def grounding_suppress_ids(model, processor) -> list[int]:
    """Vision tokens that must never be generated; the box/ref tokens stay allowed (Qwen2-VL writes boxes with them)."""
    from ..models.loading import vision_token_ids

    tok = processor.tokenizer
    allowed = {tok.convert_tokens_to_ids(t) for t in ("<|box_start|>", "<|box_end|>", "<|object_ref_start|>",
                                                     "<|object_ref_end|>", "<|quad_start|>", "<|quad_end|>")}
    return [i for i in vision_token_ids(unwrap(model), processor) if i not in allowed]


def token_char_ends(tokenizer, ids: list[int]) -> list[int]:
    """End offset in decode(ids) of each token (prefix decoding; exact for the ASCII of box outputs)."""
    return [len(tokenizer.decode(ids[: i + 1], skip_special_tokens=False)) for i in range(len(ids))]


@dataclass
class Grounding:
    text: str  # decoded answer, special tokens kept, EOS dropped
    ids: list[int]  # its token ids
    probs: list[float]  # each token's probability under the decoding distribution
    resized_size: tuple[int, int]  # (width, height) of the model's resized image input
    forward_passes: int  # generation steps (prefill included, EOS step included)


@torch.no_grad()
def ground(model, processor, image, question: str, *, prompt: str = GROUNDING_PROMPT,
           max_new_tokens: int = 64) -> Grounding:
    """The model's greedy answer to the grounding prompt."""
    from ..rollout import eos_ids_of

    m = unwrap(model)
    inputs = encode_views(processor, [View([image], prompt.format(question=question))])
    inputs = inputs.to(next(m.parameters()).device)
    eos = eos_ids_of(m, processor)
    out = m.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                     top_k=None, eos_token_id=eos, pad_token_id=processor.tokenizer.pad_token_id,
                     suppress_tokens=grounding_suppress_ids(model, processor) or None,
                     return_dict_in_generate=True, output_scores=True)
    ids = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    n_steps = len(out.scores)
    # scores are the processed logits the greedy choice was made from (suppressed tokens at -inf)
    probs = [float(torch.softmax(s[0].float(), -1)[i]) for s, i in zip(out.scores, ids, strict=True)]
    while ids and ids[-1] in eos:  # drop the EOS (keeps probs aligned)
        ids, probs = ids[:-1], probs[:-1]
    text = processor.tokenizer.decode(ids, skip_special_tokens=False)
    patch = m.config.vision_config.patch_size
    _, gh, gw = (int(v) for v in inputs["image_grid_thw"][0].tolist())
    return Grounding(text, ids, probs, (gw * patch, gh * patch), n_steps)


@dataclass(frozen=True)
class GroundingProposer:
    """Ask the model for the box; parse it; full image (confidence 0) when nothing parses."""

    prompt: str = GROUNDING_PROMPT
    coords: str = "auto"  # "auto": the family's system (COORDS_BY_MODEL), else the per-box heuristic
    multiple: str = "first"  # several boxes: "first" or "union"
    max_new_tokens: int = 64
    name: str = "grounding"

    def __call__(self, model, processor, image, question: str) -> Proposal:
        g = ground(model, processor, image, question, prompt=self.prompt, max_new_tokens=self.max_new_tokens)
        coords = coords_for(model) if self.coords == "auto" else self.coords
        box, used = parse_boxes(g.text, image.size, g.resized_size, coords, self.multiple)
        n_forward = g.forward_passes
        extra = {"text": g.text, "coords": coords, "resized_size": list(g.resized_size)}
        if box is None:
            return Proposal(full_image_box(*image.size), 0.0, n_forward, None, fallback=True,
                            note=f"no valid box in the model's output {g.text[:80]!r}: full image", extra=extra)
        ends = token_char_ends(processor.tokenizer, g.ids)
        starts = [0] + ends[:-1]
        spans = [s for f in used for s in f.spans]
        box_probs = [p for p, a, b in zip(g.probs, starts, ends, strict=True)
                     if any(a < e and s < b for s, e in spans)]
        confidence = sum(box_probs) / len(box_probs) if box_probs else 0.0
        return Proposal(box, float(confidence), n_forward, None, extra=extra)
