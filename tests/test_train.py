"""The training loop end to end on tiny models: weights move, the teacher follows its rule, resume, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from vision_opd.config import load_config
from vision_opd.models.parts import unwrap
from vision_opd.models.tiny import FAMILIES


def _cfg(tmp_path, synth_dir, *extra):
    return load_config(None, [
        f"data.train_file={synth_dir / 'train.jsonl'}",
        f"train.out_dir={tmp_path / 'run'}",
        "train.steps=2", "train.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
        "train.micro_batch_size=2", "train.progress=false", "optim.warmup_steps=0", "optim.lr=1e-3",
        "views.teacher_pixels=12544", *extra,
    ])


def _snapshot(model):
    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}


def _run_steps(cfg, steps):
    """Build what train() builds and run `steps` steps; return (initial, student, teacher, metrics)."""
    from vision_opd.data.sources import load_train_records
    from vision_opd.models.loading import load_model
    from vision_opd.training import loop as T
    from vision_opd.training.stream import PromptStream

    T.seed_everything(cfg.train.seed)
    device = torch.device("cpu")
    model, proc = load_model(cfg.model, seed=cfg.train.seed, device=device)
    records, _ = load_train_records(cfg.data, cfg.views)
    teacher = T.Teacher(model, cfg.teacher.mode, cfg.teacher.ema_rate, device=cfg.teacher.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.lr_lambda(cfg))
    stream = PromptStream(len(records), 0)
    suppress = T.vision_token_ids(model, proc)
    initial = _snapshot(model)
    history = []
    for _ in range(steps):
        before_s, before_t = _snapshot(model), _snapshot(teacher.module())
        batch = [records[i] for i in stream.take(cfg.train.prompts_per_step)]
        res = T.vision_opd_step(cfg, T.StepContext(model, teacher, proc, opt, sched, suppress, device), batch)
        history.append((before_s, before_t, _snapshot(model), _snapshot(teacher.module()), res.metrics))
    return initial, model, teacher, history


@pytest.mark.parametrize("family", FAMILIES)
def test_two_steps_move_student_not_frozen_teacher(family, tmp_path, synth_dir):
    cfg = _cfg(tmp_path, synth_dir, f"model.name_or_path=tiny:{family}", "teacher.mode=frozen")
    initial, model, teacher, hist = _run_steps(cfg, 2)
    final = _snapshot(model)
    changed = [k for k in initial if not torch.equal(initial[k], final[k])]
    assert len(changed) > len(initial) // 2, "most student weights should change"
    t_final = _snapshot(teacher.module())
    assert all(torch.equal(initial[k], t_final[k]) for k in initial), "a frozen teacher must not move"
    for *_, m in hist:
        assert m["tokens"] > 0 and m["loss"] > 0 and m["kl"] > 0 and m["skipped"] == 0


def test_ema_teacher_moves_exactly_by_the_ema_rule(tmp_path, synth_dir):
    cfg = _cfg(tmp_path, synth_dir, "teacher.mode=ema", "teacher.ema_rate=0.25")
    _, _, _, hist = _run_steps(cfg, 2)
    for before_s, before_t, after_s, after_t, _ in hist:
        for k, v in after_t.items():
            if v.is_floating_point() and k in dict(unwrap_params_names(after_s)):
                expected = before_t[k] + 0.25 * (after_s[k] - before_t[k])
                torch.testing.assert_close(v, expected, atol=1e-7, rtol=1e-6)
        assert any(not torch.equal(before_t[k], after_t[k]) for k in after_t)


def unwrap_params_names(state):
    return ((k, None) for k in state if not k.endswith("inv_freq"))


def test_live_teacher_is_the_student(tmp_path, synth_dir):
    cfg = _cfg(tmp_path, synth_dir, "teacher.mode=live")
    _, model, teacher, _ = _run_steps(cfg, 1)
    assert teacher.module() is model and teacher.state_dict() is None


@pytest.mark.parametrize("kind", ["jsd", "topk", "sampled"])
def test_identical_views_frozen_teacher_give_zero_loss_at_step_zero(kind, tmp_path, synth_dir):
    cfg = _cfg(tmp_path, synth_dir, "teacher.mode=frozen", "views.teacher_source=full", f"loss.kind={kind}", "loss.top_k=8")
    _, _, _, hist = _run_steps(cfg, 1)
    m = hist[0][-1]
    assert abs(m["loss"]) < 1e-6 and abs(m["kl"]) < 1e-6 and m["top1_agree"] == 1.0


def test_train_writes_metrics_checkpoint_and_resumes(tmp_path, synth_dir):
    from transformers import AutoModelForImageTextToText

    from vision_opd.training.checkpoint import complete_checkpoints
    from vision_opd.training.loop import train

    cfg = _cfg(tmp_path, synth_dir, "train.steps=3", "train.save_every=2", "train.sample_every=1")
    run = train(cfg)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert all(k in lines[0] for k in ("loss", "kl", "response_len", "truncation_rate", "top1_agree", "grad_norm", "lr", "sec_step"))
    cks = complete_checkpoints(run)
    assert [c.name for c in cks] == ["step_000002", "step_000003"]
    assert (cks[-1] / "teacher" / "model.safetensors").is_file() and (cks[-1] / "config.yaml").is_file()
    AutoModelForImageTextToText.from_pretrained(cks[-1])
    sample = json.loads((run / "samples.jsonl").read_text().splitlines()[0])
    assert len(sample["tokens"]) == len(sample["token_kl"]) == len(sample["student_logprob"]) == len(sample["teacher_logprob"])
    assert all(x <= 0 for x in sample["student_logprob"] + sample["teacher_logprob"])
    assert sample["student_logprob"] != sample["teacher_logprob"]  # the two views read the tokens differently
    # resume: continues at step 3 from step_000002 and ends with the same weights as the uninterrupted run
    from safetensors.torch import load_file

    uninterrupted = load_file(str(cks[-1] / "model.safetensors"))
    teacher_ref = load_file(str(cks[-1] / "teacher" / "model.safetensors"))
    import shutil

    shutil.rmtree(cks[-1])
    (run / "metrics.jsonl").unlink()
    train(cfg, resume=True)
    again = complete_checkpoints(run)[-1]
    assert again.name == "step_000003"
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [3]
    resumed = load_file(str(again / "model.safetensors"))
    for k, v in uninterrupted.items():
        torch.testing.assert_close(resumed[k], v, atol=1e-6, rtol=1e-6)
    for k, v in load_file(str(again / "teacher" / "model.safetensors")).items():
        torch.testing.assert_close(v, teacher_ref[k], atol=1e-6, rtol=1e-6)


def test_eval_every_n_steps_is_logged(tmp_path, synth_dir):
    from vision_opd.training.loop import train

    cfg = _cfg(tmp_path, synth_dir, "train.steps=2", "train.eval_every=1", f"data.eval_file={synth_dir / 'train.jsonl'}",
               "train.eval_max_new_tokens=2")
    lines = [json.loads(x) for x in (train(cfg) / "metrics.jsonl").read_text().splitlines()]
    for m in lines:
        assert 0.0 <= m["eval_full_acc"] <= 1.0 and 0.0 <= m["eval_crop_acc"] <= 1.0


def test_cli_train_and_help(tmp_path, synth_dir, capsys):
    from vision_opd.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "key=value" in capsys.readouterr().out
    assert main(["train", f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={tmp_path / 'r'}", "train.steps=1",
                 "train.prompts_per_step=1", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=3",
                 "train.progress=false"]) == 0
    assert (tmp_path / "r" / "config.yaml").is_file()
    assert main(["train", "train.stepz=1"]) == 2
    assert "unknown config key 'train.stepz'" in capsys.readouterr().err


def test_bf16_compute_keeps_fp32_master_weights(tmp_path, synth_dir):
    cfg = _cfg(tmp_path, synth_dir, "train.mixed_precision=bf16", "teacher.mode=frozen")
    initial, model, _, hist = _run_steps(cfg, 1)
    m = hist[0][-1]
    assert m["skipped"] == 0 and m["loss"] > 0 and m["kl"] > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    final = _snapshot(model)
    assert any(not torch.equal(initial[k], final[k]) for k in initial)


def test_teacher_on_another_device_gives_the_same_step(tmp_path, synth_dir):
    """teacher.device=cpu (here the student is on the CPU too) runs through the transfer path unchanged."""
    a = _run_steps(_cfg(tmp_path, synth_dir, "teacher.mode=ema"), 1)[3][0][-1]
    b = _run_steps(_cfg(tmp_path, synth_dir, "teacher.mode=ema", "teacher.device=cpu"), 1)[3][0][-1]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6) and b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-6)


def test_teacher_on_proposed_crops_without_boxes(tmp_path, synth_dir):
    """views.teacher_source=proposer: boxes come from the model (cached), never from the record's box."""
    from vision_opd.training.loop import train

    rows = [json.loads(x) for x in (synth_dir / "train.jsonl").read_text().splitlines()]
    no_box = synth_dir / "no_box.jsonl"  # same folder: image paths stay relative
    no_box.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "box"}) + "\n" for r in rows))
    run = train(_cfg(tmp_path, synth_dir, "views.teacher_source=proposer", "teacher.keep_fallback=true", "train.steps=1",
                     f"data.train_file={no_box}"))
    cache = (run / "proposals_attention.jsonl").read_text().splitlines()
    assert len(cache) == 12  # one proposal per record, computed once
    m = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert m["tokens"] > 0 and m["skipped"] == 0


def test_held_out_evaluation_uses_the_benchmark_views(tmp_path, synth_dir):
    """Trained with the recipe's red box and hint, the held-out "full" view is still the bare image (no box, no
    hint, as in every benchmark), and an evaluation record without a box is evaluated on the full view only."""
    from vision_opd.data.validate import read_records
    from vision_opd.data.views import ViewConfig
    from vision_opd.eval.views import view_of
    from vision_opd.training.loop import train

    rows = [json.loads(x) for x in (synth_dir / "train.jsonl").read_text().splitlines()]
    held = synth_dir / "held_mixed.jsonl"  # same folder: image paths stay relative
    held.write_text("".join(json.dumps({k: v for k, v in r.items() if not (i == 0 and k == "box")}) + "\n"
                            for i, r in enumerate(rows[:4])))
    recs = read_records(held)
    assert recs[0].box is None
    recipe = ViewConfig(red_box=True, hint=True)
    for r in recs:
        full = view_of(r, "full", recipe)
        assert full.images[0].tobytes() == view_of(r, "full", ViewConfig()).images[0].tobytes()
        assert full.text == view_of(r, "full", ViewConfig()).text
    cfg = _cfg(tmp_path, synth_dir, "train.steps=1", "train.eval_every=1", f"data.eval_file={held}",
               "train.eval_max_new_tokens=2", "views.red_box=true", "views.hint=true")
    m = json.loads((train(cfg) / "metrics.jsonl").read_text().splitlines()[0])  # the boxless record stops nothing
    assert m["eval_full_acc"] in {k / 4 for k in range(5)}  # 4 records in the full view
    assert m["eval_crop_acc"] in {k / 3 for k in range(4)}  # 3 with a box in the crop view




@pytest.mark.parametrize("teacher_device", [None, "cpu"])
def test_tied_embeddings_ema_teacher_saves_and_resumes(teacher_device, tmp_path, synth_dir, tied_model_dir):
    from safetensors.torch import load_file

    from vision_opd.training.checkpoint import complete_checkpoints, load_teacher_state
    from vision_opd.training.loop import train

    extra = [f"model.name_or_path={tied_model_dir}", "teacher.mode=ema", "teacher.ema_rate=0.5", "train.steps=3",
             "train.save_every=2", "train.guard_uniform_teacher=false"]  # random weights: a near-uniform teacher
    extra += [f"teacher.device={teacher_device}"] if teacher_device else []
    cfg = _cfg(tmp_path, synth_dir, *extra)
    run = train(cfg)  # the first save used to raise safetensors' "Some tensors share memory"
    cks = complete_checkpoints(run)
    assert [c.name for c in cks] == ["step_000002", "step_000003"]
    teacher = load_teacher_state(cks[-1])
    emb, head = "model.language_model.embed_tokens.weight", "lm_head.weight"
    assert torch.equal(teacher[emb], teacher[head])  # tied in the saved teacher too
    student_ref, teacher_ref = load_file(str(cks[-1] / "model.safetensors")), teacher
    import shutil

    shutil.rmtree(cks[-1])
    train(cfg, resume=True)
    again = complete_checkpoints(run)[-1]
    for k, v in load_file(str(again / "model.safetensors")).items():
        torch.testing.assert_close(v, student_ref[k], atol=1e-6, rtol=1e-6)
    for k, v in load_teacher_state(again).items():
        torch.testing.assert_close(v, teacher_ref[k], atol=1e-6, rtol=1e-6)


def test_resume_with_train_steps_not_above_the_checkpoint_is_one_line_before_any_model_loads(tmp_path, synth_dir,
                                                                                             capsys, monkeypatch):
    """train.steps=3 on a run with a step-4 checkpoint used to write a step_000003 folder holding step-4 weights."""
    from vision_opd.cli import main
    from vision_opd.training import loop as T
    from vision_opd.training.checkpoint import complete_checkpoints

    args = ["train", f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={tmp_path / 'run'}",
            "train.prompts_per_step=1", "rollout.samples_per_prompt=1", "rollout.max_new_tokens=2", "train.progress=false",
            "views.teacher_pixels=12544", "train.report=false"]
    assert main([*args, "train.steps=4"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(T, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    for steps, state in ((3, "is past train.steps=3"), (4, "is finished")):
        assert main([*args, f"train.steps={steps}", "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"already has step 4 (step_000004) and {state}" in err
        assert "set train.steps above 4" in err
    assert [c.name for c in complete_checkpoints(tmp_path / "run")] == ["step_000004"]


def test_resume_with_a_new_lr_betas_and_weight_decay_trains_with_them(tmp_path, synth_dir, capsys):
    """`--resume optim.lr=...` printed the change and wrote it into config.yaml, then kept the checkpoint's lr."""
    from vision_opd.training.checkpoint import latest_checkpoint, load_trainer_state
    from vision_opd.training.loop import lr_lambda, train

    base = ["train.save_every=2", "optim.schedule=cosine", "optim.warmup_steps=1", "train.steps=4"]
    run = train(_cfg(tmp_path, synth_dir, *base))
    import shutil

    shutil.rmtree(latest_checkpoint(run))  # resume from step 2
    capsys.readouterr()
    new = _cfg(tmp_path, synth_dir, *base, "optim.lr=1e-5", "optim.betas=[0.5,0.9]", "optim.weight_decay=0.3")
    train(new, resume=True)
    assert "optim.lr: 0.001 -> 1e-05" in capsys.readouterr().out
    logged = {m["step"]: m["lr"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    schedule = lr_lambda(new)
    assert logged[3] == pytest.approx(1e-5 * schedule(2)) and logged[4] == pytest.approx(1e-5 * schedule(3))
    assert logged[2] == pytest.approx(1e-3 * schedule(1))  # before the resume: the old lr
    groups = load_trainer_state(latest_checkpoint(run))["optimizer"]["param_groups"]
    assert {(g["initial_lr"], tuple(g["betas"]), g["weight_decay"]) for g in groups} == {(1e-5, (0.5, 0.9), 0.3)}


@pytest.mark.parametrize("path", sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads_and_takes_own_data(path):
    """Each preset loads, validates, and reads any data file by format detection with a teacher that follows the record."""
    cfg = load_config(path, ["data.train_file=my_data/train.jsonl"])
    assert cfg.data.format == "auto" and cfg.views.teacher_source == "auto"
    assert cfg.data.synth_if_missing == (path.name == "tiny_cpu.yaml")


def test_resume_cuts_the_logs_back_so_no_step_appears_twice(tmp_path, synth_dir):
    import shutil

    from vision_opd.training.checkpoint import complete_checkpoints
    from vision_opd.training.loop import train

    cfg = _cfg(tmp_path, synth_dir, "train.steps=3", "train.save_every=2", "train.sample_every=1")
    run = train(cfg)
    shutil.rmtree(complete_checkpoints(run)[-1])  # as if the run had died after step 3's log lines, before its save
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss"')  # and a line cut short by the kill
    train(cfg, resume=True)  # continues from step_000002
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    sample_steps = [json.loads(x)["step"] for x in (run / "samples.jsonl").read_text().splitlines()]
    assert sorted(set(sample_steps)) == [1, 2, 3] and len(sample_steps) == 3 * sample_steps.count(1)
