"""Compare the arms of `vision-opd demo --study` runs with intervals: per arm, the mean and a 95% interval over seeds of
the share of the gap closed and of the crop change, and the same for its difference from a reference arm, paired
by seed (the arms of one seed start from the same checkpoint and draw the same data).

    python scripts/study_compare.py runs/study_neg/study.json [--ref opd] [--arms opd,seqkd,...]

Intervals are Student-t over seeds: mean +- t(0.975, n - 1) * sd / sqrt(n) (t = 4.30 for 3 seeds, 12.71 for 2); with
one seed there is none. They cover the seed-to-seed spread only (each accuracy on 600 items also carries a
binomial standard error of about 0.02, which the spread over seeds already partly holds). A difference whose
interval excludes 0 is marked *.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(xs: list[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95% Student-t interval; None for fewer than 2 values)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, None
    return m, T975.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))


def fmt(mean: float, half: float | None, digits: int = 2, signed: bool = False, mark: bool = False) -> str:
    s = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    if half is None:
        return s
    star = " *" if mark and (mean - half > 0 or mean + half < 0) else ""
    return f"{s} [{mean - half:+.{digits}f}, {mean + half:+.{digits}f}]{star}" if signed else \
        f"{s} [{mean - half:.{digits}f}, {mean + half:.{digits}f}]"


def closed(r: dict) -> float:
    return (r["full_after"] - r["full_before"]) / max(1e-9, r["crop_before"] - r["full_before"])


def crop_change(r: dict) -> float:
    return r["crop_after"] - r["crop_before"]


def compare(runs: list[dict], ref: str, arms: list[str] | None = None) -> str:
    by = {}
    for r in runs:
        by.setdefault(r["name"], {})[r["seed"]] = r
    names = arms or list(by)
    lines = [f"| arm | seeds | share of gap closed | crop change | closed minus {ref}'s (paired) | crop change minus "
             f"{ref}'s (paired) |", "|---|---:|---:|---:|---:|---:|"]
    for name in names:
        if name not in by:
            continue
        rs = by[name]
        seeds = sorted(rs)
        c, d = interval([closed(rs[s]) for s in seeds]), interval([crop_change(rs[s]) for s in seeds])
        paired = [s for s in seeds if s in by.get(ref, {})]
        if name == ref or not paired:
            dc = dd = "-"
        else:
            dc = fmt(*interval([closed(rs[s]) - closed(by[ref][s]) for s in paired]), signed=True, mark=True)
            dd = fmt(*interval([crop_change(rs[s]) - crop_change(by[ref][s]) for s in paired]), 3, signed=True, mark=True)
        lines.append(f"| {name} | {len(seeds)} | {fmt(*c)} | {fmt(*d, 3, signed=True)} | {dc} | {dd} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", nargs="+", help="study.json files (their runs are pooled)")
    ap.add_argument("--ref", default="opd", help="the arm the others are compared with (default: opd)")
    ap.add_argument("--arms", default=None, help="comma-separated arms, in this order (default: all, as they ran)")
    args = ap.parse_args()
    runs = [r for p in args.study for r in json.loads(Path(p).read_text())["runs"]]
    print(compare(runs, args.ref, args.arms.split(",") if args.arms else None))


if __name__ == "__main__":
    main()
