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


def test_shortened_demo_without_boxes(pretrained, tmp_path):
    out = tmp_path / "demo_nobox"
    rc = main(["demo", "--out", str(out), "--model", str(pretrained / "model"), "--steps", "1", "--eval-every", "1",
               "--n-eval", "6", "--n-opd", "8", "--crop-source", "rarity", "--no-progress"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["crop_source"] == "rarity" and s["proposals"]["n"] == 8 and s["proposals"]["mean_forward_passes"] == 1.0
    assert "rarity proposer (no boxes read)" in (out / "report.md").read_text()
    assert (out / "proposals_rarity.jsonl").exists()


def test_shipped_checkpoint_is_small():
    from vision_opd.demo.run import ASSET_MODEL

    assert (ASSET_MODEL / "config.json").is_file(), f"the shipped demo checkpoint is missing from {ASSET_MODEL}"
    size = sum(p.stat().st_size for p in ASSET_MODEL.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024, f"{ASSET_MODEL} is {size / 1e6:.1f} MB"


def test_shortened_study_with_proposed_crops(pretrained, tmp_path):
    """The study runs its arms (here Vision-OPD with true boxes, with rarity-proposed crops, and continued
    pre-training), resumes without redoing finished runs, and records per-type accuracies and proposal scores."""
    out = tmp_path / "study"
    args = ["demo", "--study", "--out", str(out), "--model", str(pretrained / "model"), "--steps", "1", "--seeds", "1",
            "--n-eval", "6", "--n-opd", "8", "--arms", "opd,opd-rarity,continue", "--split", "val", "--no-progress"]
    assert main(args) == 0
    runs = json.loads((out / "study.json").read_text())["runs"]
    assert [r["name"] for r in runs] == ["opd", "opd-rarity", "continue"]
    rar = runs[1]
    assert rar["proposals"]["proposer"] == "rarity" and 0 <= rar["proposals"]["recall@0.5"] <= 1
    assert rar["proposals"]["mean_forward_passes"] == 1.0 and (out / "proposals_rarity.jsonl").exists()
    assert runs[0]["proposals"] is None and set(runs[0]["per_type_after"]["full"]) <= {"colour", "dot", "digit"}
    assert "opd-rarity" in (out / "study.md").read_text()
    assert main(args) == 0  # all done: nothing is rerun
    assert len(json.loads((out / "study.json").read_text())["runs"]) == 3
