"""The ablation presets (configs/ablations/, docs/ablations.md): they load, differ only where they must, and run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vision_opd.config import load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("onpolicy", "offpolicy", "seqkd", "textonly", "opdv", "cvopd", "vzero")
# what each preset changes against onpolicy.yaml (besides train.out_dir)
DIFFERS = {
    "onpolicy": {},
    "offpolicy": {"rollout.source": "teacher"},
    "seqkd": {"rollout.source": "teacher", "rollout.samples_per_prompt": 1, "rollout.teacher_do_sample": False,
              "rollout.drop_unanswered": True, "loss.kind": "ce"},
    "textonly": {"views.teacher_source": "none"},
    "opdv": {"views.negative": "mask", "loss.weighting": "opdv"},
    "cvopd": {"views.negative": "random_crop", "loss.weighting": "cvopd"},
    "vzero": {"views.negative": "downsample", "loss.weighting": "vzero", "loss.kind": "sampled", "loss.sampled_clip": 10.0},
}


def _flat(cfg) -> dict:
    return {f"{section}.{k}": v for section, d in to_dict(cfg).items() for k, v in d.items()}


def _preset(name: str, *overrides: str):
    return load_config(ROOT / "configs" / "ablations" / f"{name}.yaml", list(overrides))


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_differ_only_where_they_must(name):
    base, cfg = _flat(_preset("onpolicy")), _flat(_preset(name))
    diff = {k: v for k, v in cfg.items() if v != base[k] and k != "train.out_dir"}
    assert diff == DIFFERS[name]
    assert cfg["train.out_dir"] == f"runs/ablations/{name}" and cfg["train.dump_tokens_every"] > 0
    assert cfg["model.name_or_path"] == "Qwen/Qwen2.5-VL-7B-Instruct" and cfg["teacher.mode"] == "frozen"


@pytest.fixture(scope="module")
def six_k_like(tmp_path_factory):
    """Synthetic records in the preset's shape: each with its own teacher_image (the evidence crop, as in the 6K data)."""
    from matrix_rows import write_matrix_data

    return write_matrix_data(tmp_path_factory.mktemp("sixk"))


@pytest.mark.parametrize("name", PRESETS)
def test_presets_run_one_step_with_a_tiny_model(name, six_k_like, tmp_path):
    """The preset as shipped, with only the model, data and size overridden: `vision-opd train` completes a step."""
    from vision_opd.cli import main

    tiny = ["model.name_or_path=tiny:qwen2_5_vl", "model.dtype=float32", "model.max_pixels=null",
            f"data.train_file={six_k_like}", "data.format=records", f"train.out_dir={tmp_path / name}", "train.steps=1",
            "train.prompts_per_step=2", "rollout.max_new_tokens=4", "train.progress=false", "train.save_every=0",
            "train.dump_tokens_every=1", "train.tensorboard=false"]
    if name != "seqkd":
        tiny.append("rollout.samples_per_prompt=2")
    assert main(["train", "--config", str(ROOT / "configs" / "ablations" / f"{name}.yaml"), *tiny]) == 0
    m = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
    assert m["student_share"] == (0.0 if name in ("offpolicy", "seqkd") else 1.0)
    # a step with no loss token is skipped (seqkd leaves out the teacher's unanswered greedy answers, and a random
    # tiny teacher answers none in 4 tokens); any other step trains
    assert (m["skipped"], m["skip_reason"]) == ((1, "no loss token (every response left out)") if m["tokens"] == 0 else (0, "")), m
    assert ("negative_logprob_gap" in m) == (name in ("opdv", "cvopd", "vzero"))
    assert (tmp_path / name / "checkpoints" / "step_000001" / "COMPLETE").exists()
