"""MME-RealWorld (EN ~23.6k, CN 5,917, Lite ~1.9k), five options A-E.

Layouts accepted (docs/benchmarks.md), for each of EN / CN / Lite:
- raw `yifanzhang114/MME-RealWorld`: `MME_RealWorld.json` / `MME_RealWorld_CN.json` (a JSON list with
  Question_id, Image (a path relative to the folder the archives were extracted into; `image_root`),
  Text, "Answer choices" ["(A) ...", ...], "Ground truth", Task, Subtask, Category);
- `MME-RealWorld-Base64`: `MME_RealWorld[_CN]_base64_<k>.json` (index, image as base64, question,
  "multi-choice options", answer, category "Task/Subtask", l2-category), streamed item by item;
- `mme_realworld_lite.tsv` (VLMEvalKit; "multi-choice options" is a Python list literal);
- the lmms-eval parquet repos: `data/*.parquet` with the image as a base64 string in a column named
  `bytes` (also accepted: `image`), same other columns as the Base64 JSON. Full-width "（A）" prefixes are
  accepted. CN subtask names are kept as given.

Official score (MME-RealWorld `eval_your_results.py`): accuracy per fine category (categories containing
"attribute" folded into "<prefix>/attribute"), per Subtask (count-weighted), per Task, and overall
(weighted = micro). `avg_c` is the unweighted mean over subtasks (the README's "Avg-C").
"""

from __future__ import annotations

import ast
from functools import partial
from pathlib import Path
from typing import Any

from vision_opd.data.records import LETTERS, Record
from vision_opd.eval.benchmarks.common import (
    Benchmark,
    accuracy_by,
    cache_for,
    letter_columns,
    micro_summary,
    normalise_letter,
    result_field,
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
    image_to_path,
    is_hub_id,
    iter_hub,
    iter_json_items,
    iter_parquet,
    iter_tsv,
    need,
)

VARIANTS = {
    # variant: (raw JSON file, Base64 JSON globs, VLMEvalKit TSV)
    "en": ("MME_RealWorld.json", ["MME-RealWorld/MME_RealWorld_base64_*.json", "MME_RealWorld_base64_*.json"], None),
    "cn": (
        "MME_RealWorld_CN.json",
        ["MME-RealWorld-CN/MME_RealWorld_CN_base64_*.json", "MME_RealWorld_CN_base64_*.json"],
        None,
    ),
    "lite": (None, [], "mme_realworld_lite.tsv"),
}


def _options(value: Any, where: str) -> list[str]:
    if isinstance(value, str):  # the Lite TSV stores a Python list literal
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            value = [ln for ln in value.splitlines() if ln.strip()]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise DataFileError(
            f"{where}: 'multi-choice options' must be a list of at least 2 '(A) ...' strings, got {value!r:.200}"
        )
    return [strip_option_prefix(str(o), LETTERS[i], where) for i, o in enumerate(value)]


def _split_category(category: str) -> tuple[str, str]:
    """ "Perception/Monitoring" -> ("Perception", "Monitoring") as lmms-eval reads it."""
    task = "Perception" if "perception" in category.lower() else "Reasoning"
    return task, category.split("/")[-1].strip()


def _raw_record(row: dict[str, Any], where: str, images: RowImages, variant: str) -> Record:
    options = _options(need(row, "Answer choices", where), where)
    qid = text_of(need(row, "Question_id", where))
    task, subtask = text_of(need(row, "Task", where)), text_of(need(row, "Subtask", where))
    return Record(
        id=qid,
        image=image_to_path(
            need(row, "Image", where), base_dir=images.base_dir, cache=images.cache, where=where, column="Image"
        ),
        question=str(need(row, "Text", where)).strip(),
        options=options,
        answer=normalise_letter(need(row, "Ground truth", where), options, where),
        category=f"{task}/{subtask}",
        meta={
            "benchmark": f"mme_realworld_{variant}",
            "task": task,
            "subtask": subtask,
            "l2_category": text_of(row.get("Category") or ""),
            "dataset": row.get("Dataset"),
        },
    )


def _flat_record(row: dict[str, Any], where: str, images: RowImages, variant: str, n: int) -> Record:
    """Base64 JSON, Lite TSV and lmms parquet rows."""
    if first_key(row, ("multi-choice options",)):
        options = _options(row["multi-choice options"], where)
    else:
        options = letter_columns(row)
        if len(options) < 2:
            raise DataFileError(f"{where}: missing column 'multi-choice options' (or option columns A-E)")
    image_key = first_key(row, ("bytes", "image"))
    if image_key is None:
        raise DataFileError(f"{where}: missing the image column ('bytes' in the lmms-eval parquet, else 'image')")
    index = text_of(row["index"]) if first_key(row, ("index",)) else str(n)
    category = text_of(need(row, "category", where))
    task, subtask = _split_category(category)
    image = images.path(row[image_key], index, where, column=image_key)
    rec = Record(
        id=index,
        image=image or "",
        question=str(need(row, "question", where)).strip(),
        options=options,
        answer=normalise_letter(need(row, "answer", where), options, where),
        category=f"{task}/{subtask}",
        meta={
            "benchmark": f"mme_realworld_{variant}",
            "task": task,
            "subtask": subtask,
            "l2_category": text_of(row.get("l2-category") or ""),
        },
    )
    if image is None:
        images.defer(rec, row[image_key], where)
    return rec


def _records(rows, images: RowImages, variant: str, limit: int | None) -> list[Record]:
    out = []
    for n, (where, row) in enumerate(take(rows, limit)):
        if not isinstance(row, dict):
            raise DataFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
        raw = "Question_id" in row or "Answer choices" in row
        out.append(_raw_record(row, where, images, variant) if raw else _flat_record(row, where, images, variant, n))
    images.finish()
    return out


def _files_in(root: Path, variant: str) -> list[Path]:
    raw, b64, tsv = VARIANTS[variant]
    patterns = ([raw] if raw else []) + ["data/*.parquet"] + b64 + ([tsv] if tsv else [])
    return find_data_files(root, patterns, f"MME-RealWorld {variant.upper()} data")


def load(
    path_or_id: str | Path,
    *,
    variant: str = "en",
    cache_dir: str | Path | None = None,
    image_root: str | Path | None = None,
    limit: int | None = None,
    split: str = "train",
) -> list[Record]:
    """Load MME-RealWorld `variant` ("en", "cn" or "lite") from a folder, a file, or a hub id.

    `image_root`: the folder the raw image archives were extracted into (default: the JSON's folder).
    """
    variant = variant.lower()
    if variant not in VARIANTS:
        raise ValueError(f"MME-RealWorld variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    cache = cache_for(path_or_id, cache_dir)
    if is_hub_id(path_or_id):
        records = _records(iter_hub(str(path_or_id), split=split), RowImages(cache, Path.cwd()), variant, limit)
        return unique_ids(records, lambda r: r.id, str(path_or_id))
    p = Path(path_or_id)
    if not p.exists():
        raise DataFileError(f"{p}: not found (and not a hub id such as 'yifanzhang114/MME-RealWorld-Lmms-eval')")
    files = _files_in(p, variant) if p.is_dir() else [p]
    images = RowImages(cache, Path(image_root) if image_root else files[0].parent)
    kind = files[0].suffix.lower()
    if kind == ".parquet":
        rows = iter_parquet(files)
    elif kind == ".tsv":
        rows = iter_tsv(files[0])
    elif kind in (".json", ".jsonl"):
        rows = (item for f in files for item in iter_json_items(f))
    else:
        raise DataFileError(f"{files[0]}: unsupported MME-RealWorld file (expected .json, .parquet or .tsv)")
    records = _records(rows, images, variant, limit)
    return unique_ids(records, lambda r: f"{r.category}/{r.id}", str(p))


def _fine_category(result: dict[str, Any]) -> str:
    fine = str(result_field(result, "l2_category") or "").lower()
    if "attribute" in fine:
        fine = fine.split("/")[0] + "/attribute"
    return f"{result_field(result, 'task')}/{result_field(result, 'subtask')}/{fine}"


def aggregate(results: list[dict[str, Any]], *, name: str = "mme_realworld") -> dict[str, Any]:
    """Overall (micro), per task, per subtask, per fine category; `avg_c` = unweighted mean over subtasks."""
    summary = micro_summary(name, results)
    for r in results:
        if result_field(r, "task") is None or result_field(r, "subtask") is None:
            raise DataFileError(f"{name}: result {r.get('id')!r} lacks 'task'/'subtask' (pass the Record's meta)")
    per_task, task_counts = accuracy_by(results, lambda r: result_field(r, "task"))
    per_subtask, subtask_counts = accuracy_by(
        results, lambda r: f"{result_field(r, 'task')}/{result_field(r, 'subtask')}"
    )
    per_fine, _ = accuracy_by(results, _fine_category)
    avg_c_task = {}
    for task in per_task:
        subs = [acc for key, acc in per_subtask.items() if key.startswith(f"{task}/")]
        avg_c_task[task] = sum(subs) / len(subs)
    summary.update(
        per_task=per_task,
        task_counts=task_counts,
        per_subtask=per_subtask,
        subtask_counts=subtask_counts,
        per_fine_category=per_fine,
        avg_c=sum(per_subtask.values()) / len(per_subtask),
        avg_c_per_task=avg_c_task,
    )
    return summary


def _bench(variant: str, description: str) -> Benchmark:
    name = f"mme_realworld{'' if variant == 'en' else '_' + variant}"
    return Benchmark(name, partial(load, variant=variant), partial(aggregate, name=name), description)


BENCHMARK_EN = _bench("en", "MME-RealWorld, English (~23.6k items, 5 options)")
BENCHMARK_CN = _bench("cn", "MME-RealWorld, Chinese (5,917 items, 5 options)")
BENCHMARK_LITE = _bench("lite", "MME-RealWorld-Lite (~1.9k items, 5 options)")
