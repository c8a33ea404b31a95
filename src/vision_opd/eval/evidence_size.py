"""The gap by evidence size: crop - full (and every other view - full) per bin of the evidence box's share of
the image area, with paired bootstrap intervals, and the plot of the gap against evidence size.

    shares = {r.id: evidence_share(r) for r in records}
    table = gap_by_size(by_view, shares, records, edges=DEFAULT_EDGES)   # results["by_evidence_size"]
    plot_gap_by_size(table, out / "gap_by_size.png")

The share is the (unexpanded) evidence box's area over the image's area, in pixels of the EXIF-rotated image.
Items with no box (a teacher image only) have no share and are counted under `unknown`. Bins are half-open
[lo, hi) except the last, which is closed: [last edge, 1] and above, so a box covering the whole image (share 1, or
more when the box reaches past the image's edge) counts there. The default edges 0.5%, 1%, 2%, 5% give < 0.5%,
0.5-1%, 1-2%, 2-5%, >= 5%.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..data.records import Record
from .summary import paired_difference, rule_correct

DEFAULT_EDGES = (0.005, 0.01, 0.02, 0.05)
PLOT = "gap_by_size.png"
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def image_size(path: str) -> tuple[int, int]:
    """(width, height) after the EXIF rotation, read from the header only."""
    with Image.open(path) as img:
        w, h = img.size
        if img.getexif().get(0x0112) in _TRANSPOSED:
            w, h = h, w
    return w, h


def evidence_share(record: Record) -> float | None:
    """Box area / image area, or None when the record has no box."""
    if record.box is None:
        return None
    x1, y1, x2, y2 = record.box
    w, h = image_size(record.image)
    return max(0.0, x2 - x1) * max(0.0, y2 - y1) / float(w * h)


def parse_edges(text: str) -> tuple[float, ...]:
    """ "0.005,0.01,0.02,0.05" -> increasing edges in (0, 1); ValueError naming the flag otherwise."""
    try:
        edges = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--size-bins {text!r}: give increasing area shares, e.g. 0.005,0.01,0.02,0.05") from None
    if not edges or any(not 0 < e < 1 for e in edges) or list(edges) != sorted(set(edges)):
        raise ValueError(f"--size-bins {text!r}: need increasing shares of the image area strictly between 0 and 1")
    return edges


def _pct(x: float) -> str:
    return f"{100 * x:g}%"


def bin_labels(edges: Sequence[float]) -> list[str]:
    inner = [f"{100 * lo:g}-{_pct(hi)}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return [f"<{_pct(edges[0])}"] + inner + [f">={_pct(edges[-1])}"]


def gap_by_size(by_view: dict[str, list[dict[str, Any]]], shares: dict[str, float | None], records: Sequence[Record],
                benchmark: str | None = None, *, edges: Sequence[float] = DEFAULT_EDGES, base: str = "full",
                n_boot: int = 1000) -> dict[str, Any]:
    """Per bin: n, median share, accuracy per view on the bin's items, and paired differences view - base."""
    labels = bin_labels(edges)
    bins = []
    for k, label in enumerate(labels):
        lo = 0.0 if k == 0 else edges[k - 1]
        hi = 1.0 if k == len(edges) else edges[k]
        last = k == len(edges)  # closed: a box covering the whole image (share >= 1) belongs here
        ids = {i for i, s in shares.items() if s is not None and lo <= s and (last or s < hi)}
        in_bin = {v: [s for s in samples if s["id"] in ids] for v, samples in by_view.items()}
        row: dict[str, Any] = {"label": label, "lo": lo, "hi": hi, "n": len(ids),
                               "median_share": float(np.median([shares[i] for i in ids])) if ids else None,
                               "accuracy": {v: float(np.mean([rule_correct(s) for s in ss])) for v, ss in in_bin.items() if ss},
                               "n_per_view": {v: len(ss) for v, ss in in_bin.items()}, "differences": {}}
        if base in in_bin and in_bin[base]:
            for v, ss in in_bin.items():
                if v != base and ss:
                    d = paired_difference(ss, in_bin[base], records, benchmark, n_boot=n_boot)
                    row["differences"][f"{v}-{base}"] = {k2: d[k2] for k2 in ("n", "difference", "ci95", "statistic")}
        bins.append(row)
    return {"edges": list(edges), "unknown": sum(s is None for s in shares.values()), "bins": bins,
            "share_by_id": {i: (None if s is None else round(s, 6)) for i, s in shares.items()}}


def plot_gap_by_size(table: dict[str, Any], path: Path, title: str = "") -> Path:
    """Two panels against evidence size bins: accuracy per view; paired differences vs full with 95% CIs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bins = table["bins"]
    x = np.arange(len(bins))
    fig = Figure(figsize=(max(8.0, 1.6 * len(bins) + 4), 4.0))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    views = sorted({v for b in bins for v in b["accuracy"]}, key=lambda v: (v != "full", v))
    for v in views:
        ax1.plot(x, [b["accuracy"].get(v, np.nan) for b in bins], marker="o", label=v)
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_ylabel("accuracy")
    ax1.set_title("accuracy per view by evidence size")
    ax1.legend(fontsize=8, loc="center right")
    names = sorted({d for b in bins for d in b["differences"]})
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        rows = [b["differences"].get(name) for b in bins]
        val = np.array([r["difference"] if r else np.nan for r in rows])
        err = np.array([[v - r["ci95"][0], r["ci95"][1] - v] if r else [np.nan, np.nan] for v, r in zip(val, rows, strict=True)]).T
        ax2.bar(x + (k - (len(names) - 1) / 2) * width, val, width, yerr=err, capsize=3, label=name)
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.set_ylabel("paired difference in accuracy")
    ax2.set_title("the gap by evidence size (95% paired bootstrap CI)")
    if names:
        ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks(x, [f"{b['label']}\nn={b['n']}" for b in bins], fontsize=8)
        ax.set_xlabel("evidence box area / image area")
    fig.suptitle(f"{title}  (items without a box: {table['unknown']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
