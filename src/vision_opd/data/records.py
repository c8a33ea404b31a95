"""The Record: one image, one question, its evidence box; its JSONL schema (paths relative to the file).
Reading a file with every check is `data/validate.read_records`.

JSONL schema, one object a line (keys in brackets are optional):
    {"id": str, "image": path, "question": str, ["options": [str, ...]], ["answer": str],
     ["box": [x1, y1, x2, y2]], ["teacher_image": path], ["category": str]}
`bbox` is accepted for `box`, `problem` for `question`. Boxes are in pixels of the EXIF-transposed
image. Training never reads `answer`: it is kept for evaluation only.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class RecordError(ValueError):
    """A record that cannot be used. The message names the file, the line, the id and the fix."""


@dataclass
class Record:
    id: str
    image: str  # absolute path (resolved against the JSONL file's folder)
    question: str
    options: list[str] | None = None
    answer: str | None = None  # a letter for multiple choice, free text otherwise; never read by training
    box: tuple[float, float, float, float] | None = None
    teacher_image: str | None = None
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        d = asdict(self)
        if relative_to is not None:
            for k in ("image", "teacher_image"):
                if d[k]:
                    d[k] = str(Path(d[k]).resolve().relative_to(Path(relative_to).resolve()))
        d["box"] = list(d["box"]) if d["box"] is not None else None
        return {k: v for k, v in d.items() if v not in (None, {}, [])}


def _is_number(v: Any) -> bool:
    """A real number (Python or numpy), never a boolean or a string that looks like one."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and type(v).__name__ != "bool_"


def parse_box(value: Any) -> tuple[float, float, float, float]:
    """Validate [x1, y1, x2, y2]; raise ValueError saying what is wrong."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"box must be a list of 4 numbers [x1, y1, x2, y2], got {value!r}")
    if not all(_is_number(v) for v in value):
        raise ValueError(f"box must contain numbers (pixels, not booleans or strings), got {value!r}")
    b = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in b):
        raise ValueError(f"box contains a non-finite value: {value!r}")
    if b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"box {value!r} has zero or negative area as [x1, y1, x2, y2] (need x2 > x1 and y2 > y1); if the "
                         "boxes are [x, y, width, height] (COCO), pass --box-format xywh (config: data.box_format=xywh)")
    return b  # type: ignore[return-value]


def record_from_dict(obj: Any, base: Path, *, where: str = "") -> Record:
    """Build a Record from one parsed JSON object; paths are resolved against `base`."""
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    rid = obj.get("id")
    if rid is None:
        raise RecordError(f"{where}: missing 'id'")
    if not (isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool))):
        raise RecordError(f"{where}: 'id' must be a string or an integer, got {rid!r}")
    rid = str(rid)
    if not rid.strip():
        raise RecordError(f"{where}: 'id' is empty; give every record a unique id")
    loc = f"{where} (id {rid!r})"
    image = obj.get("image")
    if not isinstance(image, str) or not image:
        raise RecordError(f"{loc}: missing 'image' (a path relative to the JSONL file)")
    question = obj.get("question", obj.get("problem"))
    if not isinstance(question, str) or not question.strip():
        raise RecordError(f"{loc}: empty or missing 'question'")
    options = obj.get("options")
    if options is not None:
        if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
            raise RecordError(f"{loc}: 'options' must be a non-empty list of strings")
        check_options(options, loc)
    answer = obj.get("answer")
    if answer is not None:
        if not (isinstance(answer, str) or _is_number(answer)):
            raise RecordError(f"{loc}: 'answer' must be a string or a number, got {answer!r}")
        answer = str(answer).strip()
        if not answer:
            raise RecordError(f"{loc}: 'answer' is empty; leave the key out when there is no answer")
        if options is not None and answer not in LETTERS[: len(options)] and answer not in options:
            raise RecordError(
                f"{loc}: answer {answer!r} is neither an option letter "
                f"({LETTERS[0]}-{LETTERS[len(options) - 1]}) nor an option's text"
            )
        if options is not None and answer in options and answer not in LETTERS[: len(options)]:
            answer = LETTERS[options.index(answer)]
    box = obj.get("box", obj.get("bbox"))
    if box is not None:
        try:
            box = parse_box(box)
        except ValueError as e:
            raise RecordError(f"{loc}: {e}") from None
    teacher = obj.get("teacher_image")
    if teacher is not None and (not isinstance(teacher, str) or not teacher):
        raise RecordError(f"{loc}: 'teacher_image' must be a path relative to the JSONL file, got {teacher!r}")
    category = obj.get("category")
    if category is not None and not (isinstance(category, str) or _is_number(category)):
        raise RecordError(f"{loc}: 'category' must be a string, got {category!r}")
    return Record(
        id=rid,
        image=str((base / image).resolve()),
        question=question,
        options=options,
        answer=answer,
        box=box,
        teacher_image=str((base / teacher).resolve()) if teacher else None,
        category=str(category) if category is not None else None,
        meta={k: v for k, v in obj.items() if k not in _KNOWN},
    )


def check_options(options: list[str], loc: str) -> None:
    """Counts and sizes that make a multiple-choice question: 2 to 26 non-empty, distinct options."""
    if len(options) < 2:
        raise RecordError(f"{loc}: a multiple-choice question needs at least 2 options, got {options!r} "
                          "(drop 'options' for an open question)")
    if len(options) > len(LETTERS):
        raise RecordError(f"{loc}: at most {len(LETTERS)} options are supported")
    seen: dict[str, int] = {}
    for i, o in enumerate(options):
        key = " ".join(o.split()).casefold()
        if not key:
            raise RecordError(f"{loc}: option {LETTERS[i]} is empty")
        if key in seen:
            raise RecordError(f"{loc}: options {LETTERS[seen[key]]} and {LETTERS[i]} are the same ({o!r}); "
                              "an answer could not tell them apart")
        seen[key] = i


_KNOWN = {"id", "image", "question", "problem", "options", "answer", "box", "bbox", "teacher_image", "category"}


def write_records(records: list[Record], path: str | Path) -> None:
    """Write Records as JSONL with image paths relative to the file's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import os

    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # unique per process: parallel writers never collide
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_json(relative_to=path.parent), ensure_ascii=False) + "\n")
    tmp.replace(path)
