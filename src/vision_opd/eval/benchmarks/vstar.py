"""V* Bench: 191 questions in 2 categories (direct_attributes 115, relative_position 76).

Layouts (docs/benchmarks.md):
- `craigwu/vstar_bench`: `test_questions.jsonl` (image, text with "(A) ..." lines, category, question_id,
  label) beside `direct_attributes/` and `relative_position/` with `sa_<id>.jpg` + `sa_<id>.json`
  (target_object, bbox as [x, y, w, h] pixels, question, options with options[0] correct). The boxes of
  the per-image JSON fill `Record.box` (the union of all targets) and `meta["boxes"]` (one per target).
- The same folders without `test_questions.jsonl`: options come from the per-image JSON, whose first
  option is always correct, so they are shuffled with a seeded RNG (`shuffle_seed`; None keeps the
  published order, where every answer is A).
- `lmms-lab/vstar-bench`: `data/test-*.parquet` (image struct, text, label, question_id, category); no boxes.
- A VLMEvalKit-style TSV (question + A/B/... columns or text, answer or label, category); columns [U].
Official score: micro accuracy over all items, plus accuracy per category.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from vision_opd.data.records import LETTERS, Record
from vision_opd.eval.benchmarks.common import (
    Benchmark,
    cache_for,
    letter_columns,
    micro_summary,
    normalise_letter,
    split_options,
    take,
    text_of,
    unique_ids,
)
from vision_opd.data.files import (
    DataFileError,
    ImageCache,
    find_data_files,
    first_key,
    image_to_path,
    is_hub_id,
    iter_hub,
    iter_jsonl_rows,
    iter_parquet,
    iter_tsv,
    need,
)

NAME = "vstar"
CATEGORIES = ("direct_attributes", "relative_position")


def _boxes_from_annotation(ann_path: Path) -> tuple[list[list[float]], dict[str, Any]]:
    """[x, y, w, h] boxes of a per-image JSON as [x1, y1, x2, y2], and the JSON itself."""
    try:
        ann = json.loads(ann_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataFileError(f"{ann_path}: cannot read the per-image annotation ({e})") from None
    boxes = []
    for i, b in enumerate(ann.get("bbox") or []):
        if not isinstance(b, (list, tuple)) or len(b) != 4:
            raise DataFileError(f"{ann_path}: bbox[{i}] must be [x, y, w, h], got {b!r}")
        x, y, w, h = (float(v) for v in b)
        if w <= 0 or h <= 0:
            raise DataFileError(f"{ann_path}: bbox[{i}] {b!r} has zero or negative width/height")
        boxes.append([x, y, x + w, y + h])
    return boxes, ann


def _with_boxes(rec: Record, ann_path: Path) -> Record:
    if not ann_path.is_file():
        return rec
    boxes, ann = _boxes_from_annotation(ann_path)
    if boxes:
        rec.box = (
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        )
        rec.meta["boxes"] = boxes
    if ann.get("target_object"):
        rec.meta["target_object"] = list(ann["target_object"])
    return rec


def _mc_record(row: dict[str, Any], where: str, image: str, default_id: str) -> Record:
    """A Record from a row with `text` (question + "(A) ..." lines) or `question` + letter columns."""
    if first_key(row, ("text",)):
        question, options = split_options(str(row["text"]))
    else:
        question, options = str(need(row, "question", where)).strip(), letter_columns(row) or None
    if not options:
        raise DataFileError(f"{where}: no options found (expected '(A) ...' lines in 'text' or columns A, B, ...)")
    answer_key = first_key(row, ("label", "answer"))
    if answer_key is None:
        raise DataFileError(f"{where}: missing the answer column 'label' (or 'answer')")
    id_key = first_key(row, ("question_id", "index", "id"))
    return Record(
        id=text_of(row[id_key]) if id_key else default_id,
        image=image,
        question=question,
        options=options,
        answer=normalise_letter(row[answer_key], options, where),
        category=text_of(row["category"]) if first_key(row, ("category",)) else None,
        meta={"benchmark": NAME},
    )


def _from_questions_jsonl(path: Path, limit: int | None) -> list[Record]:
    root = path.parent
    out = []
    for where, row in take(iter_jsonl_rows(path), limit):
        image_rel = str(need(row, "image", where))
        image = root / image_rel
        if not image.is_file():
            raise DataFileError(f"{where}: image {image_rel!r} not found under {root}")
        rec = _mc_record(row, where, str(image.resolve()), default_id=image_rel)
        rec.meta["image_rel"] = image_rel
        out.append(_with_boxes(rec, image.with_suffix(".json")))
    return out


def _from_folders(root: Path, limit: int | None, shuffle_seed: int | None) -> list[Record]:
    out = []
    for category in CATEGORIES:
        folder = root / category
        if not folder.is_dir():
            continue
        for image in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() != ".json"):
            if image.name.startswith("."):
                continue
            ann_path = image.with_suffix(".json")
            if not ann_path.is_file():
                raise DataFileError(f"{image}: no annotation {ann_path.name} beside the image")
            _, ann = _boxes_from_annotation(ann_path)
            options = ann.get("options")
            if not isinstance(options, list) or len(options) < 2 or not ann.get("question"):
                raise DataFileError(f"{ann_path}: needs 'question' and a list of at least 2 'options'")
            order = list(range(len(options)))
            if shuffle_seed is not None:
                random.Random(f"{shuffle_seed}:{category}/{image.name}").shuffle(order)
            rec = Record(
                id=f"{category}/{image.stem}",
                image=str(image.resolve()),
                question=str(ann["question"]).strip(),
                options=[str(options[i]) for i in order],
                answer=LETTERS[order.index(0)],  # options[0] is the correct one in the published JSON
                category=category,
                meta={"benchmark": NAME, "image_rel": f"{category}/{image.name}", "options_shuffle_seed": shuffle_seed},
            )
            out.append(_with_boxes(rec, ann_path))
            if limit is not None and len(out) >= limit:
                return out
    if not out:
        raise DataFileError(f"{root}: no images in {' or '.join(CATEGORIES)}/")
    return out


def _from_rows(rows, cache: ImageCache, base: Path, limit: int | None) -> list[Record]:
    out = []
    for n, (where, row) in enumerate(take(rows, limit)):
        image = image_to_path(need(row, "image", where), base_dir=base, cache=cache, where=where)
        out.append(_mc_record(row, where, image, default_id=str(n)))
    return out


def load(
    path_or_id: str | Path,
    *,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    shuffle_seed: int | None = 0,
    split: str = "test",
) -> list[Record]:
    """Load V* from a folder, a `test_questions.jsonl`, a parquet file/folder, a TSV, or a hub id."""
    if is_hub_id(path_or_id):
        records = _from_rows(
            iter_hub(str(path_or_id), split=split), cache_for(path_or_id, cache_dir), Path.cwd(), limit
        )
        return unique_ids(records, lambda r: r.id, str(path_or_id))
    p = Path(path_or_id)
    if not p.exists():
        raise DataFileError(f"{p}: not found (and not a hub id such as 'lmms-lab/vstar-bench')")
    files = [p]
    if p.is_dir():
        if (p / "test_questions.jsonl").is_file():
            files = [p / "test_questions.jsonl"]
        elif any((p / c).is_dir() for c in CATEGORIES):
            return _from_folders(p, limit, shuffle_seed)
        else:
            files = find_data_files(
                p, ["data/*.parquet", "*.parquet", "*.tsv"], "V* data (test_questions.jsonl, parquet or TSV)"
            )
    cache = cache_for(p, cache_dir)
    kind = files[0].suffix.lower()
    if kind == ".jsonl":
        records = _from_questions_jsonl(files[0], limit)
    elif kind == ".parquet":
        records = _from_rows(iter_parquet(files), cache, files[0].parent, limit)
    elif kind == ".tsv":
        records = _from_rows(iter_tsv(files[0]), cache, files[0].parent, limit)
    else:
        raise DataFileError(f"{p}: unsupported V* file (expected a folder, .jsonl, .parquet or .tsv)")
    return unique_ids(records, lambda r: f"{r.category}/{r.id}", str(p))


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Micro accuracy over all items and per category (lmms-eval `vstar_aggregate_results`)."""
    return micro_summary(NAME, results)


BENCHMARK = Benchmark(NAME, load, aggregate, "V* Bench (191 items, direct_attributes / relative_position)")
