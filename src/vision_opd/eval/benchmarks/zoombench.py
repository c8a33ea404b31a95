"""ZoomBench (`inclusionAI/ZoomBench`): 845 items (about 621 multiple choice + 224 open), 6 dimensions.

File (docs/benchmarks.md): `data/test.parquet` with id, query (question with the options embedded as
"(A) ..." lines), response (a letter, or a number / short text for open questions), image (struct),
crop_image (struct or null: the zoomed evidence region, the benchmark's own dual view). Unconfirmed
variants accepted: the dataset-card schema prompt/answer instead of query/response; an optional
`question_type` ("mcq" requires options; other values are kept in meta, and an item is multiple
choice when its query has "(A) ..." lines and its answer is one of their letters); an optional `bbox`
[x1, y1, x2, y2]; the dimension column under any of `category`, `dimension`, `capability`, `task`.

`crop_image` becomes `Record.teacher_image`, `bbox` becomes `Record.box`. A multiple-choice item keeps the
question without its option lines (the shared prompt re-adds them as "A. ..."); an open item keeps the
query as it is, with `options=None` and a free-text answer, scored by normalised exact match (an
approximation of the official mathruler + LLM-judge grading).
Official score: accuracy = correct / all items; reported also per dimension and per question type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vision_opd.data.records import Record, parse_box
from vision_opd.eval.benchmarks.common import (
    Benchmark,
    accuracy_by,
    cache_for,
    micro_summary,
    normalise_letter,
    result_field,
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
    iter_json_items,
    iter_parquet,
)

NAME = "zoombench"
_MCQ_TYPES = {"mcq", "mc", "choice", "multiple_choice", "multi_choice", "multichoice"}
_CATEGORY_KEYS = ("category", "dimension", "capability", "task", "l2-category")


def _record(row: dict[str, Any], where: str, n: int, cache: ImageCache, base: Path) -> Record:
    qkey = first_key(row, ("query", "prompt", "question"))
    akey = first_key(row, ("response", "answer"))
    if qkey is None or akey is None:
        raise DataFileError(
            f"{where}: needs a question ('query' or 'prompt') and an answer ('response' or 'answer'); "
            f"columns: {sorted(row)}"
        )
    query, answer = str(row[qkey]).strip(), text_of(row[akey])
    rid = text_of(row["id"]) if first_key(row, ("id",)) else str(n)
    qtype = text_of(row["question_type"]) if first_key(row, ("question_type",)) else None
    question, options = split_options(query)
    says_mcq = qtype is not None and qtype.lower().replace("-", "_") in _MCQ_TYPES
    if says_mcq and not options:
        raise DataFileError(
            f"{where} (id {rid!r}): question_type is {qtype!r} but no '(A) ...' option lines were found in {qkey!r}"
        )
    if options:
        try:
            answer = normalise_letter(answer, options, f"{where} (id {rid!r})")
        except DataFileError:
            if says_mcq:
                raise
            options = None  # lettered lines, but a free-text answer: an open question
    if not options:
        question = query
    image = image_to_path(row.get("image"), base_dir=base, cache=cache, where=where)
    crop = row.get("crop_image")
    teacher = (
        None if crop is None else image_to_path(crop, base_dir=base, cache=cache, where=where, column="crop_image")
    )
    box = None
    if row.get("bbox") is not None:
        try:
            box = parse_box(list(row["bbox"]))
        except (ValueError, TypeError) as e:
            raise DataFileError(f"{where} (id {rid!r}): bad bbox: {e}") from None
    ckey = first_key(row, _CATEGORY_KEYS)
    return Record(
        id=rid,
        image=image,
        question=question,
        options=options,
        answer=answer,
        box=box,
        teacher_image=teacher,
        category=text_of(row[ckey]) if ckey else None,
        meta={"benchmark": NAME, "question_type": qtype or ("mcq" if options else "open")},
    )


def load(
    path_or_id: str | Path,
    *,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    split: str = "test",
) -> list[Record]:
    """Load ZoomBench from its folder (data/test.parquet), a parquet or JSON/JSONL file, or the hub id."""
    cache = cache_for(path_or_id, cache_dir)
    if is_hub_id(path_or_id):
        rows, base = iter_hub(str(path_or_id), split=split), Path.cwd()
    else:
        p = Path(path_or_id)
        if not p.exists():
            raise DataFileError(f"{p}: not found (and not a hub id such as 'inclusionAI/ZoomBench')")
        files = (
            find_data_files(p, ["data/test*.parquet", "data/*.parquet", "*.parquet"], "ZoomBench parquet")
            if p.is_dir()
            else [p]
        )
        base = files[0].parent
        if files[0].suffix.lower() == ".parquet":
            rows = iter_parquet(files)
        elif files[0].suffix.lower() in (".json", ".jsonl"):
            rows = (item for f in files for item in iter_json_items(f))
        else:
            raise DataFileError(f"{files[0]}: unsupported ZoomBench file (expected .parquet)")
    records = [_record(row, where, n, cache, base) for n, (where, row) in enumerate(take(rows, limit))]
    return unique_ids(records, lambda r: r.id, str(path_or_id))


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy over all items (ZoomBench's Acc = #correct / 845), per dimension and per question type."""
    summary = micro_summary(NAME, results)
    summary["per_question_type"], summary["question_type_counts"] = accuracy_by(
        results, lambda r: result_field(r, "question_type")
    )
    return summary


BENCHMARK = Benchmark(NAME, load, aggregate, "ZoomBench (845 items; crop_image as the teacher view)")
