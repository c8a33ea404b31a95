"""Wall time of the `vision-opd` commands that load no model, before and after, side by side in one run.

What it measures: the whole command as a user runs it (a fresh interpreter: the `vision-opd` entry point next to
this Python, else `python -m vision_opd.cli`), from start to its one-line answer, for four commands: --help,
--version, `train --config missing.yaml` and `data validate missing.jsonl` (both missing files: the answer is an
error line, exit 2). Each source tree is put first on PYTHONPATH; the runs alternate between the trees (before,
after, before, ...) so that both see the same machine load; each cell is the best of --repeats runs. The output of
every run is checked (the error line names the missing file), so a tree that fails differently is not timed as fast.

Run (the table in docs/testing.md came from exactly this; the old tree is a checkout of the commit before, e.g.
`git worktree add ../vision-opd-before 7149ac4`):
    python perf/bench_cli.py --before ../vision-opd-before/src --repeats 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "vision-opd --help": (["--help"], 0, "usage: vision-opd"),
    "vision-opd --version": (["--version"], 0, "vision-opd 0."),
    "vision-opd train --config missing.yaml": (["train", "--config", "missing.yaml"], 2, "missing.yaml"),
    "vision-opd data validate missing.jsonl": (["data", "validate", "missing.jsonl"], 2, "missing.jsonl"),
}


def entry_point() -> list[str]:
    script = Path(sys.executable).with_name("vision-opd")
    return [sys.executable, str(script)] if script.is_file() else [sys.executable, "-m", "vision_opd.cli"]


def run_once(src: Path, argv: list[str], rc: int, text: str, cwd: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    p = subprocess.run([*entry_point(), *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    sec = time.perf_counter() - t0
    if p.returncode != rc or text not in p.stdout + p.stderr:
        raise SystemExit(f"{src}: vision-opd {' '.join(argv)} exited {p.returncode} (expected {rc}):\n"
                         f"{(p.stdout + p.stderr)[-1000:]}")
    return sec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, default=None, help="the old source tree (its src/ folder); omitted: only after")
    ap.add_argument("--after", type=Path, default=ROOT / "src", help="the new source tree (default: this checkout's src/)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per command and tree; the best is reported")
    args = ap.parse_args()
    trees = {"after": args.after.resolve()}
    if args.before is not None:
        trees = {"before": args.before.resolve(), **trees}
    cwd = Path(os.environ.get("TMPDIR", "/tmp"))  # missing.yaml / missing.jsonl must not exist there
    best: dict[tuple[str, str], float] = {}
    for name, (argv, rc, text) in COMMANDS.items():
        for _ in range(args.repeats):
            for label, src in trees.items():
                sec = run_once(src, argv, rc, text, cwd)
                best[name, label] = min(best.get((name, label), float("inf")), sec)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"wall time, best of {args.repeats} (s); {os.cpu_count()} CPUs, load average {load:.1f}\n")
    head = "| command | " + " | ".join(trees) + (" | speed-up |" if "before" in trees else " |")
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    for name in COMMANDS:
        cells = [f"{best[name, label]:.2f}" for label in trees]
        ratio = f" | {best[name, 'before'] / best[name, 'after']:.1f}x" if "before" in trees else ""
        print(f"| `{name}` | " + " | ".join(cells) + ratio + " |")


if __name__ == "__main__":
    main()
