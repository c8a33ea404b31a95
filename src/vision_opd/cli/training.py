"""`vision-opd train | config | data validate | synth`: training and its data."""

from __future__ import annotations

CONFIG_HELP = """Every option of the config can be set as a dotted key=value override after the
options, e.g.  train.steps=50 loss.alpha=1.0 teacher.mode=frozen  (run `vision-opd config` to list
them all with their defaults; each section's meaning is documented in src/vision_opd/config.py)."""


def cmd_train(args) -> int:
    """The config, the run folder and every record are checked before torch is even imported: a mistake there is
    one line at once."""
    import os

    from ..config import load_config
    from ..data.sources import load_train_records
    from ..training.run_folder import check_run_folder

    cfg = load_config(args.config, args.overrides + (["data.skip_bad=true"] if args.skip_bad else []))
    check_run_folder(cfg.train.out_dir, cfg, resume=args.resume, overwrite=args.overwrite)  # before any data is made
    rank = int(os.environ.get("RANK", "0"))
    if cfg.data.synth_if_missing and _synth_applies(args.overrides):  # the tiny config's synthetic data (train() never
        from ..demo.world import synthesize_if_missing  # generates data)

        synthesize_if_missing(cfg.data, rank=rank)
    data = load_train_records(cfg.data, cfg.views, progress=cfg.train.progress and rank == 0)
    from ..training.loop import train  # torch, transformers: only now

    train(cfg, resume=args.resume, overwrite=args.overwrite, data=data)
    return 0


def _synth_applies(overrides: list[str]) -> bool:
    """data.synth_if_missing writes synthetic data at the train_file its config names. A data.train_file given on the
    command line is the user's own file: a typo there must say "not found", never train on generated data (unless
    data.synth_if_missing=true is given on the command line too)."""
    keys = {o.split("=", 1)[0].strip() for o in overrides}
    return "data.train_file" not in keys or "data.synth_if_missing" in keys


def cmd_validate(args) -> int:
    from ..data.images import DEFAULT_MAX_IMAGE_PIXELS
    from ..data.validate import validate_file

    bad = 0
    views = None
    if args.config:
        from ..config import load_config

        views = load_config(args.config).views
    for path in args.paths:
        report = validate_file(path, allow_outside_root=args.allow_outside_root, check_images=not args.no_images,
                               max_pixels=args.max_pixels or DEFAULT_MAX_IMAGE_PIXELS, progress=True, views=views)
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
    t = sub.add_parser("train", help="run Vision-OPD training", description="Run Vision-OPD training: the student samples on "
                       "the full image, the teacher reads the same responses on the evidence crop, the loss is a "
                       "token-level divergence between them. The data file and every record (schema, images, the views "
                       "they must serve) are checked before the model loads. One run per train.out_dir: --resume "
                       "continues it, --overwrite replaces it.\n\n" + CONFIG_HELP)
    t.add_argument("--config", help="YAML config file (e.g. configs/tiny_cpu.yaml); defaults apply without one")
    t.add_argument("--resume", action="store_true", help="continue the run in train.out_dir from its latest complete "
                   "checkpoint (changed config keys are named; model, data and views may not change)")
    t.add_argument("--overwrite", action="store_true", help="train.out_dir holds another run: delete its files first "
                   "(without --resume or --overwrite such a folder is refused)")
    t.add_argument("--skip-bad", action="store_true", help="skip (and count) bad records instead of stopping (= data.skip_bad=true)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("config", help="print the resolved config (every option with its value)",
                       description="Print the resolved config (the file, then the overrides, over the defaults) as "
                       "YAML, every key with its value.\n\n" + CONFIG_HELP)
    c.add_argument("--config", help="YAML config file")
    c.add_argument("overrides", nargs="*", metavar="key=value")
    c.set_defaults(func=cmd_config)

    d = sub.add_parser("data", help="data utilities (validate)", description="Data utilities: `vision-opd data validate "
                       "FILE` checks every record of a Records JSONL file before training or evaluation.")
    dsub = d.add_subparsers(dest="data_command", required=True)
    v = dsub.add_parser("validate", help="check every record of Records JSONL files and print a report",
                        description="Check every record (JSON, schema, types, images, boxes, options, duplicates, "
                        "paths; with --config also the views the config's training needs). Exit status 1 if any "
                        "record is bad (0 with --skip-bad).")
    v.add_argument("paths", nargs="+", help="Records JSONL files")
    v.add_argument("--skip-bad", action="store_true", help="report bad records but exit 0 (they would be skipped)")
    v.add_argument("--allow-outside-root", action="store_true", help="allow image paths outside the data file's folder")
    v.add_argument("--no-images", action="store_true", help="check the records only, without decoding images")
    v.add_argument("--max-pixels", type=int, default=None, help="refuse images with more pixels (default 200M)")
    v.add_argument("--config", default=None, help="also check that every record can serve this training config's "
                   "views (e.g. views.teacher_source=box needs a box); default: no view check")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("synth", help="write a synthetic-world dataset (Records JSONL + PNGs)",
                       description="Write N items of the built-in synthetic world (the demo's): PNG images and a "
                       "Records JSONL with questions, options, answers and evidence boxes. Different seeds give "
                       "disjoint splits.")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--n", type=int, required=True, help="number of items")
    s.add_argument("--seed", type=int, default=0, help="random seed (different seeds give disjoint splits)")
    s.add_argument("--canvas", type=int, default=168, help="image side in pixels")
    s.add_argument("--distractors", type=int, default=10, help="objects besides the target")
    s.add_argument("--target-size", type=int, default=20, help="object side in pixels")
    s.add_argument("--name", default="records.jsonl", help="JSONL file name inside --out")
    s.set_defaults(func=cmd_synth)
