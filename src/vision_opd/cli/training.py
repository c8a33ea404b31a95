"""`vision-opd train | config | data validate | data screen | synth | check`: training, its data and its checkpoints."""

from __future__ import annotations

CONFIG_HELP = """Every option of the config can be set as a dotted key=value override after the
options, e.g.  train.steps=50 loss.alpha=1.0 teacher.mode=frozen  (run `vision-opd config` to list
them all with their defaults; each section's meaning is documented in src/vision_opd/config.py)."""


def cmd_train(args) -> int:
    """The config, the run folder and every record are checked before torch is even imported: a mistake there is
    one line at once."""
    import os
    from pathlib import Path

    from ..config import ConfigError, load_config
    from ..data.folder_lock import folder_lock
    from ..data.sources import load_train_records
    from ..data.writes import WriteFailed, writing
    from ..training.run_folder import check_run_folder, what_survived

    cfg = load_config(args.config, args.overrides + (["data.skip_bad=true"] if args.skip_bad else []))
    if args.accept_data_change and not args.resume:
        raise ConfigError("--accept-data-change continues a run on changed data: it goes with --resume")
    rank = int(os.environ.get("RANK", "0"))
    out_dir = cfg.train.out_dir
    if not Path(out_dir).exists():  # (--resume of a folder that is not there: said before the lock makes it)
        check_run_folder(out_dir, cfg, resume=args.resume, overwrite=args.overwrite)
    # one writer per run folder: the launch's rank 0 holds the lock (the other ranks are its own processes); a live
    # writer is named before anything about the folder's contents
    with folder_lock(out_dir, "train", enabled=rank == 0, break_lock=args.break_lock):
        check_run_folder(out_dir, cfg, resume=args.resume, overwrite=args.overwrite)  # before any data is made
        if cfg.data.synth_if_missing and _synth_applies(args.overrides):  # the tiny config's synthetic data (train()
            from ..demo.world import synthesize_if_missing  # never generates data)

            synthesize_if_missing(cfg.data, rank=rank)
        data = load_train_records(cfg.data, cfg.views, progress=cfg.train.progress and rank == 0,
                                  answers_for=cfg.label_option())
        from ..training.loop import train  # torch, transformers: only now

        try:
            with writing("a file of the run", out_dir):
                train(cfg, resume=args.resume, overwrite=args.overwrite, accept_data_change=args.accept_data_change,
                      data=data)
        except WriteFailed as e:
            e.note = what_survived(out_dir)
            raise
        finally:
            _end_process_group()
    return 0


def _end_process_group() -> None:
    """Several processes (torchrun / accelerate launch): end the process group before the process exits. Left to the
    interpreter's exit, gloo's threads were torn down while joinable and a rank could abort ("terminate called without
    an active exception", SIGABRT) after a finished run, failing the launch."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cmd_check(args) -> int:
    """One line per checkpoint of a run: intact (every file matches COMPLETE), damaged (the file named), incomplete."""
    from pathlib import Path

    from ..config import ConfigError
    from ..training.checksums import DONE_FILE, damage, read_marker

    root = Path(args.run) / "checkpoints"
    folders = sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []
    if not folders:
        raise ConfigError(f"{args.run} holds no checkpoints ({root}/step_*): give a run folder (train.out_dir)")
    bad = 0
    for p in folders:
        if p.name.endswith(".tmp") or not (p / DONE_FILE).is_file():
            print(f"{p}: incomplete (no {DONE_FILE}: a save that did not finish; --resume ignores it)")
        elif (problem := damage(p)) is not None:
            bad += 1
            print(f"{p}: DAMAGED: {problem}")
        else:
            listed = read_marker(p)[1]
            size = sum(s for s, _ in listed.values())
            aside = " (set aside by a resume; delete it when done)" if "." in p.name else ""
            print(f"{p}: intact ({len(listed)} files, {size / 1e6:.1f} MB, sha256 verified){aside}")
    return 1 if bad else 0


def _synth_applies(overrides: list[str]) -> bool:
    """data.synth_if_missing writes synthetic data at the train_file its config names. A data.train_file given on the
    command line is the user's own file: a typo there must say "not found", never train on generated data (unless
    data.synth_if_missing=true is given on the command line too)."""
    keys = {o.split("=", 1)[0].strip() for o in overrides}
    return "data.train_file" not in keys or "data.synth_if_missing" in keys


def cmd_validate(args) -> int:
    from ..data.images import DEFAULT_MAX_IMAGE_PIXELS
    from ..data.validate import validate_file

    bad = whole = 0
    views, box_format = None, args.box_format
    if args.config:
        from ..config import load_config

        cfg = load_config(args.config)
        views, box_format = cfg.views, box_format or cfg.data.box_format
    for path in args.paths:
        report = validate_file(path, allow_outside_root=args.allow_outside_root, check_images=not args.no_images,
                               max_pixels=args.max_pixels or DEFAULT_MAX_IMAGE_PIXELS, progress=True, views=views,
                               box_format=box_format or "auto")
        print(report.summary())
        bad += len(report.problems)
        whole += len(report.file_problems)
    if whole:  # the file as a whole: nothing to skip
        return 1
    if bad and args.skip_bad:
        print(f"{bad} bad record(s) would be skipped (--skip-bad)")
        return 0
    return 1 if bad else 0


def cmd_screen(args) -> int:
    from ..eval.screen import screen_gap, write_screened

    screened = screen_gap(args.gap_dir, label_free=args.label_free)
    path = write_screened(screened, args.out)
    rule = ("greedy answers differ between crop and full (no labels read)" if args.label_free
            else "crop right, full wrong (reads the labels)")
    print(f"{screened.both} items with a crop and a full answer; kept {screened.kept} ({rule}); wrote "
          f"{len(screened.records)} records to {path}"
          + (f"; {screened.missing} kept id(s) not in the data any more" if screened.missing else ""))
    if screened.outside:
        print("its image paths lie outside its folder: train on it with data.allow_outside_root=true")
    return 0


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
    t.add_argument("--accept-data-change", action="store_true", help="--resume on training data that changed since the "
                   "checkpoint (records added, removed or edited): continue on the new data, its epoch restarted")
    t.add_argument("--break-lock", action="store_true", help="take over the run folder's lock held by a process on "
                   "another host that you know is gone (a lock of this host is checked, and taken over when stale)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("config", help="print the resolved config (every option with its value)",
                       description="Print the resolved config (the file, then the overrides, over the defaults) as "
                       "YAML, every key with its value.\n\n" + CONFIG_HELP)
    c.add_argument("--config", help="YAML config file")
    c.add_argument("overrides", nargs="*", metavar="key=value")
    c.set_defaults(func=cmd_config)

    d = sub.add_parser("data", help="data utilities (validate, screen)", description="Data utilities: `vision-opd data "
                       "validate FILE` checks every record of a Records JSONL file before training or evaluation; "
                       "`vision-opd data screen GAP_DIR --out FILE` keeps the items a gap probe found the crop helps on.")
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
    v.add_argument("--box-format", default=None, choices=["auto", "xyxy", "xywh", "normalized"],
                   help="how the file writes its boxes: auto (pixels [x1, y1, x2, y2]; a file of normalised or [x, y, w, "
                   "h] boxes is reported, naming the fix), xyxy (pixels, no guessing), xywh (pixels [x, y, width, "
                   "height], COCO), normalized ([x1, y1, x2, y2] as fractions of the image); default: --config's data.box_format, "
                   "else auto")
    v.add_argument("--config", default=None, help="also check that every record can serve this training config's "
                   "views (e.g. views.teacher_source=box needs a box); default: no view check")
    v.set_defaults(func=cmd_validate)

    sc = dsub.add_parser("screen", help="write the items of a gap folder where the crop and full views part ways as a "
                         "Records file", description="From a `vision-opd gap` folder, write a Records JSONL (usable as "
                         "data.train_file) of the items where the crop view answered right and the full view wrong. "
                         "That filter READS THE LABELS (the probe graded each answer against the answer key), so the "
                         "screened data is not label-free; --label-free keeps instead the items whose greedy answers "
                         "differ between the crop and the full view, reading no label. Prints the counts.")
    sc.add_argument("gap_dir", help="the output folder of `vision-opd gap` (samples.jsonl, settings.json)")
    sc.add_argument("--out", required=True, help="the Records JSONL to write")
    sc.add_argument("--label-free", action="store_true", help="keep the items whose crop and full answers differ "
                    "(no labels read) instead of crop right / full wrong (reads labels)")
    sc.set_defaults(func=cmd_screen)

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

    k = sub.add_parser("check", help="verify every checkpoint of a run against the checksums of its COMPLETE marker",
                       description="Verify every checkpoint of a run (RUN/checkpoints/step_*): each file's size and "
                       "sha256 against its COMPLETE marker. One line per checkpoint: intact, DAMAGED (naming the file) "
                       "or incomplete. Exit status 1 if any is damaged. `train --resume` runs the same check on the "
                       "checkpoint it picks and falls back to the previous intact one.")
    k.add_argument("run", help="the run folder (train.out_dir)")
    k.set_defaults(func=cmd_check)
