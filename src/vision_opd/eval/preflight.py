"""Everything an evaluation can check before a model loads: the benchmark's name, its data, and every record.

    records, report = load_checked("vstar", "/data/vstar", boxes=False)          # `vision-opd eval`
    records, report = load_checked("jsonl", "data/eval.jsonl", boxes=True)       # `vision-opd gap`

The records are checked with the checks (and messages) of `vision-opd data validate`: each image exists and is
an image (its header is read, not its pixels, so that checking HR-Bench 8K takes seconds), and with boxes=True
each evidence box lies on its image. Bad records stop the run before the model loads, naming every one of them,
or are skipped and counted with skip_bad=True (`--skip-bad`).
"""

from __future__ import annotations

from pathlib import Path

from ..data.files import DataFileError, is_hub_id
from ..data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageError
from ..data.records import Record, RecordError
from ..data.validate import Problem, ValidationReport, check_record, raise_if_bad, validate_file
from .benchmarks import get_benchmark
from .views import EvalError

RECORDS_BENCHMARKS = ("jsonl", "synthetic")  # read as Records JSONL: bad lines are reported like `data validate`


def benchmark_or_error(name: str):
    try:
        return get_benchmark(name)
    except KeyError as e:
        raise EvalError(f"--benchmark: {e.args[0]}") from None


def load_checked(benchmark: str, data: str | Path, *, limit: int | None = None, skip_bad: bool = False,
                 boxes: bool = False, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 box_format: str = "auto") -> tuple[list[Record], ValidationReport]:
    """The benchmark's records (the first `limit`), every one checked; EvalError / RecordError naming the fix.
    box_format: how a Records JSONL writes its boxes (data/doctor.py), converted to pixels on read."""
    bench = benchmark_or_error(benchmark)
    p = Path(data)
    if not p.exists() and not is_hub_id(str(data)):
        raise EvalError(f"--data {data}: no such file or folder")
    if bench.name in RECORDS_BENCHMARKS:
        from .benchmarks.jsonl import _jsonl_file

        path = _jsonl_file(p)
        report = validate_file(path, check_images=False, allow_outside_root=True, box_format=box_format)
        for r in report.records:
            r.meta.setdefault("benchmark", bench.name)
        root = path.parent
    else:
        if box_format != "auto":
            raise EvalError(f"--box-format {box_format} applies to Records JSONL (--benchmark jsonl or synthetic); "
                            f"{bench.name} reads its boxes in its own convention")
        try:
            loaded = bench.load(data, limit=limit)
        except (OSError, ValueError) as e:
            if isinstance(e, (DataFileError, RecordError, ImageError)):
                raise
            raise DataFileError(f"--data {data}: cannot read it as {bench.name} ({type(e).__name__}: {e})") from e
        report = ValidationReport(p, records=list(loaded), lines=len(loaded))
        root = p if p.is_dir() else p.parent
    if limit is not None:
        report.records = report.records[:limit]
    good = []
    for i, r in enumerate(report.records, start=1):
        try:
            check_record(r, root, max_pixels=max_pixels, allow_outside_root=True, decode=False, check_boxes=boxes)
        except (RecordError, ImageError) as e:
            report.problems.append(Problem(i, r.id, f"{data}: item {i} (id {r.id!r}): {e}"))
            continue
        good.append(r)
    report.records = good
    raise_if_bad(report, data, skip_bad)
    return good, report
