"""TreeBench (`HaochenWang/TreeBench`): 405 multiple-choice questions on SA-1B images, 10 sub-categories.

File (docs/benchmarks.md): `TreeBench.tsv` with index, image (base64), question, option columns
A, B, ... [I], "multi-choice options" (a pre-rendered block, format [U]), answer (letter), category
("Perception/<sub>" or "Reasoning/<sub>"), target_instances (a list literal of [x1, y1, x2, y2] boxes in
pixels of the image), optional l2-category [U]. Options come from the letter columns; where those are
missing or empty, from the options block ("A. x" / "(A) x" lines, or a list literal). A row with no
options at all is not part of the multiple-choice benchmark: it raises unless `skip_without_options`.

`target_instances` fill `meta["boxes"]` and `Record.box` (their union). This covers the
multiple-choice part; the box mIoU of the TreeVGR protocol is not computed here.
Official score: micro accuracy, per category and per top-level dimension (Perception / Reasoning).
"""

from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path
from typing import Any

from vision_opd.data.records import LETTERS, Record, parse_box
from vision_opd.eval.benchmarks.common import (
    Benchmark,
    accuracy_by,
    cache_for,
    letter_columns,
    micro_summary,
    normalise_letter,
    result_field,
    split_options,
    strip_option_prefix,
    take,
    text_of,
    unique_ids,
)
from vision_opd.data.files import (
    DataFileError,
    RowImages,
    find_data_files,
    first_key,
    is_hub_id,
    iter_hub,
    iter_tsv,
    need,
)

NAME = "treebench"


def _options(row: dict[str, Any], where: str) -> list[str] | None:
    options = letter_columns(row)
    if len(options) >= 2:
        return options
    block = row.get("multi-choice options")
    if block is None or not str(block).strip():
        return None
    block = str(block).strip()
    if block.startswith("["):
        try:
            items = ast.literal_eval(block)
            return [strip_option_prefix(str(o), LETTERS[i], where) for i, o in enumerate(items)]
        except (ValueError, SyntaxError):
            pass
    _, parsed = split_options("\n" + block)
    return parsed


def _boxes(value: Any, where: str) -> list[list[float]]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise DataFileError(
                    f"{where}: target_instances {value[:80]!r} is not a list of [x1, y1, x2, y2] boxes"
                ) from None
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        value = [value]  # a single box, not nested
    out = []
    for i, b in enumerate(value or []):
        try:
            out.append(list(parse_box(b)))
        except ValueError as e:
            raise DataFileError(f"{where}: target_instances[{i}]: {e}") from None
    return out


def _records(rows, images: RowImages, limit: int | None, skip_without_options: bool) -> list[Record]:
    out, skipped = [], []
    for n, (where, row) in enumerate(take(rows, limit)):
        index = text_of(row["index"]) if first_key(row, ("index",)) else str(n)
        options = _options(row, where)
        if not options:
            if skip_without_options:
                skipped.append(index)
                continue
            raise DataFileError(
                f"{where} (index {index}): no options (empty A, B, ... columns and 'multi-choice options')"
            )
        image = images.path(need(row, "image", where), index, where)
        boxes = _boxes(row.get("target_instances"), where)
        category = text_of(need(row, "category", where))
        rec = Record(
            id=index,
            image=image or "",
            question=str(need(row, "question", where)).strip(),
            options=options,
            answer=normalise_letter(need(row, "answer", where), options, where),
            box=(min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
            if boxes
            else None,
            category=category,
            meta={
                "benchmark": NAME,
                "boxes": boxes,
                "dimension": category.split("/")[0],
                "l2_category": text_of(row["l2-category"]) if first_key(row, ("l2-category",)) else None,
            },
        )
        if image is None:
            images.defer(rec, row["image"], where)
        out.append(rec)
    images.finish()
    if skipped:
        warnings.warn(
            f"TreeBench: skipped {len(skipped)} rows without options (index {', '.join(skipped[:10])})", stacklevel=3
        )
    return out


def load(
    path_or_id: str | Path,
    *,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    skip_without_options: bool = False,
) -> list[Record]:
    """Load TreeBench from its folder or `TreeBench.tsv`, or from the hub id (its TSV via `datasets`)."""
    cache = cache_for(path_or_id, cache_dir)
    if is_hub_id(path_or_id):
        rows = iter_hub(str(path_or_id), split="train", data_files="TreeBench.tsv", delimiter="\t")
        records = _records(rows, RowImages(cache, Path.cwd()), limit, skip_without_options)
    else:
        p = Path(path_or_id)
        if not p.exists():
            raise DataFileError(f"{p}: not found (and not a hub id such as 'HaochenWang/TreeBench')")
        f = find_data_files(p, ["TreeBench.tsv", "*.tsv"], "TreeBench.tsv")[0] if p.is_dir() else p
        if f.suffix.lower() != ".tsv":
            raise DataFileError(f"{f}: unsupported TreeBench file (expected TreeBench.tsv)")
        records = _records(iter_tsv(f), RowImages(cache, f.parent), limit, skip_without_options)
    return unique_ids(records, lambda r: r.id, str(path_or_id))


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Micro accuracy overall, per category ("Perception/OCR") and per dimension ("Perception")."""
    summary = micro_summary(NAME, results)
    summary["per_dimension"], summary["dimension_counts"] = accuracy_by(
        results, lambda r: str(result_field(r, "category") or "").split("/")[0] or None
    )
    return summary


BENCHMARK = Benchmark(NAME, load, aggregate, "TreeBench (405 items, multiple-choice part; target boxes)")
