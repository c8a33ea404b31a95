"""What each view saw, as small embedded images: the student's full image with the teacher's crop outlined,
and the teacher's crop, built by the same functions training and evaluation use (`data.views`, `data.crops`).

    full, crop = record_thumbnails(record, view_cfg)       # data: URIs (or None where a view cannot be built)
    html = figure(full, "student: full image")

Images are downscaled to `max_side` pixels (PNG for small images such as the synthetic world, JPEG above
`PNG_MAX_SIDE` before scaling) and embedded as base64, so the page needs no files beside it.
"""

from __future__ import annotations

import base64
import io
from PIL import Image, ImageDraw

from ..data.crops import crop_region
from ..data.records import Record
from ..data.views import ViewConfig, student_view, teacher_source_of, teacher_view
from .document import esc

PNG_MAX_SIDE = 400  # images up to this side are embedded as PNG (sharp edges); larger ones as JPEG
BOX_RGB = (0, 200, 230)  # the outline of the teacher's crop on the full image (not the red box a model may see)


def data_uri(img: Image.Image, max_side: int = 240) -> str:
    """`img` downscaled to at most `max_side` pixels per side, as a data: URI."""
    big = max(img.size) > PNG_MAX_SIDE
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if big:
        img.convert("RGB").save(buf, format="JPEG", quality=82)
        mime = "jpeg"
    else:
        img.save(buf, format="PNG", optimize=True)
        mime = "png"
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def outline(img: Image.Image, region: tuple[int, int, int, int], max_side: int) -> Image.Image:
    """A copy of `img` with `region` outlined, the line thick enough to survive the downscaling."""
    out = img.convert("RGB")
    width = max(2, round(2 * max(img.size) / max_side))
    x1, y1, x2, y2 = region
    ImageDraw.Draw(out).rectangle([x1, y1, x2 - 1, y2 - 1], outline=BOX_RGB, width=width)
    return out


def teacher_box(record: Record, cfg: ViewConfig) -> tuple[float, float, float, float] | None:
    """The box the teacher's crop is cut from under `cfg` (None for a given teacher image or the full view)."""
    source = teacher_source_of(record, cfg)  # auto follows the record
    if source == "box":
        return record.box
    if source == "proposer":
        return record.meta.get("proposed_box")
    return None


def record_thumbnails(record: Record, cfg: ViewConfig = ViewConfig(), max_side: int = 240
                      ) -> tuple[str | None, str | None, str]:
    """(student image, teacher image, note): data URIs of the two views, the crop region outlined on the full
    image; a view that cannot be built (missing image, no box) is None and the note says why."""
    notes = []
    full = crop = None
    try:
        img = student_view(record, cfg).images[0]
        box = teacher_box(record, cfg)
        if box is not None:
            img = outline(img, crop_region(tuple(box), img.width, img.height, expand_ratio=cfg.expand_ratio,
                                           min_side=cfg.min_side), max_side)
        full = data_uri(img, max_side)
    except Exception as e:  # noqa: BLE001 - the page shows what is missing and goes on
        notes.append(f"student image: {e}")
    if cfg.teacher_source == "full":
        return full, full, "the teacher sees the full image (views.teacher_source=full)"
    try:
        crop = data_uri(teacher_view(record, cfg).images[0], max_side)
    except Exception as e:  # noqa: BLE001
        notes.append(f"teacher view: {e}")
    return full, crop, "; ".join(notes)


def figure(uri: str | None, caption: str) -> str:
    """An <img> with its caption, or a grey placeholder when the image is missing."""
    if uri is None:
        return f'<figure><div class="note" style="width:180px;height:120px;border:1px dashed #ccc;padding:6px">' \
               f'no image</div><figcaption>{esc(caption)}</figcaption></figure>'
    return f'<figure><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'
