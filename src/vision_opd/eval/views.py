"""The views an item is evaluated under, all with the benchmark's one prompt: full, crop, redbox, full+crop, proposed.

crop = `teacher_view` of the evidence box, or the record's teacher_image when it has no box; redbox = the full
image with the expanded box drawn in red; full+crop = both images, full first; proposed = the crop of a label-free
proposer's box (record.meta["proposed_box"], `eval.gap --proposer`), or the full image where the proposer fell
back (record.meta["proposal_fallback"]), so the view is defined on every item, as the label-free pipeline sees it.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from ..data.crops import draw_red_box
from ..data.records import Record
from ..data.views import View, ViewConfig, student_view, teacher_view
from .benchmarks.common import format_prompt

VIEWS = ("full", "crop", "redbox", "full+crop", "proposed")


class EvalError(ValueError):
    """An evaluation that cannot go on; the message says what to change."""


def view_available(record: Record, view: str) -> bool:
    """Whether `view` can be built for `record` (without opening its image)."""
    if view not in VIEWS:
        raise EvalError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
    has_crop = record.box is not None or bool(record.teacher_image)
    return {"full": True, "crop": has_crop, "redbox": record.box is not None, "full+crop": has_crop,
            "proposed": "proposed_box" in record.meta or "proposal_fallback" in record.meta}[view]


def view_of(record: Record, view: str, cfg: ViewConfig = ViewConfig()) -> View:
    """The `view` of a record with the benchmark prompt (`format_prompt`): the same text in every view.

    full = the bare image, as every benchmark shows it: a training config's red box and hint (views.red_box,
    views.hint) never reach an evaluation view, so held-out accuracy during training is the benchmark's.
    """
    text = format_prompt(record)
    full = student_view(record, replace(cfg, red_box=False, hint=False)).images
    if view == "full" or (view == "proposed" and record.meta.get("proposal_fallback")):
        return View(full, text)
    if view == "redbox":
        return View([draw_red_box(full[0], record.box, expand_ratio=cfg.expand_ratio)], text)
    source = "proposer" if view == "proposed" else "box" if record.box is not None else "given"
    crop = teacher_view(record, ViewConfig(**{**asdict(cfg), "teacher_source": source, "teacher_text": None,
                                                "teacher_images": ()})).images
    return View(full + crop if view == "full+crop" else crop, text)
