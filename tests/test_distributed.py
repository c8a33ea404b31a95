"""Data parallel (DDP) and sharded (FSDP) training on 2 CPU processes (gloo, launched with torchrun as a user
would) give the same weights as one process on the same data, also when the prompts do not divide by the ranks.
The two-process runs score each prompt once for its responses (`train.share_prompts`, the default, inside the
wrapped module's forward); the one-process reference scores every row with its own prompt."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
pytestmark = pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(synth_dir, out, *extra):
    # greedy rollouts: the runs then see the same responses, so any difference comes from the distributed
    # gradient (sharding of prompts and weights, normalisation by the global token count, sync), not sampling.
    # 3 prompts over 2 ranks: rank 1 pads its share with a repeated prompt whose tokens count for nothing.
    return [f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={out}", "train.steps=3", "train.prompts_per_step=3",
            "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4", "rollout.do_sample=false", "train.micro_batch_size=2",
            "train.progress=false", "optim.warmup_steps=0", "optim.lr=1e-3", "views.teacher_pixels=12544", "train.device=cpu",
            "teacher.mode=ema", "teacher.ema_rate=0.5", "train.save_every=2", *extra]


def _torchrun(args, *flags):
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "vision_opd.cli", "train", *args, *flags]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "train.share_prompts:" not in res.stdout  # the prompts were shared (no fallback to the per-row path)
    return res


@pytest.fixture(scope="module")
def single(tmp_path_factory, synth_dir):
    from vision_opd.config import load_config
    from vision_opd.train import train

    return train(load_config(None, _args(synth_dir, tmp_path_factory.mktemp("one") / "run", "train.share_prompts=false")))


def _weights(ckpt):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(ckpt).state_dict()  # gathered checkpoints load like any other


def _compare(one, two):
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(m1) == len(m2) == 3  # written once, by rank 0
    for a, b in zip(m1, m2, strict=True):
        assert a["tokens"] == b["tokens"]  # the global token count: the padding prompt's tokens are not in it
        assert a["response_len"] == pytest.approx(b["response_len"]) and a["truncation_rate"] == b["truncation_rate"]
        # the gradient norm is scale-sensitive (unlike Adam's update): it checks the normalisation
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)  # a sum of near-zero terms: summation order shows
    last = "checkpoints/step_000003"
    wa, wb = _weights(one / last), _weights(two / last)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=1e-4, msg=k)
    from safetensors.torch import load_file

    ta, tb = load_file(str(one / last / "teacher/model.safetensors")), load_file(str(two / last / "teacher/model.safetensors"))
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], atol=1e-5, rtol=1e-4, msg=k)


def test_ddp_two_processes_equal_one_with_prompts_not_divisible_by_ranks(tmp_path, synth_dir, single):
    _torchrun(_args(synth_dir, tmp_path / "two"))
    _compare(single, tmp_path / "two")


def test_fsdp_two_processes_equal_one_with_prompts_not_divisible_by_ranks_and_resume(tmp_path, synth_dir, single):
    """3 prompts over 2 FSDP ranks used to hang (2 micro-batches on rank 0, 1 on rank 1, an all-gather in each)."""
    run = tmp_path / "fsdp"
    _torchrun(_args(synth_dir, run, "train.distributed=fsdp"))
    _compare(single, run)
    # resume a sharded run from its step-2 checkpoint (weights gathered, full optimizer state re-sharded)
    shutil.rmtree(run / "checkpoints" / "step_000003")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    res = _torchrun(_args(synth_dir, run, "train.distributed=fsdp"), "--resume")
    assert "resumed from" in res.stdout
    _compare(single, run)
