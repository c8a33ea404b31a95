"""Rollouts with HF generate vs vLLM on the same model and work, the weight-sync time, and a training step with each.

    make setup-vllm && OMP_NUM_THREADS=1 .venv-vllm/bin/python perf/bench_rollout.py          # the table in docs/performance.md
    OMP_NUM_THREADS=1 .venv-vllm/bin/python perf/bench_rollout.py --sizes tiny --dtypes float32 --step-sizes tiny  # quick

Models: random-weight Qwen2-VL built in code (`tiny`: the tiny:qwen2_vl family, ~0.2M parameters; `20m` and `100m`:
the same architecture widened), 168 px synthetic images (36 image tokens). Work: --prompts prompts x 1 sample x
--tokens tokens, sampled at temperature 1, with EOS made impossible in both engines, so both generate exactly the
same number of tokens. Each engine gets one warm-up call first (vLLM's first generate is slower). The sync is a full
weight push + cache reset. The step is `train.vision_opd_step` (P=8 prompts x G=4 samples x --tokens tokens, fp32)
with each engine. 1 thread (set OMP_NUM_THREADS=1; vLLM fixes its thread count at start).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vision_opd.config import VLLMConfig, load_config  # noqa: E402
from vision_opd.data.validate import read_records  # noqa: E402
from vision_opd.data.views import encode_views, student_view  # noqa: E402
from vision_opd.demo.world import write_synthetic  # noqa: E402
from vision_opd.models.loading import vision_token_ids  # noqa: E402
from vision_opd.models.tiny import build_tiny  # noqa: E402
from vision_opd.rollout import Decoding, HFEngine  # noqa: E402
from vision_opd.rollout.vllm_engine import VLLMEngine  # noqa: E402

SIZES = {"tiny": {}, "20m": dict(hidden=512, layers=8, vision_hidden=128, head_dim=64),
         "100m": dict(hidden=1024, layers=10, vision_hidden=256, head_dim=64)}
SIDE = 168


def build(size: str, dtype: torch.dtype):
    model, proc = build_tiny("qwen2_vl", image_size=SIDE, **SIZES[size])
    return model.to(dtype).eval(), proc


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_rollout(size: str, dtype_name: str, records, prompts: int, tokens: int) -> dict:
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    model, proc = build(size, dtype)
    banned = vision_token_ids(model, proc) + [int(model.generation_config.eos_token_id)]  # no EOS: same work for both
    d = Decoding(samples_per_prompt=1, do_sample=True, temperature=1.0, max_new_tokens=tokens, suppressed_ids=tuple(banned))
    views = [student_view(records[i % len(records)]) for i in range(prompts)]
    inputs = encode_views(proc, views)
    hf = HFEngine(proc, d)
    hf.sample(model, encode_views(proc, views[:2]))  # warm-up
    hf_s, ro = timed(lambda: hf.sample(model, inputs))
    assert int(ro.response_mask_B_T.sum()) == prompts * tokens
    build_s, engine = timed(lambda: VLLMEngine(model, proc, d, VLLMConfig(dtype=dtype_name), seed=0))
    try:
        engine.sample(model, encode_views(proc, views[:2]), views[:2])  # warm-up
        v_s, ro_v = timed(lambda: engine.sample(model, inputs, views))
        assert int(ro_v.response_mask_B_T.sum()) == prompts * tokens
        sync_s = min(engine.sync(model, full=True) for _ in range(3))
    finally:
        engine.close()
    n = sum(p.numel() for p in model.parameters())
    return {"size": size, "params": n, "dtype": dtype_name, "hf_s": hf_s, "vllm_s": v_s, "build_s": build_s, "sync_s": sync_s}


def bench_step(size: str, synth: Path, tokens: int) -> dict:
    from vision_opd.data.sources import load_train_records
    from vision_opd.rollout import make_engine
    from vision_opd.training import loop as T

    out = {"size": size}
    for engine_name in ("hf", "vllm"):
        cfg = load_config(None, [f"data.train_file={synth / 'train.jsonl'}", "train.out_dir=/tmp/bench_rollout_run",
                                 f"model.tiny_image_size={SIDE}", "train.prompts_per_step=8", "rollout.samples_per_prompt=4",
                                 f"rollout.max_new_tokens={tokens}", "train.micro_batch_size=8", "views.teacher_pixels=12544",
                                 f"rollout.engine={engine_name}", "teacher.mode=ema"])
        T.seed_everything(0)
        model, proc = build(size, torch.float32)
        records, _ = load_train_records(cfg.data, cfg.views)
        suppress = vision_token_ids(model, proc)
        teacher = T.Teacher(model, cfg.teacher.mode, cfg.teacher.ema_rate)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        engine = make_engine(cfg, model, proc, suppress, device="cpu")
        try:
            steps = [T.vision_opd_step(cfg, T.StepContext(model, teacher, proc, opt, sched, suppress, torch.device("cpu"), engine), records[8 * i:8 * i + 8]).metrics for i in range(2)]
        finally:
            engine.close()
        m = steps[-1]  # the second step (the first includes warm-up)
        out[engine_name] = {k: m[k] for k in ("sec_step", "sec_rollout", "sec_sync", "tokens")}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,20m,100m", help="sizes for the rollout comparison ('' = none)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--step-sizes", default="tiny,20m", help="sizes for the training-step comparison ('' = none)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    synth = Path(tempfile.mkdtemp(prefix="bench_rollout_"))
    write_synthetic(synth, 32, seed=0, name="train.jsonl")
    records = read_records(synth / "train.jsonl")
    rows = [bench_rollout(s, d, records, args.prompts, args.tokens) for s in args.sizes.split(",") if s
            for d in args.dtypes.split(",")]
    work = args.prompts * args.tokens
    print(f"\nload average at the end of the rollout runs: {os.getloadavg()[0]:.1f}")
    if rows:
        print(f"\nrollout: {args.prompts} prompts x {args.tokens} tokens, sampled, 1 thread (seconds; ratio = HF / vLLM)")
        print("| model | params | dtype | HF generate s | vLLM s | vLLM / HF speed-up | HF tok/s | vLLM tok/s | vLLM build s | sync s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['dtype']} | {r['hf_s']:.2f} | {r['vllm_s']:.2f} | "
              f"{r['hf_s'] / r['vllm_s']:.2f}x | {work / r['hf_s']:.0f} | {work / r['vllm_s']:.0f} | {r['build_s']:.1f} | "
              f"{r['sync_s']:.3f} |")
    steps = [bench_step(s, synth, args.tokens) for s in args.step_sizes.split(",") if s]
    if steps:
        print(f"\nload average at the end of the step runs: {os.getloadavg()[0]:.1f}")
        print(f"\ntraining step: 8 prompts x 4 samples x {args.tokens} tokens, fp32, 1 thread (seconds, second step)")
        print("| model | engine | step s | rollout s | sync s | sync share of step | step speed-up vs HF |")
        print("|---|---|---|---|---|---|---|")
        for s in steps:
            for e in ("hf", "vllm"):
                m = s[e]
                print(f"| {s['size']} | {e} | {m['sec_step']:.2f} | {m['sec_rollout']:.2f} | {m['sec_sync']:.3f} | "
                      f"{m['sec_sync'] / m['sec_step']:.1%} | {s['hf']['sec_step'] / m['sec_step']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
