"""`vision-opd eval | gap`: benchmark accuracy and the gap probe (docs/eval.md)."""

from __future__ import annotations

import argparse
import sys


def _eval_generator(args, budget: dict):
    kw = dict(max_new_tokens=budget["max_new_tokens"], min_pixels=args.min_pixels, max_pixels=args.max_pixels,
              enable_thinking=args.thinking)
    if args.backend == "openai":
        from ..eval.openai_backend import Connection, OpenAIGenerator

        conn = Connection(api_key_env=args.api_key_env, timeout=args.request_timeout, retries=args.retries)
        return OpenAIGenerator(args.api_base, args.api_model or args.model, concurrency=args.batch_size,
                               connection=conn, **kw)
    if args.backend == "vllm":
        from ..eval.vllm_backend import VLLMGenerator

        return VLLMGenerator(args.model, dtype=args.dtype, max_images_per_prompt=2, **kw)
    from ..eval.hf_backend import load_hf_generator

    return load_hf_generator(args.model, dtype=args.dtype, device=args.device, **kw)


def _judge(args):
    from ..eval.views import EvalError

    if not (args.judge_api_base or args.judge_model):
        return None
    if not (args.judge_api_base and args.judge_model):
        raise EvalError("the LLM judge needs both --judge-api-base and --judge-model")
    from ..eval.judge import Judge

    return Judge(args.judge_api_base, args.judge_model, api_key_env=args.judge_api_key_env,
                 timeout=args.request_timeout, retries=args.retries, concurrency=args.batch_size)


def _print_scores(name: str, s: dict) -> None:
    lo, hi = s["accuracy_ci95"]
    fails = ", ".join(f"{k} {v}" for k, v in s["failures"].items() if v) or "none"
    print(f"{name}: accuracy {s['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}, n={s['n']}, failures count as wrong); "
          f"answered {s['answered_share']:.3f}; failures: {fails}")
    if "judged" in s:
        j = s["judged"]
        print(f"{'':>{len(name)}}  judged accuracy {j['accuracy']:.4f} (95% CI {j['accuracy_ci95'][0]:.3f}-"
              f"{j['accuracy_ci95'][1]:.3f}); answered {j['answered_share']:.3f}")
    if s["failures"]["request_failed"]:
        print(f"{'':>{len(name)}}  {s['failures']['request_failed']} requests failed: rerun the same command to retry "
              "only those")
    if s["thinking"]["unfinished_rate"] > 0.2:
        print(f"{'':>{len(name)}}  {s['thinking']['unfinished_rate']:.0%} of the responses end inside <think>: raise "
              "--max-new-tokens, or pass --thinking (its own budget) or --no-thinking")


def _preflight(args, gap: bool):
    """Everything checked before the model loads: views, backend options, the model's name, the benchmark, the data
    and every record (the checks of `data validate`; gap: boxes against their images too)."""
    from ..eval.preflight import load_checked
    from ..eval.views import VIEWS, EvalError
    from ..models.loading import check_model_name

    views = [v.strip() for v in args.views.split(",") if v.strip()] if gap else ["full"]
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise EvalError(f"--views: unknown view(s) {', '.join(unknown)}; choose from {', '.join(VIEWS)}")
    if args.backend == "openai" and not args.api_base:
        raise EvalError("--backend openai needs --api-base (e.g. http://127.0.0.1:8000/v1)")
    if gap and args.proposer and args.backend != "hf":
        raise EvalError("--proposer needs --backend hf: the proposer reads the model's own attention/confidence")
    if args.backend == "hf" and not args.model.startswith("tiny:"):
        check_model_name(args.model)
    records, report = load_checked(args.benchmark, args.data, limit=args.limit, skip_bad=args.skip_bad, boxes=gap,
                                   box_format=args.box_format)
    for note in report.notes:
        print(note, file=sys.stderr)
    if report.problems:
        print(f"skipped {len(report.problems)} bad record(s) of {args.data} (--skip-bad):\n" +
              "\n".join(f"  {p.message}" for p in report.problems[:20]), file=sys.stderr)
    return views, records


def _run_eval_command(args, gap: bool) -> int:
    """Options and records first (one line naming the fix, exit 2, from cli.main), then the model."""
    from ..eval.evidence_size import parse_edges
    from ..eval.thinking import response_budget
    from ..eval.options import EvalOptions
    from ..eval.views import EvalError

    try:
        budget = response_budget(args.max_new_tokens, args.thinking)
        edges = parse_edges(args.size_bins) if gap else None
    except ValueError as e:
        raise EvalError(str(e)) from None
    judge = _judge(args)
    views, records = _preflight(args, gap)
    gen = _eval_generator(args, budget)
    opts = EvalOptions(limit=args.limit, batch_size=args.batch_size, progress=not args.no_progress, judge=judge,
                       response_budget=budget, command_line=getattr(args, "command_line", None),
                       box_format=args.box_format)
    if gap:
        from ..eval.gap import gap_probe

        r = gap_probe(gen, args.benchmark, args.data, args.out, opts, views=views, proposer=args.proposer,
                      size_edges=edges, records=records)
        if r.get("proposals"):
            print("proposals: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in r["proposals"].items()))
        c = r["common"]
        print(f"on the {c['n']} items that every view has (micro accuracy):")
        for v, acc in c["accuracy"].items():
            print(f"{v:>10}: {acc:.3f}  95% CI [{c['ci95'][v][0]:.3f}, {c['ci95'][v][1]:.3f}]   "
                  f"(all {r['views'][v]['n']} items of the view: {r['views'][v]['accuracy']:.3f})")
        for name, d in r["differences"].items():
            if d["difference"] is not None:
                print(f"{name:>15}: {d['difference']:+.3f}  95% CI [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] "
                      f"(paired, n={d['n']})")
        for b in r["by_evidence_size"]["bins"]:
            d = b["differences"].get("crop-full")
            if d and d["difference"] is not None:
                print(f"  evidence {b['label']:>8}: crop-full {d['difference']:+.3f}  95% CI "
                      f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] (n={d['n']})")
        for v, s in r["views"].items():
            if any(s["failures"].values()):
                _print_scores(f"{v} view", s)
        print(f"without a box / teacher image: {r['skipped']['no_evidence']}; wrote {args.out}/results.json, "
              "gap.png, gap_by_size.png")
    else:
        from ..eval.run import evaluate

        r = evaluate(gen, args.benchmark, args.data, args.out, opts, records=records)
        _print_scores(args.benchmark, r)
        print(f"wrote {args.out}/results.json")
    return 0


def _in_locked_folder(args, gap: bool) -> int:
    """One writer per --out folder (a second eval / gap there is refused, naming the first); a refused write says
    that the samples written before it are kept."""
    from ..data.folder_lock import folder_lock
    from ..data.writes import WriteFailed

    with folder_lock(args.out, "gap" if gap else "eval", break_lock=args.break_lock):
        try:
            return _run_eval_command(args, gap)
        except WriteFailed as e:
            e.note = (f"every sample written before it is kept in {args.out}/samples.jsonl: free space and rerun the "
                      "same command to continue")
            raise


def cmd_eval(args) -> int:
    return _in_locked_folder(args, gap=False)


def cmd_gap(args) -> int:
    return _in_locked_folder(args, gap=True)


def add_parsers(sub) -> None:
    for name, helptext in (("eval", "accuracy on a fine-grained benchmark (samples.jsonl + results.json; resumable)"),
                           ("gap", "the gap probe: the same items as full / crop / red box / full+crop, paired")):
        e = sub.add_parser(name, help=helptext, description=helptext + ". The benchmark name, the data and every "
                           "record are checked before the model loads. See docs/eval.md.")
        e.add_argument("--model", required=True, help="hub id, local model folder, a checkpoint of `vision-opd train` "
                       "(RUN/checkpoints/step_NNNNNN; LoRA: its base + the adapter), or tiny:FAMILY (a random tiny "
                       "model: qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_5; accuracy is chance)")
        e.add_argument("--benchmark", required=True, help="benchmark name (vstar, hrbench_4k, hrbench_8k, mme_realworld, "
                       "mme_realworld_cn, mme_realworld_lite, zoombench, treebench, pope, mle_bench, jsonl, synthetic)")
        e.add_argument("--data", required=True, help="the benchmark's local file or folder (or a hub id where supported)")
        e.add_argument("--out", required=True, help="output folder; rerunning with the same folder resumes")
        e.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (openai: concurrent requests)")
        e.add_argument("--max-new-tokens", type=int, default=None, help="response token budget (default: 32 in answer "
                       "mode, 8192 with --thinking)")
        e.add_argument("--min-pixels", type=int, default=None, help="pixel budget: lower bound per image (default: the processor's)")
        e.add_argument("--max-pixels", type=int, default=None, help="pixel budget: upper bound per image (default: the processor's)")
        e.add_argument("--limit", type=int, default=None, help="evaluate the first N items only")
        e.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None,
                       help="pass enable_thinking=True/False to the chat template (default: not passed)")
        e.add_argument("--backend", choices=["hf", "vllm", "openai"], default="hf",
                       help="hf: the model in this process; vllm: vLLM in this process (pip install 'vision-opd[vllm]'); "
                            "openai: an OpenAI-compatible server you run")
        e.add_argument("--api-base", default=None, help="openai backend: server URL, e.g. http://127.0.0.1:8000/v1")
        e.add_argument("--api-model", default=None, help="openai backend: the served model name (default: --model)")
        e.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai backend: the environment variable "
                       "holding the API key (never written to outputs)")
        e.add_argument("--judge-api-base", default=None, help="LLM judge for the responses no rule can read: an "
                       "OpenAI-compatible URL (with --judge-model)")
        e.add_argument("--judge-model", default=None, help="LLM judge: the model name at --judge-api-base")
        e.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="LLM judge: the environment variable "
                       "holding its API key (never written to outputs)")
        e.add_argument("--request-timeout", type=float, default=600.0, help="openai backend and judge: seconds per request")
        e.add_argument("--retries", type=int, default=2, help="openai backend and judge: retries with backoff per request")
        e.add_argument("--dtype", default=None, help="hf / vllm backend: float32, bfloat16 or float16 (default: bfloat16 on "
                       "cuda, float32 on cpu; hf with a LoRA checkpoint: the dtype its adapter was trained in)")
        e.add_argument("--device", default=None, help="hf backend: cpu, cuda, cuda:1 ... (default: cuda if available)")
        if name == "gap":
            e.add_argument("--views", default="full,crop,redbox,full+crop",
                           help="comma-separated views among full, crop, redbox, full+crop (the first difference base is full)")
            e.add_argument("--proposer", default=None, choices=["attention", "grounding", "confidence", "rarity"],
                           help="label-free: the model proposes each item's evidence box; adds the view 'proposed' (the "
                                "full image where it falls back) and uses items without boxes too (hf backend)")
            e.add_argument("--size-bins", default="0.005,0.01,0.02,0.05",
                           help="edges of the evidence-size bins, as shares of the image area (default: <0.5%%, "
                                "0.5-1%%, 1-2%%, 2-5%%, >=5%%)")
        e.add_argument("--box-format", default="auto", choices=["auto", "xyxy", "xywh", "normalized"],
                       help="how a Records JSONL writes its boxes: auto (pixels [x1, y1, x2, y2]; normalised or "
                       "[x, y, w, h] files are refused, naming the fix), xyxy (pixels, no guessing), xywh (pixels [x, y, "
                       "width, height]), normalized ([x1, y1, x2, y2] as fractions of the image); converted on read")
        e.add_argument("--skip-bad", action="store_true", help="skip (and count) bad records instead of stopping; without "
                       "it every bad record is named and nothing runs")
        e.add_argument("--no-progress", action="store_true", help="no progress bars")
        e.add_argument("--break-lock", action="store_true", help="take over the --out folder's lock held by a process "
                       "on another host that you know is gone")
        e.set_defaults(func=cmd_gap if name == "gap" else cmd_eval)
