"""Batched vs one-at-a-time greedy evaluation on the tiny model, side by side in one run (CPU).

What it measures: the whole evaluation path `vision_opd.eval.samples.generate_samples` (build the view,
chat template + processor, left-padded HF generate with vision tokens suppressed, decode, score) over
the same --items synthetic items, once per --batch-sizes value, on a tiny random Qwen2.5-VL
(`build_tiny`, 112 px pixel budget = 16 image tokens), greedy, --max-new-tokens tokens. A random model
rarely emits EOS, so every response runs to max_new_tokens: both sides do the same work. One warm-up
batch runs first; each batch size is then timed --repeats times and the best time is reported. The
batched rows must give the same answers as batch size 1 (checked; left padding).

Run (the table in docs/eval.md came from exactly this):
    python perf/bench_eval.py --items 48 --batch-sizes 1 8 16 --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--family", default="qwen2_5_vl")
    ap.add_argument("--repeats", type=int, default=2, help="time each batch size this often; report the best")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from vision_opd.data.validate import read_records
    from vision_opd.demo.world import write_synthetic
    from vision_opd.eval.hf_backend import HFGenerator
    from vision_opd.eval.samples import generate_samples
    from vision_opd.models.tiny import build_tiny

    model, processor = build_tiny(args.family)
    gen = HFGenerator(model, processor, max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as d:
        records = read_records(write_synthetic(d, args.items, seed=11))
        generate_samples(gen, records[: max(args.batch_sizes)], ["full"], batch_size=max(args.batch_sizes))  # warm-up
        rows, answers = [], {}
        for bs in args.batch_sizes:
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                samples = generate_samples(gen, records, ["full"], batch_size=bs)["full"]
                best = min(best, time.perf_counter() - t0)
            answers[bs] = [s["response"] for s in samples]
            rows.append((bs, best))
    base = dict(rows)[args.batch_sizes[0]]
    print(f"tiny {args.family}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{args.max_new_tokens} new tokens, torch threads {torch.get_num_threads()}\n")
    print(f"| items | batch size | seconds | items/s | speed-up vs batch {args.batch_sizes[0]} | same answers |")
    print("|---:|---:|---:|---:|---:|:---:|")
    for bs, sec in rows:
        same = answers[bs] == answers[args.batch_sizes[0]]
        print(f"| {args.items} | {bs} | {sec:.2f} | {args.items / sec:.1f} | {base / sec:.1f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
