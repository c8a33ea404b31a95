"""The Multi-Level Existence Bench (`JunlinHan/Multi-Level_Existence_Bench`, "MLE-Bench"): 1,861 four-choice
questions about whether an object or scene appears in an image, stratified by the target's size (its share of the
image's pixels): small 0-30 (732), medium 30-60 (698), large 60-100 (431), per the dataset card.

Layout (docs/benchmarks.md): the hub repository is an image folder with a `data.jsonl` and `images/`; `datasets`
(and the hub's parquet conversion, `default/train/000N.parquet`) give the columns image, question, choices (the
option texts), answer (the correct option's TEXT), answer_text, sub_task ("existence_0-30", "existence_30-60",
"existence_60-100"). The image key inside data.jsonl is unconfirmed: file_name, image, image_path and path are
accepted, relative to the file. The answer may also be given as a letter.

Official aggregate (as read in a published lmms-eval task for it): accuracy per size category, and the
UNWEIGHTED mean over the three categories as the headline; `micro` is the plain mean. Its interval is of that
statistic (categories as strata).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    need,
)
from vision_opd.data.records import LETTERS, Record
from vision_opd.eval.benchmarks.common import (
    Benchmark,
    accuracy_by,
    cache_for,
    micro_summary,
    normalise_letter,
    result_field,
    take,
    text_of,
    unique_ids,
)

NAME = "mle_bench"
SIZES = {"existence_0-30": "small", "existence_30-60": "medium", "existence_60-100": "large"}
_IMAGE_KEYS = ("image", "file_name", "image_path", "path", "img")


def _choices(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataFileError(f"{where}: column 'choices' is not a list of option texts: {value[:80]!r}") from None
    options = [str(v).strip() for v in (value.tolist() if hasattr(value, "tolist") else value or [])]
    if len(options) < 2 or not all(options):
        raise DataFileError(f"{where}: column 'choices' needs at least two non-empty option texts, got {options!r}")
    return options


def _answer(value: Any, options: list[str], where: str) -> str:
    text = str(value).strip()
    folded = [o.casefold() for o in options]
    if text.casefold() in folded and folded.count(text.casefold()) == 1:
        return LETTERS[folded.index(text.casefold())]
    return normalise_letter(text, options, where)


def _record(row: dict[str, Any], where: str, n: int, cache: ImageCache, base: Path) -> Record:
    options = _choices(need(row, "choices", where), where)
    image_key = first_key(row, _IMAGE_KEYS)
    if image_key is None:
        raise DataFileError(f"{where}: no image column (looked for {', '.join(_IMAGE_KEYS)}; columns: {sorted(row)})")
    sub_task = text_of(row["sub_task"]) if first_key(row, ("sub_task",)) else None
    id_key = first_key(row, ("id", "question_id", "index"))
    answer_key = first_key(row, ("answer", "answer_text")) or "answer"
    return Record(
        id=text_of(row[id_key]) if id_key else str(n),
        image=image_to_path(row[image_key], base_dir=base, cache=cache, where=where, column=image_key),
        question=str(need(row, "question", where)).strip(),
        options=options,
        answer=_answer(need(row, answer_key, where), options, where),
        category=SIZES.get(sub_task, sub_task),
        meta={"benchmark": NAME, "sub_task": sub_task},
    )


def load(path_or_id: str | Path, *, cache_dir: str | Path | None = None, limit: int | None = None,
         split: str | None = None) -> list[Record]:
    """Load MLE-Bench from its folder (data.jsonl + images/, or parquet files), a .jsonl / .parquet file, or the hub id."""
    cache = cache_for(path_or_id, cache_dir)
    if is_hub_id(path_or_id):
        rows, base = iter_hub(str(path_or_id), split=split or "train"), Path.cwd()
    else:
        p = Path(path_or_id)
        if not p.exists():
            raise DataFileError(f"{p}: not found (and not a hub id such as 'JunlinHan/Multi-Level_Existence_Bench')")
        files = [p] if p.is_file() else find_data_files(
            p, ["data.jsonl", "metadata.jsonl", "*.jsonl", "default/train/*.parquet", "**/*.parquet"],
            "MLE-Bench data.jsonl or parquet files")
        base = files[0].parent
        if files[0].suffix.lower() == ".parquet":
            rows = iter_parquet(files)
        elif files[0].suffix.lower() == ".jsonl":
            rows = iter_jsonl_rows(files[0])
        else:
            raise DataFileError(f"{files[0]}: unsupported MLE-Bench file (expected .jsonl or .parquet)")
    records = [_record(row, where, n, cache, base) for n, (where, row) in enumerate(take(rows, limit))]
    return unique_ids(records, lambda r: f"{r.meta['sub_task']}/{r.id}", str(path_or_id))


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per size category; `overall` = their unweighted mean; `micro` = the plain mean over items."""
    summary = micro_summary(NAME, results)
    per_size, counts = accuracy_by(results, lambda r: result_field(r, "category"))
    summary["micro"] = summary["overall"]
    if per_size:
        summary["overall"] = sum(per_size.values()) / len(per_size)
    summary["per_category"], summary["counts"] = per_size, counts
    return summary


def _size(record: Record) -> Any:
    return record.category


BENCHMARK = Benchmark(NAME, load, aggregate, "Multi-Level Existence Bench (1,861 items; small / medium / large)",
                      stratum=_size)
