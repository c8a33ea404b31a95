"""HR-Bench 4K and 8K (`DreamMr/HR-Bench`): 200 questions x 4 cycles = 800 rows per version.

Files (docs/benchmarks.md): `hr_bench_4k.parquet` / `hr_bench_4k.tsv` (8k alike), same columns in
both: index, question, A-D, answer (letter), category ("single" = FSP, "cross" = FCP), cycle_category,
image (a base64 string). The cycle_category value strings and whether `index` repeats across cycles are
unconfirmed: any strings are accepted, and if an index repeats, ids become "<index>/<cycle_category>".
A VLMEvalKit TSV may hold, in place of an image, the index of the row that has it; that is resolved.

Official score (HR-Bench `HRBenchDataset.evaluate`, VLMEvalKit `report_acc_hrbench`): accuracy per
cycle (all items and per category), then the UNWEIGHTED mean over cycles of each. Its confidence interval is of
that same statistic (cycles as strata), resampling questions: the rows sharing an image and a question text.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from vision_opd.data.records import Record
from vision_opd.eval.benchmarks.common import (
    Benchmark,
    accuracy_by,
    cache_for,
    letter_columns,
    micro_summary,
    normalise_letter,
    result_field,
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
    iter_parquet,
    iter_tsv,
    need,
)


def _records(rows, images: RowImages, name: str, limit: int | None) -> list[Record]:
    out = []
    for n, (where, row) in enumerate(take(rows, limit)):
        options = letter_columns(row)
        if len(options) < 2:
            raise DataFileError(f"{where}: needs option columns A, B, ... (found {len(options)} non-empty)")
        index = text_of(row["index"]) if first_key(row, ("index",)) else str(n)
        image = images.path(need(row, "image", where), index, where)
        cycle = row.get("cycle_category")
        rec = Record(
            id=index,
            image=image or "",
            question=str(need(row, "question", where)).strip(),
            options=options,
            answer=normalise_letter(need(row, "answer", where), options, where),
            category=text_of(row["category"]) if first_key(row, ("category",)) else None,
            meta={"benchmark": name, "index": index, "cycle_category": None if cycle is None else text_of(cycle)},
        )
        if image is None:
            images.defer(rec, row["image"], where)
        out.append(rec)
    images.finish()
    return out


def load(
    path_or_id: str | Path,
    *,
    version: str = "4k",
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    split: str | None = None,
) -> list[Record]:
    """Load HR-Bench `version` ("4k" or "8k") from its folder, its .parquet or .tsv, or the hub id."""
    version = version.lower()
    if version not in ("4k", "8k"):
        raise ValueError(f"HR-Bench version must be '4k' or '8k', got {version!r}")
    name = f"hrbench_{version}"
    cache = cache_for(path_or_id, cache_dir)
    if is_hub_id(path_or_id):
        rows = iter_hub(str(path_or_id), split=split or f"hrbench_{version}")
        records = _records(rows, RowImages(cache, Path.cwd()), name, limit)
    else:
        p = Path(path_or_id)
        if not p.exists():
            raise DataFileError(f"{p}: not found (and not a hub id such as 'DreamMr/HR-Bench')")
        files = [p]
        if p.is_dir():
            stem = f"hr_bench_{version}"
            files = find_data_files(
                p, [f"{stem}.parquet", f"{stem}.tsv", f"**/{stem}.parquet", f"**/{stem}.tsv"], f"{stem}.parquet or .tsv"
            )[:1]
        f = files[0]
        if f.suffix.lower() == ".parquet":
            rows = iter_parquet(files)
        elif f.suffix.lower() == ".tsv":
            rows = iter_tsv(f)
        else:
            raise DataFileError(f"{f}: unsupported HR-Bench file (expected .parquet or .tsv)")
        records = _records(rows, RowImages(cache, f.parent), name, limit)
    return unique_ids(records, lambda r: f"{r.meta['index']}/{r.meta['cycle_category']}", str(path_or_id))


def aggregate(results: list[dict[str, Any]], *, name: str = "hrbench") -> dict[str, Any]:
    """Per cycle: accuracy over all items and per category; reported: the unweighted mean over cycles.

    `overall` is the mean over cycles of the per-cycle accuracy; `micro` is plain accuracy over items
    (equal to `overall` when the cycles have equal sizes, as in the published files).
    """
    summary = micro_summary(name, results)
    cycles: dict[Any, list[dict[str, Any]]] = {}
    for r in results:
        cycles.setdefault(result_field(r, "cycle_category"), []).append(r)
    per_cycle: dict[str, dict[str, float]] = {}
    for cycle, rs in cycles.items():
        by_cat, _ = accuracy_by(rs, lambda r: result_field(r, "category"))
        overall, _ = accuracy_by(rs, lambda r: "all")
        per_cycle[str(cycle)] = {"all": overall["all"], **by_cat}
    keys = sorted({k for accs in per_cycle.values() for k in accs})
    averaged = {
        k: sum(a[k] for a in per_cycle.values() if k in a) / sum(k in a for a in per_cycle.values()) for k in keys
    }
    summary["micro"] = summary["overall"]
    summary["overall"] = averaged.pop("all")
    summary["per_category"] = averaged
    summary["per_cycle"] = per_cycle
    return summary


def _cycle(record: Record) -> Any:
    return record.meta.get("cycle_category")


def _question(record: Record) -> Any:
    """The rows of one question (its cycles share the image, cached once by content, and the question text)."""
    return (record.image, record.question)


BENCHMARK_4K = Benchmark(
    "hrbench_4k",
    partial(load, version="4k"),
    partial(aggregate, name="hrbench_4k"),
    "HR-Bench 4K (800 rows: 200 questions x 4 cycles)",
    stratum=_cycle,
    cluster=_question,
)
BENCHMARK_8K = Benchmark(
    "hrbench_8k",
    partial(load, version="8k"),
    partial(aggregate, name="hrbench_8k"),
    "HR-Bench 8K (800 rows: 200 questions x 4 cycles)",
    stratum=_cycle,
    cluster=_question,
)
