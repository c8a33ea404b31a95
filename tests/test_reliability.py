"""Bad input, interruptions and numerical faults lose nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from vision_opd.config import load_config
from vision_opd.data.images import open_image
from vision_opd.data.validate import validate_file
from vision_opd.training.guards import TrainingStopped


def _good(i, **kw):
    row = {"id": f"g{i}", "image": "images/ok.png", "question": "What colour?", "options": ["red", "blue"], "answer": "A",
           "box": [2, 2, 20, 20]}
    row.update(kw)
    return row


@pytest.fixture()
def corpus(tmp_path):
    """A data file with every kind of bad record (each with the message it must produce) and good ones."""
    d = tmp_path / "data"
    (d / "images").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(d / "images" / "ok.png")
    raw = (d / "images" / "ok.png").read_bytes()
    (d / "images" / "truncated.png").write_bytes(raw[: len(raw) // 2])
    (d / "images" / "garbage.png").write_bytes(os.urandom(300))
    (d / "images" / "notes.png").write_text("this is a text file")
    Image.new("RGB", (400, 300)).save(d / "images" / "big.png")
    for mode in ("L", "LA", "P", "RGBA", "CMYK", "I;16"):
        Image.new(mode, (40, 30)).save(d / "images" / f"mode_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}")
    rot = Image.new("RGB", (60, 20))
    exif = rot.getexif()
    exif[0x0112] = 6
    rot.save(d / "images" / "rotated.jpg", exif=exif)
    (tmp_path / "outside.png").write_bytes(raw)
    bad = [  # (row or raw line, expected message fragment)
        (_good(0, id="b_missing", image="images/nope.png"), "image file not found"),
        (_good(0, id="b_trunc", image="images/truncated.png"), "cannot decode image"),
        (_good(0, id="b_garbage", image="images/garbage.png"), "cannot decode image"),
        (_good(0, id="b_text", image="images/notes.png"), "cannot decode image"),
        (_good(0, id="b_big", image="images/big.png"), "over the limit"),
        (_good(0, id="b_outside", box=[100, 100, 120, 120]), "outside the 40x30 image"),
        (_good(0, id="b_past", box=[30, 20, 45, 35]), "extends past the 40x30 image"),
        (_good(0, id="b_inverted", box=[20, 20, 2, 2]), "zero or negative area"),
        (_good(0, id="b_zero", box=[5, 5, 5, 9]), "zero or negative area"),
        ('{"id": "b_nan", "image": "images/ok.png", "question": "q", "box": [1, 2, NaN, 4]}', "non-finite"),
        (_good(0, id="b_len", box=[1, 2, 3]), "list of 4 numbers"),
        (_good(0, id="b_strbox", box="1,2,3,4"), "list of 4 numbers"),
        (_good(0, id="b_empty_q", question="   "), "empty or missing 'question'"),
        (_good(0, id="b_answer", answer="C"), "neither an option letter"),
        (_good(0, id="b_answer_text", answer="green"), "neither an option letter"),
        (_good(0, id="b_options", options="red"), "'options' must be a non-empty list"),
        ('{"id": "b_json", "image": ', "invalid JSON"),
        ("[1, 2, 3]", "expected a JSON object"),
        (_good(0, id="b_noid") | {"id": None}, "missing 'id'"),
        (_good(0, id="b_escape", image="../outside.png"), "outside the dataset folder"),
        (_good(0, id="b_teacher", teacher_image="images/nope.png"), "image file not found"),
        (_good(1), "duplicate id"),  # same id as the good record g1 below (listed first)
    ]
    lines = [json.dumps(_good(1))]
    expected = {}
    for row, msg in bad:
        lines.append(row if isinstance(row, str) else json.dumps(row))
        expected[len(lines)] = msg
    lines.append(b"\xff\xfe not utf-8".decode("latin-1"))
    expected[len(lines)] = "not valid UTF-8"
    good_modes = [_good(10 + i, image=f"images/mode_{m}.{'jpg' if m == 'CMYK' else 'png'}") for i, m in enumerate(("L", "LA", "P", "RGBA", "CMYK", "I16"))]
    good_rot = _good(20, image="images/rotated.jpg", box=[2, 40, 18, 58])  # valid only after the EXIF rotation (20x60)
    lines += [json.dumps(r) for r in good_modes + [good_rot]]
    path = d / "train.jsonl"
    with open(path, "wb") as f:
        for ln in lines:
            f.write((ln.encode("latin-1") if "not utf-8" in ln else ln.encode("utf-8")) + b"\n")
    return path, expected


def test_every_bad_record_gets_its_message(corpus):
    path, expected = corpus
    assert len(expected) >= 20
    report = validate_file(path, max_pixels=100_000)
    got = {p.line: p.message for p in report.problems}
    assert set(got) == set(expected), f"unexpected lines: {sorted(set(got) ^ set(expected))}"
    for line, fragment in expected.items():
        assert fragment in got[line], (line, got[line])
        assert got[line].startswith(f"{path}:{line}")
    assert sorted(r.id for r in report.records) == ["g1", "g10", "g11", "g12", "g13", "g14", "g15", "g20"]
    assert "b_trunc" in next(m for ln, m in got.items() if "truncated" in m or "b_trunc" in m)


def test_modes_converted_to_rgb(corpus):
    path, _ = corpus
    for img in sorted((path.parent / "images").glob("mode_*")):
        assert open_image(img).mode == "RGB"


def test_cli_validate_and_skip_bad_training(corpus, tmp_path, capsys):
    from vision_opd.cli import main

    path, expected = corpus
    assert main(["data", "validate", str(path), "--max-pixels", "100000"]) == 1
    out = capsys.readouterr().out
    assert f"{len(expected)} bad" in out and "b_garbage" in out
    base = [f"data.train_file={path}", f"train.out_dir={tmp_path / 'run'}", "train.steps=1", "train.prompts_per_step=2",
            "rollout.samples_per_prompt=2", "rollout.max_new_tokens=3", "train.progress=false", "views.max_image_pixels=100000"]
    assert main(["train", *base]) == 2
    assert "bad record(s)" in capsys.readouterr().err
    assert main(["train", "--skip-bad", *base]) == 0
    m = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert m["bad_records"] == len(expected) and m["tokens"] > 0


def _cli(out_dir, synth_dir, *extra):
    return [sys.executable, "-m", "vision_opd.cli", "train", f"data.train_file={synth_dir / 'train.jsonl'}",
            f"train.out_dir={out_dir}", "train.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
            "train.micro_batch_size=2", "train.progress=false", "optim.warmup_steps=0", "optim.lr=1e-3",
            "views.teacher_pixels=12544", *extra]


def _wait_for(cond, proc, timeout=120):
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stdout.read() if proc.stdout else ''}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.2)


@pytest.mark.slow  # a training process killed mid-checkpoint (the resume equality itself: tests/test_train.py)
def test_sigkill_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path, synth_dir):
    from vision_opd.training.checkpoint import complete_checkpoints, latest_checkpoint
    from vision_opd.training.loop import train

    run = tmp_path / "run"
    env = dict(os.environ, VISION_OPD_TEST_PAUSE_SAVE_AT="4", VISION_OPD_TEST_PAUSE_SECONDS="120")
    proc = subprocess.Popen(_cli(run, synth_dir, "train.steps=4", "train.save_every=2"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tmp4 = run / "checkpoints" / "step_000004.tmp" / "trainer_state.pt"
    _wait_for(tmp4.exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(run).name == "step_000002"  # the half-written one is ignored
    cfg = load_config(run / "config.yaml")
    train(cfg, resume=True)
    assert [c.name for c in complete_checkpoints(run)] == ["step_000002", "step_000004"]
    assert not (run / "checkpoints" / "step_000004.tmp").exists()


@pytest.mark.slow  # three training processes, one stopped by SIGTERM
def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path, synth_dir):
    from safetensors.torch import load_file

    from vision_opd.training.checkpoint import latest_checkpoint, load_trainer_state

    steps = 5
    # every run in a fresh process with one thread, so that float summation orders match bit for bit
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = tmp_path / "ref"
    subprocess.run(_cli(ref, synth_dir, f"train.steps={steps}"), check=True, env=env, capture_output=True)
    run = tmp_path / "run"
    # the run waits after step 2 until the signal lands (a fast machine would otherwise finish all 5 steps first)
    wait_env = dict(env, VISION_OPD_TEST_WAIT_SIGNAL_AT="2", VISION_OPD_TEST_PAUSE_SECONDS="120")
    proc = subprocess.Popen(_cli(run, synth_dir, f"train.steps={steps}"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=wait_env)
    metrics = run / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out  # 128 + SIGTERM: a scheduler sees a preempted run, not a finished one
    assert latest_checkpoint(run).name == "step_000002", out
    assert "received SIGTERM" in out and "resume with --resume" in out and "Traceback" not in out
    subprocess.run([sys.executable, "-m", "vision_opd.cli", "train", "--config", str(run / "config.yaml"), "--resume"],
                   check=True, env=env, capture_output=True)
    a, b = latest_checkpoint(ref), latest_checkpoint(run)
    assert a.name == b.name == f"step_{steps:06d}"
    for sub in ("model.safetensors", "teacher/model.safetensors"):
        wa, wb = load_file(str(a / sub)), load_file(str(b / sub))
        for key in wa:
            torch.testing.assert_close(wb[key], wa[key], atol=1e-6, rtol=1e-5)
    oa, ob = load_trainer_state(a)["optimizer"]["state"], load_trainer_state(b)["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    for i in oa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(ob[i][name], oa[i][name], atol=1e-6, rtol=1e-5)


def test_non_finite_loss_is_skipped_counted_and_training_goes_on(tmp_path, synth_dir, monkeypatch):
    from vision_opd.training import loop as T
    from vision_opd.training import step as S  # the step looks the divergence up in its own module

    calls = {"n": 0}
    real = S.token_divergence_from_hidden

    def poisoned(*a, **kw):
        calls["n"] += 1
        per_tok, m = real(*a, **kw)
        if calls["n"] == 3:  # one micro-batch of step 2 (2 micro-batches per step)
            per_tok = per_tok * float("nan")
        return per_tok, m

    monkeypatch.setattr(S, "token_divergence_from_hidden", poisoned)
    cfg = load_config(None, _cli(tmp_path / "run", synth_dir, "train.steps=3")[4:])
    T.train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped"] for m in lines] == [0, 1, 0]
    assert lines[2]["loss"] > 0


def test_consecutive_non_finite_steps_stop_the_run_with_a_checkpoint(tmp_path, synth_dir, monkeypatch):
    from vision_opd.training import loop as T
    from vision_opd.training import step as S  # the step looks the divergence up in its own module

    real = S.token_divergence_from_hidden
    monkeypatch.setattr(S, "token_divergence_from_hidden", lambda *a, **kw: (lambda r: (r[0] * float("inf"), r[1]))(real(*a, **kw)))
    cfg = load_config(None, _cli(tmp_path / "run", synth_dir, "train.steps=10", "train.max_consecutive_skips=2")[4:])
    with pytest.raises(TrainingStopped, match="2 consecutive non-finite"):
        T.train(cfg)
    assert (tmp_path / "run" / "checkpoints" / "step_000002" / "COMPLETE").is_file()


def test_collapse_signal_logged_and_can_stop(tmp_path, synth_dir):
    from vision_opd.training import loop as T

    # a random-weight model never emits EOS: truncation rate 1.0 is a collapse signal
    cfg = load_config(None, _cli(tmp_path / "run", synth_dir, "train.steps=5", "train.stop_on_collapse=true",
                                 "train.collapse_patience=2")[4:])
    with pytest.raises(TrainingStopped, match="truncation_rate"):
        T.train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all("truncation_rate" in m["collapse"] for m in lines)


def test_checkpoint_state_loads_with_weights_only(tmp_path, synth_dir):
    from vision_opd.training.checkpoint import latest_checkpoint

    T = __import__("vision_opd.training.loop", fromlist=["train"])
    run = T.train(load_config(None, _cli(tmp_path / "run", synth_dir, "train.steps=1")[4:]))
    state = torch.load(latest_checkpoint(run) / "trainer_state.pt", weights_only=True)
    assert state["step"] == 1 and "optimizer" in state
    assert Path(latest_checkpoint(run) / "teacher" / "model.safetensors").is_file()


def test_collapse_watch_survives_resume(tmp_path, synth_dir):
    """The collapse streak (and the length baseline) is trainer state: a resumed run stops where an uninterrupted one would."""
    from vision_opd.training import loop as T

    base = _cli(tmp_path / "run", synth_dir, "train.stop_on_collapse=true", "train.collapse_patience=3")[4:]
    T.train(load_config(None, base + ["train.steps=2"]))  # truncation rate 1.0 at steps 1-2: a streak of 2, no stop
    with pytest.raises(TrainingStopped, match="collapse signal at step 3"):  # not at step 5 (a streak restarted at 0)
        T.train(load_config(None, base + ["train.steps=6"]), resume=True)


def test_consecutive_skip_counter_survives_resume(tmp_path, synth_dir, monkeypatch):
    from vision_opd.training import loop as T
    from vision_opd.training import step as S  # the step looks the divergence up in its own module

    real = S.token_divergence_from_hidden
    monkeypatch.setattr(S, "token_divergence_from_hidden", lambda *a, **kw: (lambda r: (r[0] * float("nan"), r[1]))(real(*a, **kw)))
    base = _cli(tmp_path / "run", synth_dir, "train.max_consecutive_skips=3")[4:]
    T.train(load_config(None, base + ["train.steps=2"]))  # two non-finite steps in a row, then the final checkpoint
    with pytest.raises(TrainingStopped, match="3 consecutive non-finite") as e:
        T.train(load_config(None, base + ["train.steps=8"]), resume=True)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines][-1] == 3, e.value  # stopped at step 3, not 5


def test_guards_state_round_trips():
    from types import SimpleNamespace

    from vision_opd.training.guards import CollapseWatch, SkipGuard

    t = SimpleNamespace(collapse_truncation_rate=0.5, collapse_kl=10.0, collapse_length_ratio=4.0, collapse_patience=3,
                        stop_on_collapse=True)
    w = CollapseWatch(t)
    for n in (3.0, 4.0):
        w.update({"response_len": n, "truncation_rate": 1.0, "kl": 0.1})
    w2 = CollapseWatch(t)
    w2.load_state_dict(w.state_dict())
    assert (w2.base_len, w2.streak, w2.stop) == ([3.0, 4.0], 2, False)
    s = SkipGuard(5)
    s.streak = 2
    s2 = SkipGuard(5)
    s2.load_state_dict(s.state_dict())
    assert s2.streak == 2


def test_building_the_rollout_engine_leaves_a_resumed_runs_rng_alone(tmp_path, synth_dir, monkeypatch):
    """vLLM's `LLM(seed=...)` reseeds random, numpy and torch: built after the checkpoint's RNG was restored, it made
    a resumed run replay step 1's sampling noise. A stand-in engine that reseeds as vLLM does (sampling with HF
    generate, so no vLLM is needed): the resumed run's step 3 samples what the uninterrupted run's step 3 sampled."""
    import random
    import shutil

    import numpy as np

    import vision_opd.rollout.vllm_engine as V
    from vision_opd.rollout import HFEngine
    from vision_opd.training import loop as T
    from vision_opd.training.checkpoint import latest_checkpoint

    seeds = []

    class ReseedingEngine(HFEngine):
        def __init__(self, model, processor, decoding, vcfg, *, seed, **kw):
            seeds.append(seed)
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            super().__init__(processor, decoding)

    monkeypatch.setattr(V, "VLLMEngine", ReseedingEngine)
    monkeypatch.setattr(T, "check_engine_available", lambda cfg: None)

    def run(out, resume=False):
        cfg = load_config(None, _cli(out, synth_dir, "train.steps=3", "train.save_every=2", "rollout.engine=vllm",
                                     "rollout.do_sample=true", "rollout.temperature=1.0", "train.sample_every=1",
                                     "train.threads=1", "train.report=false")[4:])
        T.train(cfg, resume=resume)
        rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
        return {s: [r["response"] for r in rows if r["step"] == s] for s in (1, 2, 3)}

    ref = run(tmp_path / "ref")
    shutil.copytree(tmp_path / "ref", tmp_path / "run")
    shutil.rmtree(latest_checkpoint(tmp_path / "run"))  # back to step 2
    again = run(tmp_path / "run", resume=True)
    assert seeds == [0, 0]  # rank 0 keeps the seed
    assert again == ref and ref[3] != ref[1]  # step 3 sampled anew, not step 1's noise again


def test_rank_seeds_never_collide_over_seeds_and_ranks():
    """`seed + rank` gave rank 1 of seed 0 the stream of rank 0 of seed 1."""
    from vision_opd.rollout import rank_seed

    grid = [(s, r) for s in [*range(1000), 2**20, 999_999] for r in range(256)]
    got = {rank_seed(s, r) for s, r in grid}
    assert len(got) == len(grid)
    assert all(rank_seed(s, 0) == s for s in range(10)) and max(got) < 2**32
