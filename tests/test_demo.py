"""Shortened `vision-opd pretrain` and `vision-opd demo` runs: they complete and write valid outputs."""

from __future__ import annotations

import json
import math

import pytest

from vision_opd.cli import main


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The regenerating command of the shipped checkpoint, shortened (README: vision-opd pretrain ...)."""
    out = tmp_path_factory.mktemp("pretrain")
    rc = main(["pretrain", "--out", str(out), "--max-steps", "3", "--eval-every", "3", "--n-val", "6",
               "--batch-size", "4", "--copy-to", str(out / "copy"), "--no-progress"])
    assert rc == 0
    return out


def test_pretrain_writes_a_checkpoint_and_a_curve(pretrained):
    for d in (pretrained / "model", pretrained / "copy"):
        assert (d / "config.json").exists() and (d / "model.safetensors").exists()
        assert (d / "tokenizer.json").exists() or (d / "tokenizer_config.json").exists()
    curve = json.loads((pretrained / "pretrain_curve.json").read_text())
    assert curve["steps"] == 3 and curve["curve"][-1]["step"] == 3
    assert 0 <= curve["curve"][-1]["val_full"] <= 1 and 0 <= curve["curve"][-1]["val_crop"] <= 1


def test_shortened_demo(pretrained, tmp_path):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--model", str(pretrained / "model"), "--steps", "2", "--eval-every", "1",
               "--n-eval", "6", "--n-opd", "8", "--no-progress"])
    assert rc == 0
    for name in ("report.md", "demo.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    s = json.loads((out / "summary.json").read_text())
    for k in ("full_before", "crop_before", "full_after", "crop_after"):
        assert 0.0 <= s[k] <= 1.0, (k, s[k])
    assert s["seconds"] > 0 and math.isfinite(s["seconds"])
    assert [p["step"] for p in s["curve"]] == [0, 1, 2]
    assert "Vision-OPD" in (out / "report.md").read_text()


def test_shipped_checkpoint_is_small():
    from vision_opd.demo import ASSET_MODEL

    if not (ASSET_MODEL / "config.json").exists():
        pytest.skip("no shipped checkpoint")
    size = sum(p.stat().st_size for p in ASSET_MODEL.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024, f"{ASSET_MODEL} is {size / 1e6:.1f} MB"
