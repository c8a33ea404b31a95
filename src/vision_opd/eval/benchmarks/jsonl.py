"""A JSONL of Records (the package's own schema, `vision_opd.data.records`), and the synthetic world,
which the package's generator writes in that same schema.

`path` is the JSONL file, or a folder holding exactly one `*.jsonl`. Aggregation: micro accuracy,
per category.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vision_opd.data.records import Record
from vision_opd.data.validate import read_records
from vision_opd.eval.benchmarks.common import Benchmark, micro_summary
from vision_opd.data.files import DataFileError


def _jsonl_file(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.glob("*.jsonl") if f.is_file())
        if len(files) != 1:
            raise DataFileError(
                f"{p}: expected exactly one *.jsonl file in the folder, found {len(files)} "
                f"({', '.join(f.name for f in files) or 'none'}); pass the file itself"
            )
        return files[0]
    if not p.is_file():
        raise DataFileError(f"{p}: Records JSONL file not found")
    return p


def _loader(name: str):
    def load(path: str | Path, *, limit: int | None = None, cache_dir: str | Path | None = None) -> list[Record]:
        """Read a Records JSONL (ids, images relative to the file, options, answer, box, category).

        `cache_dir` is accepted for a uniform signature and unused: Records already hold file paths.
        """
        records = read_records(_jsonl_file(path))
        for r in records:
            r.meta.setdefault("benchmark", name)
        return records[:limit] if limit is not None else records

    return load


def _aggregator(name: str):
    def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
        """Micro accuracy over all items and per category."""
        return micro_summary(name, results)

    return aggregate


BENCHMARK = Benchmark("jsonl", _loader("jsonl"), _aggregator("jsonl"), "a JSONL of Records")
SYNTHETIC = Benchmark(
    "synthetic", _loader("synthetic"), _aggregator("synthetic"), "the synthetic world (Records JSONL)"
)
