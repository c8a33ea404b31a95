"""Training data from any of its published forms, as Records that hold only file paths.

    records = load_source("data/train.jsonl")                        # Records JSONL (the project's format)
    records = load_source("Vision-OPD-6K/train.jsonl")               # the Vision-OPD-6K layout, read as is
    records = load_source("Vision-OPD-6K", student_image="original") # the clean image instead of the red-boxed one
    records = load_source("data/parquet_dir")                        # parquet files (Records or 6K columns)
    records = load_source("owner/name", split="train")               # a Hugging Face hub dataset

Formats (`fmt`): auto | records | vision_opd_6k | parquet | hub. `auto` picks by the path (a folder of
parquet files, a `.parquet` file, an `owner/name` that is not a local path) and, for JSON Lines, by the
first row's keys (`teacher_images` + `problem` + `bbox` = Vision-OPD-6K, otherwise Records).

Vision-OPD-6K rows (docs/benchmarks.md) have no id: the id is `row{line}`. The question is
`extra_info.question` (or `problem`) with `<image>`, the red-box hint sentence, the lettered options and the
answer instruction removed; the options come from the `A. ...` lines. `images[0]` already has the red box
drawn (`meta["red_box_drawn"] = True`; the clean `original_images[0]`, when extracted, is `meta["clean_image"]`,
which proposers and teacher crops read instead); `student_image="original"` uses the clean image as the student's.

Images embedded in parquet / hub rows are written once to a cache folder (`ImageCache`, content-addressed),
so no image is held in memory: the views decode them lazily, per batch. Every record is checked as it
loads (the checks of data/validate.py); a bad one raises a RecordError naming the file, the line and the
fix, or is skipped and counted with skip_bad=True.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from PIL import Image

from .files import ImageCache, default_cache_dir, image_to_path, is_hub_id, iter_hub, iter_parquet
from .images import DEFAULT_MAX_IMAGE_PIXELS, ImageError
from .records import LETTERS, Record, RecordError, check_options, parse_box, record_from_dict
from .validate import Problem, ValidationReport, check_record, load_records_checked, raise_if_bad
from .views import HINT, proposal_image

FORMATS = ("auto", "records", "vision_opd_6k", "parquet", "hub")
STUDENT_IMAGES = ("images", "original")
SIXK_KEYS = ("images", "teacher_images", "original_images", "bbox", "problem", "answer", "extra_info")

_OPTION = re.compile(r"^\s*([A-Z])\.\s*(.*?)\s*$")
_INSTRUCTION = re.compile(r"Answer with the option'?s letter from the given choices[^\n]*", re.IGNORECASE)
_LETTER = re.compile(r"^[(\[]?\s*([A-Z])\s*[)\].]?$")


# ----------------------------------------------------------------------------- entry points


def load_source(path_or_id: str | Path, fmt: str = "auto", *, split: str = "train", cache_dir: str | Path | None = None,
                student_image: str = "images", **check: Any) -> list[Record]:
    """Records from a Records JSONL, a Vision-OPD-6K train.jsonl, parquet files or a hub dataset.

    `check` takes the keyword arguments of `load_source_checked` (skip_bad, check_images, ...).
    """
    records, _ = load_source_checked(path_or_id, fmt, split=split, cache_dir=cache_dir, student_image=student_image, **check)
    return records


def load_source_checked(path_or_id: str | Path, fmt: str = "auto", *, split: str = "train",
                        cache_dir: str | Path | None = None, student_image: str = "images", skip_bad: bool = False,
                        check_images: bool = False, allow_outside_root: bool = True, progress: bool = False,
                        views=None) -> tuple[list[Record], ValidationReport]:
    """Records plus the validation report (what `train` needs to count skipped records).

    check_images=True decodes every image once (then frees it) and checks each box against its image.
    allow_outside_root=False refuses image paths outside the data file's folder (JSONL formats only;
    images materialised from parquet / hub rows live in the cache folder). `views` (a ViewConfig): also refuse
    records that cannot serve those views (no box for a crop, ...); its max_image_pixels bounds a decoded image.
    """
    max_pixels = views.max_image_pixels if views is not None else DEFAULT_MAX_IMAGE_PIXELS
    if student_image not in STUDENT_IMAGES:
        raise ValueError(f"student_image={student_image!r}: choose 'images' (red box drawn) or 'original' (clean image)")
    fmt = detect_format(path_or_id) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
    kw = dict(check_images=check_images, max_pixels=max_pixels, views=views)
    if fmt == "records":
        return load_records_checked(_jsonl_file(path_or_id), skip_bad=skip_bad, allow_outside_root=allow_outside_root,
                                    progress=progress, **kw)
    if fmt == "vision_opd_6k":
        path = _jsonl_file(path_or_id)
        base = path.parent

        def local_path(value: Any, column: str, where: str) -> str:
            return _local_image(value, base, column, where)

        rows = ((f"{path}:{n}", n, obj) for n, obj in _jsonl_rows(path))
        convert = _sixk_converter(local_path, student_image)
        report = _check_rows(path, rows, convert, base, allow_outside_root=allow_outside_root, progress=progress, **kw)
    else:  # parquet, hub
        if fmt == "parquet":
            files = parquet_files(path_or_id, split)
            base = files[0].parent
            raw = iter_parquet(files)
        else:
            base = Path.cwd()
            raw = iter_hub(str(path_or_id), split=split)
        cache = ImageCache(cache_dir if cache_dir is not None else default_cache_dir(path_or_id))

        def cached_path(value: Any, column: str, where: str) -> str:
            return image_to_path(value, base_dir=base, cache=cache, where=where, column=column)

        rows = ((where, n, row) for n, (where, row) in enumerate(raw, start=1))
        report = _check_rows(Path(str(path_or_id)), rows, _row_converter(cached_path, student_image), base,
                             allow_outside_root=True, progress=progress, **kw)
    raise_if_bad(report, path_or_id, skip_bad)
    return report.records, report


def detect_format(path_or_id: str | Path) -> str:
    """records | vision_opd_6k | parquet | hub, from the path and, for JSON Lines, the first row's keys."""
    p = Path(path_or_id)
    if not p.exists():
        if is_hub_id(path_or_id) and p.suffix not in (".jsonl", ".json", ".parquet"):  # data/x.jsonl is a typo, not a hub id
            return "hub"
        raise RecordError(f"{p}: data file not found (and not a hub id of the form owner/name)")
    if p.is_dir():
        if any(q.is_file() for q in p.rglob("*.parquet")):
            return "parquet"
        if (p / "train.jsonl").is_file():
            return detect_format(p / "train.jsonl")
        raise RecordError(f"{p}: a folder with neither parquet files nor a train.jsonl; pass the data file itself")
    if p.suffix == ".parquet":
        return "parquet"
    first = next(iter(_jsonl_rows(p)), None)
    if first is None:
        raise RecordError(f"{p}: empty data file")
    return "vision_opd_6k" if _is_sixk(first[1]) else "records"


def parquet_files(path: str | Path, split: str = "train") -> list[Path]:
    """A parquet file, or those under a folder (the split's own files when names or folders say the split)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise RecordError(f"{p}: parquet file or folder not found")
    hits = sorted(q for q in p.rglob("*.parquet") if q.is_file() and not q.name.startswith("."))
    if not hits:
        raise RecordError(f"{p}: no .parquet files under this folder")
    mine = [q for q in hits if q.name.startswith(f"{split}-") or q.stem == split or split in q.relative_to(p).parts[:-1]]
    return mine or hits


# ----------------------------------------------------------------------------- the Vision-OPD-6K layout


def split_problem(text: str) -> tuple[str, list[str] | None]:
    """(question, options) from a 6K `problem` / `extra_info.question`: drops `<image>`, the red-box hint
    and the answer instruction; the options are the consecutive `A. ...`, `B. ...` lines starting at A."""
    text = text.replace("<image>", "").replace(HINT, "")
    text = _INSTRUCTION.sub("", text)
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if (m := _OPTION.match(line)) and m.group(1) == "A"), None)
    if start is None:
        return text.strip(), None
    options, end = [], start
    while end < len(lines) and (m := _OPTION.match(lines[end])) and m.group(1) == LETTERS[len(options)]:
        options.append(m.group(2))
        end += 1
    question = "\n".join(lines[:start]).strip()
    rest = "\n".join(lines[end:]).strip()
    return (f"{question}\n{rest}" if rest else question), options


def _sixk_converter(to_path: Callable[[Any, str, str], str], student_image: str):
    def convert(row: dict, n: int, where: str) -> Record:
        return sixk_record(row, n=n, where=where, to_path=to_path, student_image=student_image)

    return convert


def sixk_record(row: dict, *, n: int, where: str, to_path: Callable[[Any, str, str], str],
                student_image: str = "images") -> Record:
    """One Vision-OPD-6K row as a Record (id `row{n}`); RecordError naming `where` and the fix otherwise."""
    def first_image(key: str) -> str:
        if key not in row:
            raise RecordError(f"{where}: missing key {key!r} (a Vision-OPD-6K row has {', '.join(SIXK_KEYS)})")
        value = row[key]
        if isinstance(value, list):
            if not value:
                raise RecordError(f"{where}: {key!r} is an empty list (expected one image)")
            value = value[0]
        return to_path(value, key, where)

    problem = row.get("problem")
    if not isinstance(problem, str) or not problem.strip():
        raise RecordError(f"{where}: missing or empty 'problem'")
    extra = row.get("extra_info") or {}
    if not isinstance(extra, dict):
        raise RecordError(f"{where}: 'extra_info' must be an object, got {type(extra).__name__}")
    clean = extra.get("question")
    question, options = split_problem(clean if isinstance(clean, str) and clean.strip() else problem)
    if options is None:
        options = split_problem(problem)[1]
    if not question:
        raise RecordError(f"{where}: the question is empty once <image>, the hint and the options are removed")
    if options is not None:
        check_options(options, where)
    if "bbox" not in row:
        raise RecordError(f"{where}: missing key 'bbox' ([x1, y1, x2, y2] in pixels)")
    try:
        box = parse_box(row["bbox"])
    except ValueError as e:
        raise RecordError(f"{where}: bbox: {e}") from None
    answer = _answer(row.get("answer"), options, where)
    extra_answer = extra.get("answer")
    if answer is not None and options and extra_answer is not None:
        m = _LETTER.match(str(extra_answer).strip())
        if m and m.group(1) != answer:
            raise RecordError(f"{where}: answer {answer!r} disagrees with extra_info.answer {extra_answer!r}")
    teacher = first_image("teacher_images")
    if student_image == "original" and "original_images" not in row:
        raise RecordError(f"{where}: student_image='original' needs 'original_images' (extract "
                          "original_images/original_images.tar.gz), or use student_image='images'")
    # only the student image in use is resolved: the official preparation does not extract original_images
    image = first_image("images" if student_image == "images" else "original_images")
    meta = {"format": "vision_opd_6k", "line": n, "red_box_drawn": student_image == "images"}
    if student_image == "images" and (clean := _extracted_original(row, to_path, where)):
        meta["clean_image"] = clean  # what proposers and teacher crops read: never the drawn answer box
    return Record(id=f"row{n}", image=image, question=question,
                  options=options, answer=answer, box=box, teacher_image=teacher, meta=meta)


def _extracted_original(row: dict, to_path: Callable[[Any, str, str], str], where: str) -> str | None:
    """The clean `original_images[0]` when it is a local file that exists (not extracted: None). Images embedded in
    parquet / hub rows are not written out for this (data.student_image=original uses them)."""
    value = row.get("original_images")
    value = value[0] if isinstance(value, list) and value else value
    if not isinstance(value, str) or not value:
        return None
    try:
        return to_path(value, "original_images", where)
    except RecordError:
        return None


def _answer(value: Any, options: list[str] | None, where: str) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    if not options:
        return s or None
    m = _LETTER.match(s)
    if m and m.group(1) in LETTERS[: len(options)]:
        return m.group(1)
    if s in options:
        return LETTERS[options.index(s)]
    raise RecordError(f"{where}: answer {s!r} is not an option letter (A-{LETTERS[len(options) - 1]} for "
                      f"{len(options)} options)")


def _is_sixk(row: dict) -> bool:
    return isinstance(row, dict) and "teacher_images" in row and "problem" in row and "bbox" in row


def _local_image(value: Any, base: Path, column: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise RecordError(f"{where}: {column!r} must hold a path relative to the jsonl file, got {value!r}")
    path = (base / value).resolve()
    if not path.is_file():
        archive = f"{column}/{column}.tar.gz" + ("*" if column == "images" else "")
        raise RecordError(f"{where}: {column} file {value!r} not found under {base} (extract {archive} there: "
                          f"`cat {archive} | tar -xzf - -C {column}/`, and check the member paths)")
    return str(path)


# ----------------------------------------------------------------------------- rows -> checked Records


def _row_converter(to_path: Callable[[Any, str, str], str], student_image: str):
    """Parquet / hub rows: the 6K columns, or the Records columns with images as structs, bytes or paths."""
    sixk = _sixk_converter(to_path, student_image)

    def convert(row: dict, n: int, where: str) -> Record:
        if _is_sixk(row):
            return sixk(row, n, where)
        if "image" not in row or not ({"question", "problem"} & set(row)):
            raise RecordError(f"{where}: neither Vision-OPD-6K columns ({', '.join(SIXK_KEYS)}) nor Records columns "
                              f"(id, image, question, ...); this row has {sorted(row)}")
        obj = {k: v for k, v in row.items() if v is not None}
        obj.setdefault("id", f"row{n}")
        obj["image"] = to_path(row["image"], "image", where)
        if obj.get("teacher_image") is not None:
            obj["teacher_image"] = to_path(row["teacher_image"], "teacher_image", where)
        return record_from_dict(obj, Path("/"), where=where)

    return convert


def _check_rows(path: Path, rows: Iterable[tuple[str, int, dict]], convert, root: Path, *, allow_outside_root: bool,
                check_images: bool, max_pixels: int, progress: bool, views=None) -> ValidationReport:
    """Convert and check every row; problems are collected (never raised here), duplicates refused."""
    report = ValidationReport(path)
    seen: dict[str, str] = {}
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc=f"load {path.name}", unit="rec")
    for where, n, row in rows:
        report.lines += 1
        rec = None
        try:
            if isinstance(row, Problem):
                raise RecordError(row.message)
            rec = convert(row, n, where)
            if rec.id in seen:
                raise RecordError(f"duplicate id {rec.id!r} (first seen at {seen[rec.id]})")
            check_record(rec, root, max_pixels=max_pixels, allow_outside_root=allow_outside_root, check_images=check_images,
                         views=views)
        except (RecordError, ImageError, Image.DecompressionBombError) as e:
            msg = str(e)
            rid = f" (id {rec.id!r})" if rec is not None and rec.id != f"row{n}" else ""  # 6K ids are the line
            report.problems.append(Problem(n, None, msg if msg.startswith(where) else f"{where}{rid}: {msg}"))
            continue
        seen[rec.id] = where
        report.records.append(rec)
    return report


# ----------------------------------------------------------------------------- JSON Lines


def _jsonl_file(path_or_id: str | Path) -> Path:
    p = Path(path_or_id)
    if p.is_dir():
        p = p / "train.jsonl"
    if not p.is_file():
        raise RecordError(f"{p}: data file not found")
    return p


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, object) pairs, streamed; an undecodable line comes back as a Problem (reported, not raised)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield n, Problem(n, None, f"{path}:{n}: line is not valid UTF-8 ({e.reason}); re-encode the file as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, Problem(n, None, f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                obj = Problem(n, None, f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield n, obj


def load_train_records(data_cfg, views_cfg, *, progress: bool = False,
                       answers_for: str | None = None) -> tuple[list[Record], int]:
    """The training records of a config (any data.format), validated as they load; bad ones stop the run unless
    data.skip_bad. `answers_for`: the label-reading option that is on (every record then needs an answer).
    Returns (records, number skipped)."""
    check = dict(skip_bad=data_cfg.skip_bad, check_images=data_cfg.validate_images, progress=progress, views=views_cfg,
                 allow_outside_root=data_cfg.allow_outside_root)
    fmt = detect_format(data_cfg.train_file) if data_cfg.format == "auto" else data_cfg.format
    if fmt == "records":  # the one format whose box convention is the user's (data.box_format, data/doctor.py)
        records, report = load_records_checked(_jsonl_file(data_cfg.train_file), box_format=data_cfg.box_format,
                                               max_pixels=views_cfg.max_image_pixels, **check)
    elif data_cfg.box_format != "auto":
        raise RecordError(f"{data_cfg.train_file}: data.box_format={data_cfg.box_format} applies to Records JSONL; the "
                          f"{fmt} format reads its boxes in its own convention (leave data.box_format=auto)")
    else:
        records, report = load_source_checked(data_cfg.train_file, data_cfg.format, split=data_cfg.split,
                                              cache_dir=data_cfg.cache_dir, student_image=data_cfg.student_image, **check)
    for note in report.notes:
        print(f"[vision-opd] {note}")
    if views_cfg.red_box and any(r.meta.get("red_box_drawn") for r in records):
        raise RecordError(f"{data_cfg.train_file}: the student images already have the red box drawn (Vision-OPD-6K "
                          "images); set views.red_box=false, or data.student_image=original to draw it on the clean image")
    unlabelled = [r.id for r in records if r.answer is None] if answers_for else []
    if unlabelled:
        raise RecordError(f"{data_cfg.train_file}: record {unlabelled[0]!r} ({len(unlabelled)} of {len(records)} in all) "
                          f"has no 'answer', and {answers_for}=true grades the rollouts by it: add the answers, or set "
                          f"{answers_for}=false (training then reads no label)")
    if views_cfg.teacher_source == "proposer":  # before the model loads: a proposer never reads a drawn box
        for r in records:
            proposal_image(r)
    if report.problems:
        print(f"[vision-opd] skipped {len(report.problems)} bad record(s) of {data_cfg.train_file}:\n" +
              "\n".join(f"  {p.message}" for p in report.problems[:20]))
    return records, len(report.problems)

