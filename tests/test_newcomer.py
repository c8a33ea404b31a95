"""The first hour with the project: the README says how to use the installed command, a failed start leaves nothing
behind, train says what it is about to do (and no library deprecation notices), an unreachable hub fails in
seconds, export prints a serve command that runs where it is printed, and the folders the docs have users create
are git-ignored."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vision_opd.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _train_args(data, out, *extra):
    return ["train", f"data.train_file={data}", f"train.out_dir={out}", "train.steps=1", "train.prompts_per_step=2",
            "rollout.samples_per_prompt=2", "rollout.max_new_tokens=3", "train.progress=false",
            "views.teacher_pixels=12544", "train.report=false", *extra]


def test_quick_start_keeps_two_commands_and_says_how_to_run_vision_opd():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = text[text.index("## Quick start"):text.index("\n## ", text.index("## Quick start") + 5)]
    first = re.search(r"```bash\n(.*?)```", quick, re.S).group(1)
    assert [line.split("#")[0].strip() for line in first.strip().splitlines()] == ["make demo", "make test"]
    assert "source .venv/bin/activate" in quick and "`.venv/bin/vision-opd" in quick


def test_a_failed_start_leaves_nothing_and_the_next_run_says_no_overwrite(tmp_path, synth_dir, capsys, recwarn):
    run = tmp_path / "run"
    rows = [json.loads(x) for x in (synth_dir / "train.jsonl").read_text().splitlines()]
    bad = synth_dir / "newcomer_bad.jsonl"  # [x, y, w, h] boxes: refused at load, before step 1
    bad.write_text("".join(json.dumps(dict(r, box=[r["box"][0], r["box"][1], 27, 27])) + "\n" for r in rows))
    assert main(_train_args(bad, run)) == 2
    capsys.readouterr()
    assert not run.exists() or not any(run.iterdir()), "a start refused before step 1 leaves nothing behind"
    run.mkdir(exist_ok=True)
    (run / "config.yaml").write_text("train: {}\n")  # what an earlier version left after such a start
    assert main(_train_args(synth_dir / "train.jsonl", run, "model.lora_r=4")) == 0
    out = capsys.readouterr().out
    assert "--overwrite" not in out
    # the start-up summary: model, dtype, trainable parameters, records, steps, where the run writes
    line = next(x for x in out.splitlines() if x.startswith("[vision-opd] training "))
    assert re.fullmatch(rf"\[vision-opd\] training tiny:qwen2_5_vl \(float32, LoRA r=4; [\d,]+ of [\d,]+ parameters "
                        rf"trainable\) on 12 records of {re.escape(str(synth_dir / 'train.jsonl'))}: 1 steps x 2 prompts x "
                        rf"2 samples; writes {re.escape(str(run))}", line), line
    # no library deprecation notices in a train's output
    noise = [str(w.message) for w in recwarn if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not noise, noise


def test_an_unreachable_hub_fails_in_seconds_with_one_line(tmp_path, synth_dir):
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        pytest.skip("the hub is reachable from this machine")
    except OSError:
        pass
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    env["OMP_NUM_THREADS"] = "1"
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "vision_opd.cli", "eval", "--model", "vision-opd-test/no-such-model",
                        "--benchmark", "synthetic", "--data", str(synth_dir / "train.jsonl"), "--out", str(tmp_path / "e"),
                        "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    seconds = time.time() - t0
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and "the hub (huggingface.co) cannot be reached from here" in p.stderr
    assert "hf download vision-opd-test/no-such-model" in p.stderr
    assert seconds < 30, seconds  # start-up and imports included; the hub's retries took about a minute


def test_export_prints_serve_commands_that_run_where_printed(tmp_path, capsys):
    from vision_opd.models.tiny import save_tiny

    folder = save_tiny(tmp_path / "model", family="qwen2_vl")
    assert main(["export", str(folder), "--out", str(tmp_path / "my_model")]) == 0
    lines = [x.strip() for x in capsys.readouterr().out.splitlines()]
    gpu = [x for x in lines if x.startswith("vllm serve ")]
    cpu = [x for x in lines if x.startswith("VLLM_CPU_KVCACHE_SPACE=1 ")]
    assert len(gpu) == 1 and "--gpu-memory-utilization" in gpu[0] and "--dtype float32" in gpu[0]
    assert len(cpu) == 1 and " -m vllm.entrypoints.openai.api_server --model " in cpu[0] and "--dtype float32" in cpu[0]
    assert "--served-model-name my_model" in cpu[0] and "--enforce-eager" in cpu[0]


def test_the_folders_the_docs_create_are_git_ignored():
    made = set()
    tracked = {f.split("/")[0] for f in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True,
                                                      text=True).stdout.split()}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for m in re.finditer(r"(?:--out|--data|data\.train_file=|train\.out_dir=|--copy-to) ([\w.-]+)/", doc.read_text()):
            if m.group(1) not in tracked:  # a folder of the repository is no folder a user creates (runs/ may exist)
                made.add(m.group(1))
    assert {"my_data", "exports", "runs"} <= made
    ignored = subprocess.run(["git", "check-ignore", *[f"{d}/x" for d in sorted(made)]], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert sorted(made) == sorted(x.split("/")[0] for x in ignored), made
