"""The `vision-opd` command line: thin subcommands over the library functions.

    vision-opd train --config configs/tiny_cpu.yaml [key=value ...] [--resume]
    vision-opd synth --out DIR --n N [--seed S] [--canvas 168 --distractors 10 --target-size 20]
    vision-opd config [--config FILE] [key=value ...]      print the resolved config with every option
    vision-opd pretrain [--out runs/pretrain]              pre-train the demo's tiny VLM with labels
    vision-opd demo [--out runs/demo] [--study]            the gap and label-free Vision-OPD closing it
    vision-opd data validate FILE [...] [--skip-bad]       check every record and print a report
    vision-opd eval --model M --benchmark B --data PATH --out DIR   benchmark accuracy (docs/eval.md)
    vision-opd gap --model M --benchmark B --data PATH --out DIR    full vs crop vs red box, paired
"""

from __future__ import annotations

import argparse
import os
import sys

CONFIG_HELP = """Every option of the config can be set as a dotted key=value override after the
options, e.g.  train.steps=50 loss.alpha=1.0 teacher.mode=frozen  (run `vision-opd config` to list
them all with their defaults; each section's meaning is documented in src/vision_opd/config.py)."""


def _quiet_hf() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1") if os.environ.get("VISION_OPD_OFFLINE", "1") == "1" else None
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers missing is reported elsewhere
        pass


def cmd_train(args) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.overrides + (["data.skip_bad=true"] if args.skip_bad else []))
    train(cfg, resume=args.resume)
    return 0


def cmd_validate(args) -> int:
    from .data.images import DEFAULT_MAX_IMAGE_PIXELS
    from .data.validate import validate_file

    bad = 0
    for path in args.paths:
        report = validate_file(path, allow_outside_root=args.allow_outside_root, check_images=not args.no_images,
                               max_pixels=args.max_pixels or DEFAULT_MAX_IMAGE_PIXELS, progress=True)
        print(report.summary())
        bad += len(report.problems)
    if bad and args.skip_bad:
        print(f"{bad} bad record(s) would be skipped (--skip-bad)")
        return 0
    return 1 if bad else 0


def cmd_config(args) -> int:
    import yaml

    from .config import load_config, to_dict

    print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
    return 0


def cmd_synth(args) -> int:
    from .data.synthetic import WorldConfig, write_synthetic

    cfg = WorldConfig(canvas=args.canvas, distractors=args.distractors, target_size=args.target_size)
    path = write_synthetic(args.out, args.n, args.seed, cfg, name=args.name)
    print(f"wrote {args.n} records to {path}")
    return 0


def cmd_pretrain(args) -> int:
    import shutil

    from .pretrain import PretrainConfig, pretrain

    _threads(args.threads)
    from .data.synthetic import ALL_QUESTION_TYPES, WorldConfig

    types = tuple(t.strip() for t in args.question_types.split(",") if t.strip()) if args.question_types else WorldConfig().question_types
    bad = [t for t in types if t not in ALL_QUESTION_TYPES]
    if bad:
        raise SystemExit(f"--question-types: unknown {bad}; choose from {', '.join(ALL_QUESTION_TYPES)}")
    cfg = PretrainConfig(max_steps=args.max_steps, time_budget_s=args.time_budget, eval_every=args.eval_every,
                         patience=args.patience, n_val=args.n_val, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                         world=WorldConfig(question_types=types), easy_share=args.easy_share, device=args.device)
    s = pretrain(args.out, cfg, progress=not args.no_progress)
    last = s["curve"][-1]
    print(f"pre-trained {s['steps']} steps in {s['seconds']} s: validation full {last['val_full']:.3f}, crop {last['val_crop']:.3f}")
    if args.copy_to:
        shutil.rmtree(args.copy_to, ignore_errors=True)
        shutil.copytree(f"{args.out}/model", args.copy_to)
        print(f"copied the checkpoint to {args.copy_to}")
    return 0


def _threads(n: int) -> None:
    import torch

    if n > 0:
        torch.set_num_threads(n)


def cmd_demo(args) -> int:
    from .demo import demo

    _threads(args.threads)
    if args.study:
        from .demo_study import study

        study(args.out, seeds=args.seeds, steps=args.steps, model_dir=args.model, n_eval=args.n_eval, n_opd=args.n_opd,
              arms=args.arms, split=args.split, eval_every=args.eval_every, progress=not args.no_progress)
        return 0
    demo(args.out, model_dir=args.model, do_pretrain=args.pretrain, steps=args.steps, eval_every=args.eval_every,
         n_eval=args.n_eval, n_opd=args.n_opd, seed=args.seed, lr=args.lr, teacher=args.teacher, loss=args.loss,
         crop_source=args.crop_source,
         progress=not args.no_progress)
    return 0


# ----------------------------------------------------------------------------- eval and gap (docs/eval.md)


def _eval_generator(args):
    kw = dict(max_new_tokens=args.max_new_tokens, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
              enable_thinking=args.thinking)
    if args.backend == "openai":
        from .eval.openai_backend import OpenAIGenerator

        if not args.api_base:
            from .eval.run import EvalError

            raise EvalError("--backend openai needs --api-base (e.g. http://127.0.0.1:8000/v1)")
        return OpenAIGenerator(args.api_base, args.api_model or args.model, concurrency=args.batch_size, **kw)
    from .eval.run import load_hf_generator

    return load_hf_generator(args.model, dtype=args.dtype, device=args.device, **kw)


def _run_eval_command(args, gap: bool) -> int:
    from .eval.benchmarks import BenchmarkError
    from .eval.run import EvalError

    try:
        gen = _eval_generator(args)
        if gap:
            from .eval.gap import gap_probe

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
            from .eval.run import evaluate

            r = evaluate(gen, args.benchmark, args.data, args.out, limit=args.limit, batch_size=args.batch_size,
                         progress=not args.no_progress)
            lo, hi = r["accuracy_ci95"]
            print(f"{args.benchmark}: accuracy {r['accuracy']:.4f} (95% CI {lo:.3f}-{hi:.3f}, n={r['n']}); "
                  f"wrote {args.out}/results.json")
    except (EvalError, BenchmarkError, KeyError) as e:
        print(f"vision-opd: error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_eval(args) -> int:
    return _run_eval_command(args, gap=False)


def cmd_gap(args) -> int:
    return _run_eval_command(args, gap=True)


def _add_eval_parsers(sub) -> None:
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


def _pretrain_default(name: str):
    from .pretrain import PretrainConfig

    return getattr(PretrainConfig(), name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vision-opd", description="Vision-OPD: measure the regional-to-global gap, train "
                                "with on-policy self-distillation from a crop-conditioned teacher, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="run Vision-OPD training", description="Run Vision-OPD training.\n\n" + CONFIG_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", help="YAML config file (e.g. configs/tiny_cpu.yaml); defaults apply without one")
    t.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in train.out_dir")
    t.add_argument("--skip-bad", action="store_true", help="skip (and count) bad records instead of stopping (= data.skip_bad=true)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("config", help="print the resolved config (every option with its value)",
                       description="Print the resolved config.\n\n" + CONFIG_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--config", help="YAML config file")
    c.add_argument("overrides", nargs="*", metavar="key=value")
    c.set_defaults(func=cmd_config)

    d = sub.add_parser("data", help="data utilities (validate)")
    dsub = d.add_subparsers(dest="data_command", required=True)
    v = dsub.add_parser("validate", help="check every record of Records JSONL files and print a report",
                        description="Check every record (JSON, schema, images, boxes, options, duplicates, paths). "
                        "Exit status 1 if any record is bad (0 with --skip-bad).")
    v.add_argument("paths", nargs="+", help="Records JSONL files")
    v.add_argument("--skip-bad", action="store_true", help="report bad records but exit 0 (they would be skipped)")
    v.add_argument("--allow-outside-root", action="store_true", help="allow image paths outside the data file's folder")
    v.add_argument("--no-images", action="store_true", help="check the records only, without decoding images")
    v.add_argument("--max-pixels", type=int, default=None, help="refuse images with more pixels (default 200M)")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("synth", help="write a synthetic-world dataset (Records JSONL + PNGs)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--n", type=int, required=True, help="number of items")
    s.add_argument("--seed", type=int, default=0, help="random seed (different seeds give disjoint splits)")
    s.add_argument("--canvas", type=int, default=168, help="image side in pixels")
    s.add_argument("--distractors", type=int, default=10, help="objects besides the target")
    s.add_argument("--target-size", type=int, default=20, help="object side in pixels")
    s.add_argument("--name", default="records.jsonl", help="JSONL file name inside --out")
    s.set_defaults(func=cmd_synth)

    pt = sub.add_parser("pretrain", help="pre-train the demo's tiny VLM with labels (crops + easy full images)")
    pt.add_argument("--out", default="runs/pretrain", help="output folder (model/ = the Hugging Face checkpoint)")
    pt.add_argument("--max-steps", type=int, default=_pretrain_default("max_steps"), help="stop after this many steps at most")
    pt.add_argument("--time-budget", type=float, default=_pretrain_default("time_budget_s"), help="stop after this many seconds at most")
    pt.add_argument("--eval-every", type=int, default=_pretrain_default("eval_every"), help="validation evaluation (the curve) every N steps")
    pt.add_argument("--patience", type=int, default=_pretrain_default("patience"), help="stop after N evaluations without improvement (the plateau)")
    pt.add_argument("--n-val", type=int, default=96, help="validation items (hard full images and their crops)")
    pt.add_argument("--batch-size", type=int, default=32, help="labelled items per step")
    pt.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    pt.add_argument("--seed", type=int, default=0, help="model initialisation and data order")
    pt.add_argument("--question-types", default=None, help="comma-separated question types of the world (default: the "
                    "world's default; choose from colour, digit, shape, dot)")
    pt.add_argument("--easy-share", type=float, default=_pretrain_default("easy_share"),
                    help="share of easy full images in the labelled stream (the rest are crops)")
    pt.add_argument("--device", default="cpu", help="cpu or cuda")
    pt.add_argument("--copy-to", default=None, help="also copy the checkpoint here (e.g. src/vision_opd/assets/demo_model)")
    pt.add_argument("--no-progress", action="store_true", help="no progress bars")
    pt.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for the tiny model on a "
                    "busy 2-core machine; 0 = torch's default)")
    pt.set_defaults(func=cmd_pretrain)

    d = sub.add_parser("demo", help="show the regional-to-global gap and label-free Vision-OPD closing it (CPU, minutes)")
    d.add_argument("--out", default="runs/demo", help="output folder for report.md, demo.png, summary.json")
    d.add_argument("--model", default=None, help="pre-trained checkpoint (default: the shipped src/vision_opd/assets/demo_model)")
    d.add_argument("--pretrain", action="store_true", help="pre-train the tiny model first instead of using the shipped one")
    d.add_argument("--steps", type=int, default=150, help="Vision-OPD optimizer steps")
    d.add_argument("--eval-every", type=int, default=50, help="held-out evaluation every N steps (the curve)")
    d.add_argument("--n-eval", type=int, default=300, help="held-out items (hard full images and their crops)")
    d.add_argument("--n-opd", type=int, default=1200, help="unlabelled hard images for Vision-OPD")
    d.add_argument("--seed", type=int, default=0, help="random seed of the Vision-OPD run")
    d.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate of Vision-OPD")
    d.add_argument("--teacher", default="frozen", choices=["frozen", "ema", "live"], help="teacher weights")
    d.add_argument("--loss", default="jsd", choices=["jsd", "rkl", "fkl", "topk", "sampled"], help="divergence")
    d.add_argument("--crop-source", default="box", choices=["box", "rarity", "attention", "confidence", "grounding"],
                   help="the teacher's crop: the true evidence box, or a label-free proposer's box (no boxes read)")
    d.add_argument("--study", action="store_true", help="run the controls and ablations over several seeds instead")
    d.add_argument("--seeds", type=int, default=3, help="--study: seeds per arm")
    d.add_argument("--arms", default=None, help="--study: comma-separated arm names (default: all; see docs/demo.md)")
    d.add_argument("--split", default="test", choices=["val", "test"], help="--study: evaluation split (val for design choices)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    d.set_defaults(func=cmd_demo)
    _add_eval_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_hf()
    args = build_parser().parse_args(argv)
    from .config import ConfigError
    from .data.images import ImageError
    from .data.records import RecordError

    try:
        return args.func(args)
    except (ConfigError, RecordError, ImageError) as e:
        print(f"vision-opd: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from .train import TrainingStopped

        if not isinstance(e, TrainingStopped):
            raise
        print(f"vision-opd: training stopped: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
