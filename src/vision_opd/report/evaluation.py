"""The page of an evaluation folder (`vision-opd eval --out DIR`): results.json, samples.jsonl, settings.json.

    html = eval_page(Path("runs/eval"), Limits())

Accuracy with its 95% interval, per category, the outcome counts (wrong answer, each failure kind, truncated), the
response lengths, the settings that made the number, and a gallery of items (the image, the question, the
response, the extracted answer, right or wrong) that the buttons filter by outcome. The gallery and the item
card are shared with the gap page (gap.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.records import LETTERS, Record
from .document import badge, bar, card, cards, esc, filter_bar, fmt, outcome, page, plot_grid, table
from .limits import Limits
from .plots import bars, histogram
from .records import Found, benchmark_records
from .thumbnails import figure, record_thumbnails
from .training import read_jsonl

MAX_RESPONSE_CHARS = 1200  # longer responses are cut, the rest behind a "more" fold


def read_folder(path: Path) -> tuple[dict, dict, list[dict]]:
    """(results, settings, samples) of an eval / gap folder."""
    results = json.loads((path / "results.json").read_text(encoding="utf-8"))
    settings_file = path / "settings.json"
    settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.exists() else \
        results.get("settings") or {}
    samples, _ = read_jsonl(path / "samples.jsonl")
    return results, settings, samples


def pick(samples: Sequence[dict], max_items: int) -> list[dict]:
    """At most `max_items` samples, each outcome (right / wrong / unreadable) in proportion to its count but at
    least a few of each, spread evenly over the file, in file order."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(outcome(s.get("correct"), s.get("extracted")), []).append(i)
    if len(samples) <= max_items:
        return list(samples)
    floor = max(1, max_items // 6)
    want = {k: min(len(v), max(floor, round(max_items * len(v) / len(samples)))) for k, v in groups.items()}
    while sum(want.values()) > max_items:
        k = max(want, key=lambda g: want[g])
        want[k] -= 1
    chosen = []
    for k, idx in groups.items():
        if want[k]:
            chosen.extend(idx[round(j)] for j in np.linspace(0, len(idx) - 1, want[k]))
    return [samples[i] for i in sorted(set(chosen))]


def view_cfg_for(found: Found, record: Record, proposed: bool = False):
    """The crop as the evaluation cut it (`eval.run.view_of`): the evidence box, else the record's own teacher
    image; with `proposed`, the proposer's box."""
    source = "proposer" if proposed else "box" if record.box is not None else "given"
    return replace(found.view_cfg, teacher_source=source, teacher_text=None)


def response_text(text: str) -> str:
    if len(text) <= MAX_RESPONSE_CHARS:
        return f'<div class="text">{esc(text)}</div>'
    return (f'<div class="text">{esc(text[:MAX_RESPONSE_CHARS])}…</div><details><summary>the other '
            f'{len(text) - MAX_RESPONSE_CHARS} characters</summary><div class="text">{esc(text[MAX_RESPONSE_CHARS:])}</div></details>')


def sample_lines(s: dict) -> str:
    """One sample's response, its extracted answer against the gold one, and its length."""
    meta = [f"gold {s.get('gold')}", f"{fmt(s.get('response_tokens'))} tokens" + (" (truncated)" if s.get("truncated") else "")]
    if s.get("failure"):
        meta.append(f"failure: {s['failure']}" + (f" ({s['error']})" if s.get("error") else ""))
    if s.get("method") == "judge":
        meta.append("answer read by the judge")
    return (f'<div class="toolbar">{badge(s.get("correct"), s.get("extracted"))}<span class="meta">{esc(" · ".join(meta))}'
            f"</span></div>{response_text(str(s.get('response', '')))}")


def question_of(record: Record | None, s: dict) -> str:
    if record is None:
        return f"<div class='question'>{esc(s.get('prompt', ''))}</div>"
    opts = "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(record.options or []))
    cat = f" · {esc(record.category)}" if record.category else ""
    return f"<div class='question'>{esc(record.question)}{esc(opts)}</div><div class='meta'>{esc(record.id)}{cat}</div>"


def item_images(record: Record | None, found: Found, captions: tuple[str, str], proposed: bool = False) -> str:
    if record is None:
        return f'<div class="note">{esc(found.note or "record not found in the dataset")}</div>'
    full, crop, note = record_thumbnails(record, view_cfg_for(found, record, proposed))
    return ('<div class="views">' + figure(full, captions[0]) + figure(crop, captions[1]) + "</div>"
            + (f'<div class="note">{esc(note)}</div>' if note else ""))


def gallery(group: str, samples: Sequence[dict], found: Found, max_items: int) -> str:
    shown = pick(samples, max_items)
    counts: dict[str, int] = {"all": len(shown)}
    for s in shown:
        k = outcome(s.get("correct"), s.get("extracted"))
        counts[k] = counts.get(k, 0) + 1
    parts = [f'<p class="note">{len(shown)} of {len(samples)} items (every outcome in proportion, at least a few of '
             'each; `--max-items N` shows more). Add #show=wrong to the address to open filtered.</p>',
             filter_bar(group, counts)]
    if found.note and not found.records:
        parts.append(f'<div class="warn">{esc(found.note)}</div>')
    cards_html = []
    for s in shown:
        record = found.records.get(str(s.get("id")))
        images = item_images(record, found, ("the model's view: full image (cyan: evidence box)",
                                             "evidence crop (not in this view)"))
        cards_html.append(f'<div class="item" data-group="{esc(group)}" data-outcome="{outcome(s.get("correct"), s.get("extracted"))}"'
                          f' data-id="{esc(s.get("id"))}"><div>{images}{question_of(record, s)}</div>'
                          f"<div>{sample_lines(s)}</div></div>")
    return "".join(parts) + '<div class="gallery">' + "".join(cards_html) + "</div>"


def failure_table(samples: Sequence[dict], failures: dict[str, int] | None = None) -> str:
    """Right, wrong answer, no answer (by failure kind when results.json counts them), truncated, judged."""
    n = max(1, len(samples))
    right = sum(1 for s in samples if s.get("correct"))
    unread = sum(1 for s in samples if s.get("extracted") is None)
    wrong = len(samples) - right - unread
    trunc = sum(1 for s in samples if s.get("truncated"))
    no_answer = [(f"no answer: {k}", v) for k, v in failures.items()] if failures else \
        [("unreadable (no answer extracted)", unread)]
    rows = [("right", right), ("wrong answer", wrong), *no_answer, ("truncated at max_new_tokens (any outcome)", trunc)]
    judged = sum(1 for s in samples if s.get("method") == "judge")
    if judged:
        rows.append(("answer read by the judge (right or wrong)", judged))
    return table(["outcome", "items", "share"], [(esc(k), fmt(v), f"{v / n:.3f} {bar(v / n)}") for k, v in rows])


def category_table(r: dict) -> str:
    cats = sorted(set(r.get("per_category_ci95", {})) | set(r.get("per_category", {})))
    rows = []
    for c in cats:
        acc = r.get("per_category", {}).get(c)
        lo, hi = (r.get("per_category_ci95", {}).get(c) or [None, None])[:2]
        rows.append((esc(c), fmt(r.get("per_category_n", {}).get(c)), f"{fmt(acc)} {bar(acc)}", f"[{fmt(lo)}, {fmt(hi)}]"))
    return table(["category", "n", "accuracy", "95% CI"], rows) if rows else '<p class="note">no categories</p>'


def settings_brief(settings: dict) -> str:
    model, ds = settings.get("model") or {}, settings.get("dataset") or {}
    dec = model.get("decoding") or {}
    rows = [("model", f"{model.get('model')} ({model.get('backend')}, {model.get('model_type')}, {model.get('dtype')})"),
            ("benchmark", f"{settings.get('benchmark')}: {ds.get('path')} ({ds.get('n_records')} records, limit {ds.get('limit')})"),
            ("dataset sha256", str(ds.get("sha256"))),
            ("decoding", ", ".join(f"{k} {v}" for k, v in dec.items() if k != "suppressed_token_ids")),
            ("pixel budget", json.dumps(model.get("pixel_budget"))), ("views", ", ".join(settings.get("views") or []))]
    return table(["", ""], [(esc(k), esc(v)) for k, v in rows], numeric_from=99)


def length_cards(r: dict) -> list[str]:
    t = r.get("response_tokens") or {}
    return [card("response tokens", fmt(t.get("mean"), 1), f"p95 {fmt(t.get('p95'), 1)} · max {fmt(t.get('max'))}"),
            card("truncated", fmt(t.get("truncation_rate")), "share at max_new_tokens", alert=(t.get("truncation_rate") or 0) > 0.1)]


def eval_page(path: Path, limits: Limits) -> str:
    r, settings, samples = read_folder(path)
    found = benchmark_records(settings, path)
    lo, hi = (r.get("accuracy_ci95") or [None, None])[:2]
    top = cards([card("accuracy", fmt(r.get("accuracy")), f"95% CI [{fmt(lo)}, {fmt(hi)}] · n {r.get('n')}"),
                 card("unreadable", fmt(r.get("unextracted_rate")), "no answer extracted", alert=(r.get("unextracted_rate") or 0) > 0.1),
                 *([card("judged accuracy", fmt(r["judged"].get("accuracy")), "the judge read the unextractable")]
                   if r.get("judged") else []),
                 *length_cards(r), card("seconds per item", fmt(r.get("seconds_per_item"), 3)),
                 card("skipped (no answer)", fmt(r.get("skipped_no_answer")))])
    cats = r.get("per_category_ci95") or {}
    plots = []
    if cats:
        names = sorted(cats)
        plots.append(bars("accuracy per category (95% CI)", names, [(r.get("per_category") or {}).get(c) for c in names],
                          [tuple(cats[c]) for c in names]))
    max_new = ((settings.get("model") or {}).get("decoding") or {}).get("max_new_tokens")
    plots.append(histogram("response length", [s.get("response_tokens") for s in samples], xlabel="tokens (dashed: limit)",
                           limit=max_new))
    summary = (top + plot_grid(plots) + "<h3>outcomes</h3>" + failure_table(samples, r.get("failures")) + "<h3>per category</h3>" + category_table(r))
    official = r.get("official")
    if official and set(official) - {"overall", "accuracy", "per_category"}:
        summary += f'<details><summary>official aggregate</summary><pre class="config">{esc(json.dumps(official, indent=1))}</pre></details>'
    sections = [("summary", "Accuracy", summary), ("items", "Items", gallery("items", samples, found, limits.max_items)),
                ("settings", "Settings", settings_brief(settings) + settings_fold(settings))]
    model = (settings.get("model") or {}).get("model", "")
    return page(f"{settings.get('benchmark', 'eval')}: {model}", "evaluation", sections, meta=str(path.resolve()))


def settings_fold(settings: dict[str, Any]) -> str:
    return f'<details><summary>settings.json</summary><pre class="config">{esc(json.dumps(settings, indent=1, default=str))}</pre></details>'
