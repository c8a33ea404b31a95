"""The built-in synthetic world: small marked targets among distractors, multiple-choice questions.

Each image is a canvas of `canvas` pixels with `distractors` small coloured shapes and one target that
carries a black frame (the marker); the question asks about the framed object, and its evidence box is
the frame. Downscaled to a small model's pixel budget, the target is a few pixels wide in the full
image, while the teacher's crop shows it large: the regional-to-global gap by construction.

Question types:
  colour  "What colour is the object in the black frame?"  (options: 4 colour names)
  shape   "What shape is the object in the black frame?"   (options: 4 shape names)
  digit   "What digit is written in the black frame?"      (options: 4 digits)

`write_synthetic(out_dir, n, seed, ...)` writes `records.jsonl` + PNGs in the standard Record format.

    vision-opd synth --out data/synth --n 200
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .records import LETTERS, Record, write_records

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
DIGITS = tuple("0123456789")
QUESTION_TYPES = ("colour", "shape", "digit")


@dataclass(frozen=True)
class WorldConfig:
    canvas: int = 224  # image side in pixels
    distractors: int = 8  # shapes besides the target
    target_size: int = 14  # side of each object in pixels (target and distractors)
    question_types: tuple[str, ...] = QUESTION_TYPES
    frame_width: int = 2  # the marker's line width
    background: tuple[int, int, int] = (235, 235, 235)
    options: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


def _font(size: int):
    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def draw_object(draw: ImageDraw.ImageDraw, shape: str, colour: tuple[int, int, int], box: tuple[int, int, int, int], digit: str | None = None) -> None:
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=colour)
    elif shape == "diamond":
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    if digit is not None:
        size = max(6, int((x2 - x1) * 0.8))
        draw.text(((x1 + x2) / 2, (y1 + y2) / 2), digit, fill=(255, 255, 255), font=_font(size), anchor="mm")


def _place(rng: random.Random, n: int, size: int, canvas: int, margin: int) -> list[tuple[int, int]]:
    """Non-overlapping top-left corners for n objects (rejection sampling with a spacing margin)."""
    spots: list[tuple[int, int]] = []
    lo, hi = margin, canvas - size - margin
    for _ in range(n * 200):
        if len(spots) == n:
            break
        x, y = rng.randint(lo, hi), rng.randint(lo, hi)
        if all(abs(x - a) >= size + margin or abs(y - b) >= size + margin for a, b in spots):
            spots.append((x, y))
    if len(spots) < n:
        raise ValueError(f"cannot place {n} objects of size {size} on a {canvas}px canvas; use fewer distractors")
    return spots


def make_item(rng: random.Random, cfg: WorldConfig, qtype: str) -> tuple[Image.Image, str, list[str], int, tuple[int, int, int, int]]:
    """(image, question, options, answer index, evidence box) for one item."""
    size = cfg.target_size
    margin = cfg.frame_width + 3
    spots = _place(rng, cfg.distractors + 1, size, cfg.canvas, margin)
    img = Image.new("RGB", (cfg.canvas, cfg.canvas), cfg.background)
    draw = ImageDraw.Draw(img)
    objs = []
    for x, y in spots:
        objs.append((rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(DIGITS), (x, y, x + size, y + size)))
    shape, colour, digit, tbox = objs[0]
    for s, c, d, b in objs:
        draw_object(draw, s, COLOURS[c], b, d if qtype == "digit" else None)
    pad = cfg.frame_width + 1
    frame = (tbox[0] - pad, tbox[1] - pad, tbox[2] + pad, tbox[3] + pad)
    draw.rectangle(frame, outline=(0, 0, 0), width=cfg.frame_width)
    evidence = (frame[0], frame[1], frame[2] + 1, frame[3] + 1)
    if qtype == "colour":
        question, truth, pool = "What colour is the object in the black frame?", colour, list(COLOURS)
    elif qtype == "shape":
        question, truth, pool = "What shape is the object in the black frame?", shape, list(SHAPES)
    elif qtype == "digit":
        question, truth, pool = "What digit is written in the black frame?", digit, list(DIGITS)
    else:
        raise ValueError(f"unknown question type {qtype!r}; choose from {QUESTION_TYPES}")
    others = rng.sample([p for p in pool if p != truth], cfg.options - 1)
    options = others + [truth]
    rng.shuffle(options)
    return img, question, options, options.index(truth), evidence


def generate(n: int, seed: int = 0, cfg: WorldConfig = WorldConfig(), *, image_dir: Path | None = None, prefix: str = "item") -> list[tuple[Record, Image.Image]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        qtype = cfg.question_types[i % len(cfg.question_types)]
        img, question, options, answer, box = make_item(rng, cfg, qtype)
        rid = f"{prefix}{seed}_{i:05d}"
        path = (image_dir / f"{rid}.png") if image_dir else Path(f"{rid}.png")
        rec = Record(id=rid, image=str(path), question=question, options=options, answer=LETTERS[answer],
                     box=tuple(float(v) for v in box), category=qtype)
        out.append((rec, img))
    return out


def write_synthetic(out_dir: str | Path, n: int, seed: int = 0, cfg: WorldConfig = WorldConfig(), *, name: str = "records.jsonl") -> Path:
    """Write n items as PNGs plus `name` (JSONL of Records) in out_dir; returns the JSONL path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    items = generate(n, seed, cfg, image_dir=(out / "images").resolve())
    for rec, img in items:
        img.save(rec.image)
    path = out / name
    write_records([r for r, _ in items], path)
    return path
