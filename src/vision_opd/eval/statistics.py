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
