"""POPE (`lmms-lab/POPE`): 9,000 yes/no object-presence questions on 500 COCO images, 3 categories.

Files (docs/benchmarks.md): `data/test-0000k-of-00003.parquet` (config default) and `Full/...` (config
Full, splits adversarial / popular / random; the file names inside are unconfirmed, so any
`Full/**/*.parquet` is accepted and `subset=` picks files whose path names it). Columns: id, question_id,
question, answer ("yes"/"no"), image_source, image (struct), category. The answer is "yes"/"no" text,
`options` is None. Repeated COCO images are written to the cache once (content hash).

Official metrics (lmms-eval `pope_aggregate_*`): accuracy, precision, recall, F1 (positive = "yes") and
yes_ratio, which lmms-eval and the reference code compute from the GROUND-TRUTH labels; `pred_yes_ratio`
is the share of "yes" predictions. Deviation, on purpose: an unreadable reply counts as wrong and, for a
"yes" item, as a false negative (lmms-eval counts only an explicit "no" as a false negative).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vision_opd.data.records import Record
from vision_opd.eval.benchmarks.common import (
    Benchmark,
    cache_for,
    correctness,
    micro_summary,
    result_field,
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
    iter_parquet,
    need,
)

NAME = "pope"
SUBSETS = ("adversarial", "popular", "random")


def _record(row: dict[str, Any], where: str, n: int, cache: ImageCache, base: Path, subset: str | None) -> Record:
    answer = str(need(row, "answer", where)).strip().lower()
    if answer not in ("yes", "no"):
        raise DataFileError(f"{where}: answer must be 'yes' or 'no', got {row['answer']!r}")
    id_key = first_key(row, ("id", "question_id"))
    category = text_of(row["category"]) if first_key(row, ("category",)) else subset
    return Record(
        id=text_of(row[id_key]) if id_key else str(n),
        image=image_to_path(need(row, "image", where), base_dir=base, cache=cache, where=where),
        question=str(need(row, "question", where)).strip(),
        answer=answer,
        category=category,
        meta={
            "benchmark": NAME,
            "question_id": text_of(row["question_id"]) if first_key(row, ("question_id",)) else None,
            "image_source": row.get("image_source"),
        },
    )


def _subset_of(path: Path) -> str | None:
    hits = [s for s in SUBSETS if s in str(path).lower()]
    return hits[0] if len(hits) == 1 else None


def load(
    path_or_id: str | Path,
    *,
    subset: str | None = None,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    split: str | None = None,
) -> list[Record]:
    """Load POPE: all 9,000 (`data/`), or one `subset` of `Full/` ("adversarial", "popular", "random")."""
    if subset is not None and subset not in SUBSETS:
        raise ValueError(f"POPE subset must be one of {SUBSETS}, got {subset!r}")
    cache = cache_for(path_or_id, cache_dir)
    if is_hub_id(path_or_id):
        rows = iter_hub(str(path_or_id), split=split or subset or "test", name="Full" if subset else None)
        records = [
            _record(row, where, n, cache, Path.cwd(), subset) for n, (where, row) in enumerate(take(rows, limit))
        ]
        return unique_ids(records, lambda r: f"{r.category}/{r.id}", str(path_or_id))
    p = Path(path_or_id)
    if not p.exists():
        raise DataFileError(f"{p}: not found (and not a hub id such as 'lmms-lab/POPE')")
    if p.is_dir():
        if subset:
            files = [
                f
                for f in find_data_files(p, ["Full/**/*.parquet"], "POPE Full/ parquet files")
                if _subset_of(f.relative_to(p)) == subset
            ]
            if not files:
                raise DataFileError(f"{p}: no parquet file under Full/ names the subset {subset!r}")
        else:
            files = find_data_files(p, ["data/*.parquet", "*.parquet", "Full/**/*.parquet"], "POPE parquet files")
    else:
        files = [p]
    records = []
    for f in files:
        file_subset = subset or _subset_of(f.relative_to(p) if p.is_dir() else Path(f.name))
        for where, row in iter_parquet([f]):
            if limit is not None and len(records) >= limit:
                break
            records.append(_record(row, where, len(records), cache, f.parent, file_subset))
    return unique_ids(records, lambda r: f"{r.category}/{r.id}", str(p))


def _metrics(results: list[dict[str, Any]]) -> dict[str, float]:
    values = correctness(results)
    gold = [str(result_field(r, "gold")).lower() for r in results]
    pred = [str(result_field(r, "extracted") or "").lower() for r in results]
    if any(g not in ("yes", "no") for g in gold):
        raise DataFileError("pope: every result needs 'gold' = 'yes'/'no' and 'extracted' (as score_record writes)")
    tp = sum(g == "yes" and p == "yes" for g, p in zip(gold, pred, strict=True))
    fp = sum(g == "no" and p == "yes" for g, p in zip(gold, pred, strict=True))
    fn = sum(g == "yes" and p != "yes" for g, p in zip(gold, pred, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": sum(values) / len(values),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": gold.count("yes") / len(gold),
        "pred_yes_ratio": pred.count("yes") / len(pred),
        "n": len(values),
    }


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, yes ratios: overall and per category."""
    summary = micro_summary(NAME, results)
    summary.update(_metrics(results))
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(str(result_field(r, "category")), []).append(r)
    summary["per_category_metrics"] = {k: _metrics(v) for k, v in sorted(groups.items())}
    return summary


BENCHMARK = Benchmark(NAME, load, aggregate, "POPE (9,000 yes/no object-presence questions)")
