"""The two views of a Record, and the one preprocessing path they share.

student_view(record): the full image (optionally with the red box and the hint sentence, the reference
recipe's training input, off by default because benchmarks never have it: docs/method.md).
teacher_view(record): the evidence crop (box expanded, clamped, grown to a minimum side, enlarged 2x as in the
reference recipe, or resized to a pixel budget) or the record's own teacher image (`teacher_source=auto`, the
default, follows the record: its teacher_image when it has one, else the crop of its box); for the controls, the
full image, no image at all, or a blurred / partly masked full image (`data/degrade.py`); or several of these in one
prompt, in a given order (a multi-view teacher, `teacher_images`). `check_views` says, before any work, whether a
record can serve the configured views. Both return a View (PIL images + text);
`encode_views` turns a list of Views into model inputs through the same processor call, so the two views can
differ only in their pixels, never in how they were preprocessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .crops import crop_image, draw_red_box
from .degrade import blurred, masked
from .images import DEFAULT_MAX_IMAGE_PIXELS, open_image
from .records import LETTERS, Record, RecordError

if TYPE_CHECKING:
    from PIL import Image

HINT = "Only focus on the objects inside the red bounding box in the image to answer this question."
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
# views.teacher_source: where the teacher's one image comes from; "none" = no image (a text-only teacher)
TEACHER_SOURCES = ("auto", "box", "given", "proposer", "full", "none", "blur", "mask")
# views.teacher_images: the images a multi-view teacher reads, in order ("crop" = the box / given / proposer crop)
TEACHER_IMAGES = ("crop", "full", "blur", "mask")
# views.negative: the negative teacher view (data/negatives.py); "none" = plain Vision-OPD
NEGATIVES = ("none", "noimage", "blur", "random_blur", "mask", "patch_mask", "random_crop", "downsample", "full")
FALLBACKS = tuple(n for n in NEGATIVES if n not in ("none", "random_crop"))  # what random_crop may fall back to
_SINGLE = {"auto": ("crop",), "box": ("crop",), "given": ("crop",), "proposer": ("crop",), "full": ("full",), "none": (), "blur": ("blur",),
           "mask": ("mask",)}


@dataclass(frozen=True)
class ViewConfig:
    red_box: bool = False  # student: draw the red box around the expanded evidence box
    hint: bool = False  # student: append the HINT sentence
    expand_ratio: float = 0.05  # teacher crop: grow the box by this share of its width/height per side
    min_side: int = 28  # teacher crop: minimum side in pixels (before resizing)
    teacher_upscale: float = 2.0  # teacher crop: enlarge each side this many times (bicubic), as the reference recipe
                                  # does (about 2x), so small evidence gets more vision tokens; 1 = the crop's own size
    teacher_pixels: int | None = None  # teacher crop: resize to about this many pixels instead of teacher_upscale (None: off)
    teacher_source: str = "auto"  # "auto": each record's own teacher_image when it has one, else the crop of its box;
                                  # "box": crop the evidence box; "given": the record's teacher_image; "proposer": crop
                                  # the label-free proposed box (record.meta["proposed_box"], see proposers/); controls:
                                  # "full" (the full image), "none" (text only), "blur" / "mask" (the full image degraded)
    teacher_text: str | None = None  # a different text prompt for the teacher ({question} is filled in, e.g.
                                     # "{question}\nThe second image zooms in on the evidence."); None = same text
    teacher_images: tuple[str, ...] = ()  # multi-view teacher: these images in this order in one prompt, from crop (the
                                          # box/given/proposer crop), full, blur, mask; () = teacher_source's one image
    blur_radius: float = 0.02  # blur: Gaussian standard deviation as a share of the image's shorter side
    mask_ratio: float = 0.5  # mask: share of the grid's cells filled with the image's mean colour
    mask_grid: int = 8  # mask: the image is cut into mask_grid x mask_grid cells (chosen per record id, fixed)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    # the negative teacher view, scored beside the positive one (data/negatives.py; docs/method.md section 8): none
    # (plain Vision-OPD) | noimage | blur | random_blur | mask | patch_mask | random_crop | downsample | full
    negative: str = "none"
    negative_radius: float = 15.0  # blur, random_blur: Gaussian radius in pixels of the positive crop
    negative_boxes: int = 3  # random_blur: boxes blurred (each side a share in [1/8, 1/2] of the crop's)
    negative_area: float = 1 / 3  # mask: one black box of this share of the crop's area (aspect ratio in [0.5, 2])
    negative_patch: int = 14  # patch_mask: patch side in pixels ...
    negative_patch_p: float = 0.6  # ... each blacked out with this probability
    negative_max_iou: float = 0.1  # random_crop: a crop of the positive's size with IoU <= this with it ...
    negative_tries: int = 100  # ... drawn at most this many times, else the sample falls back (counted) ...
    negative_fallback: str = "mask"  # ... to this negative
    negative_factor: float = 2.0  # downsample: the crop shrunk this many times per side, then enlarged back


@dataclass
class View:
    images: list["Image.Image"]
    text: str


def prompt_text(record: Record, *, instruction: str = MC_INSTRUCTION) -> str:
    """The question with its lettered options and the answer instruction (the same for every view)."""
    if not record.options:
        return record.question
    lines = [record.question] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(record.options)]
    return "\n".join(lines + [instruction])


def student_view(record: Record, cfg: ViewConfig = ViewConfig()) -> View:
    img = open_image(record.image, max_pixels=cfg.max_image_pixels)
    text = prompt_text(record)
    if cfg.red_box:
        if record.box is None:
            raise ValueError(f"record {record.id!r}: views.red_box needs an evidence box")
        img = draw_red_box(img, record.box, expand_ratio=cfg.expand_ratio)
    if cfg.hint:
        text = f"{text}\n{HINT}"
    return View([img], text)


def crop_source(record: Record) -> str:
    """The image the teacher's crop (and a proposer) reads: the clean original when the record's own image has the
    red box drawn (Vision-OPD-6K `images/`: meta["clean_image"] once original_images/ is extracted), else the image."""
    return record.meta.get("clean_image") or record.image


def proposal_image(record: Record) -> str:
    """The image a label-free proposer reads: the clean one (`crop_source`). An image with the red box drawn and no
    clean original would hand the answer's box to the proposer: refused, naming the record and the fix."""
    if record.meta.get("red_box_drawn") and not record.meta.get("clean_image"):
        raise RecordError(f"record {record.id!r}: its image has the red box drawn around the evidence (Vision-OPD-6K "
                          "images/), so a proposer would find that box instead of proposing one without labels; extract "
                          "original_images/ next to the data file (the clean images are then used), or set "
                          "data.student_image=original")
    return crop_source(record)


def teacher_source_of(record: Record, cfg: ViewConfig = ViewConfig()) -> str:
    """The teacher source this record uses: `auto` follows the record (teacher_image -> given, box -> box)."""
    if cfg.teacher_source != "auto":
        return cfg.teacher_source
    return "given" if record.teacher_image else "box"


def check_views(record: Record, cfg: ViewConfig = ViewConfig()) -> None:
    """Raise RecordError (with the fix) when the record cannot serve the configured views; opens no image."""
    source = teacher_source_of(record, cfg)
    if cfg.teacher_source == "auto" and record.box is None and not record.teacher_image:
        raise RecordError("the teacher's view needs a 'box' (cropped) or a 'teacher_image' (used as is), and this record "
                          "has neither: add one, skip such records with --skip-bad, or let the model propose the box "
                          "(views.teacher_source=proposer)")
    if source == "box" and record.box is None:
        raise RecordError("views.teacher_source=box crops the evidence box, and this record has no 'box': add one, or "
                          "use views.teacher_source=auto (a record's teacher_image) or proposer")
    if source == "given" and not record.teacher_image:
        raise RecordError("views.teacher_source=given reads the record's 'teacher_image', and this record has none: add "
                          "one, or use views.teacher_source=auto (crops the record's box)")
    if cfg.red_box and record.box is None:
        raise RecordError("views.red_box=true draws the evidence box on the student's image, and this record has no "
                          "'box': add one, or set views.red_box=false")


def teacher_view(record: Record, cfg: ViewConfig = ViewConfig()) -> View:
    """The teacher's prompt: the same text (or `teacher_text`) with the images `teacher_images` names, in that order,
    or the one image of `teacher_source` (none for "none")."""
    text = prompt_text(record)
    if cfg.teacher_text is not None:
        text = cfg.teacher_text.format(question=text)
    if cfg.teacher_source not in TEACHER_SOURCES:
        raise ValueError(f"unknown views.teacher_source {cfg.teacher_source!r}; choose from {', '.join(TEACHER_SOURCES)}")
    names = cfg.teacher_images or _SINGLE[cfg.teacher_source]
    full: list = []  # the full image, opened once

    def image(name: str):
        if name == "crop":
            return _crop(record, cfg)
        if not full:
            full.append(open_image(record.image, max_pixels=cfg.max_image_pixels))
        if name == "full":
            return full[0]
        if name == "blur":
            return blurred(full[0], cfg.blur_radius)
        if name == "mask":
            return masked(full[0], cfg.mask_ratio, cfg.mask_grid, record.id)
        raise ValueError(f"views.teacher_images: unknown image {name!r}; choose from {', '.join(TEACHER_IMAGES)}")

    return View([image(n) for n in names], text)


def _crop(record: Record, cfg: ViewConfig):
    """The teacher's evidence crop: of the record's box, its proposed box, or its own teacher_image."""
    source = teacher_source_of(record, cfg)
    if source == "given":
        if not record.teacher_image:
            raise ValueError(f"record {record.id!r}: views.teacher_source=given but the record has no teacher_image")
        return open_image(record.teacher_image, max_pixels=cfg.max_image_pixels)
    if source == "proposer":
        box = record.meta.get("proposed_box")
        if box is None:
            raise ValueError(f"record {record.id!r}: teacher_source=proposer but no proposal was computed for it")
    elif source == "box":
        box = record.box
        if box is None:
            raise ValueError(f"record {record.id!r}: the teacher crop needs an evidence box (or use teacher_source=given "
                             "or proposer)")
    else:
        raise ValueError(f"views.teacher_images names 'crop', which needs views.teacher_source auto, box, given or proposer "
                         f"(got {cfg.teacher_source!r})")
    img = open_image(crop_source(record), max_pixels=cfg.max_image_pixels)
    return crop_image(img, tuple(box), expand_ratio=cfg.expand_ratio, min_side=cfg.min_side,
                      target_pixels=cfg.teacher_pixels, upscale=cfg.teacher_upscale)


def chat_text(processor, view: View, *, add_generation_prompt: bool = True) -> str:
    content = [{"type": "image"} for _ in view.images] + [{"type": "text", "text": view.text}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)


def encode_views(processor, views: list[View]):
    """Chat template + processor for a batch of views, left-padded: the one preprocessing path."""
    texts = [chat_text(processor, v) for v in views]
    images = [img for v in views for img in v.images]
    processor.tokenizer.padding_side = "left"
    return processor(text=texts, images=images or None, return_tensors="pt", padding=True)
