"""How long `vision-opd report` takes on large folders, and how big the page is.

    python perf/bench_report.py            # the table in docs/performance.md ("The run report")
    python perf/bench_report.py --quick    # smaller folders

Builds synthetic output folders the way the tool writes them (metrics.jsonl one line a step, samples.jsonl 4 rows
every 10 steps with per-token values, an eval folder's samples.jsonl, records with real images) and times
`build_report` on each, in one process (the first build also pays for importing matplotlib, reported apart).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image

from vision_opd.demo.world import write_synthetic
from vision_opd.report import Limits, build_report


def training_folder(root: Path, steps: int, tokens: int, data: Path) -> Path:
    run = root / f"run_{steps}_{tokens}"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"train_file": str(data)}, "rollout": {"max_new_tokens": tokens},
                                                     "train": {"steps": steps, "sample_every": 10}}))
    rng = random.Random(0)
    ids = [json.loads(x)["id"] for x in data.read_text().splitlines()]
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "loss": rng.random(), "kl": rng.random(), "top1_agree": rng.random(),
                                "response_len": tokens * rng.random(), "response_len_max": tokens, "truncation_rate": 0.1,
                                "grad_norm": rng.random(), "lr": 1e-5, "skipped": 0, "collapse": "", "sec_step": 1.0,
                                "sec_rollout": 0.5, "sec_teacher": 0.2, "sec_student": 0.3}) + "\n")
    with open(run / "samples.jsonl", "w") as f:
        for s in range(10, steps + 1, 10):
            rid = ids[s % len(ids)]
            for _ in range(4):
                kl = [round(rng.random(), 5) for _ in range(tokens)]
                lps = [round(-3 * rng.random(), 5) for _ in range(tokens)]
                f.write(json.dumps({"step": s, "id": rid, "response": "x" * tokens, "tokens": ["tok"] * tokens,
                                    "token_kl": kl, "student_logprob": lps,
                                    "teacher_logprob": [round(v - rng.random(), 5) for v in lps]}) + "\n")
    return run


def eval_folder(root: Path, n: int, data: Path) -> Path:
    out = root / f"eval_{n}_{data.parent.name}"
    out.mkdir()
    ids = [json.loads(x)["id"] for x in data.read_text().splitlines()]
    rng = random.Random(1)
    with open(out / "samples.jsonl", "w") as f:
        for i in range(n):
            ok = rng.random() < 0.4
            f.write(json.dumps({"id": ids[i % len(ids)], "view": "full", "prompt": "q",
                                "response": "A", "extracted": "A" if ok else "B", "gold": "A", "correct": ok,
                                "category": "c", "response_tokens": 3, "truncated": False, "seconds": 0.01}) + "\n")
    (out / "results.json").write_text(json.dumps({"n": n, "accuracy": 0.4, "accuracy_ci95": [0.3, 0.5]}))
    (out / "settings.json").write_text(json.dumps({"benchmark": "jsonl", "dataset": {"path": str(data)}}))
    return out


def photo_records(root: Path, n: int, side: tuple[int, int]) -> Path:
    """Records whose images are large JPEGs of `side` pixels (textured, about 1-2 MB each), for the thumbnail cost."""
    d = root / f"photos_{side[0]}"
    (d / "images").mkdir(parents=True)
    texture = Image.effect_noise((side[0] // 8, side[1] // 8), 60).convert("RGB").resize(side)
    rows = []
    for i in range(n):
        texture.rotate(i * 7).save(d / "images" / f"p{i}.jpg", quality=85)
        rows.append({"id": f"p{i}", "image": f"images/p{i}.jpg", "question": "q?", "options": ["a", "b"], "answer": "A",
                     "box": [100, 100, 300, 260]})
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "records.jsonl"


def timed(path: Path, limits: Limits = Limits()) -> tuple[float, float]:
    t0 = time.perf_counter()
    out = build_report(path, path / "report.html", limits)
    return time.perf_counter() - t0, out.stat().st_size / 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth = write_synthetic(root / "synth", 64, seed=0)
        photos = photo_records(root, 48, (4000, 3000))
        t0 = time.perf_counter()
        import matplotlib.backends.backend_svg  # noqa: F401  (what the first page pays once)

        print(f"load average {os.getloadavg()[0]:.1f}; import matplotlib: {time.perf_counter() - t0:.2f} s\n")
        cases = [("training", training_folder(root, 1000, 16, synth), "1,000 steps, 16-token rollouts")]
        if not a.quick:
            cases += [("training", training_folder(root, 20000, 16, synth), "20,000 steps, 16-token rollouts"),
                      ("training", training_folder(root, 20000, 1024, synth), "20,000 steps, 1,024-token rollouts")]
        cases += [("eval", eval_folder(root, 1000, synth), "1,000 items, 168 px images")]
        if not a.quick:
            cases += [("eval", eval_folder(root, 20000, synth), "20,000 items, 168 px images"),
                      ("eval", eval_folder(root, 1000, photos), "1,000 items, 4000 x 3000 JPEGs")]
        print("| folder | size | metrics / samples on disk | build (s) | page (MB) |")
        print("|---|---|---:|---:|---:|")
        for kind, path, what in cases:
            disk = sum(f.stat().st_size for f in path.glob("*.jsonl")) / 1e6
            seconds, mb = timed(path)
            print(f"| {kind} | {what} | {disk:.1f} MB | {seconds:.2f} | {mb:.2f} |")


if __name__ == "__main__":
    main()
