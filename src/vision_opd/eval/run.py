"""Benchmark evaluation: batched greedy generation, per-sample JSONL (resumable), results JSON.

    vision-opd eval --model Qwen/Qwen2.5-VL-7B-Instruct --benchmark vstar --data /data/vstar --out runs/eval/vstar
    vision-opd eval --model tiny:qwen2_5_vl --benchmark synthetic --data data/synth/records.jsonl --out runs/eval/tiny

`evaluate` loads the benchmark, refuses to mix settings (`provenance.start_run`), generates the missing samples
(`samples.generate_samples`: HF model in-process or an OpenAI-compatible server), asks the optional LLM judge about
the responses no rule could read (`judge.apply_judge`), and writes results.json: the summary (`summary.summarise`:
rule-only and judged scores, failure kinds, intervals of the official statistic), settings and provenance.
`evaluate_records` is the file-free version (`eval.heldout` runs it over ranks for the training loop).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from ..data.records import Record
from ..data.views import ViewConfig
from ..data.writes import write_text_atomic
from .benchmarks import get_benchmark
from .hf_backend import HFGenerator
from .judge import JUDGE_FILE, Judge, apply_judge
from .options import EvalOptions
from .provenance import provenance, run_settings, start_run
from .samples import generate_samples, write_samples
from .summary import summarise

RESULTS = "results.json"


def judge_samples(judge: Judge | None, by_view: dict[str, list[dict[str, Any]]], records: Sequence[Record],
                  out: Path, samples_path: Path, progress: bool) -> tuple[dict[str, list[dict[str, Any]]], Any]:
    """Apply the judge (or undo an earlier one) to every view's samples and rewrite samples.jsonl with them."""
    flat = [s for v in by_view.values() for s in v]
    judged, report = apply_judge(judge, flat, records, out / JUDGE_FILE, progress)
    write_samples(samples_path, judged)
    it = iter(judged)
    return {v: [next(it) for _ in s] for v, s in by_view.items()}, report


def evaluate(generator, benchmark: str, data: str | Path, out: str | Path, opts: EvalOptions = EvalOptions(), *,
             records: Sequence[Record] | None = None) -> dict[str, Any]:
    """Evaluate on the full image: samples.jsonl (resumable) and results.json in `out`; returns the results.

    `records`: the benchmark's records already loaded and checked (`preflight.load_checked`); else loaded here."""
    limit, batch_size, progress, judge = opts.limit, opts.batch_size, opts.progress, opts.judge
    response_budget, command_line = opts.response_budget, opts.command_line
    bench = get_benchmark(benchmark)
    records = list(records) if records is not None else bench.load(data, limit=limit)
    scorable = [r for r in records if r.answer is not None]
    out = Path(out)
    settings = run_settings(generator, benchmark, data, len(records), limit=limit, batch_size=batch_size,
                            views=["full"], response_budget=response_budget)
    if opts.box_format != "auto":  # boxes converted on read: another number than the file read as pixels
        settings["dataset"]["box_format"] = opts.box_format
    if judge is not None:
        settings["judge"] = judge.settings()
    samples_path = start_run(out, settings)
    t0 = time.perf_counter()
    by_view = generate_samples(generator, scorable, ["full"], batch_size=batch_size, samples_path=samples_path,
                               score=bench.score, progress=progress)
    by_view, judge_report = judge_samples(judge, by_view, scorable, out, samples_path, progress)
    results = {**summarise(by_view["full"], scorable, benchmark), "skipped_no_answer": len(records) - len(scorable),
               "judge": judge_report, "wall_seconds_this_run": round(time.perf_counter() - t0, 3),
               "settings": settings, "provenance": provenance(command_line)}
    write_text_atomic(out / RESULTS, json.dumps(results, indent=2, default=str))
    return results


def evaluate_records(model, processor, records: Sequence[Record], views: Sequence[str] = ("full", "crop"),
                     batch_size: int = 16, max_new_tokens: int = 16, view_cfg: ViewConfig = ViewConfig()) -> dict[str, Any]:
    """Greedy accuracy per view, no files (the training loop shares it out over ranks: `eval.heldout`).

    Returns {view: {"accuracy", "n", "per_category", "unextracted_rate", "failures", "mean_response_tokens",
    "truncation_rate"}, "gap": {"crop-full": ...} for each non-full view, "skipped": {view: count}, "seconds"}.
    Records without an answer or without the view's evidence are skipped and counted.
    """
    t0 = time.perf_counter()
    gen = HFGenerator(model, processor, max_new_tokens=max_new_tokens)
    scorable = [r for r in records if r.answer is not None]
    by_view = generate_samples(gen, scorable, list(views), batch_size=batch_size, view_cfg=view_cfg)
    return {**summarise_views(by_view, records), "seconds": time.perf_counter() - t0}


def summarise_views(by_view: dict[str, list[dict[str, Any]]], records: Sequence[Record]) -> dict[str, Any]:
    """`evaluate_records`' summary of {view: samples} (without "seconds")."""
    scorable = [r for r in records if r.answer is not None]
    summary: dict[str, Any] = {"skipped": {v: len(records) - len(s) for v, s in by_view.items()}}
    for v, samples in by_view.items():
        if not samples:
            continue
        s = summarise(samples, scorable)
        summary[v] = {"accuracy": s["accuracy"], "n": s["n"], "per_category": s["per_category"],
                      "unextracted_rate": s["unextracted_rate"], "failures": s["failures"],
                      "mean_response_tokens": s["response_tokens"]["mean"],
                      "truncation_rate": s["response_tokens"]["truncation_rate"]}
    if "full" in summary:
        summary["gap"] = {f"{v}-full": summary[v]["accuracy"] - summary["full"]["accuracy"]
                          for v in by_view if v != "full" and v in summary}
    return summary


__all__ = ["RESULTS", "evaluate", "evaluate_records", "judge_samples", "summarise_views"]
