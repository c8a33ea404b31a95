"""Shared fixtures: tiny models built in code (cached per session), synthetic records in tmp folders."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    from vision_opd.demo.world import write_synthetic

    d = tmp_path_factory.mktemp("synth")
    write_synthetic(d, 12, seed=0, name="train.jsonl")
    return d


@pytest.fixture(scope="session")
def synth_records(synth_dir):
    from vision_opd.data.validate import read_records

    return read_records(synth_dir / "train.jsonl")
