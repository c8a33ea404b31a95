"""Check every record of a data file before any work starts; report or skip what is bad.

    vision-opd data validate data/train.jsonl [--skip-bad] [--allow-outside-root] [--box-format auto]

Each problem names the file, the line, the record id and what to fix. The same checks run when training
and evaluation load their data (`load_records_checked`); with `skip_bad=True` bad records are skipped and
counted instead of stopping the run. The file as a whole is checked too (`doctor.py`): a file that is not JSON
Lines, boxes in another convention (normalised, [x, y, w, h]) are one line each and stop the run whatever
`skip_bad` says; conversions whose intent is certain (`box_format`, lettered options) are made on read and noted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .doctor import Doctor
from .images import DEFAULT_MAX_IMAGE_PIXELS, ImageError, image_size, open_image
from .records import Record, RecordError, record_from_dict
from .views import ViewConfig, check_views


@dataclass
class Problem:
    line: int
    id: str | None
    message: str


@dataclass
class ValidationReport:
    path: Path
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    lines: int = 0
    file_problems: list[str] = field(default_factory=list)  # the file as a whole (never skipped by skip_bad)
    notes: list[str] = field(default_factory=list)  # what was converted on read

    @property
    def ok(self) -> bool:
        return not self.problems and not self.file_problems

    def summary(self) -> str:
        head = f"{self.path}: {len(self.records)} good record(s), {len(self.problems)} bad, {self.lines} line(s)"
        return "\n".join([head] + [f"  {m}" for m in self.file_problems + self.notes]
                         + [f"  {p.message}" for p in self.problems])


def check_image(path: str, *, max_pixels: int, decode: bool = True) -> tuple[int, int]:
    """Open and fully decode an image (decode=False: read its header only); return its (width, height) after the EXIF
    orientation."""
    return open_image(path, max_pixels=max_pixels).size if decode else image_size(path, max_pixels=max_pixels)


def _inside(path: str, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def check_record(rec: Record, root: Path, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, allow_outside_root: bool = False,
                 check_images: bool = True, views: ViewConfig | None = None, decode: bool = True,
                 check_boxes: bool = True) -> None:
    """Raise RecordError/ImageError with a precise message if the record cannot be used (with `views`: cannot serve
    those views). decode=False reads image headers only; check_boxes=False skips the box-against-image check (an
    evaluation on the full image never reads the box)."""
    if views is not None:
        check_views(rec, views)
    for key in ("image", "teacher_image"):
        p = getattr(rec, key)
        if p and not allow_outside_root and not _inside(p, root):
            raise RecordError(f"{key} path {p} is outside the dataset folder {root} (pass --allow-outside-root / "
                              "data.allow_outside_root=true if that is intended)")
    if not check_images:
        return
    w, h = check_image(rec.image, max_pixels=max_pixels, decode=decode)
    if rec.box is not None and check_boxes:
        x1, y1, x2, y2 = rec.box
        if x1 >= w or y1 >= h or x2 <= 0 or y2 <= 0:
            raise RecordError(f"box {list(rec.box)} lies outside the {w}x{h} image (boxes are pixels of the EXIF-rotated image)")
        if x1 < -0.5 or y1 < -0.5 or x2 > w + 0.5 or y2 > h + 0.5:
            raise RecordError(f"box {list(rec.box)} extends past the {w}x{h} image; clip it to the image")
    if rec.teacher_image:
        check_image(rec.teacher_image, max_pixels=max_pixels, decode=decode)


def validate_file(path: str | Path, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, allow_outside_root: bool = False,
                  check_images: bool = True, progress: bool = False, views: ViewConfig | None = None,
                  box_format: str = "auto") -> ValidationReport:
    """Check every line of a Records JSONL file; never raises for a bad record (it is reported). box_format: how the
    file writes its boxes (doctor.BOX_FORMATS); they are converted to pixel [x1, y1, x2, y2] on read."""
    path = Path(path)
    report = ValidationReport(path)
    root = path.parent
    seen: dict[str, int] = {}
    if not path.is_file():
        raise RecordError(f"{path}: data file not found")
    doctor = Doctor(path, box_format)
    if whole := doctor.not_json_lines():
        report.file_problems.append(whole)
        return report
    lines = _lines(path, report)
    if progress:
        from tqdm.auto import tqdm

        lines = tqdm(lines, desc=f"validate {path.name}", unit="rec")
    for n, obj in lines:
        report.lines += 1
        rid = str(obj.get("id")) if isinstance(obj, dict) and obj.get("id") is not None else None
        where = f"{path}:{n}" + (f" (id {rid!r})" if rid else "")
        doctor.note_box(obj, root)
        obj = doctor.prepare(obj, root)
        try:
            rec = record_from_dict(obj, root, where=f"{path}:{n}")
            if rec.id in seen:
                raise RecordError(f"{where}: duplicate id (first seen on line {seen[rec.id]})")
            check_record(rec, root, max_pixels=max_pixels, allow_outside_root=allow_outside_root, check_images=check_images,
                         views=views)
        except (RecordError, ImageError, Image.DecompressionBombError) as e:
            msg = str(e)
            if not msg.startswith(str(path)):
                msg = f"{where}: {msg}"
            report.problems.append(Problem(n, rid, msg))
            continue
        seen[rec.id] = n
        report.records.append(rec)
    report.file_problems, report.notes = doctor.finish()
    return report


def _lines(path: Path, report: ValidationReport):
    """(line, object) pairs; invalid JSON / UTF-8 lines become problems instead of stopping the scan."""
    import json

    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                report.lines += 1
                report.problems.append(Problem(n, None, f"{path}:{n}: line is not valid UTF-8 ({e.reason} at byte {e.start}); re-encode the file as UTF-8"))
                continue
            if not line.strip():
                continue
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                report.lines += 1
                report.problems.append(Problem(n, None, f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})"))
    return out


def raise_if_bad(report: ValidationReport, source, skip_bad: bool) -> None:
    """Stop on a file-level problem (always), on bad records (naming up to 20 of them) unless skip_bad; stop when
    nothing usable is left."""
    if report.file_problems:
        raise RecordError("\n".join(report.file_problems))
    if report.problems and not skip_bad:
        shown = "\n  ".join(p.message for p in report.problems[:20])
        more = f"\n  ... and {len(report.problems) - 20} more" if len(report.problems) > 20 else ""
        raise RecordError(f"{len(report.problems)} bad record(s) in {source} (fix them, or pass --skip-bad / "
                          f"data.skip_bad=true to skip them):\n  {shown}{more}")
    if not report.records:
        raise RecordError(f"{source}: no usable records")


def load_records_checked(path: str | Path, *, skip_bad: bool = False, **kw) -> tuple[list[Record], ValidationReport]:
    """Validated records for training/eval. Bad records raise (naming all of them) unless skip_bad."""
    report = validate_file(path, **kw)
    raise_if_bad(report, path, skip_bad)
    return report.records, report


def read_records(path: str | Path, *, check_images: bool = False, skip_bad: bool = False,
                 box_format: str = "auto") -> list[Record]:
    """Read and validate a Records JSONL file; a bad record raises RecordError naming file, line and id.

    Images are decoded and boxes checked against them only with check_images=True.
    """
    records, _ = load_records_checked(path, skip_bad=skip_bad, check_images=check_images, allow_outside_root=True,
                                      box_format=box_format)
    return records
