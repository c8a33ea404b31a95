"""Degraded copies of an image for the "is it the crop?" controls (negative teachers), pure PIL.

    blurred(img, radius=0.02)                 # Gaussian blur, radius = 2% of the shorter side
    masked(img, ratio=0.5, grid=8, key="q1")  # half of an 8 x 8 grid of cells filled with the mean colour

A teacher that reads a blurred or partly masked full image (`views.teacher_source=blur | mask`) has the same
text and the same layout as the student but less visual evidence: if Vision-OPD with such a teacher gains as
much as with the crop, the gain did not come from the crop's evidence. The masked cells are chosen by a
random stream seeded from `key` (the record id), so a record's masked view is the same at every step and on
every machine.
"""

from __future__ import annotations

import hashlib
import random

from PIL import Image, ImageDraw, ImageFilter, ImageStat


def blurred(img: Image.Image, radius: float) -> Image.Image:
    """A Gaussian-blurred copy; `radius` is the blur's standard deviation as a share of the shorter side."""
    if radius < 0:
        raise ValueError(f"blur radius {radius}: must be >= 0 (a share of the image's shorter side)")
    return img.filter(ImageFilter.GaussianBlur(radius * min(img.size)))


def mask_cells(width: int, height: int, ratio: float, grid: int, key: str) -> list[tuple[int, int, int, int]]:
    """The pixel boxes [x1, y1, x2, y2) of the cells `masked` fills: round(ratio * grid^2) of the grid x grid
    cells, chosen by a stream seeded from `key`."""
    if not 0.0 <= ratio <= 1.0 or grid < 1:
        raise ValueError(f"mask ratio {ratio} must be in [0, 1] and grid {grid} >= 1")
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    cells = random.Random(seed).sample(range(grid * grid), round(ratio * grid * grid))
    xs = [round(i * width / grid) for i in range(grid + 1)]
    ys = [round(i * height / grid) for i in range(grid + 1)]
    return [(xs[c % grid], ys[c // grid], xs[c % grid + 1], ys[c // grid + 1]) for c in sorted(cells)]


def masked(img: Image.Image, ratio: float, grid: int, key: str) -> Image.Image:
    """A copy with a share `ratio` of its grid x grid cells filled with the image's mean colour."""
    out = img.convert("RGB") if img.mode != "RGB" else img.copy()
    fill = tuple(round(v) for v in ImageStat.Stat(out).mean)
    draw = ImageDraw.Draw(out)
    for x1, y1, x2, y2 in mask_cells(out.width, out.height, ratio, grid, key):
        if x2 > x1 and y2 > y1:
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)
    return out
