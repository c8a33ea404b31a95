"""Real-size GPU check: a Qwen2.5-VL-3B/7B-sized model with random weights runs Vision-OPD steps in bf16.

    bash perf/gpu_check.sh                         # the runs of docs/performance.md (one 80 GB GPU)
    python perf/gpu_check.py --grad-ckpt           # on a GPU machine: 3B config, bf16 weights, 5 steps
    python perf/gpu_check.py --size 7b --lora 64 --grad-ckpt --prompts 4 --samples 8 --micro-batch 4
    python perf/gpu_check.py --size small --steps 2 --device cpu   # a shrunk config, to check the script here
    python perf/gpu_check.py --grad-ckpt --prompts 2 --samples 8 --image-side 896 --share both   # shared vs per row
    python perf/gpu_check.py --grad-ckpt --engine vllm             # the same step with vLLM rollouts (pip install vllm)

No weights can be downloaded, so the model is the real architecture (Qwen2.5-VL-3B: 36 layers, hidden 2048,
vocabulary 151,936, 32-layer vision tower) built from its config with random weights; the offline tokenizer of
models/tiny.py drives it. A random model never emits EOS, so every response runs to --new-tokens (the worst case
for memory). Prints seconds per step (and per phase), response tokens per second, and peak GPU memory.
`--share both` runs the same steps twice, every response row with its own prompt and then each prompt once for
its G responses (`train.share_prompts`), and prints both with their ratios (scoring = teacher + student seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vision_opd.config import load_config  # noqa: E402
from vision_opd.data.sources import load_train_records  # noqa: E402
from vision_opd.demo.world import WorldConfig, write_synthetic  # noqa: E402
from vision_opd.models.loading import set_trainable  # noqa: E402
from vision_opd.models.tiny import SPECIAL_TOKENS, build_processor  # noqa: E402
from vision_opd.rollout import make_engine  # noqa: E402
from vision_opd.training import loop as T  # noqa: E402

SIZES = {  # Qwen2.5-VL-3B/7B-Instruct's published configs; "small" for a CPU smoke run
    "3b": dict(hidden=2048, layers=36, heads=16, kv=2, inter=11008, v_depth=32, v_hidden=1280, v_heads=16, v_inter=3420,
               vocab=151936, tied=True),
    "7b": dict(hidden=3584, layers=28, heads=28, kv=4, inter=18944, v_depth=32, v_hidden=1280, v_heads=16, v_inter=3420,
               vocab=152064, tied=False),
    "small": dict(hidden=128, layers=2, heads=4, kv=2, inter=256, v_depth=2, v_hidden=64, v_heads=2, v_inter=128, vocab=151936,
                  tied=True),
}


def build(size: str, image_side: int, dtype: torch.dtype, device: str):
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    s = SIZES[size]
    proc = build_processor("qwen2_5_vl", image_size=image_side)
    ids = {t: proc.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = s["hidden"] // s["heads"]
    third = head_dim // 2 // 4
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"],
                         num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv"],
                         max_position_embeddings=32768, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"],
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": [head_dim // 2 - 2 * (head_dim // 2 * 3 // 8), head_dim // 2 * 3 // 8,
                                                            head_dim // 2 * 3 // 8]}),
        vision_config=dict(depth=s["v_depth"], hidden_size=s["v_hidden"], intermediate_size=s["v_inter"], num_heads=s["v_heads"],
                           out_hidden_size=s["hidden"], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, fullatt_block_indexes=[i for i in (7, 15, 23, 31) if i < s["v_depth"]] or [s["v_depth"] - 1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=s["tied"])
    del third
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(cfg, dtype=dtype)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="3b")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--image-side", type=int, default=448, help="pixel budget side (448 -> 256 image tokens)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--master", choices=["fp32", "bf16"], default="bf16",
                    help="bf16: bf16 weights (fits one 80 GB GPU at 3B with an EMA teacher); fp32: fp32 master "
                         "weights + bf16 autocast (the recipe's precision; 3B full fine-tuning needs > 80 GB)")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank (0 = full fine-tuning); the vision tower is then frozen")
    ap.add_argument("--teacher", choices=["ema", "frozen", "live"], default="ema")
    ap.add_argument("--share", choices=["on", "off", "both"], default="on",
                    help="train.share_prompts: on (the default), off (every row with its own prompt), both (side by side)")
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="rollout engine (rollout.engine)")
    ap.add_argument("--vllm-memory", type=float, default=0.3, help="vllm.gpu_memory_utilization (share of the GPU for vLLM)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp())
    write_synthetic(tmp, args.prompts * args.steps, seed=0, cfg=WorldConfig(), name="train.jsonl")
    over = [f"data.train_file={tmp / 'train.jsonl'}", f"train.prompts_per_step={args.prompts}",
            f"rollout.samples_per_prompt={args.samples}", f"rollout.max_new_tokens={args.new_tokens}",
            f"train.micro_batch_size={args.micro_batch}", f"views.teacher_pixels={args.image_side ** 2}",
            f"teacher.mode={args.teacher}", "loss.kind=jsd", f"model.gradient_checkpointing={args.grad_ckpt}",
            f"model.lora_r={args.lora}", f"model.lora_alpha={2 * args.lora}", f"model.freeze_vision={bool(args.lora)}", "optim.lr=1e-6", "train.progress=false",
            f"train.mixed_precision={'bf16' if args.master == 'fp32' and args.device != 'cpu' else 'fp32'}",
            f"rollout.engine={args.engine}", f"vllm.gpu_memory_utilization={args.vllm_memory}",
            f"vllm.max_model_len={(args.image_side // 28) ** 2 + args.new_tokens + 256}"]
    cfg = load_config(None, over)
    device = torch.device(args.device)
    model, proc = build(args.size, args.image_side, torch.float32 if args.master == "fp32" else torch.bfloat16, args.device)
    n_params = sum(p.numel() for p in model.parameters())
    records, _ = load_train_records(cfg.data, cfg.views)
    suppress = T.vision_token_ids(model, proc)
    if args.lora:  # the same order as train(): adapter, teacher (initial weights), then trainable parameters
        from vision_opd.models.lora import apply_lora

        model = apply_lora(model, args.lora, 2 * args.lora)
    teacher = T.Teacher(model, args.teacher, 0.05)
    params = set_trainable(model, freeze_vision=cfg.model.freeze_vision,
                           gradient_checkpointing=cfg.model.gradient_checkpointing)
    n_train = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.lr_lambda(cfg))
    info = {"size": args.size, "params": n_params, "trainable": n_train, "lora": args.lora, "teacher": args.teacher,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "master": args.master,
            "grad_ckpt": args.grad_ckpt, "prompts": args.prompts, "samples": args.samples, "new_tokens": args.new_tokens,
            "image_tokens": (args.image_side // 28) ** 2, "engine": args.engine,
            "peak_gpu_gib_note": "training process only (torch allocator); vLLM's share is vllm.gpu_memory_utilization"}
    engine = make_engine(cfg, model, proc, suppress, device=device)  # hf: generate on the model; vllm: a colocated engine

    def measure(share: bool) -> dict:
        """--steps steps on the same prompts; the first is warm-up when there are more (CUDA kernels, allocator)."""
        cfg.train.share_prompts = share
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        rows = []
        for step in range(args.steps):
            batch = records[step * args.prompts:(step + 1) * args.prompts]
            torch.manual_seed(step)
            t0 = time.perf_counter()
            res = T.vision_opd_step(cfg, T.StepContext(model, teacher, proc, opt, sched, suppress, device, engine), batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            m = res.metrics
            m["wall"] = time.perf_counter() - t0
            rows.append(m)
            print(f"share_prompts={share} step {step + 1}: {m['wall']:.2f} s (rollout {m['sec_rollout']:.2f}, teacher "
                  f"{m['sec_teacher']:.2f}, student {m['sec_student']:.2f}, optim {m['sec_optim']:.2f}, sync {m['sec_sync']:.2f}); "
                  f"{m['tokens']} response tokens; loss {m['loss']:.4g}; logprob mismatch max {m['rollout_logprob_diff_max']:.3g}")
        steady = rows[1:] or rows
        mean = lambda key: sum(r[key] for r in steady) / len(steady)  # noqa: E731
        return {"share_prompts": share, "sec_per_step": mean("wall"), "sec_scoring": mean("sec_teacher") + mean("sec_student"),
                "sec_teacher": mean("sec_teacher"), "sec_student": mean("sec_student"),
                "response_tokens_per_sec": mean("tokens") / mean("wall"), "sec_rollout": mean("sec_rollout"),
                "sec_sync": mean("sec_sync"), "rollout_logprob_diff_max": max(r["rollout_logprob_diff_max"] for r in steady),
                "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}

    if args.share == "both":
        off, on = measure(False), measure(True)
        out = {**info, "per_row": off, "shared": on,
               "per_row_over_shared": {k: off[k] / on[k] for k in ("sec_per_step", "sec_scoring", "peak_gpu_gib")
                                       if off[k] and on[k]}}
    else:
        out = {**info, **measure(args.share == "on")}
    engine.close()
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
