"""The page of a demo folder (`vision-opd demo --out DIR`): summary.json, metrics.jsonl, examples.json.

    html = demo_page(Path("runs/demo"), Limits())

The gap before and after label-free Vision-OPD (overall and per category), the held-out accuracy curve and the
training curves, then example items of the synthetic world: the student's full image and the teacher's crop
side by side, and for each phase (before / after training) the student's response with its tokens coloured by
the teacher's disagreement, and the teacher's own answer on the crop.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.records import LETTERS, record_from_dict
from .document import badge, card, cards, esc, fmt, page, plot_grid, table
from .limits import Limits
from .plots import Series, curve
from .records import view_config
from .thumbnails import figure, record_thumbnails
from .tokens import TokenScale, colour_css, coloured_tokens, legend
from .training import curve_svgs, read_jsonl

PHASES = (("before", "before"), ("after", "after Vision-OPD"))


def result_block(s: dict) -> str:
    top = cards([card("full image, before → after", f"{fmt(s['full_before'])} → {fmt(s['full_after'])}", "held-out, greedy"),
                 card("crop, before → after", f"{fmt(s['crop_before'])} → {fmt(s['crop_after'])}", "the teacher's view"),
                 card("gap (crop − full)", f"{s['gap_before']:+.3f} → {s['gap_after']:+.3f}", f"n {s.get('n_eval')}"),
                 card("share of the gap closed", fmt(s.get("gap_closed"), 2), "(full after − before) / gap before"),
                 card("training time", f"{s.get('train_seconds')} s", f"whole demo {s.get('seconds')} s")])
    before, after = s.get("per_category_before") or {}, s.get("per_category_after") or {}
    cats = list((before.get("full") or {}).keys())
    rows = [(esc(c), fmt(before["full"].get(c)), fmt(after.get("full", {}).get(c)), fmt(before.get("crop", {}).get(c)),
             fmt(after.get("crop", {}).get(c))) for c in cats]
    arm = s.get("arm") or {}
    recipe = (f"{arm.get('steps')} steps × {arm.get('prompts')} unlabelled prompts × {arm.get('samples')} rollouts, loss "
              f"{arm.get('loss')}, {arm.get('teacher')} teacher, teacher crops from "
              + ("the true evidence boxes" if s.get("crop_source", "box") == "box" else f"the {s.get('crop_source')} proposer")
              + f", lr {arm.get('lr')}, seed {arm.get('seed')}; no labels read. Model {s.get('model_dir')}.")
    return (top + f'<p class="note">{esc(recipe)}</p>'
            + table(["category", "full before", "full after", "crop before", "crop after"], rows))


def curves_block(s: dict, metrics: list[dict]) -> str:
    pts = s.get("curve") or []
    steps = [p["step"] for p in pts]
    acc = curve("held-out accuracy (greedy)", [Series("full image", steps, [p.get("full") for p in pts], style="o-"),
                                               Series("crop", steps, [p.get("crop") for p in pts], style="o--")],
                ylim=(-0.02, 1.02))
    return plot_grid([acc] + curve_svgs(metrics))


def answer_cell(who: str, row: dict, scale: TokenScale | None) -> str:
    head = f'<div class="toolbar"><span class="meta">{esc(who)}</span> {badge(row.get("correct"), row.get("extracted"))}</div>'
    if scale is not None and row.get("tokens") is not None:
        body = coloured_tokens(row["tokens"], row.get("token_kl"), row.get("student_logprob"), row.get("teacher_logprob"),
                               scale)
    else:
        body = f'<div class="text">{esc(row.get("response", ""))}</div>'
    return f"<div>{head}{body}</div>"


def examples_block(ex: dict, limits: Limits) -> str:
    items = ex.get("items", [])[: limits.max_items]
    views = view_config(ex.get("view_config"))
    students = [it[p]["student"] for it in items for p, _ in PHASES if p in it]
    scale = TokenScale.of(students)
    note = ex.get("teacher") or {}
    parts = [f'<p class="note">The first {len(items)} held-out items (not selected by outcome). Student: the model on the '
             f'full image; teacher: {esc(note.get("before", "the model on the crop"))} before training, '
             f'{esc(note.get("after", ""))} after. Each student token is coloured by its KL to the teacher reading the '
             'same tokens on the crop.</p>', legend(scale, True)]
    cards_html = []
    for it in items:
        rec = record_from_dict(it["record"], Path("/"), where="examples.json")
        full, crop, why = record_thumbnails(rec, views)
        opts = " · ".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(rec.options or []))
        top = ('<div class="views">' + figure(full, "student: full image (cyan: the teacher's crop)")
               + figure(crop, "teacher: evidence crop") + "</div>"
               + f"<div class='question'>{esc(rec.question)}\n{esc(opts)}</div>"
               + f'<div class="meta">{esc(rec.id)} · {esc(rec.category)} · label {esc(rec.answer)} '
                 f'({esc(it.get("gold_option"))}), never read by training</div>'
               + (f'<div class="note">{esc(why)}</div>' if why else ""))
        rows = "".join(f'<div class="phase"><div class="label">{esc(label)}</div>'
                       f'{answer_cell("student, full image", it[p]["student"], scale)}'
                       f'{answer_cell("crop (teacher view)", it[p]["teacher"], None)}</div>'
                       for p, label in PHASES if p in it)
        cards_html.append(f'<div class="item example" data-id="{esc(rec.id)}"><div>{top}</div><div>{rows}</div></div>')
    return "".join(parts) + '<div class="gallery">' + "".join(cards_html) + "</div>"


def demo_page(path: Path, limits: Limits) -> str:
    s = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    ex = json.loads((path / "examples.json").read_text(encoding="utf-8"))
    metrics, _ = read_jsonl(path / "metrics.jsonl")
    metrics = [m for m in metrics if isinstance(m.get("step"), (int, float))]
    sections = [("result", "The gap, before and after", result_block(s)),
                ("curves", "Curves", curves_block(s, metrics)),
                ("examples", "What the student and the teacher see", examples_block(ex, limits))]
    return page("label-free Vision-OPD on the synthetic world", "demo", sections, meta=str(path.resolve()),
                css=colour_css())
