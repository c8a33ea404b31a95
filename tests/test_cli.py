"""The commands a user runs first, run as the README runs them: the shipped configs, `train --config
configs/tiny_cpu.yaml`, `synth`, `config`, `data validate`; and the shipped demo checkpoint, loaded and measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
VISION_OPD = Path(sys.executable).with_name("vision-opd")


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {"tiny_cpu.yaml", "qwen3_5_4b_reference.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path):
    from vision_opd.config import load_config, to_dict

    cfg = load_config(path)  # unknown keys, wrong types and invalid values all raise here
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    resolved = to_dict(cfg)
    for section, keys in raw.items():  # every value the file sets is the value the run gets
        for key, value in keys.items():
            got = resolved[section][key]
            assert got == (list(value) if isinstance(value, tuple) else value), f"{path.name}: {section}.{key}"


@pytest.mark.skipif(not VISION_OPD.exists(), reason="the vision-opd entry point is not installed")
def test_tiny_cpu_config_trains_through_the_cli_as_the_readme_says(tmp_path):
    """`vision-opd train --config configs/tiny_cpu.yaml` from a fresh folder: synthetic data written on first use,
    metrics, samples and a loadable checkpoint (two steps instead of twenty)."""
    res = subprocess.run([str(VISION_OPD), "train", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"),
                          "train.steps=2", "train.sample_every=1", "train.progress=false"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    run = tmp_path / "runs" / "tiny_cpu"
    assert (tmp_path / "data" / "synth" / "train.jsonl").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2] and all(m["tokens"] > 0 and m["skipped"] == 0 for m in lines)
    assert (run / "samples.jsonl").is_file()
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.from_pretrained(run / "checkpoints" / "step_000002")
    assert "done: 2 steps" in res.stdout


@pytest.mark.skipif(not VISION_OPD.exists(), reason="the vision-opd entry point is not installed")
def test_the_entry_points_run_the_commands_that_load_no_model(tmp_path):
    """The installed `vision-opd` script and `python -m vision_opd.cli` (torchrun's form) as a user runs them: exit
    codes and output of the commands that load no model (train's entry point: the test above; eval's:
    tests/test_cli_errors.py; the rest of the CLI's behaviour is tested in-process)."""

    def run(*args, rc=0, module=False):
        cmd = [sys.executable, "-m", "vision_opd.cli"] if module else [str(VISION_OPD)]
        p = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        out = p.stdout + p.stderr
        assert p.returncode == rc and "Traceback" not in out, out
        return out

    assert run("--version").startswith("vision-opd 0.") and "usage: vision-opd" in run("--help")
    assert run("--version", module=True).startswith("vision-opd 0.")
    assert "wrote 2 records" in run("synth", "--out", "d", "--n", "2")
    assert "2 good record(s), 0 bad" in run("data", "validate", "d/records.jsonl")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "a", "image": "nope.png", "question": "What colour?",
                                                    "options": ["red", "blue"]}) + "\n")
    assert "bad.jsonl:1 (id 'a'):" in run("data", "validate", "bad.jsonl", rc=1)
    assert yaml.safe_load(run("config", "train.steps=3"))["train"]["steps"] == 3
    assert "vision-opd: error: unknown config key 'train.stepz'" in run("config", "train.stepz=3", rc=2)
    assert "vision-opd: error:" in run("report", "d", rc=2)
    assert "not a checkpoint" in run("export", "d", "--out", "x", rc=2)
    assert "tokens.jsonl not found" in run("inspect", "d", rc=1)


def test_synth_then_validate_a_good_file_then_config(tmp_path, capsys):
    from vision_opd.cli import main
    from vision_opd.config import load_config, to_dict
    from vision_opd.data.validate import read_records

    assert main(["synth", "--out", str(tmp_path / "d"), "--n", "3", "--seed", "5"]) == 0
    assert "wrote 3 records" in capsys.readouterr().out
    recs = read_records(tmp_path / "d" / "records.jsonl")
    assert len(recs) == 3 and all(r.box is not None and r.options and r.answer for r in recs)
    assert main(["data", "validate", str(tmp_path / "d" / "records.jsonl")]) == 0
    assert "3 good record(s), 0 bad, 3 line(s)" in capsys.readouterr().out
    assert main(["config", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), "train.steps=7", "loss.alpha=1.0"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    want = to_dict(load_config(ROOT / "configs" / "tiny_cpu.yaml", ["train.steps=7", "loss.alpha=1.0"]))
    assert printed == want and printed["train"]["steps"] == 7 and printed["loss"]["alpha"] == 1.0


def test_the_shipped_demo_checkpoint_loads_and_has_the_gap(tmp_path):
    """src/vision_opd/assets/demo_model is the pre-trained model: it answers the crops of held-out items well and
    their hard full images far worse (the gap the demo closes)."""
    from vision_opd.demo.pretrain import DEMO_VIEWS, eval_split, evaluate_views, load_demo_model
    from vision_opd.demo.run import ASSET_MODEL, world_of

    model, proc = load_demo_model(ASSET_MODEL)
    assert model.config.model_type == "qwen2_vl"
    held = eval_split(tmp_path / "data", "val", 24, world_of(ASSET_MODEL))
    acc = evaluate_views(model, proc, held, DEMO_VIEWS)
    assert acc["crop"] >= 0.8, acc
    assert acc["crop"] - acc["full"] >= 0.3, acc
