"""Box geometry and overlays, pure PIL. Boxes are [x1, y1, x2, y2] in pixels of the EXIF-transposed image.

The teacher's crop is built as the reference recipe does (docs/method.md): expand the evidence box
by `expand_ratio` of its width/height on each side, clamp it to the image, grow it to `min_side`
pixels (centred, still clamped), crop, and enlarge it `upscale` times per side (the recipe: about 2x),
or, when `target_pixels` is given, resize it to about that many pixels instead.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

Box = tuple[float, float, float, float]


def expand_box(box: Box, ratio: float) -> Box:
    """Grow a box by `ratio` of its own width (left/right) and height (top/bottom) on each side."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * ratio, (y2 - y1) * ratio
    return (x1 - dx, y1 - dy, x2 + dx, y2 + dy)


def clamp_box(box: Box, width: int, height: int) -> Box:
    x1, y1, x2, y2 = box
    return (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))


def grow_to_min_side(box: Box, min_side: float, width: int, height: int) -> Box:
    """Grow each side shorter than `min_side` symmetrically, shifting inward at the image border."""

    def grow(lo: float, hi: float, limit: int) -> tuple[float, float]:
        target = min(float(min_side), float(limit))
        if hi - lo >= target:
            return lo, hi
        centre = (lo + hi) / 2
        lo, hi = centre - target / 2, centre + target / 2
        if lo < 0:
            lo, hi = 0.0, target
        if hi > limit:
            lo, hi = limit - target, float(limit)
        return lo, hi

    x1, x2 = grow(box[0], box[2], width)
    y1, y2 = grow(box[1], box[3], height)
    return (x1, y1, x2, y2)


def crop_region(box: Box, width: int, height: int, *, expand_ratio: float = 0.05, min_side: float = 28) -> tuple[int, int, int, int]:
    """The integer pixel region the teacher sees: expanded, clamped, grown to min_side."""
    b = clamp_box(expand_box(box, expand_ratio), width, height)
    b = grow_to_min_side(b, min_side, width, height)
    x1, y1 = math.floor(b[0]), math.floor(b[1])
    x2, y2 = math.ceil(b[2]), math.ceil(b[3])
    return (max(0, x1), max(0, y1), min(width, max(x2, x1 + 1)), min(height, max(y2, y1 + 1)))


def resize_to_pixels(img: Image.Image, target_pixels: int | None) -> Image.Image:
    """Resize (up or down) keeping the aspect ratio so that w*h is about target_pixels; None keeps it."""
    if not target_pixels:
        return img
    w, h = img.size
    scale = math.sqrt(target_pixels / (w * h))
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) == (w, h):
        return img
    return img.resize((nw, nh), Image.Resampling.BICUBIC)


def upscale_image(img: Image.Image, factor: float) -> Image.Image:
    """Each side multiplied by `factor` (bicubic, rounded, at least 1 px); 1 keeps the image as it is."""
    if factor == 1:
        return img
    size = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
    return img if size == img.size else img.resize(size, Image.Resampling.BICUBIC)


def crop_image(
    img: Image.Image,
    box: Box,
    *,
    expand_ratio: float = 0.05,
    min_side: float = 28,
    target_pixels: int | None = None,
    upscale: float = 1.0,
) -> Image.Image:
    """The teacher's crop of `img` around the evidence `box`: the region enlarged `upscale` times per side, or
    resized to about `target_pixels` pixels when that is given (then `upscale` does not apply)."""
    region = img.crop(crop_region(box, img.width, img.height, expand_ratio=expand_ratio, min_side=min_side))
    return resize_to_pixels(region, target_pixels) if target_pixels else upscale_image(region, upscale)


def draw_red_box(img: Image.Image, box: Box, *, expand_ratio: float = 0.05, line_width: int = 5) -> Image.Image:
    """A copy of `img` with a red outline around the expanded evidence box (the reference recipe's student input).

    The outline lies entirely outside the expanded box (rounded outward to whole pixels): a ring `line_width`
    pixels wide around it, cut off at the image border. Every pixel of the evidence stays as it was, so the box
    marks the region without covering it (drawn inward, a 5 px line would paint 41% of a 30 x 30 box).
    """
    out = img.copy()
    x1, y1, x2, y2 = clamp_box(expand_box(box, expand_ratio), img.width, img.height)
    x1, y1, x2, y2 = math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)
    w = line_width
    ImageDraw.Draw(out).rectangle([x1 - w, y1 - w, x2 - 1 + w, y2 - 1 + w], outline=(255, 0, 0), width=w)
    return out
