"""Scoring each prompt once for its G responses (train.share_prompts=true) against every row with its own prompt.

    python perf/bench_scoring.py                                   # the table in docs/performance.md
    python perf/bench_scoring.py --settings prompt --families qwen2_5_vl qwen3_5 --repeats 3

Settings (tiny random-weight models, which never emit EOS: every response has exactly --new-tokens tokens):
  prompt      prompt-dominated: 336 px images (144 image tokens per view, crop and full), P = 2 prompts x G = 8
              samples, 16 new tokens, micro-batches of 8 rows (one whole prompt group each)
  prompt-mb4  the same with micro-batches of 4 rows: each group is split over two micro-batches, so each prompt runs
              twice per view (the sharing follows the micro-batch)
  tiny        the tiny default of configs/tiny_cpu.yaml: 112 px, P = 4 x G = 4, 16 new tokens, micro-batches of 8
Each (setting, family, mode) runs in a fresh process, so its peak RSS is its own; shared and per-row cases
alternate. In a process: `train.vision_opd_step` with the same seed (so the same rollouts), one warm-up step,
then --repeats steps; medians. Columns:
  step s       the whole step (views, rollout, scoring, optimizer)
  scoring s    the step's own sec_teacher + sec_student (teacher forward; student forward, divergence, backward)
  fwd / bwd tok  language-model positions run by the scoring forwards (teacher + student, padding included) /
               by the student's forward with grad (what its backward runs through)
  images       images through the vision tower in scoring (teacher + student)
  saved MB     bytes autograd keeps for the student's backward (its scoring forwards, weights excluded)
  peak RSS MB  the process's peak resident memory
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SETTINGS = {
    "prompt": dict(image=336, prompts=2, samples=8, new_tokens=16, micro_batch=8),
    "prompt-mb4": dict(image=336, prompts=2, samples=8, new_tokens=16, micro_batch=4),
    "tiny": dict(image=112, prompts=4, samples=4, new_tokens=16, micro_batch=8),
}


def run_case(setting: str, family: str, shared: bool, repeats: int, threads: int) -> dict:
    """One (setting, family, mode) in this process: medians of the step's times, counts of one step."""
    from vision_opd.config import load_config
    from vision_opd.data.sources import load_train_records
    from vision_opd.demo.world import write_synthetic
    from vision_opd.models.loading import load_model
    from vision_opd.models.parts import unwrap
    from vision_opd.training import loop as T

    torch.set_num_threads(threads)
    s = SETTINGS[setting]
    tmp = Path(tempfile.mkdtemp())
    write_synthetic(tmp, s["prompts"], seed=0, name="train.jsonl")
    cfg = load_config(None, [f"data.train_file={tmp / 'train.jsonl'}", f"model.name_or_path=tiny:{family}",
                             f"model.tiny_image_size={s['image']}", f"views.teacher_pixels={s['image'] ** 2}",
                             f"train.prompts_per_step={s['prompts']}", f"rollout.samples_per_prompt={s['samples']}",
                             f"rollout.max_new_tokens={s['new_tokens']}", f"train.micro_batch_size={s['micro_batch']}",
                             "teacher.mode=ema", "train.progress=false", f"train.share_prompts={str(shared).lower()}"])
    device = torch.device("cpu")
    T.seed_everything(0)
    model, proc = load_model(cfg.model, seed=0, device=device)
    records, _ = load_train_records(cfg.data, cfg.views)
    teacher = T.Teacher(model, "ema", cfg.teacher.ema_rate)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.lr_lambda(cfg))
    suppress = T.vision_token_ids(model, proc)

    counts = {"fwd": 0, "bwd": 0, "images": 0}
    saved = {"on": False, "bytes": 0, "seen": set()}
    params = {p.data_ptr() for p in model.parameters()}
    scoring = {"on": False}

    def count_tokens(module, args, kwargs):
        if scoring["on"]:
            ids = kwargs.get("input") if args == () else args[0]
            counts["fwd"] += ids.numel()
            counts["bwd"] += ids.numel() if torch.is_grad_enabled() else 0

    def count_images(module, args, kwargs):
        if scoring["on"]:
            grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            counts["images"] += 0 if grid is None else grid.shape[0]

    for m in (unwrap(model), teacher.module()):
        m.model.get_input_embeddings().register_forward_pre_hook(count_tokens, with_kwargs=True)
        m.model.visual.register_forward_pre_hook(count_images, with_kwargs=True)

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if saved["on"] and ptr not in params and ptr not in saved["seen"]:
            saved["seen"].add(ptr)
            saved["bytes"] += t.untyped_storage().nbytes()
        return t

    real = T.score_responses

    def counted(*args, **kwargs):  # the step calls this for every view and micro-batch
        scoring["on"] = True
        try:
            if saved["on"] and torch.is_grad_enabled():
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    return real(*args, **kwargs)
            return real(*args, **kwargs)
        finally:
            scoring["on"] = False

    T.score_responses = counted

    def step() -> dict:
        torch.manual_seed(0)
        return T.vision_opd_step(cfg, T.StepContext(model, teacher, proc, opt, sched, suppress, device), records).metrics

    step()  # warm-up
    for k in counts:
        counts[k] = 0
    saved["on"] = True
    first = step()  # counts and saved bytes of one step (not timed: the saved-tensor hooks cost time)
    saved["on"] = False
    per_step = dict(counts)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        m = step()
        times.append((time.perf_counter() - t0, m["sec_teacher"] + m["sec_student"], m["sec_teacher"], m["sec_student"]))
    med = [statistics.median(x) for x in zip(*times, strict=True)]
    return {"setting": setting, "family": family, "shared": shared, "step": med[0], "scoring": med[1], "teacher": med[2],
            "student": med[3], **per_step, "saved_mb": saved["bytes"] / 2**20, "tokens": first["tokens"],
            "loss": first["loss"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["prompt", "prompt-mb4", "tiny"], choices=sorted(SETTINGS))
    ap.add_argument("--families", nargs="+", default=["qwen2_5_vl"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings on a shared machine)")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case, print its JSON
    args = ap.parse_args()
    if args.case:
        setting, family, shared = args.case.split(",")
        print("CASE " + json.dumps(run_case(setting, family, shared == "1", args.repeats, args.threads)))
        return

    rows = []
    for setting in args.settings:
        for family in args.families:
            for shared in (0, 1):
                cmd = [sys.executable, __file__, "--case", f"{setting},{family},{shared}", "--repeats", str(args.repeats),
                       "--threads", str(args.threads)]
                env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
                rows.append(json.loads(next(x for x in out.splitlines() if x.startswith("CASE "))[5:]))
                print(f"done {setting} {family} shared={shared} (load average {os.getloadavg()[0]:.1f})", file=sys.stderr)
    print(f"torch threads {args.threads}; medians of {args.repeats} steps; load average at the end "
          f"{os.getloadavg()[0]:.1f}")
    print("| setting | family | scoring | step s | scoring s (teacher + student) | fwd tok | bwd tok | images | saved MB "
          "| peak RSS MB |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {r['family']} | {'shared' if r['shared'] else 'per row'} | {r['step']:.3f} | "
              f"{r['scoring']:.3f} ({r['teacher']:.3f} + {r['student']:.3f}) | {r['fwd']} | {r['bwd']} | {r['images']} | "
              f"{r['saved_mb']:.1f} | {r['peak_rss_mb']:.0f} |")
    print("\nper row / shared:")
    print("| setting | family | step time | scoring time | fwd tokens | bwd tokens | images | saved | peak RSS | same loss |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|:---:|")
    for a, b in zip(rows[::2], rows[1::2], strict=True):
        same = abs(a["loss"] - b["loss"]) <= 1e-5 * max(1.0, abs(a["loss"])) and a["tokens"] == b["tokens"]
        print(f"| {a['setting']} | {a['family']} | {a['step'] / b['step']:.2f}x | **{a['scoring'] / b['scoring']:.2f}x** | "
              f"{a['fwd'] / b['fwd']:.2f}x | {a['bwd'] / b['bwd']:.2f}x | {a['images'] / b['images']:.2f}x | "
              f"{a['saved_mb'] / b['saved_mb']:.2f}x | {a['peak_rss_mb'] / b['peak_rss_mb']:.2f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
