"""Real-size GPU check: a Qwen2.5-VL-3B/7B-sized model with random weights runs Vision-OPD steps in bf16.

    bash perf/gpu_check.sh                         # the check of docs/performance.md (one GPU, its own venv)
    python perf/gpu_check.py --grad-ckpt           # on a GPU machine: 3B config, bf16 weights, 5 steps
    python perf/gpu_check.py --size 7b --lora 64 --grad-ckpt --prompts 4 --samples 8 --micro-batch 4
    python perf/gpu_check.py --grad-ckpt --prompts 2 --samples 8 --image-side 896 --cases on:0 off:0 on:4096 \
        --vary-lengths --engine vllm --json runs/vllm.json        # shared on/off, token budget on/off, one engine
    python perf/gpu_check.py --table runs/hf.json runs/vllm.json  # one table from such files
    python perf/gpu_check.py --dry-run             # the same code on the CPU with a shrunk model, in seconds

No weights can be downloaded, so the model is the real architecture (Qwen2.5-VL-3B: 36 layers, hidden 2048,
vocabulary 151,936, 32-layer vision tower) built from its config with random weights; the offline tokenizer of
models/tiny.py drives it. A random model never emits EOS, so every response runs to --new-tokens (the worst case
for memory). With --vary-lengths each response is then cut at a drawn length (log-normal, median 48 tokens, sigma
1, clipped to 8..--new-tokens; seeded per step, the same in every case), so the scoring sees real, varied lengths
(the generation still runs to --new-tokens). Prints seconds per step (and per phase), response tokens per second,
peak GPU memory and the padding share of the scored positions.
--cases SHARE:TOKENS ... runs the same steps once per case on one model and engine: SHARE on / off =
`train.share_prompts`, TOKENS = `train.micro_batch_tokens` (0: micro-batches of --micro-batch rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
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

SIZES = {  # Qwen2.5-VL-3B/7B-Instruct's published configs; "small" for a CPU smoke run, "dry" for --dry-run
    "3b": dict(hidden=2048, layers=36, heads=16, kv=2, inter=11008, v_depth=32, v_hidden=1280, v_heads=16, v_inter=3420,
               vocab=151936, tied=True),
    "7b": dict(hidden=3584, layers=28, heads=28, kv=4, inter=18944, v_depth=32, v_hidden=1280, v_heads=16, v_inter=3420,
               vocab=152064, tied=False),
    "small": dict(hidden=128, layers=2, heads=4, kv=2, inter=256, v_depth=2, v_hidden=64, v_heads=2, v_inter=128, vocab=151936,
                  tied=True),
    "dry": dict(hidden=64, layers=2, heads=2, kv=1, inter=128, v_depth=1, v_hidden=32, v_heads=2, v_inter=64, vocab=512,
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


CASE_KEYS = ("sec_per_step", "sec_rollout", "sec_teacher", "sec_student", "sec_sync", "response_tokens_per_sec",
             "peak_gpu_gib", "padding_share", "response_padding_share", "micro_batches", "rollout_logprob_diff_max")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="3b")
    ap.add_argument("--steps", type=int, default=5, help="steps per case (the first is warm-up when there are more)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8, help="train.micro_batch_size (rows) of the cases without a budget")
    ap.add_argument("--image-side", type=int, default=448, help="pixel budget side (448 -> 256 image tokens)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--master", choices=["fp32", "bf16"], default="bf16",
                    help="bf16: bf16 weights (fits one 80 GB GPU at 3B with an EMA teacher); fp32: fp32 master "
                         "weights + bf16 autocast (the recipe's precision; 3B full fine-tuning needs > 80 GB)")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank (0 = full fine-tuning); the vision tower is then frozen")
    ap.add_argument("--teacher", choices=["ema", "frozen", "live"], default="ema")
    ap.add_argument("--cases", nargs="+", default=["on:0"], type=case_of,
                    help="SHARE:TOKENS per case: train.share_prompts on/off, train.micro_batch_tokens (0 = by rows)")
    ap.add_argument("--vary-lengths", action="store_true", help="cut each response at a drawn length (see above)")
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="rollout engine (rollout.engine)")
    ap.add_argument("--vllm-memory", type=float, default=0.3, help="vllm.gpu_memory_utilization (share of the GPU for vLLM)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--table", nargs="+", default=None, metavar="JSON", help="print one table from these result files")
    ap.add_argument("--dry-run", action="store_true",
                    help="the whole path on the CPU in seconds: a 2-layer model (vocabulary 512), 1 prompt x 4 samples, "
                         "24 tokens, 2 steps per case, HF rollouts")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.size, args.device, args.steps, args.prompts, args.samples = "dry", "cpu", 2, 1, 4
        args.new_tokens, args.image_side, args.master, args.engine = 24, 56, "fp32", "hf"
    return args


def case_of(text: str) -> tuple[bool, int]:
    share, _, tokens = text.partition(":")
    if share not in ("on", "off") or not tokens.isdigit():
        raise argparse.ArgumentTypeError(f"case {text!r}: expected SHARE:TOKENS with SHARE on or off, e.g. on:4096")
    return share == "on", int(tokens)


class CutLengths:
    """An engine whose responses are cut at lengths drawn per step (log-normal, median 48, sigma 1, clipped to
    8..new_tokens; new_tokens / 4..new_tokens below 32), step k of a case seeded by k: every case (and engine) scores the same
    lengths."""

    def __init__(self, engine, new_tokens: int):
        self.engine, self.new_tokens, self.step = engine, new_tokens, 0

    def sample(self, model, inputs, views=None):
        import numpy as np

        ro = self.engine.sample(model, inputs, views)
        B, T = ro.response_ids_B_T.shape
        rng = np.random.default_rng(1000 + self.step)
        self.step += 1
        keep_B = torch.tensor(np.clip(np.round(np.exp(rng.normal(np.log(48), 1.0, B))), min(8, max(1, self.new_tokens // 4)),
                                       self.new_tokens).astype(int))
        keep_B = keep_B.to(ro.response_mask_B_T.device)
        keep_B_T = torch.arange(T, device=keep_B.device)[None, :] < keep_B[:, None]
        ro.response_mask_B_T = ro.response_mask_B_T * keep_B_T
        ro.response_ids_B_T = torch.where(keep_B_T, ro.response_ids_B_T, self.engine.processor.tokenizer.pad_token_id)
        if ro.logprobs_B_T is not None:
            ro.logprobs_B_T = ro.logprobs_B_T * keep_B_T
        ro.truncated_B = ro.truncated_B & (keep_B >= T)
        return ro

    def sync(self, model) -> float:
        return self.engine.sync(model)

    def close(self) -> None:
        self.engine.close()


def run(args: argparse.Namespace) -> dict:
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
            "image_tokens": (args.image_side // 28) ** 2, "engine": args.engine, "vary_lengths": args.vary_lengths,
            "torch": torch.__version__,
            "peak_gpu_gib_note": "training process only (torch allocator); vLLM's share is vllm.gpu_memory_utilization"}
    engine = make_engine(cfg, model, proc, suppress, device=device)  # hf: generate on the model; vllm: a colocated engine
    if args.vary_lengths:
        engine = CutLengths(engine, args.new_tokens)

    def measure(share: bool, tokens: int) -> dict:
        """--steps steps on the same prompts (and, with --vary-lengths, the same lengths) as every other case."""
        cfg.train.share_prompts, cfg.train.micro_batch_tokens = share, tokens
        if args.vary_lengths:
            engine.step = 0  # the same lengths in every case
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
            print(f"share_prompts={share} micro_batch_tokens={tokens} step {step + 1}: {m['wall']:.2f} s (rollout "
                  f"{m['sec_rollout']:.2f}, teacher {m['sec_teacher']:.2f}, student {m['sec_student']:.2f}, optim "
                  f"{m['sec_optim']:.2f}, sync {m['sec_sync']:.2f}); {m['tokens']} response tokens; {m['micro_batches']} "
                  f"micro-batches, padding {m['padding_share']:.1%}; loss {m['loss']:.4g}", flush=True)
        steady = rows[1:] or rows
        mean = lambda key: statistics.mean(r[key] for r in steady)  # noqa: E731
        return {"share_prompts": share, "micro_batch_tokens": tokens, "sec_per_step": mean("wall"),
                "sec_rollout": mean("sec_rollout"), "sec_teacher": mean("sec_teacher"), "sec_student": mean("sec_student"),
                "sec_sync": mean("sec_sync"), "response_tokens_per_sec": mean("tokens") / mean("wall"),
                "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
                "padding_share": mean("padding_share"), "response_padding_share": mean("response_padding_share"),
                "micro_batches": mean("micro_batches"),
                "rollout_logprob_diff_max": max(r["rollout_logprob_diff_max"] for r in steady)}

    try:
        cases = [measure(share, tokens) for share, tokens in args.cases]
    finally:
        engine.close()
    return {**info, "cases": cases}


def table(results: list[dict]) -> str:
    """One markdown table: a row per (engine, case)."""
    lines = ["| engine | share prompts | micro-batches by | s / step | rollout s | teacher s | student s | sync s | "
             "response tok/s | peak GiB (trainer) | padding (responses) | micro-batches |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for c in r["cases"]:
            peak = f"{c['peak_gpu_gib']:.1f}" if c["peak_gpu_gib"] is not None else "-"
            by = f"<= {c['micro_batch_tokens']} positions" if c["micro_batch_tokens"] else "rows"
            lines.append(f"| {r['engine']} | {'on' if c['share_prompts'] else 'off'} | {by} | {c['sec_per_step']:.2f} | "
                         f"{c['sec_rollout']:.2f} | {c['sec_teacher']:.2f} | {c['sec_student']:.2f} | {c['sec_sync']:.2f} | "
                         f"{c['response_tokens_per_sec']:.0f} | {peak} | {c['padding_share']:.1%} "
                         f"({c['response_padding_share']:.1%}) | {c['micro_batches']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    args = parse(argv)
    if args.table:
        results = [json.loads(Path(p).read_text()) for p in args.table]
        r = results[0]
        print(f"{r['size']} ({r['params'] / 1e9:.2f} B params), {r['device']}, torch {r['torch']}, {r['master']} weights, "
              f"grad ckpt {r['grad_ckpt']}, P={r['prompts']} x G={r['samples']}, {r['new_tokens']} new tokens, "
              f"{r['image_tokens']} image tokens per view, lengths varied: {r['vary_lengths']}")
        print(table(results))
        return None
    out = run(args)
    print(json.dumps(out, indent=1))
    print(table([out]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
