"""`vision-opd pretrain | demo`: the embedded demo on the synthetic world (docs/demo.md)."""

from __future__ import annotations

def cmd_pretrain(args) -> int:
    import shutil

    from ..demo.pretrain_config import PretrainConfig
    from ..demo.world import ALL_QUESTION_TYPES, WorldConfig

    types = tuple(t.strip() for t in args.question_types.split(",") if t.strip()) if args.question_types else WorldConfig().question_types
    bad = [t for t in types if t not in ALL_QUESTION_TYPES]
    if bad:
        raise SystemExit(f"--question-types: unknown {bad}; choose from {', '.join(ALL_QUESTION_TYPES)}")
    cfg = PretrainConfig(max_steps=args.max_steps, time_budget_s=args.time_budget, eval_every=args.eval_every,
                         patience=args.patience, n_val=args.n_val, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                         world=WorldConfig(question_types=types, answers=args.answers), easy_share=args.easy_share, device=args.device,
                         init=args.init)
    from ..demo.pretrain import pretrain  # torch: after the options are checked

    _threads(args.threads)
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
    from ..demo.arms import ArmConfig
    from ..demo.run import DemoData, demo

    _threads(args.threads)
    sizes = DemoData(n_opd=args.n_opd, n_eval=args.n_eval)
    if args.study:
        from ..demo.study import study

        study(args.out, seeds=args.seeds, steps=args.steps, model_dir=args.model, sizes=sizes, arms=args.arms, split=args.split, eval_every=args.eval_every, progress=not args.no_progress,
              dump_tokens_every=args.dump_tokens_every)
        return 0
    arm = ArmConfig(arm="opd", steps=args.steps, eval_every=args.eval_every, seed=args.seed, lr=args.lr,
                    teacher=args.teacher, loss=args.loss, crop_source=args.crop_source)
    demo(args.out, model_dir=args.model, do_pretrain=args.pretrain, arm=arm, sizes=sizes, progress=not args.no_progress)
    return 0


def _pretrain_default(name: str):
    from ..demo.pretrain_config import PretrainConfig

    return getattr(PretrainConfig(), name)


def add_parsers(sub) -> None:
    pt = sub.add_parser("pretrain", help="pre-train the demo's tiny VLM with labels (crops + easy full images)",
                        description="Pre-train the demo's tiny Qwen2-VL on the synthetic world with labels (evidence "
                        "crops and easy full images), until the validation curve plateaus. The shipped checkpoint "
                        "(src/vision_opd/assets/demo_model) comes from this command. See docs/demo.md.")
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
    pt.add_argument("--answers", default="short", choices=["short", "sentence"],
                    help="labelled responses: the option's text, or a short sentence naming two attributes then "
                         "'Answer: X' (the long-answer world, docs/demo.md)")
    pt.add_argument("--init", default=None, help="start from this demo checkpoint instead of random weights (e.g. "
                    "src/vision_opd/assets/demo_model with --answers sentence: the long-answer world)")
    pt.add_argument("--device", default="cpu", help="cpu or cuda")
    pt.add_argument("--copy-to", default=None, help="also copy the checkpoint here (e.g. src/vision_opd/assets/demo_model)")
    pt.add_argument("--no-progress", action="store_true", help="no progress bars")
    pt.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for the tiny model on a "
                    "busy 2-core machine; 0 = torch's default)")
    pt.set_defaults(func=cmd_pretrain)

    d = sub.add_parser("demo", help="show the regional-to-global gap and label-free Vision-OPD closing it (CPU, minutes)",
                       description="The demo: measure the shipped tiny model on held-out synthetic images in the full "
                       "view and in the evidence crop (the gap), train it with label-free Vision-OPD, measure again; "
                       "report.md, demo.png and summary.json in --out. --study runs the controls and ablations over "
                       "several seeds. No downloads. See docs/demo.md.")
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
    d.add_argument("--dump-tokens-every", type=int, default=0, help="--study: write each label-free arm's tokens every N "
                   "steps to --out/tokens/ARM_sSEED/tokens.jsonl (for vision-opd inspect)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    d.set_defaults(func=cmd_demo)
