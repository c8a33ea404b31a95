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
            "--n-eval", "6", "--n-opd", "8", "--arms", "opd,opd-rarity,continue", "--split", "val", "--no-progress",
            "--dump-tokens-every", "1"]
    assert main(args) == 0
    runs = json.loads((out / "study.json").read_text())["runs"]
    assert [r["name"] for r in runs] == ["opd", "opd-rarity", "continue"]
    rar = runs[1]
    assert rar["proposals"]["proposer"] == "rarity" and 0 <= rar["proposals"]["recall@0.5"] <= 1
    assert rar["proposals"]["mean_forward_passes"] == 1.0 and (out / "proposals_rarity.jsonl").exists()
    assert runs[0]["proposals"] is None and set(runs[0]["per_type_after"]["full"]) <= {"colour", "dot", "digit"}
    assert "opd-rarity" in (out / "study.md").read_text()
    assert (out / "tokens" / "opd_s0" / "tokens.jsonl").stat().st_size > 0  # the label-free arms' token dumps
    assert not (out / "tokens" / "continue_s0").exists()
    assert main(["inspect", str(out / "tokens" / "opd_s0")]) == 0
    assert main(args) == 0  # all done: nothing is rerun
    assert len(json.loads((out / "study.json").read_text())["runs"]) == 3


def test_study_off_policy_arms_run_through_the_training_step(pretrained, tmp_path):
    """seqkd (the teacher's greedy answers, cross-entropy) and GKD's mix are `vision_opd_step` with the arm's config:
    their logs carry the step's metrics (who wrote the tokens), not a separate supervised loop's."""
    from vision_opd.demo.arms import ArmConfig, run_arm
    from vision_opd.demo.run import prepare_data, world_of
    from vision_opd.demo.study import STUDY_ARMS

    opd, held = prepare_data(tmp_path, world_of(pretrained / "model"), 40, 4)
    for name, share in (("seqkd", 0.0), ("gkd-mix", None), ("opd-multiview", 1.0)):
        cfg = ArmConfig(**{**STUDY_ARMS[name], "steps": 1, "eval_every": 1})
        r = run_arm(cfg, pretrained / "model", opd, held, progress=False)
        log = r["log"][0]
        assert "sft_loss" not in log and "student_share" in log, name
        # a step with no loss token (every teacher answer left out as unanswered) is skipped; any other step trains
        assert log["skipped"] == (1 if log["tokens"] == 0 else 0), (name, log)
        assert share is None or log["student_share"] == share, name
    assert ArmConfig(**STUDY_ARMS["seqkd"]).opd_config().loss.kind == "ce"


def test_long_answer_world_pretrains_and_reads_back(pretrained, tmp_path):
    """`vision-opd pretrain --answers sentence --init CKPT`: continued from a checkpoint, the new one records its world,
    and the demo reads it back (with the longer generation budget its sentences need)."""
    import random

    from vision_opd.demo.run import world_of
    from vision_opd.demo.world import WorldConfig, draw_item, response_text
    from vision_opd.eval.choice import extract_choice
    from vision_opd.eval.extraction import LETTERS

    world = WorldConfig(answers="sentence")
    rng = random.Random(0)
    for qtype in ("colour", "dot", "digit", "shape"):
        for _ in range(5):
            it = draw_item(rng, world, qtype)
            text = response_text(it, "sentence")
            assert text.startswith(f"{it.colour} object") and text.endswith(f"Answer: {it.options[it.answer]}")
            assert extract_choice(text, it.options) == LETTERS[it.answer]  # read back as evaluation reads it
    assert main(["pretrain", "--out", str(tmp_path), "--answers", "sentence", "--init", str(pretrained / "model"),
                 "--max-steps", "2", "--eval-every", "2", "--n-val", "3", "--batch-size", "2", "--no-progress"]) == 0
    got = world_of(tmp_path / "model")
    assert json.loads((tmp_path / "pretrain_curve.json").read_text())["config"]["init"] == str(pretrained / "model")
    assert got.answers == "sentence" and got.max_new_tokens == 24 and WorldConfig().max_new_tokens == 8
    with pytest.raises(ValueError, match="WorldConfig.answers='long'"):
        WorldConfig(answers="long")


def test_study_compare_intervals_and_paired_differences():
    """scripts/study_compare.py: the share of the gap closed, its 95% t-interval over seeds, and the paired
    difference from the reference arm, against numbers worked by hand."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "study_compare.py"
    spec = importlib.util.spec_from_file_location("study_compare", path)
    sc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sc)

    def run(name, seed, full_after, crop_after=0.9):
        return {"name": name, "seed": seed, "full_before": 0.2, "crop_before": 1.0, "full_after": full_after,
                "crop_after": crop_after}

    runs = [run("opd", 0, 0.6), run("opd", 1, 0.68), run("x", 0, 0.4), run("x", 1, 0.52)]
    m, half = sc.interval([0.5, 0.6])
    assert m == pytest.approx(0.55) and half == pytest.approx(12.706 * 0.0707107 / 1.4142136, rel=1e-5)
    assert sc.interval([0.3]) == (0.3, None)
    table = sc.compare(runs, "opd").splitlines()
    # opd closes 0.5 and 0.6 of the gap (0.8); x 0.25 and 0.4: paired differences -0.25 and -0.2, mean -0.225,
    # sd 0.0354, half-width 12.706 * 0.0354 / 1.414 = 0.318: the interval holds 0, so no star
    assert table[2].startswith("| opd | 2 | 0.55 [")
    assert "| -0.22 [-0.54, +0.09] |" in table[3] and "*" not in table[3]
