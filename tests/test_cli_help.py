"""The CLI describes itself: --version, a description for every subcommand, every option's default in --help."""

from __future__ import annotations

import argparse

import pytest

from vision_opd.cli import build_parser, main


def _parsers(parser: argparse.ArgumentParser, name: str = "vision-opd"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("vision-opd 0.") and "torch 2." in out and "transformers" in out


def test_every_subcommand_has_a_description_and_shows_its_defaults():
    parsers = dict(_parsers(build_parser()))
    assert {"vision-opd train", "vision-opd data validate", "vision-opd export", "vision-opd eval"} <= set(parsers)
    for name, parser in parsers.items():
        assert parser.description and len(parser.description) > 20, f"{name}: no description"
        for action in parser._actions:
            if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
                continue
            entry = parser._get_formatter()._format_action(action)  # the option's lines in --help
            assert "default" in entry, f"{name} {action.option_strings[0]}: the help shows no default\n{entry}"
        assert "%(default)" not in parser.format_help()


def test_eval_help_shows_the_values(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE" in out and "(default: 8)" in out and "(default: hf)" in out
