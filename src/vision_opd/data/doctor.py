"""The data doctor: conventions that pass every record check and still ruin the numbers, caught per file.

    doctor = Doctor(path, box_format="auto")
    problem = doctor.not_json_lines()          # a JSON array / CSV / pretty-printed file: one line, not one per row
    obj = doctor.prepare(obj, base)            # conversions whose intent is certain (box format, lettered options)
    doctor.note_box(obj, base)                 # remember (box, image size from the header) for the file-level check
    problems, notes = doctor.finish()          # file-level: normalised or [x, y, w, h] boxes; what was converted

Box formats (`--box-format` / `data.box_format`): `auto` (pixels [x1, y1, x2, y2], and refuse a file whose boxes
only make sense in another convention), `xyxy` (pixels, no guessing), `xywh` (pixels [x, y, width, height], COCO),
`normalized` ([x1, y1, x2, y2] as fractions of the image's width and height). A converted record holds pixel
[x1, y1, x2, y2] like any other. The checks are cheap: image sizes come from the file headers.

A guess is made only where it cannot be wrong about correct data: every box of the file within [0, 1] while every
image is larger than 16 pixels a side (no real box is a fraction of a pixel), or boxes that cannot be [x1, y1, x2, y2]
(x2 < x1, y2 < y1, past the image) while every box of the file fits as [x, y, w, h].
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .images import ImageError, image_size
from .records import LETTERS, _is_number

BOX_FORMATS = ("auto", "xyxy", "xywh", "normalized")
MIN_SIDE = 16  # images at least this large: a box inside [0, 1] is a fraction of a pixel, never meant
_OWN_LETTER = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])\s*[.):])\s*(.*)$", re.S)
_HINT = "pass --box-format {fmt} (config: data.box_format={fmt})"


def box_format_or_error(fmt: str) -> str:
    from .records import RecordError

    if fmt not in BOX_FORMATS:
        raise RecordError(f"box format {fmt!r}: choose {', '.join(BOX_FORMATS)}")
    return fmt


def own_letter(text: str) -> tuple[str, str] | None:
    """('A', 'orange') for "A. orange", "A) orange", "(A) orange", "A: orange"; None otherwise ("A4 paper")."""
    m = _OWN_LETTER.match(text)
    return (m.group(1) or m.group(2), m.group(3).strip()) if m else None


def strip_own_letters(options: list[str]) -> list[str] | None:
    """The options without their letters when every option carries its own letter in order ("A. x", "B. y");
    None when any does not (then the options are left as written)."""
    out = []
    for i, o in enumerate(options):
        lt = own_letter(o) if isinstance(o, str) else None
        if lt is None or lt[0] != LETTERS[i] or not lt[1]:
            return None
        out.append(lt[1])
    return out


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


def answer_letter(answer: str, options: list[str]) -> str | None:
    """The letter an answer means when it names an option another way than its letter ("b", "(B)", "B. pear",
    "Pear" for option "pear"); None when it is already a letter or means none."""
    letters = LETTERS[: len(options)]
    if answer in letters:
        return None
    if len(answer.strip()) == 1 and answer.strip().upper() in letters:
        return answer.strip().upper()
    lt = own_letter(answer)
    if lt and lt[0] in letters and (not lt[1] or _key(lt[1]) == _key(options[letters.index(lt[0])])):
        return lt[0]
    keys = [_key(o) for o in options]
    return letters[keys.index(_key(answer))] if _key(answer) in keys else None


class Doctor:
    """One file's conventions: conversions on read, and the file-level diagnosis after the last line."""

    def __init__(self, path: Path, box_format: str = "auto"):
        self.path = Path(path)
        self.box_format = box_format_or_error(box_format)
        self.boxes: list[tuple[list[float], tuple[int, int]]] = []
        self.counts = {"letters": 0, "answers": 0, "boxes": 0}

    # ------------------------------------------------------------------ the file as a whole
    def not_json_lines(self) -> str | None:
        """One line when the file is not JSON Lines at all (a JSON array, CSV, one object over several lines)."""
        head = []
        with open(self.path, "rb") as f:
            for raw in f:
                if raw.strip():
                    head.append(raw.decode("utf-8", "replace").strip())
                if len(head) == 2:
                    break
        if not head:
            return None
        fix = "write one JSON object per line (docs/data.md)"
        if head[0].startswith("["):
            return (f"{self.path}: is a JSON array, not JSON Lines (one JSON object per line); {fix}, e.g. python -c "
                    "\"import json,sys; [print(json.dumps(r)) for r in json.load(open(sys.argv[1]))]\" FILE > FILE.jsonl")
        if any(_parses(x) for x in head):
            return None
        if head[0].startswith("{"):
            return f"{self.path}: holds JSON objects over several lines, not JSON Lines; {fix}"
        kind = "a CSV file" if "," in head[0] or "\t" in head[0] else "not JSON"
        return f"{self.path}: is not JSON Lines (line 1 reads {head[0][:60]!r}: {kind}?); {fix}"

    # ------------------------------------------------------------------ one record, before its checks
    def prepare(self, obj: Any, base: Path) -> Any:
        """The object with the conversions whose intent is certain: the box format asked for, options that carry
        their own letters ("A. orange": stripped, the prompt adds them), an answer naming an option's text."""
        if not isinstance(obj, dict):
            return obj
        obj = dict(obj)
        options = obj.get("options")
        if isinstance(options, list) and options and all(isinstance(o, str) for o in options):
            stripped = strip_own_letters(options)
            answer = obj.get("answer")
            if stripped is not None:
                self.counts["letters"] += 1
                obj["options"] = stripped
                if isinstance(answer, str) and answer in options:  # the answer named a lettered option's text
                    obj["answer"] = LETTERS[options.index(answer)]
            if isinstance(obj.get("answer"), str) and (letter := answer_letter(obj["answer"], obj["options"])):
                self.counts["answers"] += 1
                obj["answer"] = letter
        key = "box" if "box" in obj else "bbox"
        box = obj.get(key)
        if self.box_format in ("xywh", "normalized") and _four_numbers(box):
            if self.box_format == "xywh":
                x, y, w, h = box
                obj[key] = [x, y, x + w, y + h]
            else:
                size = _size(obj, base)
                if size is not None:
                    obj[key] = [box[0] * size[0], box[1] * size[1], box[2] * size[0], box[3] * size[1]]
            self.counts["boxes"] += 1
        return obj

    def note_box(self, obj: Any, base: Path) -> None:
        """Remember a record's box (as written) and its image's size, for the file-level check (format auto)."""
        if self.box_format != "auto" or not isinstance(obj, dict):
            return
        box = obj.get("box", obj.get("bbox"))
        if _four_numbers(box):
            size = _size(obj, base)
            if size is not None:
                self.boxes.append(([float(v) for v in box], size))

    # ------------------------------------------------------------------ after the last line
    def finish(self) -> tuple[list[str], list[str]]:
        """(problems: the file's boxes are in another convention, refused whatever --skip-bad says; notes: what was
        converted on read)."""
        problems = [p for p in (self._normalised(), self._xywh()) if p]
        notes = []
        c = self.counts
        if c["letters"]:
            notes.append(f"{self.path}: the options of {c['letters']} record(s) carry their own letters (\"A. orange\"): "
                         "stripped on read (the prompt adds the letters)")
        if c["answers"]:
            notes.append(f"{self.path}: {c['answers']} answer(s) name an option's text or write its letter another way "
                         "(\"orange\", \"b\", \"(B)\"): read as the option's letter")
        if c["boxes"]:
            notes.append(f"{self.path}: {c['boxes']} box(es) converted from --box-format {self.box_format} to pixel "
                         "[x1, y1, x2, y2]")
        return problems, notes

    def _normalised(self) -> str | None:
        if not self.boxes or not all(0.0 <= v <= 1.0 for b, _ in self.boxes for v in b):
            return None
        if min(min(s) for _, s in self.boxes) <= MIN_SIDE:
            return None
        w, h = min(s for _, s in self.boxes)
        return (f"{self.path}: every box ({len(self.boxes)}) lies within [0, 1] on images of {w}x{h} px or larger: the "
                "boxes look normalised (fractions of the image); multiply x by the width and y by the height, or "
                + _HINT.format(fmt="normalized"))

    def _xywh(self) -> str | None:
        impossible = [b for b, s in self.boxes if not _fits_xyxy(b, s)]
        if not impossible or not all(_fits_xywh(b, s) for b, s in self.boxes):
            return None
        return (f"{self.path}: {len(impossible)} of {len(self.boxes)} boxes are impossible as [x1, y1, x2, y2] (x2 < x1, "
                "y2 < y1 or past the image) but every box fits as [x, y, width, height] (COCO): the boxes look like "
                "[x, y, w, h]; " + _HINT.format(fmt="xywh") + " to convert them on read")


def _parses(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _four_numbers(box: Any) -> bool:
    return isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_number(v) and math.isfinite(v) for v in box)


def _size(obj: dict, base: Path) -> tuple[int, int] | None:
    """The record's image size from its header (None when the image is missing: the record check says so)."""
    image = obj.get("image")
    if not isinstance(image, str) or not image:
        return None
    try:
        return image_size(base / image)
    except ImageError:
        return None


def _fits_xyxy(b: list[float], size: tuple[int, int]) -> bool:
    w, h = size
    return b[2] > b[0] and b[3] > b[1] and b[0] >= -0.5 and b[1] >= -0.5 and b[2] <= w + 0.5 and b[3] <= h + 0.5


def _fits_xywh(b: list[float], size: tuple[int, int]) -> bool:
    return _fits_xyxy([b[0], b[1], b[0] + b[2], b[1] + b[3]], size)
