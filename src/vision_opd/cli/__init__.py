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
    vision-opd export CHECKPOINT --out DIR [--merge]       a checkpoint as a plain Hugging Face folder (LoRA merged)
    vision-opd inspect RUN [RUN ...]                       where the divergence concentrates (tokens.jsonl)
    vision-opd check RUN                                   verify every checkpoint of a run against its checksums

Each module here holds a group of subcommands (`add_parsers` + the `cmd_*` functions they call):
training.py (train, config, data, synth, check), evaluation.py (eval, gap), demo.py (pretrain, demo), report.py (report),
export.py (export), analysis.py (inspect).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import analysis, demo, evaluation, export, report, training


def _quiet_hf() -> None:
    """Quieter transformers logs, without importing transformers (a command that loads no model never imports it,
    nor torch): its log level and progress bars are read from the environment when it is first imported (a value
    the user set is kept), or set here when it already is; and none of the libraries' deprecation notices
    (FutureWarning / DeprecationWarning from transformers, peft, accelerate, torch: about their own internals, nothing
    a user can act on). Hub ids download as in any transformers program (HF_HUB_OFFLINE=1 is the user's choice, never
    set here: the demo and the tiny models name no hub id, so they are offline by construction)."""
    import warnings

    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft|accelerate|torch)(\.|$)")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped paragraph by paragraph (blank lines kept); every option's default shown (unless its help
    already says it)."""

    def _fill_text(self, text, width, indent):
        import textwrap

        return "\n\n".join(textwrap.fill(" ".join(p.split()), width, initial_indent=indent, subsequent_indent=indent,
                                         break_on_hyphens=False, break_long_words=False) for p in text.split("\n\n"))

    def _get_help_string(self, action):
        help_text = action.help or ""
        if "default" in help_text or action.default in (None, False, argparse.SUPPRESS) or action.required \
                or not action.option_strings:
            return help_text
        return f"{help_text} (default: %(default)s)"


def _polish(parser: argparse.ArgumentParser) -> None:
    """The same help formatter for every subcommand, at any depth."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _polish(sub)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    return f"vision-opd {__version__} (torch {v('torch')}, transformers {v('transformers')}, peft {v('peft')})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vision-opd", description="Vision-OPD: measure the regional-to-global gap, train "
                                "with on-policy self-distillation from a crop-conditioned teacher, evaluate.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)
    training.add_parsers(sub)
    demo.add_parsers(sub)
    evaluation.add_parsers(sub)
    report.add_parsers(sub)
    export.add_parsers(sub)
    analysis.add_parsers(sub)
    _polish(p)
    return p


# Mistakes a user can fix (a bad key, record, image, path, benchmark or model): one line, no traceback. Named by
# module, so that catching them imports nothing (a module never imported cannot have raised its error).
USER_ERRORS = {"vision_opd.config": "ConfigError", "vision_opd.data.records": "RecordError",
               "vision_opd.data.images": "ImageError", "vision_opd.data.files": "DataFileError",
               "vision_opd.eval.views": "EvalError", "vision_opd.models.loading": "ModelLoadError",
               "vision_opd.data.folder_lock": "FolderBusy"}


def user_errors() -> tuple[type[Exception], ...]:
    """The classes of USER_ERRORS whose modules are imported (none other can have been raised)."""
    return tuple(getattr(sys.modules[m], name) for m, name in USER_ERRORS.items() if m in sys.modules)


def main(argv: list[str] | None = None) -> int:
    _quiet_hf()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides after an option (`train --resume train.steps=40`) belong to the overrides too
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.command_line = ["vision-opd", *(sys.argv[1:] if argv is None else argv)]  # recorded by eval / gap
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C during start-up, evaluation, ...: one line (training saves first, see below)
        print("vision-opd: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except user_errors() as e:
        print(f"vision-opd: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the run's own stops and refused writes; no import of the training stack for the others
        from ..data.writes import WriteFailed, refused_write
        from ..training.guards import TrainingInterrupted, TrainingStopped

        if isinstance(e, TrainingInterrupted):
            print(f"vision-opd: training interrupted: {e}", file=sys.stderr)
            return e.exit_code
        if isinstance(e, TrainingStopped):
            print(f"vision-opd: training stopped: {e}", file=sys.stderr)
            return 3
        if isinstance(e, WriteFailed):  # a full disk or no permission: what, where, the space left, what is intact
            print(f"vision-opd: error: {e}", file=sys.stderr)
            return 4
        if (reason := refused_write(e)) is None:  # a refused write no command named (a library's own files)
            raise
        print(f"vision-opd: error: {WriteFailed('a file', getattr(e, 'filename', None) or '.', reason)}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
