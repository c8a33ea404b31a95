"""`vision-opd train | config | data validate | synth`: training and its data."""

from __future__ import annotations

import argparse

CONFIG_HELP = """Every option of the config can be set as a dotted key=value override after the
options, e.g.  train.steps=50 loss.alpha=1.0 teacher.mode=frozen  (run `vision-opd config` to list
them all with their defaults; each section's meaning is documented in src/vision_opd/config.py)."""


def cmd_train(args) -> int:
    from ..config import load_config
    from ..train import train

    cfg = load_config(args.config, args.overrides + (["data.skip_bad=true"] if args.skip_bad else []))
    if cfg.data.synth_if_missing:  # the tiny config's synthetic data (the library's train() never generates data)
        import os

        from ..demo.world import synthesize_if_missing

        synthesize_if_missing(cfg.data, rank=int(os.environ.get("RANK", "0")))
    train(cfg, resume=args.resume)
    return 0


def cmd_validate(args) -> int:
    from ..data.images import DEFAULT_MAX_IMAGE_PIXELS
    from ..data.validate import validate_file

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

    from ..config import load_config, to_dict

    print(yaml.safe_dump(to_dict(load_config(args.config, args.overrides)), sort_keys=False), end="")
    return 0


def cmd_synth(args) -> int:
    from ..demo.world import WorldConfig, write_synthetic

    cfg = WorldConfig(canvas=args.canvas, distractors=args.distractors, target_size=args.target_size)
    path = write_synthetic(args.out, args.n, args.seed, cfg, name=args.name)
    print(f"wrote {args.n} records to {path}")
    return 0


def add_parsers(sub) -> None:
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
