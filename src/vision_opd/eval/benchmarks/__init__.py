"""Fine-grained benchmarks as small task objects, registered in a plain dict.

    from vision_opd.eval.benchmarks import BENCHMARKS, load_benchmark, aggregate
    records = load_benchmark("hrbench_4k", "/data/HR-Bench")            # a folder, a file or a hub id
    prompt = BENCHMARKS["hrbench_4k"].format_prompt(records[0])
    result = BENCHMARKS["hrbench_4k"].score(records[0], "Answer: B")  # one per-item result dict
    summary = aggregate("hrbench_4k", [result, ...])                  # the benchmark's official aggregation

Each `Benchmark` is callable (calling it loads). Names accept '-' for '_' and any case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vision_opd.data.records import Record
from vision_opd.eval.benchmarks import hrbench, jsonl, mle_bench, mme_realworld, pope, treebench, vstar, zoombench
from vision_opd.eval.benchmarks.common import Benchmark, format_prompt, score_record
from vision_opd.data.files import DataFileError

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        vstar.BENCHMARK,
        hrbench.BENCHMARK_4K,
        hrbench.BENCHMARK_8K,
        mme_realworld.BENCHMARK_EN,
        mme_realworld.BENCHMARK_CN,
        mme_realworld.BENCHMARK_LITE,
        zoombench.BENCHMARK,
        treebench.BENCHMARK,
        pope.BENCHMARK,
        mle_bench.BENCHMARK,
        jsonl.BENCHMARK,
        jsonl.SYNTHETIC,
    )
}

ALIASES = {
    "v*": "vstar",
    "vstar_bench": "vstar",
    "hrbench4k": "hrbench_4k",
    "hr_bench_4k": "hrbench_4k",
    "hrbench8k": "hrbench_8k",
    "hr_bench_8k": "hrbench_8k",
    "mme_realworld_en": "mme_realworld",
    "mmerealworld": "mme_realworld",
    "zoom_bench": "zoombench",
    "records": "jsonl",
    "mlebench": "mle_bench",
    "multi_level_existence_bench": "mle_bench",
}


def get_benchmark(name: str) -> Benchmark:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[key]


def load_benchmark(name: str, path: str | Path, **kw: Any) -> list[Record]:
    """Load benchmark `name` from a local folder/file (or a hub id, through `datasets`)."""
    return get_benchmark(name).load(path, **kw)


def aggregate(name: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The official aggregation of benchmark `name` over per-item results (see `common.score_record`)."""
    return get_benchmark(name).aggregate(results)


__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "DataFileError",
    "aggregate",
    "format_prompt",
    "get_benchmark",
    "load_benchmark",
    "score_record",
]
