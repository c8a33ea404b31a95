"""The page of a gap-probe folder (`vision-opd gap --out DIR`): every view's accuracy, the paired differences,
and the items the views disagree on.

    html = gap_page(Path("runs/gap"), Limits())

The galleries pair the full view with the crop view (or the proposer's crop when the probe ran without
boxes): the items the crop gets right and the full image wrong (the gap itself), and the reverse; each item
shows both views' images and responses side by side, and how the other views (red box, full + crop) did.
"""

from __future__ import annotations

from pathlib import Path

from .document import badge, card, cards, esc, fmt, page, plot_grid, table
from .evaluation import (category_table, item_images, pick, question_of, read_folder, sample_lines, settings_brief,
                         settings_fold)
from .limits import Limits
from .plots import bars
from .records import Found, benchmark_records


def view_table(per_view: dict) -> str:
    rows = []
    for v, s in per_view.items():
        lo, hi = (s.get("accuracy_ci95") or [None, None])[:2]
        t = s.get("response_tokens") or {}
        rows.append((esc(v), fmt(s.get("n")), fmt(s.get("accuracy")), f"[{fmt(lo)}, {fmt(hi)}]", fmt(s.get("unextracted_rate")),
                     fmt(t.get("mean"), 1), fmt(t.get("truncation_rate"))))
    return table(["view", "n", "accuracy", "95% CI", "unreadable", "mean tokens", "truncated"], rows)


def difference_table(differences: dict) -> str:
    cats = sorted({c for d in differences.values() for c in d.get("per_category", {})})
    rows = []
    for name, d in differences.items():
        lo, hi = (d.get("ci95") or [None, None])[:2]
        per = [f"{d['per_category'][c]['difference']:+.3f}" if c in d.get("per_category", {}) else "—" for c in cats]
        diff = d.get("difference")
        rows.append((esc(name), fmt(d.get("n")), "—" if diff is None else f"{diff:+.3f}", f"[{fmt(lo)}, {fmt(hi)}]", *per))
    return table(["difference (paired)", "n", "mean", "95% CI", *cats], rows)


def pair_item(group: str, a: dict, b: dict, others: dict[str, dict], record, found: Found, names: tuple[str, str]) -> str:
    """One item: the full view and the crop view, images and responses side by side; other views' outcomes."""
    proposed = names[1] == "proposed"
    images = item_images(record, found, (f"{names[0]}: full image (cyan: {'proposed' if proposed else 'evidence'} box)",
                                         f"{names[1]}: crop"), proposed)
    other = " ".join(f"<span class='meta'>{esc(v)}</span> {badge(s.get('correct'), s.get('extracted'))}" for v, s in others.items())
    return (f'<div class="item" data-group="{esc(group)}" data-id="{esc(a.get("id"))}"><div>{images}{question_of(record, a)}</div>'
            f'<div><h3>{esc(names[0])}</h3>{sample_lines(a)}<h3>{esc(names[1])}</h3>{sample_lines(b)}'
            + (f'<div class="meta" style="margin-top:8px">other views: {other}</div>' if other else "") + "</div></div>")


def disagreements(by_view: dict[str, dict[str, dict]], base: str, other: str, found: Found, limits: Limits) -> str:
    """The two galleries: other right & base wrong, and base right & other wrong."""
    ids = [i for i in by_view.get(base, {}) if i in by_view.get(other, {})]
    parts = []
    for group, title, want in ((f"{other}-wins", f"{other} right, {base} wrong", (False, True)),
                               (f"{base}-wins", f"{base} right, {other} wrong", (True, False))):
        hits = [i for i in ids if (bool(by_view[base][i].get("correct")), bool(by_view[other][i].get("correct"))) == want]
        shown = [s["id"] for s in pick([by_view[base][i] for i in hits], limits.max_items)]
        parts.append(f'<h3 id="{esc(group)}">{esc(title)}: {len(hits)} of {len(ids)} paired items'
                     + (f" (showing {len(shown)})" if len(shown) < len(hits) else "") + "</h3>")
        if found.note and not found.records:
            parts.append(f'<div class="warn">{esc(found.note)}</div>')
        items = []
        for i in shown:
            others = {v: s[i] for v, s in by_view.items() if v not in (base, other) and i in s}
            items.append(pair_item(group, by_view[base][i], by_view[other][i], others, found.records.get(str(i)), found,
                                   (base, other)))
        parts.append('<div class="gallery wide">' + "".join(items) + "</div>")
        if not hits:
            parts.append('<p class="note">none</p>')
    return "".join(parts)


def gap_page(path: Path, limits: Limits) -> str:
    r, settings, samples = read_folder(path)
    found = benchmark_records(settings, path)
    per_view, diffs = r.get("views") or {}, r.get("differences") or {}
    by_view: dict[str, dict[str, dict]] = {}
    for s in samples:
        by_view.setdefault(str(s.get("view")), {})[s.get("id")] = s
    views = list(per_view)
    top = cards([card(f"{v}", fmt(s.get("accuracy")), f"n {s.get('n')}") for v, s in per_view.items()]
                + [card(k, "—" if d.get("difference") is None else f"{d['difference']:+.3f}",
                        f"95% CI [{fmt((d.get('ci95') or [None])[0])}, {fmt((d.get('ci95') or [None, None])[1])}]")
                   for k, d in diffs.items()])
    plots = [bars("accuracy per view (95% CI)", views, [per_view[v].get("accuracy") for v in views],
                  [tuple(per_view[v].get("accuracy_ci95") or (0, 0)) for v in views])]
    if diffs:
        names = list(diffs)
        plots.append(bars("paired differences (95% CI)", names, [diffs[n].get("difference") for n in names],
                          [tuple(diffs[n]["ci95"]) if diffs[n].get("ci95") else None for n in names], ylim=None,
                          zero_line=True))
    skipped = r.get("skipped") or {}
    notes = [f"items: {r.get('n_items')}; skipped without evidence {skipped.get('no_evidence')}, without an answer "
             f"{skipped.get('no_answer')}"]
    notes += [f"view {v} failed: {e}" for v, e in (r.get("view_errors") or {}).items()]
    if r.get("proposals"):
        notes.append("proposals: " + ", ".join(f"{k} {fmt(v)}" for k, v in r["proposals"].items()))
    summary = (top + "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
               + plot_grid(plots)
               + "<h3>per view</h3>" + view_table(per_view) + "<h3>paired differences, overall and per category</h3>"
               + difference_table(diffs))
    cat_views = "".join(f"<h3>{esc(v)}: per category</h3>" + category_table(s) for v, s in per_view.items())
    other = "crop" if "crop" in by_view else "proposed" if "proposed" in by_view else None
    gallery = disagreements(by_view, "full", other, found, limits) if other and "full" in by_view else \
        '<p class="note">the probe has no full and crop views to pair</p>'
    sections = [("summary", "Gap", summary), ("disagree", "Where the views disagree", gallery),
                ("categories", "Per category", cat_views),
                ("settings", "Settings", settings_brief(settings) + settings_fold(settings))]
    model = (settings.get("model") or {}).get("model", "")
    return page(f"{settings.get('benchmark', 'gap')}: {model}", "gap probe", sections, meta=str(path.resolve()))

