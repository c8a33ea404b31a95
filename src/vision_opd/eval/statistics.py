"""Confidence intervals: percentile bootstrap of a mean, paired differences (the same items resampled for both)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _bootstrap_means(x_N: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = x_N.shape[0]
    rows = max(1, 4_000_000 // n)  # bound the index matrix to ~32 MB
    out = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = x_N[idx].mean(axis=1)
    return out


def _check(values: Sequence[float], n_boot: int, level: float, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name}: need a non-empty 1-D list of numbers, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: values contain NaN or infinity")
    if not 0 < level < 1:
        raise ValueError(f"{name}: level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"{name}: n_boot must be >= 1, got {n_boot}")
    return x


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of `values` (resampling items)."""
    x = _check(values, n_boot, level, "bootstrap_ci")
    means = _bootstrap_means(x, n_boot, seed)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Bootstrap CI of mean(a) - mean(b) for paired per-item values (the same items resampled in both)."""
    xa = _check(a, n_boot, level, "paired_bootstrap_ci")
    xb = _check(b, n_boot, level, "paired_bootstrap_ci")
    if xa.shape != xb.shape:
        raise ValueError(f"paired_bootstrap_ci: a and b must have the same length ({xa.size} != {xb.size})")
    return bootstrap_ci(xa - xb, n_boot=n_boot, seed=seed, level=level)


def _codes(labels: Sequence | None, n: int) -> tuple[np.ndarray, int]:
    if labels is None:
        return np.zeros(n, dtype=np.int64), 1
    if len(labels) != n:
        raise ValueError(f"labels: {len(labels)} labels for {n} values")
    index: dict = {}
    codes = np.array([index.setdefault(x, len(index)) for x in labels], dtype=np.int64)
    return codes, len(index)


def stratified_mean(values: Sequence[float], strata: Sequence | None = None) -> float:
    """The mean over strata of each stratum's mean (strata None: the plain mean). HR-Bench's official accuracy is
    this with its cycles as strata."""
    x = _check(values, 1, 0.5, "stratified_mean")
    s, n_s = _codes(strata, x.size)
    return float(np.mean(np.bincount(s, weights=x, minlength=n_s) / np.bincount(s, minlength=n_s)))


def statistic_ci(values: Sequence[float], strata: Sequence | None = None, clusters: Sequence | None = None, *,
                 minus: Sequence[float] | None = None, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of `stratified_mean(values, strata)` (minus the same statistic of the paired values
    `minus`), resampling whole clusters (items sharing a cluster label are drawn together; None: every item alone).

    Clusters are resampled within blocks of clusters that touch the same strata: a cluster inside one stratum is
    redrawn from its stratum (a stratified bootstrap: each stratum keeps its size), while clusters spanning every
    stratum (the four option rotations of one HR-Bench question, one per cycle) are redrawn from all of them. With
    no strata and no clusters this is `bootstrap_ci` (or `paired_bootstrap_ci` with `minus`), draw for draw.
    """
    x = _check(values, n_boot, level, "statistic_ci")
    if minus is not None:
        y = _check(minus, n_boot, level, "statistic_ci")
        if y.shape != x.shape:
            raise ValueError(f"statistic_ci: values and minus must have the same length ({x.size} != {y.size})")
    s, n_s = _codes(strata, x.size)
    c, n_c = _codes(clusters, x.size) if clusters is not None else (np.arange(x.size), x.size)
    cell = c * n_s + s
    n_KS = np.bincount(cell, minlength=n_c * n_s).reshape(n_c, n_s).astype(np.float64)
    hits = [np.bincount(cell, weights=v, minlength=n_c * n_s).reshape(n_c, n_s) for v in ([x] if minus is None else [x, y])]
    signature = [tuple(np.flatnonzero(row)) for row in n_KS]
    blocks = [np.array([k for k in range(n_c) if signature[k] == sig]) for sig in dict.fromkeys(signature)]
    rng = np.random.default_rng(seed)
    rows = max(1, 4_000_000 // n_c)
    out = np.empty(n_boot)
    with np.errstate(invalid="ignore", divide="ignore"):
        for start in range(0, n_boot, rows):
            stop = min(n_boot, start + rows)
            draws = np.concatenate([b[rng.integers(0, b.size, size=(stop - start, b.size))] for b in blocks], axis=1)
            counts_BK = np.stack([np.bincount(d, minlength=n_c) for d in draws]).astype(np.float64)
            total_BS = counts_BK @ n_KS
            stats = [np.nanmean((counts_BK @ h) / total_BS, axis=1) for h in hits]
            out[start:stop] = stats[0] - stats[1] if minus is not None else stats[0]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(out, [tail, 100 - tail])
    return float(lo), float(hi)
