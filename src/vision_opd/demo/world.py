"""The built-in synthetic world: one framed target among look-alike distractors, multiple-choice questions.

Each image is a `canvas`-pixel square with `distractors` small coloured shapes and one target that
carries a black frame (the marker). The question asks about the framed object; its evidence box is the
frame. Distractors are drawn from the same distribution as the target (same sizes, colours, shapes,
digits): the ONLY thing that singles the target out in a full image is the frame.

Question types (`question_types`, default colour, dot, digit), four options each (A-D), the answer's option
always among them:
  colour  "Colour of the framed object?"            (6 colour names)
  dot     "Colour of the dot on the framed object?" (every object carries a centred disc of a second colour)
  digit   "Digit on the framed object?"             (`digits`, default 0 1 4 7)
  shape   "Shape of the framed object?"             (circle, square, triangle, diamond; not in the default mix)
(Short questions: the tiny model's 384-token BPE spends a token on every few characters.)

Regimes (the world is built so that a model pre-trained on the labelled part keeps a large gap):
  hard full image  `distractors` look-alikes (default 10): to answer you must FIND the frame.
  easy full image  `easy_distractors` look-alikes (default 0) and no frame (`easy_frame=False`): the
                   target is the only object, so the labelled data never rewards using the frame; the
                   skill "read an attribute of a small object in a full image" is taught, the skill
                   "pick the framed one" is not. (With the frame kept in easy images, the grid world
                   transfers: hard full 0.52 vs easy 0.60 at step 800, docs/demo.md M5.)
  crop             the evidence crop of an item (what Vision-OPD's teacher sees): target large, alone.
The labelled pre-training data (`vision_opd.demo.pretrain`) is crops + easy full images; Vision-OPD trains on
unlabelled hard full images; held-out accuracy is measured on hard full images and their crops. The hard
regime is learnable in principle: supervised training on hard full images WITH labels learns to use the
frame in the grid world (docs/demo.md, control c).

Why the defaults (docs/demo.md has the measurements):
  canvas 168, target_size 20, cell 28: objects sit centred in a 6 x 6 grid of 28 px cells, and at the tiny
      model's 168 px budget one cell is exactly one vision token (2 x 2 merged 14 px patches): each object
      and its frame live in one token, so "attend to the framed token" is a clean, learnable skill. With
      free placement (cell 0) a frame straddles up to 4 tokens shared with neighbours, and even supervised
      training on hard full images WITH labels gained only 0.30 -> 0.38 in 150 steps (docs/demo.md, M4).
  distractors 10: chance of guessing the right object is 1/11, so a model that ignores the frame sits near
      chance on the full image while the crop is easy: a gap of several tens of points.
  digits "0147": four glyphs with clearly different outlines at 20 px (chosen by eye, not measured).
  question types colour, dot, digit: each is readable in the FULL image by the pre-trained tiny model when the
      object is alone (easy full images: 1.00 / 1.00 / 1.00 on 600 val items, docs/demo.md M21), so the gap that
      remains on hard images is the focus failure alone. Shape was replaced: the earlier mix (colour, digit, shape)
      pre-trained with 30% easy images never learned to read shape or digit in a full image (easy full 0.24 /
      0.26, M15), which capped what any method could close at 0.40 of the gap.
Splits are made by seed (`SPLIT_SEEDS`): item ids carry the seed, images are drawn from disjoint RNG
streams, and tests check that no two splits share an image.

    vision-opd synth --out data/synth --n 200
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..data.records import LETTERS, Record, write_records

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
QUESTION_TYPES = ("colour", "dot", "digit")  # the default world's question types (why: module docstring)
ALL_QUESTION_TYPES = ("colour", "dot", "digit", "shape")
QUESTIONS = {
    "colour": "Colour of the framed object?",
    "digit": "Digit on the framed object?",
    "shape": "Shape of the framed object?",
    "dot": "Colour of the dot on the framed object?",
}
# Seeds of the standard splits: labelled pre-training items, unlabelled Vision-OPD items, validation
# (for every choice made while designing), held-out test (reported only).
SPLIT_SEEDS = {"pretrain": 1, "opd": 2, "val": 3, "test": 4}
ANSWER_STYLES = ("short", "sentence")


@dataclass(frozen=True)
class WorldConfig:
    canvas: int = 168  # image side in pixels
    distractors: int = 10  # look-alike objects besides the target (the hard regime)
    target_size: int = 20  # side of each object in pixels (target and distractors)
    question_types: tuple[str, ...] = QUESTION_TYPES
    digits: str = "0147"  # glyphs for the digit question (needs at least `options` of them)
    frame_width: int = 2  # the marker's line width
    background: tuple[int, int, int] = (235, 235, 235)
    options: int = 4
    easy_distractors: int = 0  # distractors in the easy (labelled) full images
    frame: bool = True  # draw the marker (False in the easy regime unless easy_frame)
    easy_frame: bool = False  # keep the frame in easy full images (True lets the labelled data teach "find the frame")
    cell: int = 28  # objects sit centred in the cells of a cell x cell grid (0: free placement); 28 px = one vision token
    answers: str = "short"  # the labelled response: "short" = the option's text ("red"); "sentence" = a short
    # sentence naming the framed object's colour, then the asked attribute, then "Answer: X" (`response_text`)

    def __post_init__(self):
        if self.answers not in ANSWER_STYLES:
            raise ValueError(f"WorldConfig.answers={self.answers!r}: choose {' or '.join(ANSWER_STYLES)}")

    @property
    def max_new_tokens(self) -> int:
        """Enough tokens for a labelled response of this world (greedy evaluation and rollouts)."""
        return 8 if self.answers == "short" else 24

    def to_dict(self) -> dict:
        return asdict(self)

    def easy(self) -> "WorldConfig":
        """The same world in the easy regime (for labelled pre-training full images)."""
        return replace(self, distractors=self.easy_distractors, frame=self.easy_frame)


def _font(size: int):
    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def draw_object(draw: ImageDraw.ImageDraw, shape: str, colour: tuple[int, int, int], box: tuple[int, int, int, int],
                digit: str | None = None, dot: tuple[int, int, int] | None = None) -> None:
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
        cy = (y1 + y2) / 2 + ((y2 - y1) * 0.15 if shape == "triangle" else 0)
        draw.text(((x1 + x2) / 2, cy), digit, fill=(255, 255, 255), font=_font(size), anchor="mm",
                  stroke_width=1, stroke_fill=(0, 0, 0))
    if dot is not None:  # a centred disc of a second colour, 45% of the object's side (lower on a triangle)
        r = (x2 - x1) * 0.225
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2 + ((y2 - y1) * 0.15 if shape == "triangle" else 0)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=dot)


def _place(rng: random.Random, n: int, size: int, canvas: int, margin: int) -> list[tuple[int, int]]:
    """Non-overlapping top-left corners for n objects (rejection sampling with a spacing margin)."""
    spots: list[tuple[int, int]] = []
    lo, hi = margin, canvas - size - margin
    for _ in range(n * 400):
        if len(spots) == n:
            break
        x, y = rng.randint(lo, hi), rng.randint(lo, hi)
        if all(abs(x - a) >= size + margin or abs(y - b) >= size + margin for a, b in spots):
            spots.append((x, y))
    if len(spots) < n:
        raise ValueError(f"cannot place {n} objects of size {size} on a {canvas}px canvas; use fewer distractors")
    return spots


@dataclass(frozen=True)
class Item:
    image: Image.Image
    question: str
    options: list[str]
    answer: int  # index of the true option
    box: tuple[int, int, int, int]  # the evidence box (the frame)
    qtype: str
    colour: str  # the framed object's own colour (named first by a "sentence" response)


def response_text(item: Item, answers: str) -> str:
    """The labelled response of an item: the option's text, or (answers="sentence") a short sentence that names
    the framed object's colour, then the asked attribute, then the answer:

        colour  "red object. Answer: red"
        dot     "red object, blue dot. Answer: blue"
        digit   "red object, digit 4. Answer: 4"

    Every content word is about the framed object, so in a hard full image each of them is a gap token (the
    student must find the frame to say it), while the template words are the same for every item. The final
    "Answer: X" is what `eval.choice.extract_choice` reads (the last explicit answer statement wins).
    """
    value = item.options[item.answer]
    if answers == "short":
        return value
    middle = {"colour": "", "dot": f", {value} dot", "digit": f", digit {value}", "shape": f", {value} shape"}[item.qtype]
    return f"{item.colour} object{middle}. Answer: {value}"


def make_item(rng: random.Random, cfg: WorldConfig, qtype: str) -> tuple[Image.Image, str, list[str], int, tuple[int, int, int, int]]:
    """(image, question, options, answer index, evidence box) for one item."""
    it = draw_item(rng, cfg, qtype)
    return it.image, it.question, it.options, it.answer, it.box


def draw_item(rng: random.Random, cfg: WorldConfig, qtype: str) -> Item:
    """One item with the framed object's attributes (for `response_text`); the same RNG draws as `make_item`."""
    if qtype not in QUESTIONS:
        raise ValueError(f"unknown question type {qtype!r}; choose from {ALL_QUESTION_TYPES}")
    if len(cfg.digits) < cfg.options:
        raise ValueError(f"WorldConfig.digits={cfg.digits!r}: need at least options={cfg.options} glyphs")
    size = cfg.target_size
    margin = cfg.frame_width + 4
    if cfg.cell:
        per_side = cfg.canvas // cfg.cell
        if cfg.distractors + 1 > per_side * per_side or cfg.cell < size + 2 * (cfg.frame_width + 1):
            raise ValueError(f"cannot place {cfg.distractors + 1} objects of size {size} in {cfg.cell}px cells on a {cfg.canvas}px canvas")
        off = (cfg.cell - size) // 2
        cells = rng.sample(range(per_side * per_side), cfg.distractors + 1)
        spots = [((c % per_side) * cfg.cell + off, (c // per_side) * cfg.cell + off) for c in cells]
    else:
        spots = _place(rng, cfg.distractors + 1, size, cfg.canvas, margin)
    img = Image.new("RGB", (cfg.canvas, cfg.canvas), cfg.background)
    draw = ImageDraw.Draw(img)
    objs = []
    for x, y in spots:
        sh, c, d = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(cfg.digits)
        dc = rng.choice([k for k in COLOURS if k != c]) if qtype == "dot" else None  # (other types: the RNG stream of old)
        objs.append((sh, c, d, (x, y, x + size, y + size), dc))
    shape, colour, digit, tbox, dot = objs[0]
    for s, c, d, b, dc in objs:
        draw_object(draw, s, COLOURS[c], b, d if qtype == "digit" else None, COLOURS[dc] if dc else None)
    pad = cfg.frame_width + 1
    frame = (tbox[0] - pad, tbox[1] - pad, tbox[2] + pad, tbox[3] + pad)
    if cfg.frame:
        draw.rectangle(frame, outline=(0, 0, 0), width=cfg.frame_width)
    evidence = (frame[0], frame[1], frame[2] + 1, frame[3] + 1)
    truth, pool = {"colour": (colour, list(COLOURS)), "digit": (digit, list(cfg.digits)), "shape": (shape, list(SHAPES)),
                   "dot": (dot, list(COLOURS))}[qtype]
    others = rng.sample([p for p in pool if p != truth], cfg.options - 1)
    options = others + [truth]
    rng.shuffle(options)
    return Item(img, QUESTIONS[qtype], options, options.index(truth), evidence, qtype, colour)


def generate(n: int, seed: int = 0, cfg: WorldConfig = WorldConfig(), *, image_dir: Path | None = None, prefix: str = "item") -> list[tuple[Record, Image.Image]]:
    """n (Record, image) pairs; question types cycle in order; deterministic in (seed, cfg)."""
    rng = random.Random(seed * 7_919 + 17)
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


def write_synthetic(out_dir: str | Path, n: int, seed: int = 0, cfg: WorldConfig = WorldConfig(), *, name: str = "records.jsonl", prefix: str = "item") -> Path:
    """Write n items as PNGs plus `name` (JSONL of Records) in out_dir; returns the JSONL path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    items = generate(n, seed, cfg, image_dir=(out / "images").resolve(), prefix=prefix)
    for rec, img in items:
        img.save(rec.image)
    path = out / name
    write_records([r for r, _ in items], path)
    return path


def synthesize_if_missing(data_cfg, *, rank: int = 0, timeout_s: float = 600.0) -> Path | None:
    """For a config that asks for it (`data.synth_if_missing`, the tiny config): write `data.synth_n` synthetic
    records at `data.train_file` when that file does not exist. Rank 0 writes (the records file last, atomically);
    the other processes of a multi-process launch wait for it. Returns the path written, else None."""
    import time

    path = Path(data_cfg.train_file)
    if not data_cfg.synth_if_missing or path.exists():
        return None
    if path.suffix != ".jsonl":
        raise ValueError(f"data.synth_if_missing: data.train_file={path} must be a .jsonl path to write Records to")
    if rank == 0:
        print(f"[vision-opd] {path} not found: generating {data_cfg.synth_n} synthetic records there (data.synth_if_missing)")
        return write_synthetic(path.parent, data_cfg.synth_n, data_cfg.synth_seed, name=path.name)
    t_end = time.time() + timeout_s
    while not path.exists():
        if time.time() > t_end:
            raise TimeoutError(f"rank {rank}: {path} did not appear within {timeout_s:.0f} s (rank 0 writes it)")
        time.sleep(0.2)
    return path
