"""`vision-opd eval | gap`: benchmark accuracy and the gap probe (docs/eval.md)."""

from __future__ import annotations

import argparse
import sys

def _eval_generator(args):
    kw = dict(max_new_tokens=args.max_new_tokens, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
              enable_thinking=args.thinking)
    if args.backend == "openai":
        from ..eval.openai_backend import OpenAIGenerator

        if not args.api_base:
            from ..eval.run import EvalError

            raise EvalError("--backend openai needs --api-base (e.g. http://127.0.0.1:8000/v1)")
        return OpenAIGenerator(args.api_base, args.api_model or args.model, concurrency=args.batch_size, **kw)
    from ..eval.run import load_hf_generator

    return load_hf_generator(args.model, dtype=args.dtype, device=args.device, **kw)


def _run_eval_command(args, gap: bool) -> int:
    from ..data.files import DataFileError
    from ..eval.run import EvalError

    try:
        gen = _eval_generator(args)
        if gap:
            from ..eval.gap import gap_probe

            views = [v.strip() for v in args.views.split(",") if v.strip()]
            r = gap_probe(gen, args.benchmark, args.data, args.out, views=views, limit=args.limit,
                          batch_size=args.batch_size, progress=not args.no_progress, proposer=args.proposer)
            if r.get("proposals"):
                print("proposals: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in r["proposals"].items()))
            for v, acc in r["accuracy"].items():
                print(f"{v:>10}: accuracy {acc:.3f} (n={r['views'][v]['n']})")
            for name, d in r["differences"].items():
                if d["difference"] is not None:
                    print(f"{name:>15}: {d['difference']:+.3f}  95% CI [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")
            print(f"without a box / teacher image: {r['skipped']['no_evidence']}; wrote {args.out}/results.json, gap.png")
        else:
            from ..eval.run import evaluate

            r = evaluate(gen, args.benchmark, args.data, args.out, limit=args.limit, batch_size=args.batch_size,
                         progress=not args.no_progress)
            lo, hi = r["accuracy_ci95"]
            print(f"{args.benchmark}: accuracy {r['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}, n={r['n']}); "
                  f"wrote {args.out}/results.json")
    except (EvalError, DataFileError, KeyError) as e:
        print(f"vision-opd: error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_eval(args) -> int:
    return _run_eval_command(args, gap=False)


def cmd_gap(args) -> int:
    return _run_eval_command(args, gap=True)


def add_parsers(sub) -> None:
    for name, helptext in (("eval", "accuracy on a fine-grained benchmark (samples.jsonl + results.json; resumable)"),
                           ("gap", "the gap probe: the same items as full / crop / red box / full+crop, paired")):
        e = sub.add_parser(name, help=helptext, description=helptext + ". See docs/eval.md.")
        e.add_argument("--model", required=True, help="hub id, local checkpoint folder, or tiny:FAMILY (a random tiny "
                       "model: qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_5; accuracy is chance)")
        e.add_argument("--benchmark", required=True, help="benchmark name (vstar, hrbench_4k, hrbench_8k, mme_realworld, "
                       "mme_realworld_cn, mme_realworld_lite, zoombench, treebench, pope, jsonl, synthetic)")
        e.add_argument("--data", required=True, help="the benchmark's local file or folder (or a hub id where supported)")
        e.add_argument("--out", required=True, help="output folder; rerunning with the same folder resumes")
        e.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (openai: concurrent requests)")
        e.add_argument("--max-new-tokens", type=int, default=32, help="response token limit (raise it for --thinking)")
        e.add_argument("--min-pixels", type=int, default=None, help="pixel budget: lower bound per image (default: the processor's)")
        e.add_argument("--max-pixels", type=int, default=None, help="pixel budget: upper bound per image (default: the processor's)")
        e.add_argument("--limit", type=int, default=None, help="evaluate the first N items only")
        e.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None,
                       help="pass enable_thinking=True/False to the chat template (default: not passed)")
        e.add_argument("--backend", choices=["hf", "openai"], default="hf",
                       help="hf: the model in this process; openai: an OpenAI-compatible server you run (vLLM etc.)")
        e.add_argument("--api-base", default=None, help="openai backend: server URL, e.g. http://127.0.0.1:8000/v1")
        e.add_argument("--api-model", default=None, help="openai backend: the served model name (default: --model)")
        e.add_argument("--dtype", default=None, help="hf backend: float32, bfloat16 or float16 (default: bfloat16 on "
                       "cuda, float32 on cpu)")
        e.add_argument("--device", default=None, help="hf backend: cpu, cuda, cuda:1 ... (default: cuda if available)")
        if name == "gap":
            e.add_argument("--views", default="full,crop,redbox,full+crop",
                           help="comma-separated views among full, crop, redbox, full+crop (the first difference base is full)")
            e.add_argument("--proposer", default=None, choices=["attention", "grounding", "confidence", "rarity"],
                           help="label-free: the model proposes each item's evidence box; adds the view 'proposed' and "
                                "uses items without boxes too (hf backend)")
        e.add_argument("--no-progress", action="store_true", help="no progress bars")
        e.set_defaults(func=cmd_gap if name == "gap" else cmd_eval)


