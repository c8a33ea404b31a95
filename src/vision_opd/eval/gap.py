"""The gap probe: the same items under several views, with paired differences and a bar chart.

    vision-opd gap --model tiny:qwen2_5_vl --benchmark synthetic --data data/synth/records.jsonl --out runs/gap
    vision-opd gap --model Qwen/Qwen2.5-VL-7B-Instruct --benchmark zoombench --data /data/ZoomBench --out runs/gap/zb

Views (`run.view_of`): full = the full image; crop = the evidence crop (`teacher_view` of the box, or the
record's teacher_image when it has no box); redbox = the full image with the expanded box drawn in red
(items without a box are skipped for this view only); full+crop = both images in one prompt (a view the
model or server rejects is reported under `view_errors`, not fatal). Every view uses the benchmark's
prompt. Items with neither a box nor a teacher image are skipped for the whole probe and counted.

Differences are paired: `crop-full` is mean(correct_crop - correct_full) over the items present in both
views, with a paired bootstrap 95% interval (the same items resampled for both), overall and per
category. Files in `out`: samples.jsonl (resumable, one line per (id, view)), results.json, gap.png.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.views import ViewConfig
from .benchmarks import get_benchmark
from .run import RESULTS, VIEWS, EvalError, generate_samples, run_settings, start_run, summarise, view_available
from .statistics import paired_bootstrap_ci

DEFAULT_VIEWS = ("full", "crop", "redbox", "full+crop")
PLOT = "gap.png"


def paired_difference(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], n_boot: int = 1000) -> dict[str, Any]:
    """mean(correct_a - correct_b) over the ids present in both, with a paired bootstrap CI; also per category."""
    b_by_id = {s["id"]: s for s in b}
    pairs = [(s, b_by_id[s["id"]]) for s in a if s["id"] in b_by_id]
    if not pairs:
        return {"n": 0, "difference": None, "ci95": None, "per_category": {}}

    def one(ps):
        xa = [float(p[0]["correct"]) for p in ps]
        xb = [float(p[1]["correct"]) for p in ps]
        return {"n": len(ps), "difference": float(np.mean(xa) - np.mean(xb)),
                "ci95": list(paired_bootstrap_ci(xa, xb, n_boot=n_boot)), "a": float(np.mean(xa)), "b": float(np.mean(xb))}

    by_cat: dict[str, list] = defaultdict(list)
    for p in pairs:
        if p[0].get("category") is not None:
            by_cat[str(p[0]["category"])].append(p)
    return {**one(pairs), "per_category": {k: one(v) for k, v in sorted(by_cat.items())}}


def gap_probe(generator, benchmark: str, data: str | Path, out: str | Path, *, views: Sequence[str] = DEFAULT_VIEWS,
              limit: int | None = None, batch_size: int = 8, view_cfg: ViewConfig = ViewConfig(),
              progress: bool = True, proposer: str | None = None) -> dict[str, Any]:
    """Run every view on the items that have evidence; write samples.jsonl, results.json and gap.png to `out`.

    proposer (attention | grounding | confidence | rarity): no boxes needed. The model proposes each item's evidence box
    (cached in out/proposals_NAME.jsonl) and the view "proposed" (the crop of that box) is added; every answered
    item is used, the box-based views only where a box exists, and the proposals are scored against the true
    boxes where there are any (results["proposals"]). Needs the hf backend (the proposer reads the model)."""
    views = list(dict.fromkeys(list(views) + (["proposed"] if proposer else [])))
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise EvalError(f"unknown view(s) {', '.join(unknown)}; choose from {', '.join(VIEWS)}")
    if "proposed" in views and not proposer:
        raise EvalError("the view 'proposed' needs --proposer (attention, grounding or confidence)")
    bench = get_benchmark(benchmark)
    records = bench.load(data, limit=limit)
    out = Path(out)
    no_answer = [r for r in records if r.answer is None]
    proposal_scores = None
    if proposer:
        proposal_scores = _attach_proposals(generator, [r for r in records if r.answer is not None], proposer, view_cfg,
                                            out, progress)
        usable = [r for r in records if r.answer is not None]
        no_evidence = [r for r in usable if not view_available(r, "crop")]
    else:
        no_evidence = [r for r in records if r.answer is not None and not view_available(r, "crop")]
        usable = [r for r in records if r.answer is not None and view_available(r, "crop")]
    if not usable:
        raise EvalError(f"{data}: none of the {len(records)} items has an evidence box or a teacher image "
                        f"(and an answer); the gap probe needs one of them, or --proposer")
    settings = run_settings(generator, benchmark, data, len(records), limit=limit, batch_size=batch_size,
                            views=views, view_cfg=view_cfg)
    if proposer:
        settings["proposer"] = proposer
    samples_path = start_run(out, settings)
    t0 = time.perf_counter()
    by_view: dict[str, list[dict[str, Any]]] = {}
    view_errors: dict[str, str] = {}
    for v in views:
        try:
            have = [r for r in usable if view_available(r, v)]
            by_view.update(generate_samples(generator, have, [v], batch_size=batch_size, samples_path=samples_path,
                                            view_cfg=view_cfg, score=bench.score, progress=progress))
        except Exception as e:  # noqa: BLE001 - only the two-image view may be unsupported; others must fail loudly
            if v != "full+crop":
                raise
            view_errors[v] = f"{type(e).__name__}: {e}"[:1000]
    per_view = {v: summarise(s, usable, benchmark) for v, s in by_view.items() if s}
    base = "full" if "full" in per_view else next(iter(per_view))
    differences = {f"{v}-{base}": paired_difference(by_view[v], by_view[base]) for v in per_view if v != base}
    results = {
        "views": per_view,
        "accuracy": {v: s["accuracy"] for v, s in per_view.items()},
        "differences": differences,
        "skipped": {"no_evidence": len(no_evidence), "no_answer": len(no_answer),
                    "per_view": {v: len(usable) - len(by_view.get(v, [])) for v in views}},
        "proposals": proposal_scores,
        "n_items": len(usable),
        "view_errors": view_errors,
        "wall_seconds_this_run": round(time.perf_counter() - t0, 3),
        "settings": settings,
    }
    (out / RESULTS).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    plot_gap(results, out / PLOT, title=f"{bench.name}: {settings['model'].get('model')}")
    return results


def _attach_proposals(generator, records, name: str, view_cfg: ViewConfig, out: Path, progress: bool) -> dict[str, Any]:
    """meta["proposed_box"] for every record whose proposal did not fall back; the proposals' scores (IoU and recall
    over the records that have a true box)."""
    from ..proposers import apply_proposals, evaluate_proposals, propose_with

    if not (hasattr(generator, "model") and hasattr(generator, "processor")):
        raise EvalError("--proposer needs the hf backend: the proposer reads the model's own attention/confidence")
    out.mkdir(parents=True, exist_ok=True)
    props = propose_with(generator.model, generator.processor, records, name, view_cfg, out / f"proposals_{name}.jsonl",
                         progress=progress)
    apply_proposals(records, props)
    return {"proposer": name, **evaluate_proposals(records, props)}


def plot_gap(results: dict[str, Any], path: Path, title: str = "") -> Path:
    """Two panels: accuracy per view (overall and per category, 95% CIs); paired differences vs full (95% CIs)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    per_view = results["views"]
    cats = sorted({c for s in per_view.values() for c in s["per_category_ci95"]})
    groups = ["overall"] + cats
    fig = Figure(figsize=(max(9.0, min(16.0, 2.4 * len(groups))), 4.2))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    width = 0.8 / max(1, len(per_view))
    x = np.arange(len(groups))
    for k, (view, s) in enumerate(per_view.items()):
        acc = [s["micro_accuracy"]] + [s["per_category"].get(c, np.nan) for c in cats]
        ci = [s["accuracy_ci95"]] + [s["per_category_ci95"].get(c, [np.nan, np.nan]) for c in cats]
        err = np.array([[a - lo, hi - a] for a, (lo, hi) in zip(acc, ci, strict=True)]).T
        ax1.bar(x + (k - (len(per_view) - 1) / 2) * width, acc, width, yerr=err, capsize=2, label=view)
    ax1.set_xticks(x, groups)
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel("accuracy")
    ax1.set_title("accuracy per view (95% CI)")
    ax1.legend(fontsize=8)
    diffs = results["differences"]
    width = 0.8 / max(1, len(diffs))
    for k, (name, d) in enumerate(diffs.items()):
        if d["difference"] is None:
            continue
        rows = [d] + [d["per_category"].get(c) for c in cats]
        val = [r["difference"] if r else np.nan for r in rows]
        err = np.array([[v - r["ci95"][0], r["ci95"][1] - v] if r else [np.nan, np.nan] for v, r in zip(val, rows, strict=True)]).T
        ax2.bar(x + (k - (len(diffs) - 1) / 2) * width, val, width, yerr=err, capsize=2, label=name)
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.set_xticks(x, groups)
    ax2.set_ylabel("paired difference in accuracy")
    ax2.set_title("paired differences (95% paired bootstrap CI)")
    if diffs:
        ax2.legend(fontsize=8)
    fig.suptitle(f"{title}  (n={results['n_items']}, skipped without evidence: {results['skipped']['no_evidence']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
