"""The `vision-opd` command line: thin subcommands over the library functions.

    vision-opd train --config configs/tiny_cpu.yaml [key=value ...] [--resume]
    vision-opd synth --out DIR --n N [--seed S] [--canvas 168 --distractors 10 --target-size 20]
    vision-opd config [--config FILE] [key=value ...]      print the resolved config with every option
    vision-opd pretrain [--out runs/pretrain]              pre-train the demo's tiny VLM with labels
    vision-opd demo [--out runs/demo] [--study]            the gap and label-free Vision-OPD closing it
    vision-opd data validate FILE [...] [--skip-bad]       check every record and print a report
    vision-opd eval --model M --benchmark B --data PATH --out DIR   benchmark accuracy (docs/eval.md)
    vision-opd gap --model M --benchmark B --data PATH --out DIR    full vs crop vs red box, paired
    vision-opd report PATH [--out FILE]                    one self-contained HTML page for a run / eval / gap folder
    vision-opd inspect RUN [RUN ...]                       where the divergence concentrates (tokens.jsonl)

Each module here holds a group of subcommands (`add_parsers` + the `cmd_*` functions they call):
training.py (train, config, data, synth), evaluation.py (eval, gap), demo.py (pretrain, demo), report.py (report),
analysis.py (inspect).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import analysis, demo, evaluation, report, training


def _quiet_hf() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1") if os.environ.get("VISION_OPD_OFFLINE", "1") == "1" else None
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers missing is reported elsewhere
        pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vision-opd", description="Vision-OPD: measure the regional-to-global gap, train "
                                "with on-policy self-distillation from a crop-conditioned teacher, evaluate.")
    sub = p.add_subparsers(dest="command", required=True)
    training.add_parsers(sub)
    demo.add_parsers(sub)
    evaluation.add_parsers(sub)
    report.add_parsers(sub)
    analysis.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_hf()
    args = build_parser().parse_args(argv)
    args.command_line = ["vision-opd", *(sys.argv[1:] if argv is None else argv)]  # recorded by eval / gap
    from ..config import ConfigError
    from ..data.images import ImageError
    from ..data.records import RecordError

    try:
        return args.func(args)
    except (ConfigError, RecordError, ImageError) as e:
        print(f"vision-opd: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from ..guards import TrainingStopped

        if not isinstance(e, TrainingStopped):
            raise
        print(f"vision-opd: training stopped: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
