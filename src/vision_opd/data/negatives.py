"""The negative teacher view: the positive (crop) view with its evidence hidden, pure PIL.

    neg = negative_view(record, cfg.views, seed=cfg.train.seed)   # neg.view (a View), neg.kind, neg.fell_back

`views.negative` picks it (docs/method.md, section 8):

- `noimage`: the teacher's text with no image;
- `blur`: the positive crop under a Gaussian blur of `negative_radius` pixels;
- `random_blur`: `negative_boxes` boxes of the crop blurred (each side a share in [1/8, 1/2] of the crop's);
- `mask`: one black box of `negative_area` of the crop's area, aspect ratio (w/h) in [0.5, 2];
- `patch_mask`: the crop cut into `negative_patch`-pixel patches, each blacked out with probability `negative_patch_p`;
- `random_crop`: a crop of the same image, of the positive region's size, with IoU <= `negative_max_iou` with it,
  processed as the positive crop is; when none is found in `negative_tries` draws (or the record has no box), the
  sample falls back to `negative_fallback`, and `fell_back` says so (the step counts it);
- `downsample`: the crop shrunk `negative_factor` times per side and enlarged back (same size, less detail);
- `full`: the full image.

Every random choice comes from a generator seeded by a stable hash of (run seed, record id) (`sample_rng`), drawn
afresh for each view: a record gets the same negative at every step, after a resume and on every rank, and two
records of the same size get different boxes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .crops import crop_image, crop_region
from .images import open_image
from .records import Record
from .views import NEGATIVES, View, ViewConfig, crop_source, teacher_source_of, teacher_view

Region = tuple[int, int, int, int]


def sample_rng(seed: int, key: str) -> np.random.Generator:
    """A generator seeded by a stable hash (sha256) of (run seed, record id): the same on every machine and run."""
    digest = hashlib.sha256(f"{int(seed)}\x00{key}".encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def box_iou(a: Region, b: Region) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _rgb(img: Image.Image) -> Image.Image:
    return img.convert("RGB") if img.mode != "RGB" else img.copy()


def blurred_px(img: Image.Image, radius: float) -> Image.Image:
    """The whole image under a Gaussian blur of `radius` pixels."""
    return _rgb(img).filter(ImageFilter.GaussianBlur(radius))


def blurred_boxes(img: Image.Image, rng: np.random.Generator, n: int, radius: float) -> Image.Image:
    """`n` boxes blurred (radius in pixels), each w in [W/8, W/2], h in [H/8, H/2], placed uniformly."""
    out = _rgb(img)
    W, H = out.size
    for _ in range(n):
        w = max(1, int(rng.integers(max(1, W // 8), max(1, W // 2) + 1)))
        h = max(1, int(rng.integers(max(1, H // 8), max(1, H // 2) + 1)))
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        region = (x, y, x + w, y + h)
        out.paste(out.crop(region).filter(ImageFilter.GaussianBlur(radius)), region[:2])
    return out


def mask_box(width: int, height: int, rng: np.random.Generator, area: float) -> Region:
    """One box of about `area` x width x height pixels, aspect ratio w/h drawn in [0.5, 2], placed uniformly."""
    aspect = float(rng.uniform(0.5, 2.0))
    target = area * width * height
    w = min(width, max(1, round((target * aspect) ** 0.5)))
    h = min(height, max(1, round(target / w)))
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return (x, y, x + w, y + h)


def masked_box(img: Image.Image, rng: np.random.Generator, area: float) -> Image.Image:
    """A copy with one black box of about `area` of its area (`mask_box`)."""
    out = _rgb(img)
    x1, y1, x2, y2 = mask_box(out.width, out.height, rng, area)
    ImageDraw.Draw(out).rectangle([x1, y1, x2 - 1, y2 - 1], fill=(0, 0, 0))
    return out


def patch_masked(img: Image.Image, rng: np.random.Generator, patch: int, p: float) -> Image.Image:
    """A copy cut into `patch` x `patch` pixel patches, each blacked out with probability `p`."""
    out = _rgb(img)
    draw = ImageDraw.Draw(out)
    cols, rows = -(-out.width // patch), -(-out.height // patch)
    hit = rng.random((rows, cols)) < p
    for r, c in zip(*np.nonzero(hit), strict=True):
        x1, y1 = int(c) * patch, int(r) * patch
        draw.rectangle([x1, y1, min(out.width, x1 + patch) - 1, min(out.height, y1 + patch) - 1], fill=(0, 0, 0))
    return out


def downsampled(img: Image.Image, factor: float) -> Image.Image:
    """Shrunk `factor` times per side (bicubic) and enlarged back to its own size: same size, less detail."""
    small = (max(1, round(img.width / factor)), max(1, round(img.height / factor)))
    return _rgb(img).resize(small, Image.BICUBIC).resize(img.size, Image.BICUBIC)


def same_size_region(region: Region, width: int, height: int, rng: np.random.Generator, max_iou: float,
                     tries: int) -> Region | None:
    """A region of `region`'s size inside the image with IoU <= `max_iou` with it, drawn uniformly at most `tries`
    times; None when no draw met the bound."""
    w, h = region[2] - region[0], region[3] - region[1]
    for _ in range(tries):
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        candidate = (x, y, x + w, y + h)
        if box_iou(candidate, region) <= max_iou:
            return candidate
    return None


@dataclass
class Negative:
    view: View
    kind: str  # the negative this sample got (negative_fallback when a random crop fell back)
    fell_back: bool = False
    region: Region | None = None  # random_crop: the negative region in the image's pixels


def negative_view(record: Record, cfg: ViewConfig, seed: int) -> Negative:
    """The record's negative teacher view: the teacher's text with the positive image degraded (or replaced) as
    `cfg.negative` says; random parts drawn from `sample_rng(seed, record.id)`."""
    kind = cfg.negative
    if kind not in NEGATIVES or kind == "none":
        raise ValueError(f"views.negative={kind!r}: choose one of {', '.join(NEGATIVES[1:])}")
    positive = teacher_view(record, cfg)
    rng = sample_rng(seed, record.id)
    if kind == "random_crop":
        region = _random_region(record, cfg, rng)
        if region is not None:
            img = open_image(crop_source(record), max_pixels=cfg.max_image_pixels)
            crop = crop_image(img, region, expand_ratio=0.0, min_side=1, target_pixels=cfg.teacher_pixels,
                              upscale=cfg.teacher_upscale)
            return Negative(View([crop], positive.text), kind, region=region)
        return Negative(_degrade(record, positive, cfg, cfg.negative_fallback, rng), cfg.negative_fallback, fell_back=True)
    return Negative(_degrade(record, positive, cfg, kind, rng), kind)


def _random_region(record: Record, cfg: ViewConfig, rng: np.random.Generator) -> Region | None:
    box = record.meta.get("proposed_box") if teacher_source_of(record, cfg) == "proposer" else record.box
    if box is None:
        return None
    img = open_image(crop_source(record), max_pixels=cfg.max_image_pixels)
    region = crop_region(tuple(box), img.width, img.height, expand_ratio=cfg.expand_ratio, min_side=cfg.min_side)
    return same_size_region(region, img.width, img.height, rng, cfg.negative_max_iou, cfg.negative_tries)


def _degrade(record: Record, positive: View, cfg: ViewConfig, kind: str, rng: np.random.Generator) -> View:
    if kind == "noimage":
        return View([], positive.text)
    if kind == "full":
        return View([open_image(record.image, max_pixels=cfg.max_image_pixels)], positive.text)
    change = {"blur": lambda im: blurred_px(im, cfg.negative_radius),
              "random_blur": lambda im: blurred_boxes(im, rng, cfg.negative_boxes, cfg.negative_radius),
              "mask": lambda im: masked_box(im, rng, cfg.negative_area),
              "patch_mask": lambda im: patch_masked(im, rng, cfg.negative_patch, cfg.negative_patch_p),
              "downsample": lambda im: downsampled(im, cfg.negative_factor)}[kind]
    return View([change(im) for im in positive.images], positive.text)
