"""The HTML document of a report: one self-contained page (inline CSS and JS, no network, no fonts to fetch).

    html = page("run tiny_cpu", "training run", [("curves", "Curves", body_html), ...], meta="runs/tiny_cpu")

A page is a header, a sticky navigation bar with one link per section, and the sections. The small script
does two things, each from its buttons or from the address on load: the right/wrong filter of a gallery
(`#show=wrong`: items that do not match get the `hidden` attribute, so a DOM dump shows the filter's effect)
and the token colouring (`#colour=ratio`: the sampled token's log-ratio instead of its KL, a class on the
body); it also shows a token's values when the pointer is over it. Every piece of text goes through `esc`.
"""

from __future__ import annotations

import html
import math
from typing import Iterable, Sequence

CSS = """
:root { --fg:#1d2330; --muted:#5b6472; --line:#dde1e7; --bg:#f5f6f8; --card:#fff; --ok:#1a7f37; --bad:#c62828;
  --accent:#2457c5; --mono: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo, Consolas, monospace; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg); font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto,
  "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; }
header { background:#1d2330; color:#fff; padding:14px 24px 12px; }
header h1 { margin:0; font-size:20px; font-weight:600; }
header .sub { color:#c5cbd6; font-size:13px; margin-top:3px; }
header .kind { display:inline-block; background:#3a4560; border-radius:4px; padding:1px 7px; margin-right:8px;
  font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
nav { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line); padding:6px 24px; }
nav a { color:var(--accent); text-decoration:none; margin-right:18px; font-weight:500; }
main { max-width:1440px; margin:0 auto; padding:8px 24px 40px; }
section { margin-top:22px; }
h2 { font-size:17px; margin:0 0 10px; padding-bottom:4px; border-bottom:2px solid var(--line); }
h3 { font-size:14px; margin:14px 0 6px; }
.note { color:var(--muted); font-size:12.5px; }
.warn { background:#fff4e5; border:1px solid #f0c36d; border-radius:6px; padding:6px 10px; margin:8px 0; }
.cards { display:flex; flex-wrap:wrap; gap:10px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:8px 12px; min-width:128px; }
.card .k { color:var(--muted); font-size:12px; }
.card .v { font-size:20px; font-weight:600; font-variant-numeric:tabular-nums; }
.card .d { color:var(--muted); font-size:12px; font-variant-numeric:tabular-nums; }
.card.alert { border-color:#f0c36d; background:#fffaf0; }
.plots { display:grid; grid-template-columns:repeat(auto-fill, minmax(330px, 1fr)); gap:10px; }
.plot { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:4px; }
.plot svg { width:100%; height:auto; display:block; }
table { border-collapse:collapse; background:var(--card); font-variant-numeric:tabular-nums; }
th, td { border:1px solid var(--line); padding:3px 8px; text-align:left; vertical-align:top; }
th { background:#eef0f4; font-weight:600; }
td.num { text-align:right; }
.bar { display:inline-block; height:9px; background:var(--accent); border-radius:2px; vertical-align:middle; }
.item { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px; margin:10px 0;
  display:grid; grid-template-columns:minmax(260px, 400px) 1fr; gap:14px; }
.item[hidden] { display:none; }
.views { display:flex; gap:8px; flex-wrap:wrap; align-items:flex-start; }
figure { margin:0; }
figure img { width:180px; height:auto; border:1px solid var(--line); border-radius:4px; background:#fafafa; display:block; }
figure img[src^="data:image/png"] { image-rendering:pixelated; }
figcaption { font-size:11.5px; color:var(--muted); max-width:180px; }
.gallery { display:grid; grid-template-columns:repeat(auto-fill, minmax(400px, 1fr)); gap:10px; margin-top:8px; }
.gallery.wide { grid-template-columns:repeat(auto-fill, minmax(600px, 1fr)); }
.gallery .item { margin:0; grid-template-columns:1fr; gap:8px; align-content:start; }
.gallery.wide .item { grid-template-columns:auto 1fr; }
.gallery figure img { width:150px; } .gallery figcaption { max-width:150px; }
.phase { display:grid; grid-template-columns:64px 1fr 1fr; gap:8px; border-top:1px solid var(--line); padding:6px 0; }
.phase:first-child { border-top:0; }
.phase .label { font-weight:600; }
.stephead { font-weight:600; font-size:13px; margin-bottom:4px; }
.question { margin-top:8px; white-space:pre-wrap; font-size:13px; }
.meta { color:var(--muted); font-size:12px; margin-top:2px; }
.badge { display:inline-block; border-radius:4px; padding:0 6px; font-size:12px; font-weight:600; color:#fff; }
.badge.ok { background:var(--ok); } .badge.bad { background:var(--bad); } .badge.none { background:#8a8f98; }
.resp { border-top:1px solid var(--line); padding:6px 0; }
.resp:first-child { border-top:0; padding-top:0; }
.tokens { font-family:var(--mono); font-size:14px; white-space:pre-wrap; word-break:break-word; line-height:1.75; }
.tok { border-radius:2px; padding:1px 0; background:var(--kl); box-shadow:inset -1px 0 0 rgba(0,0,0,.10); }
body.ratio .tok { background:var(--lr); }
body.weight .tok { background:var(--w); }
.tip { position:fixed; z-index:10; background:#1d2330; color:#fff; font:12px var(--mono); padding:3px 7px;
  border-radius:4px; pointer-events:none; white-space:pre; }
.tip[hidden] { display:none; }
.tok.special { color:#6b7280; font-size:11px; border:1px solid #c9ced6; padding:0 2px; }
.tok.ctrl { color:#9aa1ab; }
.text { font-family:var(--mono); font-size:13px; white-space:pre-wrap; word-break:break-word; }
.legend { display:flex; align-items:center; gap:8px; font-size:12px; color:var(--muted); margin:6px 0 4px; flex-wrap:wrap; }
.legend .ramp { display:inline-block; vertical-align:middle; width:180px; height:12px; border:1px solid var(--line); border-radius:2px; }
.legend .ramp.kl { background:linear-gradient(90deg, #ffffff, #e4572e); }
.legend .ramp.lr { background:linear-gradient(90deg, #d7301f, #ffffff, #2166ac); }
body.ratio .legend .kl-only, body:not(.ratio) .legend .lr-only { display:none; }
.legend .ramp.w { background:linear-gradient(90deg, #ffffff, #1a9850); }
body.weight .legend .kl-only, body:not(.weight) .legend .w-only { display:none; }
button { font:inherit; font-size:12.5px; border:1px solid var(--line); background:#fff; border-radius:5px; padding:2px 10px;
  cursor:pointer; }
button.on { background:var(--accent); border-color:var(--accent); color:#fff; }
.toolbar { display:flex; gap:6px; align-items:center; flex-wrap:wrap; margin:6px 0; }
.stepnav a { margin-right:10px; color:var(--accent); text-decoration:none; }
details { margin-top:8px; } summary { cursor:pointer; color:var(--accent); }
pre.config { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:8px; font-size:12px;
  max-height:520px; overflow:auto; }
@media (max-width: 900px) { .item, .gallery.wide .item { grid-template-columns:1fr; } .phase { grid-template-columns:1fr; } }
"""

SCRIPT = """
(function () {
  function apply(group, show) {
    var n = 0;
    document.querySelectorAll('.item[data-group="' + group + '"]').forEach(function (it) {
      var match = show === 'all' || it.getAttribute('data-outcome') === show;
      it.hidden = !match;
      if (match) n += 1;
    });
    document.querySelectorAll('button[data-group="' + group + '"]').forEach(function (b) {
      b.classList.toggle('on', b.getAttribute('data-show') === show);
    });
    var c = document.getElementById('shown-' + group);
    if (c) c.textContent = String(n);
  }
  function colour(mode) {
    document.body.classList.toggle('ratio', mode === 'ratio');
    document.body.classList.toggle('weight', mode === 'weight');
    document.querySelectorAll('button[data-colour]').forEach(function (b) {
      b.classList.toggle('on', b.getAttribute('data-colour') === mode);
    });
  }
  document.querySelectorAll('button[data-show]').forEach(function (b) {
    b.addEventListener('click', function () { apply(b.getAttribute('data-group'), b.getAttribute('data-show')); });
  });
  document.querySelectorAll('button[data-colour]').forEach(function (b) {
    b.addEventListener('click', function () { colour(b.getAttribute('data-colour')); });
  });
  var show = /show=(all|right|wrong|unread)/.exec(location.hash);
  if (show) {
    var groups = {};
    document.querySelectorAll('button[data-group]').forEach(function (b) { groups[b.getAttribute('data-group')] = 1; });
    Object.keys(groups).forEach(function (g) { apply(g, show[1]); });
  }
  var mode = /colour=(kl|ratio)/.exec(location.hash);
  if (mode) colour(mode[1]);
  var tip = document.createElement('div');
  tip.className = 'tip';
  tip.hidden = true;
  document.body.appendChild(tip);
  function num(v, d) {  // no "-0.000"
    if (v === null) return '—';
    var x = Number(Number(v).toFixed(d));
    return (x === 0 ? 0 : x).toFixed(d);
  }
  document.addEventListener('mouseover', function (e) {
    var t = e.target.closest ? e.target.closest('.tok') : null;
    if (!t) { tip.hidden = true; return; }
    var kl = t.getAttribute('data-kl'), s = t.getAttribute('data-lps'), p = t.getAttribute('data-lpt');
    var text = JSON.stringify(t.textContent) + '  KL ' + num(kl, 4);
    if (s !== null) {
      text += '  log p_S ' + num(s, 3) + '  log p_T ' + num(p, 3) + '  log p_T - log p_S ' + num(Number(p) - Number(s), 3);
    }
    if (t.getAttribute('data-w') !== null) { text += '  weight ' + num(t.getAttribute('data-w'), 3); }
    tip.textContent = text;
    tip.hidden = false;
    var r = t.getBoundingClientRect();
    tip.style.left = Math.max(4, Math.min(r.left, window.innerWidth - tip.offsetWidth - 4)) + 'px';
    tip.style.top = (r.bottom + 4) + 'px';
  });
})();
"""


def esc(text: object) -> str:
    """HTML-escaped text (quotes too, so it is safe inside attributes)."""
    return html.escape(str(text), quote=True)


def fmt(value: object, digits: int = 3) -> str:
    """A number for people: None as an em dash, NaN/inf spelled out, small values in scientific notation."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.{max(1, digits - 1)}e}"
        return f"{value:.{digits}f}"
    return str(value)


def card(key: str, value: str, detail: str = "", alert: bool = False) -> str:
    return (f'<div class="card{" alert" if alert else ""}"><div class="k">{esc(key)}</div><div class="v">{esc(value)}</div>'
            + (f'<div class="d">{esc(detail)}</div>' if detail else "") + "</div>")


def cards(items: Iterable[str]) -> str:
    return '<div class="cards">' + "".join(items) + "</div>"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1) -> str:
    """A table of already-escaped cells (use `esc` / `fmt` on the values); columns >= numeric_from align right."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bar(fraction: float | None, width_px: int = 90) -> str:
    """An inline bar of `fraction` of `width_px` (a visual aid beside a number in a table)."""
    if fraction is None or not math.isfinite(fraction):
        return ""
    return f'<span class="bar" style="width:{max(0.0, min(1.0, fraction)) * width_px:.0f}px"></span>'


def badge(correct: bool | None, extracted: str | None = None) -> str:
    """right / wrong / unreadable, with the extracted answer."""
    if extracted is None:
        return '<span class="badge none" title="no answer could be read">unreadable</span>'
    cls, mark = ("ok", "✓") if correct else ("bad", "✗")
    return f'<span class="badge {cls}">{esc(extracted)} {mark}</span>'


def filter_bar(group: str, counts: dict[str, int]) -> str:
    """Buttons all / right / wrong / unreadable for the items of `group` (see SCRIPT), with their counts."""
    names = {"all": "all", "right": "right", "wrong": "wrong", "unread": "unreadable"}
    buttons = "".join(f'<button data-group="{esc(group)}" data-show="{k}"{" class=on" if k == "all" else ""}>'
                      f"{names[k]} ({counts.get(k, 0)})</button>" for k in names if k == "all" or counts.get(k))
    return (f'<div class="toolbar">show {buttons} <span class="note">showing <span id="shown-{esc(group)}">'
            f'{counts.get("all", 0)}</span></span></div>')


def outcome(correct: bool | None, extracted: str | None) -> str:
    """The filter's name for a sample: right, wrong or unread (no answer extracted)."""
    if extracted is None:
        return "unread"
    return "right" if correct else "wrong"


def plot_grid(svgs: Sequence[str]) -> str:
    """Plots (inline SVG) in a responsive grid."""
    return '<div class="plots">' + "".join(f'<div class="plot">{s}</div>' for s in svgs) + "</div>"


def page(title: str, kind: str, sections: Sequence[tuple[str, str, str]], *, meta: str = "", css: str = "") -> str:
    """The whole document: sections are (anchor, heading, inner html); `css` is added to the style sheet."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{esc(a)}"><h2>{esc(h)}</h2>{inner}</section>' for a, h, inner in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}{css}</style></head>
<body><header><h1><span class="kind">{esc(kind)}</span>{esc(title)}</h1><div class="sub">{esc(meta)}</div></header>
<nav>{nav}</nav><main>{body}</main><script>{SCRIPT}</script></body></html>
"""
