"""The Proposal every crop proposer returns, and the sliding-window search over a relevance map.

A relevance map R [h, w] (e.g. relative attention over the image-token grid) is searched with windows
whose sides are fixed fractions of the map's sides (default 1/8, 1/4, 1/2), stride half a window, with
one extra position flush with the right/bottom border so that every cell is covered at every scale.

Window score (the exact rule): the contrast  mean(R inside) - mean(R outside).
- It is comparable across scales: a pure mean favours the smallest window around the single hottest
  cell, a pure mass favours the largest window, while mass / sqrt(area) depends on the map's offset
  (adding a constant to R changes which window wins). The contrast is invariant to adding a constant
  and to scaling R, and on a map that is hot (1) on a rectangle and cold (0) elsewhere it is maximal
  (= 1) exactly at that rectangle: a window inside it has outside mass left over, one around it has
  cold cells inside.
- A window that covers the whole map has no outside; it scores 0 (it carries no localisation).
Ties (equal scores, to 1e-12) go to the first window in the scan order: smaller scales first, then
top-to-bottom, then left-to-right, so a result never depends on floating-point noise across platforms.

Refinement (refine=True, default): the best grid window is then grown or shrunk one cell at a time
on each side while the contrast increases (coordinate ascent, at most `refine_steps` moves), so the box
follows the hot region instead of snapping to the fixed window sizes and strides. It never goes below
the smallest window size: attention maps are heavy-tailed, and a window allowed to shrink to one cell
would lock onto a single outlier token (with high confidence) on a map that has no structure at all.

Confidence: how far the best window stands out, relative to the map's dynamic range,
    confidence = (mean inside - mean outside) / (max R - min R), in [0, 1]
(the two means lie between min R and max R). 1 for a hot rectangle on a cold background, 0 for a
uniform map, small for unstructured noise (the means of many cells regress to the map's mean). When
confidence < `min_confidence` the proposal falls back to the full image (fallback=True).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Box = tuple[float, float, float, float]


@dataclass
class Proposal:
    """A proposed evidence box in pixels of the (EXIF-transposed) image, with how it was found."""

    box: Box  # [x1, y1, x2, y2] in image pixels
    confidence: float  # in [0, 1]
    forward_passes: int  # model forward passes spent (generation: one per generated token)
    relevance: np.ndarray | None = None  # [h, w] relevance map over the image-token grid, if any
    fallback: bool = False  # True: no confident box was found and `box` is the full image
    note: str = ""  # why (e.g. "no box in the output: ..."), for logs and caches
    extra: dict = field(default_factory=dict)  # proposer-specific details (raw text, window, layer)


def full_image_box(width: int, height: int) -> Box:
    return (0.0, 0.0, float(width), float(height))


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes (0 when either has no area)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass(frozen=True)
class WindowConfig:
    fractions: tuple[float, ...] = (1 / 8, 1 / 4, 1 / 2)  # window side / map side, per scale
    refine: bool = True  # grow/shrink the best window's sides cell by cell while the contrast rises
    refine_steps: int = 64
    min_confidence: float = 0.25  # below this, fall back to the full image (uniform noise on 32x48 cells: ~0.19)


class _Integral:
    """Summed-area table: O(1) sums of any grid rectangle."""

    def __init__(self, r_H_W: np.ndarray):
        self.h, self.w = r_H_W.shape
        self.s = np.zeros((self.h + 1, self.w + 1), dtype=np.float64)
        self.s[1:, 1:] = r_H_W.astype(np.float64).cumsum(0).cumsum(1)
        self.total = float(self.s[-1, -1])
        self.n = self.h * self.w

    def rect_sum(self, y0, x0, y1, x1):
        """Sum over rows y0..y1-1 and columns x0..x1-1 (numpy arrays or ints)."""
        s = self.s
        return s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0]

    def contrast(self, y0, x0, y1, x1):
        """mean(inside) - mean(outside); 0 where the window covers the whole map."""
        inside = self.rect_sum(y0, x0, y1, x1)
        area = (np.asarray(y1) - y0) * (np.asarray(x1) - x0)
        out_area = self.n - area
        mean_in = inside / np.maximum(area, 1)
        mean_out = (self.total - inside) / np.maximum(out_area, 1)
        return np.where(out_area > 0, mean_in - mean_out, 0.0)


def _starts(size: int, win: int) -> np.ndarray:
    """Window starts with stride max(1, win // 2), plus one flush with the far border."""
    stride = max(1, win // 2)
    starts = list(range(0, size - win + 1, stride))
    if starts[-1] != size - win:
        starts.append(size - win)
    return np.asarray(starts)


def window_candidates(h: int, w: int, fractions) -> list[tuple[int, int]]:
    """Distinct (window height, window width) in cells, smallest first; at least one cell a side."""
    sizes = []
    for f in sorted(fractions):
        if not 0 < f <= 1:
            raise ValueError(f"window fraction {f} must be in (0, 1]")
        size = (min(h, max(1, round(f * h))), min(w, max(1, round(f * w))))
        if size not in sizes:
            sizes.append(size)
    return sizes


def best_window(r_H_W: np.ndarray, cfg: WindowConfig = WindowConfig()) -> tuple[tuple[int, int, int, int], float, float]:
    """((x0, y0, x1, y1) in grid cells, end-exclusive; best contrast; confidence) of a relevance map."""
    r = np.asarray(r_H_W, dtype=np.float64)
    assert r.ndim == 2 and r.size > 0, f"relevance map must be a non-empty 2-D array, got shape {r.shape}"
    assert np.isfinite(r).all(), "relevance map has NaN/inf values"
    h, w = r.shape
    integ = _Integral(r)
    best, best_score = None, -np.inf
    for wh, ww in window_candidates(h, w, cfg.fractions):
        ys, xs = _starts(h, wh), _starts(w, ww)
        Y0, X0 = np.meshgrid(ys, xs, indexing="ij")  # row-major scan: top-to-bottom, then left-to-right
        scores = integ.contrast(Y0, X0, Y0 + wh, X0 + ww)
        i = int(np.argmax(scores))  # first maximum in scan order
        if scores.flat[i] > best_score + 1e-12:
            best_score = float(scores.flat[i])
            y0, x0 = int(Y0.flat[i]), int(X0.flat[i])
            best = (x0, y0, x0 + ww, y0 + wh)
    if cfg.refine:
        min_h, min_w = window_candidates(h, w, cfg.fractions)[0]
        best, best_score = _refine(integ, best, best_score, cfg.refine_steps, min_h, min_w)
    spread = float(r.max() - r.min())
    confidence = float(np.clip(best_score / spread, 0.0, 1.0)) if spread > 0 else 0.0
    return best, best_score, confidence


def _refine(integ: _Integral, box, score: float, steps: int, min_h: int, min_w: int):
    """Coordinate ascent on the four sides (one cell per move) while the contrast strictly increases,
    never smaller than the smallest window (else it would shrink onto single outlier cells)."""
    x0, y0, x1, y1 = box
    for _ in range(steps):
        moves = [(x0 - 1, y0, x1, y1), (x0 + 1, y0, x1, y1), (x0, y0 - 1, x1, y1), (x0, y0 + 1, x1, y1),
                 (x0, y0, x1 - 1, y1), (x0, y0, x1 + 1, y1), (x0, y0, x1, y1 - 1), (x0, y0, x1, y1 + 1)]
        moves = [m for m in moves if 0 <= m[0] and m[2] <= integ.w and 0 <= m[1] and m[3] <= integ.h
                 and m[2] - m[0] >= min_w and m[3] - m[1] >= min_h and (m[2] - m[0]) * (m[3] - m[1]) < integ.n]
        if not moves:
            break
        scores = [float(integ.contrast(m[1], m[0], m[3], m[2])) for m in moves]
        i = int(np.argmax(scores))
        if scores[i] <= score + 1e-12:
            break
        (x0, y0, x1, y1), score = moves[i], scores[i]
    return (x0, y0, x1, y1), score


def grid_to_pixels(cells: tuple[int, int, int, int], grid_hw: tuple[int, int], image_size: tuple[int, int]) -> Box:
    """Grid cells (x0, y0, x1, y1), end-exclusive, to an image box: the grid covers the whole image."""
    h, w = grid_hw
    W, H = image_size
    x0, y0, x1, y1 = cells
    return (x0 * W / w, y0 * H / h, x1 * W / w, y1 * H / h)


def window_proposal(r_H_W: np.ndarray, image_size: tuple[int, int], cfg: WindowConfig = WindowConfig(), *,
                    forward_passes: int = 0) -> Proposal:
    """The best window of a relevance map as a Proposal in image pixels; the full image below min_confidence.

    `image_size` is (width, height) of the image the map covers.
    """
    r = np.asarray(r_H_W, dtype=np.float64)
    cells, score, conf = best_window(r, cfg)
    extra = {"cells": list(cells), "contrast": score, "grid": list(r.shape)}
    if conf < cfg.min_confidence:
        return Proposal(full_image_box(*image_size), conf, forward_passes, r, fallback=True,
                        note=f"window confidence {conf:.3f} < {cfg.min_confidence}: full image", extra=extra)
    return Proposal(grid_to_pixels(cells, r.shape, image_size), conf, forward_passes, r, extra=extra)
