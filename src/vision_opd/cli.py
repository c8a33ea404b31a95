"""The `vision-opd` command line: thin subcommands over the library functions.

    vision-opd train --config configs/tiny_cpu.yaml [key=value ...] [--resume]
    vision-opd synth --out DIR --n N [--seed S] [--canvas 224 --distractors 8 --target-size 14]
    vision-opd config [--config FILE] [key=value ...]      print the resolved config with every option
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

    cfg = load_config(args.config, args.overrides)
    train(cfg, resume=args.resume)
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vision-opd", description="Vision-OPD: measure the regional-to-global gap, train "
                                "with on-policy self-distillation from a crop-conditioned teacher, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="run Vision-OPD training", description="Run Vision-OPD training.\n\n" + CONFIG_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", help="YAML config file (e.g. configs/tiny_cpu.yaml); defaults apply without one")
    t.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in train.out_dir")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("config", help="print the resolved config (every option with its value)",
                       description="Print the resolved config.\n\n" + CONFIG_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--config", help="YAML config file")
    c.add_argument("overrides", nargs="*", metavar="key=value")
    c.set_defaults(func=cmd_config)

    s = sub.add_parser("synth", help="write a synthetic-world dataset (Records JSONL + PNGs)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--n", type=int, required=True, help="number of items")
    s.add_argument("--seed", type=int, default=0, help="random seed (different seeds give disjoint splits)")
    s.add_argument("--canvas", type=int, default=224, help="image side in pixels")
    s.add_argument("--distractors", type=int, default=8, help="objects besides the target")
    s.add_argument("--target-size", type=int, default=14, help="object side in pixels")
    s.add_argument("--name", default="records.jsonl", help="JSONL file name inside --out")
    s.set_defaults(func=cmd_synth)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_hf()
    args = build_parser().parse_args(argv)
    from .config import ConfigError
    from .data.records import RecordError

    try:
        return args.func(args)
    except (ConfigError, RecordError) as e:
        print(f"vision-opd: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
