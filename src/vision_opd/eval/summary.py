"""One view's samples summarised: accuracy (the benchmark's official aggregate) with the interval OF THAT
statistic, the failure kinds, the share with an answer, response lengths, thinking; rule-only and judged scores.

Every item counts: a response with no answer (any failure kind) is wrong in `accuracy`; `answered_share` says how
many had an answer and `accuracy_on_answered` how those fared. The rule-only score reads each sample's `correct`
unless the judge decided it (`method == "judge"`: the rules had no answer, so rule-only it is wrong); the judged
score reads `correct` as it is.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from ..data.records import Record
from .benchmarks import get_benchmark
from .benchmarks.common import micro_summary
from .grading import FAILURE_KINDS
from .statistics import bootstrap_ci, statistic_ci, stratified_mean
from .thinking import thinking_stats
from .views import EvalError


def rule_correct(sample: dict[str, Any]) -> bool:
    """Whether the rules alone got this sample right (a judged answer is not the rules')."""
    return bool(sample["correct"]) and sample.get("method") != "judge"


def length_stats(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Response tokens: mean, p95, max, and the share truncated at max_new_tokens."""
    n_T = np.array([s["response_tokens"] for s in samples if s["response_tokens"] is not None], dtype=float)
    rate = float(np.mean([s["truncated"] for s in samples]))
    if n_T.size == 0:
        return {"mean": None, "p95": None, "max": None, "truncation_rate": rate}
    return {"mean": float(n_T.mean()), "p95": float(np.percentile(n_T, 95)), "max": int(n_T.max()), "truncation_rate": rate}


def failure_counts(samples: Sequence[dict[str, Any]]) -> dict[str, int]:
    """{kind: count} for every failure kind (zeros included)."""
    counts = {k: 0 for k in FAILURE_KINDS}
    for s in samples:
        if s.get("failure"):
            counts[s["failure"]] += 1
    return counts


def _as_rules_left_it(s: dict[str, Any]) -> dict[str, Any]:
    return {**s, "extracted": None, "correct": False, "failure": "unextractable"} if s.get("method") == "judge" else s


def _score(samples, records_by_id, bench, judged: bool) -> dict[str, Any]:
    """The official aggregate of the rule-only (or judged) results, its CI, and per-category accuracy with theirs."""
    results = [{**(s if judged else _as_rules_left_it(s)), "unextracted": None,
                "meta": records_by_id[s["id"]].meta if s["id"] in records_by_id else {}} for s in samples]
    for r in results:
        r["unextracted"] = r.get("failure") is not None
    correct = [float(r["correct"]) for r in results]
    official = bench.aggregate(results) if bench else micro_summary("records", results)
    accuracy = float(official.get("overall", official.get("accuracy", float(np.mean(correct)))))
    recs = [records_by_id.get(s["id"]) for s in samples]
    strata = [bench.stratum(r) if r is not None else None for r in recs] if bench and bench.stratum else None
    clusters = [bench.cluster(r) if r is not None else s["id"] for r, s in zip(recs, samples, strict=True)] \
        if bench and bench.cluster else None
    same = np.isclose(stratified_mean(correct, strata), accuracy)
    if not same:  # an official statistic that is not a (stratified) mean: give the micro interval and say so
        strata = clusters = None
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        if s.get("category") is not None:
            by_cat[str(s["category"])].append(i)

    def ci(idx):
        sub = [correct[i] for i in idx]
        return list(statistic_ci(sub, None if strata is None else [strata[i] for i in idx],
                                 None if clusters is None else [clusters[i] for i in idx]))

    return {
        "accuracy": accuracy,
        "accuracy_ci95": ci(range(len(samples))),
        "accuracy_ci95_of": ("official" if same else "micro") + (" (strata, clusters)" if strata is not None else ""),
        "micro_accuracy": float(np.mean(correct)),
        "micro_accuracy_ci95": list(bootstrap_ci(correct)),
        "per_category": {str(k): v for k, v in official.get("per_category", {}).items()},
        "per_category_ci95": {k: ci(v) for k, v in sorted(by_cat.items())},
        "per_category_n": {k: len(v) for k, v in sorted(by_cat.items())},
        "official": official,
    }


def summarise(samples: Sequence[dict[str, Any]], records: Sequence[Record], benchmark: str | None = None) -> dict[str, Any]:
    """The summary of one view's samples (keys in docs/eval.md); `benchmark` None: micro accuracy, no strata."""
    if not samples:
        raise EvalError("no samples to summarise (every item was skipped?)")
    bench = get_benchmark(benchmark) if benchmark else None
    by_id = {r.id: r for r in records}
    rule = [float(rule_correct(s)) for s in samples]
    rule_failures = [("unextractable" if s.get("method") == "judge" else s.get("failure")) for s in samples]
    answered = [f is None for f in rule_failures]
    out = {
        "n": len(samples),
        **_score(samples, by_id, bench, judged=False),
        "answered_share": float(np.mean(answered)),
        "accuracy_on_answered": float(np.mean([c for c, a in zip(rule, answered, strict=True) if a])) if any(answered) else None,
        "unextracted_rate": float(1 - np.mean(answered)),
        "failures": failure_counts([{"failure": f} for f in rule_failures]),
        "methods": {m: sum(s.get("method") == m for s in samples) for m in ("rule", "option_text", "judge", "none")},
        "response_tokens": length_stats(samples),
        "thinking": thinking_stats(samples),
        "seconds_per_item": float(np.mean([s["seconds"] for s in samples])),
    }
    if any("judge" in s for s in samples):
        judged = _score(samples, by_id, bench, judged=True)
        out["judged"] = {k: judged[k] for k in ("accuracy", "accuracy_ci95", "accuracy_ci95_of", "micro_accuracy",
                                                "per_category")}
        out["judged"].update(answered_share=float(np.mean([s.get("failure") is None for s in samples])),
                             failures=failure_counts(samples))
    return out


def paired_difference(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], records: Sequence[Record] = (),
                      benchmark: str | None = None, *, judged: bool = False, n_boot: int = 1000) -> dict[str, Any]:
    """stat(a) - stat(b) over the ids present in both views, with a paired bootstrap 95% CI (the same items, or the
    same clusters, resampled for both); also per category.

    stat is the benchmark's official statistic where it is a (stratified) mean of correctness (HR-Bench: the mean
    over cycles; with every cycle complete it equals the micro mean), else the micro mean. `judged`: the judged
    correctness, else the rule-only one.
    """
    bench = get_benchmark(benchmark) if benchmark else None
    by_id = {r.id: r for r in records}
    b_by_id = {s["id"]: s for s in b}
    pairs = [(s, b_by_id[s["id"]]) for s in a if s["id"] in b_by_id]
    if not pairs:
        return {"n": 0, "difference": None, "ci95": None, "per_category": {}}
    value = (lambda s: float(s["correct"])) if judged else (lambda s: float(rule_correct(s)))

    def labels(fn, ps):
        if not (bench and fn):
            return None
        return [fn(by_id[p[0]["id"]]) if p[0]["id"] in by_id else p[0]["id"] for p in ps]

    def one(ps):
        xa, xb = [value(p[0]) for p in ps], [value(p[1]) for p in ps]
        strata, clusters = labels(bench and bench.stratum, ps), labels(bench and bench.cluster, ps)
        sa, sb = stratified_mean(xa, strata), stratified_mean(xb, strata)
        return {"n": len(ps), "difference": sa - sb, "a": sa, "b": sb,
                "ci95": list(statistic_ci(xa, strata, clusters, minus=xb, n_boot=n_boot)),
                "statistic": "micro" if strata is None else "mean over strata"}

    by_cat: dict[str, list] = defaultdict(list)
    for p in pairs:
        if p[0].get("category") is not None:
            by_cat[str(p[0]["category"])].append(p)
    return {**one(pairs), "per_category": {k: one(v) for k, v in sorted(by_cat.items())}}
