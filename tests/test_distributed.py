"""Data parallel on 2 CPU processes (gloo, launched with torchrun as a user would) equals one process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(synth_dir, out):
    # greedy rollouts: the two runs then see the same responses, so any difference comes from the
    # distributed gradient (sharding, normalisation by the global token count, sync), not from sampling
    return [f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={out}", "train.steps=3", "train.prompts_per_step=4",
            "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4", "rollout.do_sample=false", "train.micro_batch_size=2",
            "train.progress=false", "optim.warmup_steps=0", "optim.lr=1e-3", "views.teacher_pixels=12544", "train.device=cpu",
            "teacher.mode=ema", "teacher.ema_rate=0.5"]


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
                    reason="torchrun not installed")
def test_ddp_two_processes_equal_one(tmp_path, synth_dir):
    from safetensors.torch import load_file

    from vision_opd.config import load_config
    from vision_opd.train import train

    one = train(load_config(None, _args(synth_dir, tmp_path / "one")))
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "vision_opd.cli", "train", *_args(synth_dir, tmp_path / "two")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    two = tmp_path / "two"
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(m1) == len(m2) == 3  # written once, by rank 0
    for a, b in zip(m1, m2, strict=True):
        assert a["tokens"] == b["tokens"]  # global token count
        # the gradient norm is scale-sensitive (unlike Adam's update): it checks the normalisation
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    for sub in ("model.safetensors", "teacher/model.safetensors"):
        wa = load_file(str(one / "checkpoints" / "step_000003" / sub))
        wb = load_file(str(two / "checkpoints" / "step_000003" / sub))
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=1e-4)
