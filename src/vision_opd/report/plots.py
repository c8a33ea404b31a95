"""The report's plots as inline SVG (matplotlib, text kept as text): curves over steps and bar charts with CIs.

    svg = curve("KL", [Series("kl", steps, values)], marks=Marks(skipped=[12], collapse=[(40, 44)]))
    svg = bars("accuracy per view", ["full", "crop"], [0.3, 0.8], [(0.2, 0.4), (0.7, 0.9)])

Long runs stay light: a series of more than `MAX_POINTS` points is drawn as the mean of equal bins (with the
bins' min-max as a band), and a series of 30 points or more as the raw values (thin, light) under a centred
rolling mean over about 5% of the points. Skipped steps (non-finite loss or gradient) are red ticks on the
x axis; steps with a collapse signal are shaded orange.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

MAX_POINTS = 600  # per series, after binning
COLOURS = ("#2457c5", "#e4572e", "#1a7f37", "#8e44ad", "#b8860b", "#17a2b8")


@dataclass
class Series:
    label: str
    x: Sequence[float]
    y: Sequence[float | None]
    style: str = "-"  # matplotlib line style; "o-" for sparse points (held-out evaluations)
    colour: str | None = None


@dataclass
class Marks:
    skipped: list[float] = field(default_factory=list)  # steps skipped as non-finite
    collapse: list[tuple[float, float]] = field(default_factory=list)  # [first, last] step of each collapse run


def _figure(width: float = 4.3, height: float = 2.55):
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasSVG(fig)
    return fig


def _svg(fig, salt: str) -> str:
    """The figure as an <svg> element: text as text, ids salted per plot (several SVGs share one page)."""
    import matplotlib

    buf = io.StringIO()
    fig.subplots_adjust(left=0.16, right=0.97, top=0.88, bottom=0.19)  # fixed margins: one draw (tight = two)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)


def _clean(x: Sequence[float], y: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    xs = np.asarray(x, dtype=float)
    ys = np.asarray([np.nan if v is None else v for v in y], dtype=float)
    keep = np.isfinite(xs) & np.isfinite(ys)
    return xs[keep], ys[keep]


def binned(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS):
    """(x, mean, min, max) over at most max_points equal bins of consecutive points (unchanged when short)."""
    if len(x) <= max_points:
        return x, y, y, y
    edges = np.linspace(0, len(x), max_points + 1).astype(int)
    parts = [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
    return (np.array([x[p].mean() for p in parts]), np.array([y[p].mean() for p in parts]),
            np.array([y[p].min() for p in parts]), np.array([y[p].max() for p in parts]))


def rolling_mean(y: np.ndarray, window: int) -> np.ndarray:
    """Centred rolling mean (the window shrinks at the ends)."""
    if window <= 1 or len(y) < 3:
        return y
    c = np.concatenate([[0.0], np.cumsum(y)])
    half = window // 2
    lo = np.clip(np.arange(len(y)) - half, 0, len(y))
    hi = np.clip(np.arange(len(y)) + half + 1, 0, len(y))
    return (c[hi] - c[lo]) / (hi - lo)


def curve(title: str, series: Sequence[Series], *, marks: Marks | None = None, ylabel: str = "",
          ylim: tuple[float, float] | None = None, log_y: bool = False) -> str:
    """One small line chart over training steps, as SVG."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for i, s in enumerate(series):
        x, y = _clean(s.x, s.y)
        if len(x) == 0:
            continue
        drawn += 1
        colour = s.colour or COLOURS[i % len(COLOURS)]
        bx, mean, lo, hi = binned(x, y)
        if len(bx) < len(x):
            ax.fill_between(bx, lo, hi, color=colour, alpha=0.15, linewidth=0)
        if len(bx) >= 30 and "o" not in s.style:
            ax.plot(bx, mean, "-", color=colour, alpha=0.3, linewidth=0.7)
            ax.plot(bx, rolling_mean(mean, max(3, len(bx) // 20)), s.style, color=colour, linewidth=1.6, label=s.label)
        else:
            ax.plot(bx, mean, s.style, color=colour, linewidth=1.4, markersize=3.5, label=s.label)
    if marks:
        for a, b in marks.collapse:
            ax.axvspan(a - 0.5, b + 0.5, color="#f39c12", alpha=0.18, linewidth=0)
        if marks.skipped:
            ax.plot(marks.skipped, [0.0] * len(marks.skipped), "|", color="#c62828", markersize=9, mew=1.5,
                    transform=ax.get_xaxis_transform(), clip_on=False)
    if not drawn:
        ax.text(0.5, 0.5, "no values logged", ha="center", va="center", transform=ax.transAxes, color="#888")
    if log_y and drawn:
        ax.set_yscale("symlog", linthresh=1e-4)
    if ylim:
        ax.set_ylim(*ylim)
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not (log_y and drawn):  # each tick written whole: matplotlib's offset text ("1e-7") sat on the title
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel("step", fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7.5)
    ax.grid(alpha=0.25)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if len(series) > 1 and drawn:
        ax.legend(fontsize=7, frameon=False)
    return _svg(fig, title)


def bars(title: str, labels: Sequence[str], values: Sequence[float | None],
         ci: Sequence[tuple[float, float] | None] | None = None, *, ylim: tuple[float, float] | None = (0, 1.14),
         zero_line: bool = False, ylabel: str = "", width: float = 4.3) -> str:
    """A bar chart with optional 95% intervals (a missing value is left empty)."""
    fig = _figure(width=width)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(labels))
    v = np.array([np.nan if a is None else a for a in values], dtype=float)
    colours = [COLOURS[i % len(COLOURS)] for i in range(len(labels))]
    ax.bar(x, np.nan_to_num(v), color=colours, width=0.65)
    if ci is not None:
        err = np.array([[a - c[0], c[1] - a] if c is not None and math.isfinite(a) else [0, 0]
                        for a, c in zip(v, ci, strict=True)]).T
        ax.errorbar(x, np.nan_to_num(v), yerr=err, fmt="none", ecolor="#333", capsize=3, linewidth=1)
    for k, (xi, vi) in enumerate(zip(x, v, strict=True)):
        if math.isfinite(vi):  # the value above its interval (below it for a negative bar)
            c = ci[k] if ci is not None and ci[k] is not None else (vi, vi)
            y, dy = (c[1], 3) if vi >= 0 else (c[0], -10)
            ax.annotate(f"{vi:+.2f}" if zero_line else f"{vi:.2f}", (xi, y), textcoords="offset points",
                        xytext=(0, dy), ha="center", fontsize=7.5)
    if zero_line:
        ax.axhline(0, color="#333", linewidth=0.8)
    if ylim:
        ax.set_ylim(*ylim)
    else:
        ax.margins(y=0.18)  # room for the value labels
    ax.set_xticks(x, labels, fontsize=7.5, rotation=20 if max((len(s) for s in labels), default=0) > 8 else 0)
    ax.set_title(title, fontsize=10, loc="left")
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(axis="y", labelsize=7.5)
    ax.grid(axis="y", alpha=0.25)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _svg(fig, title)


def histogram(title: str, values: Sequence[float], *, xlabel: str = "", limit: float | None = None) -> str:
    """A histogram (e.g. response lengths), with the limit (max_new_tokens) as a dashed line."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    v = np.asarray([a for a in values if a is not None], dtype=float)
    if len(v):
        ax.hist(v, bins=min(40, max(5, int(np.sqrt(len(v))) * 2)), color=COLOURS[0], alpha=0.85)
    if limit:
        ax.axvline(limit, color="#c62828", linestyle="--", linewidth=1)
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=7.5)
    ax.grid(alpha=0.25)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _svg(fig, title)
