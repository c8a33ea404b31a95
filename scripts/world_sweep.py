"""Pre-train the demo's tiny VLM on several synthetic-world variants in parallel and read each one per question type.

Used once on the lent GPU machine (docs/demo.md M21): 16 processes sharing one GPU ran only ~1.4 steps/s each, too
slow to reach the plateau in the time lent; on a many-core CPU machine run it with --device cpu.

    python scripts/world_sweep.py --out runs/sweep --budget 240 --device cpu --workers 2      # here (slow)
    python scripts/world_sweep.py --out $OUT --budget 240 --device cuda --workers 16          # a GPU machine

Each variant = (question types, easy_share, target size, seed). After `--budget` seconds of pre-training
(`vision_opd.demo.pretrain.pretrain`, patience off) every checkpoint is read on `--n-eval` fresh VAL items of its
world (never test), per question type, in three regimes: hard full image, evidence crop, easy full image (the
labelled full-image regime). The question the sweep answers: in which world does the labelled data teach the
model to read every question type in a full image (easy full high) while the hard full image keeps a gap?
Writes sweep.json (one row per variant) and checkpoints_s<seed>.tar.gz (every variant's model/ and curve).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tarfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

VARIANTS = [  # name, question types, easy_share, target size
    ("cds_e30", ("colour", "digit", "shape"), 0.3, 20),
    ("cds_e50", ("colour", "digit", "shape"), 0.5, 20),
    ("cod_e30", ("colour", "dot", "digit"), 0.3, 20),
    ("cod_e50", ("colour", "dot", "digit"), 0.5, 20),
    ("cos_e30", ("colour", "dot", "shape"), 0.3, 20),
    ("cos_e50", ("colour", "dot", "shape"), 0.5, 20),
    ("cdso_e30", ("colour", "digit", "shape", "dot"), 0.3, 20),
    ("cod_e30_t22", ("colour", "dot", "digit"), 0.3, 22),
]


def run_one(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from vision_opd.demo.world import WorldConfig
    from vision_opd.data.views import ViewConfig, student_view, teacher_view
    from vision_opd.demo.accuracy import accuracy
    from vision_opd.demo.pretrain import eval_split, pretrain
    from vision_opd.demo.pretrain_config import PretrainConfig

    out = Path(job["out"])
    t0 = time.time()
    try:
        world = WorldConfig(question_types=tuple(job["types"]), target_size=job["target"])
        cfg = PretrainConfig(world=world, easy_share=job["easy"], seed=job["seed"], time_budget_s=job["budget"],
                             max_steps=100_000, eval_every=job["eval_every"], patience=10_000, n_val=96, device=job["device"])
        s = pretrain(out, cfg, progress=False)
        from vision_opd.demo.pretrain import load_demo_model

        model, proc = load_demo_model(out / "model")
        model.to(job["device"])
        views = ViewConfig()
        hard = eval_split(out / "eval", "val", job["n_eval"], world)
        easy = eval_split(out / "eval_easy", "val", job["n_eval"], world.easy())
        row = {"steps": s["steps"], "train_seconds": s["seconds"]}
        for name, recs, fn in (("hard_full", hard, lambda r: student_view(r, views)), ("crop", hard, lambda r: teacher_view(r, views)),
                               ("easy_full", easy, lambda r: student_view(r, views))):
            a = accuracy(model, proc, recs, fn, max_new_tokens=8)
            row[name] = a["accuracy"]
            row[name + "_per_type"] = a["per_category"]
        row["curve"] = s["curve"]
        return {**{k: job[k] for k in ("name", "types", "easy", "target", "seed")}, **row, "seconds": round(time.time() - t0, 1)}
    except Exception:  # noqa: BLE001 - a failed variant is reported, the sweep goes on
        return {"name": job["name"], "seed": job["seed"], "error": traceback.format_exc()[-2000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget", type=float, default=240, help="pre-training seconds per variant")
    ap.add_argument("--deadline", type=float, default=0, help="stop waiting after this many seconds (0 = none)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--only", nargs="*", default=None, help="variant names (default: all)")
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=250)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [dict(name=n, types=t, easy=e, target=tg, seed=sd, budget=args.budget, device=args.device, n_eval=args.n_eval,
                 eval_every=args.eval_every, out=str(out / "variants" / f"{n}_s{sd}"))
            for sd in args.seeds for n, t, e, tg in VARIANTS if not args.only or n in args.only]
    t0 = time.time()
    rows = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers) as pool:
        pending = [pool.apply_async(run_one, (j,)) for j in jobs]
        for p, j in zip(pending, jobs):
            left = (args.deadline - (time.time() - t0)) if args.deadline else None
            try:
                r = p.get(timeout=max(1.0, left) if left is not None else None)
            except mp.TimeoutError:
                r = {"name": j["name"], "seed": j["seed"], "error": "deadline"}
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
            (out / "sweep.json").write_text(json.dumps(rows, indent=1))
        pool.terminate()
    for sd in args.seeds:  # one archive per seed (each stays under ~10 MB)
        with tarfile.open(out / f"checkpoints_s{sd}.tar.gz", "w:gz") as tar:
            for j in jobs:
                v = Path(j["out"])
                if j["seed"] == sd and (v / "model" / "config.json").exists():
                    tar.add(v / "model", arcname=f"{v.name}/model")
    print(f"sweep done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
