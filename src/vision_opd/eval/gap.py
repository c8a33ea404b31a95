"""The gap probe: the same items under several views, with paired differences, the gap by evidence size, plots.

    vision-opd gap --model tiny:qwen2_5_vl --benchmark synthetic --data data/synth/records.jsonl --out runs/gap
    vision-opd gap --model Qwen/Qwen2.5-VL-7B-Instruct --benchmark zoombench --data /data/ZoomBench --out runs/gap/zb

Views (`views.view_of`): full = the full image; crop = the evidence crop (`teacher_view` of the box, or the
record's teacher_image when it has no box); redbox = the full image with the expanded box drawn in red (items
without a box are skipped for this view only); full+crop = both images in one prompt (a view the model or server
rejects is reported under `view_errors`, not fatal); proposed (with a proposer) = the crop of the model's own box,
the full image where the proposer fell back, so it covers every item. Every view uses the benchmark's prompt.
Items with neither a box nor a teacher image are skipped for the whole probe and counted (except with a proposer).

Differences are paired: `crop-full` is stat(crop) - stat(full) over the items present in both views, with a
paired bootstrap 95% interval (the same items resampled for both), overall and per category; stat is the
benchmark's official statistic where it is a mean over strata (HR-Bench's cycles), else the micro mean
(`summary.paired_difference`). `common` gives every view's accuracy on the items that every view has, so the
rows of that table are comparable. `by_evidence_size` splits the paired differences by the box's share of the
image area (`evidence_size.gap_by_size`). Files in `out`: samples.jsonl (resumable, one line per (id, view)),
judge.jsonl (with a judge), results.json, gap.png, gap_by_size.png.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.records import Record
from ..data.views import ViewConfig
from ..data.writes import write_text_atomic, writing
from .benchmarks import get_benchmark
from .evidence_size import DEFAULT_EDGES, PLOT as SIZE_PLOT, evidence_share, gap_by_size, plot_gap_by_size
from .options import EvalOptions
from .provenance import provenance, run_settings, start_run
from .run import RESULTS, judge_samples
from .samples import generate_samples
from .statistics import bootstrap_ci
from .summary import paired_difference, rule_correct, summarise
from .views import VIEWS, EvalError, view_available

DEFAULT_VIEWS = ("full", "crop", "redbox", "full+crop")
PLOT = "gap.png"


def common_items(by_view: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Every view's micro accuracy (95% CI) on the ids that every view has: one comparable table."""
    if not by_view:
        return {"n": 0, "accuracy": {}, "ci95": {}}
    ids = set.intersection(*({s["id"] for s in ss} for ss in by_view.values()))
    acc, ci = {}, {}
    for v, ss in by_view.items():
        x = [float(rule_correct(s)) for s in ss if s["id"] in ids]
        if x:
            acc[v], ci[v] = float(np.mean(x)), list(bootstrap_ci(x))
    return {"n": len(ids), "accuracy": acc, "ci95": ci}


def gap_probe(generator, benchmark: str, data: str | Path, out: str | Path, opts: EvalOptions = EvalOptions(), *,
              views: Sequence[str] = DEFAULT_VIEWS, view_cfg: ViewConfig = ViewConfig(), proposer: str | None = None,
              size_edges: Sequence[float] = DEFAULT_EDGES, records: Sequence[Record] | None = None) -> dict[str, Any]:
    """Run every view on the items that have evidence; write samples.jsonl, results.json and the plots to `out`.

    proposer (attention | grounding | confidence | rarity): no boxes needed. The model proposes each item's evidence box
    (cached in out/proposals_NAME.jsonl) and the view "proposed" is added; every answered item is used, the box-based
    views only where a box exists, and the proposals are scored against the true boxes where there are any
    (results["proposals"]). Needs the hf backend (the proposer reads the model).
    `records`: the benchmark's records already loaded and checked (`preflight.load_checked`); else loaded here."""
    limit, batch_size, progress, judge = opts.limit, opts.batch_size, opts.progress, opts.judge
    response_budget, command_line = opts.response_budget, opts.command_line
    views = list(dict.fromkeys(list(views) + (["proposed"] if proposer else [])))
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise EvalError(f"unknown view(s) {', '.join(unknown)}; choose from {', '.join(VIEWS)}")
    if "proposed" in views and not proposer:
        raise EvalError("the view 'proposed' needs --proposer (attention, grounding, confidence or rarity)")
    bench = get_benchmark(benchmark)
    records = list(records) if records is not None else bench.load(data, limit=limit)
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
    shares = {r.id: evidence_share(r) for r in usable}  # reads image headers before any generation
    settings = run_settings(generator, benchmark, data, len(records), limit=limit, batch_size=batch_size,
                            views=views, view_cfg=view_cfg, response_budget=response_budget)
    if proposer:
        settings["proposer"] = proposer
    if opts.box_format != "auto":  # boxes converted on read: another number than the file read as pixels
        settings["dataset"]["box_format"] = opts.box_format
    if judge is not None:
        settings["judge"] = judge.settings()
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
    by_view = {v: s for v, s in by_view.items() if s}
    by_view, judge_report = judge_samples(judge, by_view, usable, out, samples_path, progress)
    per_view = {v: summarise(s, usable, benchmark) for v, s in by_view.items()}
    base = "full" if "full" in per_view else next(iter(per_view))
    differences = {}
    for v in per_view:
        if v != base:
            differences[f"{v}-{base}"] = d = paired_difference(by_view[v], by_view[base], usable, benchmark)
            if judge_report is not None:
                j = paired_difference(by_view[v], by_view[base], usable, benchmark, judged=True)
                d["judged"] = {k: j[k] for k in ("n", "difference", "ci95")}
    results = {
        "views": per_view,
        "accuracy": {v: s["accuracy"] for v, s in per_view.items()},
        "common": common_items(by_view),
        "differences": differences,
        "by_evidence_size": gap_by_size(by_view, shares, usable, benchmark, edges=size_edges, base=base),
        "skipped": {"no_evidence": len(no_evidence), "no_answer": len(no_answer),
                    "per_view": {v: len(usable) - len(by_view.get(v, [])) for v in views}},
        "proposals": proposal_scores,
        "n_items": len(usable),
        "view_errors": view_errors,
        "judge": judge_report,
        "wall_seconds_this_run": round(time.perf_counter() - t0, 3),
        "settings": settings,
        "provenance": provenance(command_line),
    }
    write_text_atomic(out / RESULTS, json.dumps(results, indent=2, default=str))
    title = f"{bench.name}: {settings['model'].get('model')}"
    with writing("the gap plots", out):
        plot_gap(results, out / PLOT, title=title)
        plot_gap_by_size(results["by_evidence_size"], out / SIZE_PLOT, title=title)
    return results


def _attach_proposals(generator, records, name: str, view_cfg: ViewConfig, out: Path, progress: bool) -> dict[str, Any]:
    """meta["proposed_box"] and meta["proposal_fallback"] for every record; the proposals' scores (IoU and recall
    over the records that have a true box)."""
    from ..proposers import apply_proposals, evaluate_proposals, propose_with

    if not (hasattr(generator, "model") and hasattr(generator, "processor")):
        raise EvalError("--proposer needs the hf backend: the proposer reads the model's own attention/confidence")
    out.mkdir(parents=True, exist_ok=True)
    props = propose_with(generator.model, generator.processor, records, name, view_cfg, out / f"proposals_{name}.jsonl",
                         progress=progress)
    apply_proposals(records, props, keep_fallback=True)  # a fallback's proposed view is the full image
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
        acc = [s["accuracy"]] + [s["per_category"].get(c, np.nan) for c in cats]  # official, with its own CI
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
