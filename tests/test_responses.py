"""Where the tokens come from (rollout.source) and what the loss reads, on tiny models through `vision_opd_step`."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from vision_opd.config import ConfigError, load_config
from vision_opd.data.views import encode_views, student_view, teacher_view
from vision_opd.training.responses import student_prompts


def _cfg(tmp_path, synth_dir, *extra):
    return load_config(None, [
        f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={tmp_path / 'run'}",
        "train.prompts_per_step=3", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=5",
        "train.micro_batch_size=4", "train.progress=false", "optim.warmup_steps=0", "optim.lr=1e-2",
        "optim.weight_decay=0.0", "optim.grad_clip=0", "teacher.mode=frozen", "loss.chunk_size=3",
        "views.teacher_pixels=12544", *extra])


def _setup(cfg):
    from vision_opd.data.sources import load_train_records
    from vision_opd.models.loading import load_model, vision_token_ids
    from vision_opd.training import loop as T

    T.seed_everything(cfg.train.seed)
    model, proc = load_model(cfg.model, seed=cfg.train.seed, device=torch.device("cpu"))
    records, _ = load_train_records(cfg.data, cfg.views)
    teacher = T.Teacher(model, cfg.teacher.mode, cfg.teacher.ema_rate)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.lr_lambda(cfg))
    return model, proc, records, teacher, opt, sched, vision_token_ids(model, proc)


def _step(cfg, setup, records):
    from vision_opd.training.context import StepContext
    from vision_opd.training.step import vision_opd_step

    model, proc, _, teacher, opt, sched, suppress = setup
    return vision_opd_step(cfg, StepContext(model, teacher, proc, opt, sched, suppress, torch.device("cpu")), records)


def _greedy(model, proc, views, G, max_new_tokens, suppress):
    from vision_opd.rollout import sample

    ro = sample(model, proc, encode_views(proc, views), samples_per_prompt=G, max_new_tokens=max_new_tokens,
                suppress_ids=suppress, do_sample=False)
    return ro.response_ids_B_T, ro.response_mask_B_T


def test_ce_on_teacher_tokens_equals_a_hand_made_sft_step(tmp_path, synth_dir):
    """source=teacher, greedy teacher, loss.kind=ce: the step is exactly SFT on the teacher's greedy crop answers,
    read by the student on the full image (F.cross_entropy, token mean, one SGD step of lr 1, so the update is
    the gradient), written out by hand here."""
    cfg = _cfg(tmp_path, synth_dir, "rollout.source=teacher", "rollout.teacher_do_sample=false", "loss.kind=ce")
    model, proc, records, teacher, _, _, suppress = _setup(cfg)
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    setup = (model, proc, records, teacher, sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda s: 1.0), suppress)
    before = copy.deepcopy(model.state_dict())
    batch = records[:3]
    hand = copy.deepcopy(model)
    ids, mask = _greedy(teacher.module(), proc, [teacher_view(r, cfg.views) for r in batch], 2, 5, suppress)
    s_in = encode_views(proc, [student_view(r, cfg.views) for r in batch])
    rows = torch.arange(3).repeat_interleave(2)  # prompt-major, G = 2 identical greedy answers per prompt
    extra = {k: torch.cat([s_in[k][rows], torch.zeros_like(ids)], 1) for k in ("mm_token_type_ids",) if k in s_in}
    full_ids = torch.cat([s_in["input_ids"][rows], ids], 1)
    attn = torch.cat([s_in["attention_mask"][rows], mask.long()], 1)
    pix = torch.cat([s_in["pixel_values"].reshape(3, -1, s_in["pixel_values"].shape[-1])[r] for r in rows.tolist()])
    Lp = s_in["input_ids"].shape[1]
    hand.train()
    logits = hand(input_ids=full_ids, attention_mask=attn, pixel_values=pix, image_grid_thw=s_in["image_grid_thw"][rows],
                  **extra).logits[:, Lp - 1:Lp - 1 + ids.shape[1]]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.masked_fill(mask == 0, -100).reshape(-1))
    loss.backward()

    res = _step(cfg, setup, batch)
    assert torch.equal(res.rollout.response_ids_B_T[:, :ids.shape[1]], ids)  # the tokens are the teacher's
    assert res.responses.from_teacher_B.all() and res.metrics["student_share"] == 0.0
    assert res.metrics["loss"] == pytest.approx(loss.item(), rel=1e-5)
    grads = dict(hand.named_parameters())
    assert len(grads) > 10 and all(p.grad is not None for p in grads.values())
    for name, p in grads.items():  # SGD, lr 1: the step's update is minus its gradient
        torch.testing.assert_close(before[name] - model.state_dict()[name], p.grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("kind", ["jsd", "topk"])
def test_teacher_tokens_with_identical_views_give_zero_divergence_at_step_zero(kind, tmp_path, synth_dir):
    cfg = _cfg(tmp_path, synth_dir, "rollout.source=teacher", "views.teacher_source=full", f"loss.kind={kind}",
               "loss.top_k=8")
    setup = _setup(cfg)
    m = _step(cfg, setup, setup[2][:3]).metrics
    assert m["tokens"] > 0 and abs(m["loss"]) < 1e-6 and abs(m["kl"]) < 1e-6 and m["top1_agree"] == 1.0


def test_mix_rows_come_from_their_source_and_the_fraction_is_honoured(tmp_path, synth_dir):
    """source=mix, P=4, f=0.25: one student prompt per step (P f is whole), its rows are the student's own greedy
    samples on the full image, the others the teacher's on its (text-only) view."""
    cfg = _cfg(tmp_path, synth_dir, "rollout.source=mix", "rollout.student_fraction=0.25", "train.prompts_per_step=4",
               "rollout.do_sample=false", "rollout.teacher_do_sample=false", "views.teacher_source=none", "optim.lr=0")
    setup = _setup(cfg)
    model, proc, records, teacher, *_, suppress = setup
    batch = records[:4]
    s_ids, _ = _greedy(model, proc, [student_view(r, cfg.views) for r in batch], 2, 5, suppress)
    t_ids, _ = _greedy(teacher.module(), proc, [teacher_view(r, cfg.views) for r in batch], 2, 5, suppress)
    assert not torch.equal(s_ids, t_ids[:, :s_ids.shape[1]])  # the two sources write different tokens here
    for _ in range(3):
        res = _step(cfg, setup, batch)
        assert res.metrics["student_share"] == 0.25
        by_teacher = res.responses.from_teacher_B
        assert int((~by_teacher).sum()) == 2  # 1 prompt x G = 2
        got = res.rollout.response_ids_B_T
        for b in range(8):
            want = t_ids[b] if by_teacher[b] else s_ids[b]
            n = int(res.rollout.response_mask_B_T[b].sum())
            assert torch.equal(got[b, :n], want[:n])


def test_the_rollout_mismatch_reads_only_the_students_own_samples(tmp_path, synth_dir):
    """source=mix: the teacher's rows carry the teacher's log-probs on its own (text-only) view, which are not a
    rollout of the student; the rollout-vs-trainer difference is read on the student's rows only, where the HF
    engine's log-probs equal the trainer's (fp32)."""
    cfg = _cfg(tmp_path, synth_dir, "rollout.source=mix", "rollout.student_fraction=0.5", "train.prompts_per_step=4",
               "views.teacher_source=none", "optim.lr=0")
    setup = _setup(cfg)
    res = _step(cfg, setup, setup[2][:4])
    assert res.metrics["student_share"] == 0.5 and res.responses.from_teacher_B.any()
    assert res.metrics["rollout_logprob_diff_max"] < 1e-5


def test_mix_fraction_in_expectation():
    """k = floor(P f) + Bernoulli(frac): the share of student prompts over many steps is f (P f not whole)."""
    torch.manual_seed(0)
    shares = [student_prompts(4, 0.3).float().mean().item() for _ in range(4000)]
    assert abs(sum(shares) / len(shares) - 0.3) < 0.01
    assert set(shares) == {0.25, 0.5}  # never further than one prompt from P f
    assert student_prompts(5, 1.0).all() and not student_prompts(5, 0.0).any()


def test_left_out_responses_give_no_gradient(tmp_path, synth_dir):
    """drop_unanswered: the random tiny teacher never writes a readable answer, so every response is left out of the
    loss: no tokens, a zero gradient, and the rate is logged."""
    cfg = _cfg(tmp_path, synth_dir, "rollout.source=teacher", "rollout.drop_unanswered=true")
    setup = _setup(cfg)
    m = _step(cfg, setup, setup[2][:3]).metrics
    assert m["tokens"] == 0 and m["grad_norm"] == 0.0 and m["loss"] == 0.0
    assert m["unanswered_rate"] == 1.0 and m["left_out"] == 6


def test_degenerate_responses_are_counted_and_left_out(tmp_path, synth_dir):
    """runaway_tokens=1 makes every response runaway: logged, and with drop_degenerate no token reaches the loss."""
    cfg = _cfg(tmp_path, synth_dir, "rollout.runaway_tokens=1")
    setup = _setup(cfg)
    m = _step(cfg, setup, setup[2][:3]).metrics
    assert m["runaway_rate"] == 1.0 and m["degenerate_rate"] == 1.0 and m["tokens"] > 0 and m["left_out"] == 0
    cfg = _cfg(tmp_path, synth_dir, "rollout.runaway_tokens=1", "rollout.drop_degenerate=true")
    setup = _setup(cfg)
    res = _step(cfg, setup, setup[2][:3])
    m = res.metrics
    assert m["tokens"] == 0 and m["left_out"] == 6 and m["grad_norm"] == 0.0
    # samples.jsonl: a left-out response keeps its tokens, with no values (it was not scored), and the report shows
    # it uncoloured rather than as an inconsistent row
    from vision_opd.report.tokens import TokenScale, coloured_tokens
    from vision_opd.training.run_log import sample_rows

    rows = sample_rows(setup[1], setup[2][:3], res.rollout, res.token_values)
    assert len(rows) == 4 and all(r["left_out"] and r["tokens"] and r["token_kl"] is None for r in rows)
    html = coloured_tokens(rows[0]["tokens"], rows[0]["token_kl"], rows[0]["student_logprob"],
                           rows[0]["teacher_logprob"], TokenScale.of(rows))
    assert "inconsistent" not in html and html.count("<span") == len(rows[0]["tokens"])


def test_a_step_with_no_loss_token_is_skipped_weights_optimizer_schedule_and_ema_unchanged(tmp_path, synth_dir):
    """Every response left out (drop_degenerate, all runaway): the step used to take an AdamW step with the moments of
    the step before, advance the schedule and the EMA teacher, and log skipped 0."""
    from vision_opd.training.guards import SKIP_NO_TOKENS, SkipGuard, TrainingStopped

    cfg = _cfg(tmp_path, synth_dir, "teacher.mode=ema", "teacher.ema_rate=0.5", "optim.weight_decay=0.1")
    setup = _setup(cfg)
    model, _, records, teacher, opt, sched, _ = setup
    assert _step(cfg, setup, records[:3]).metrics["skipped"] == 0  # a real step first: AdamW has moments now

    def state():
        return ({k: v.clone() for k, v in model.state_dict().items()},
                {k: v.clone() for k, v in teacher.model.state_dict().items()},
                {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()},
                sched.last_epoch, opt.param_groups[0]["lr"])

    before = state()
    drop_all = _cfg(tmp_path, synth_dir, "teacher.mode=ema", "teacher.ema_rate=0.5", "optim.weight_decay=0.1",
                    "rollout.runaway_tokens=1", "rollout.drop_degenerate=true")
    m = _step(drop_all, setup, records[3:6]).metrics
    assert m["tokens"] == 0 and m["left_out"] == 6
    assert m["skipped"] == 1 and m["skip_reason"] == SKIP_NO_TOKENS
    after = state()
    for a, b in zip(before[:2], after[:2], strict=True):  # the student's and the EMA teacher's weights
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(before[2][i][k], after[2][i][k]) for i in before[2] for k in before[2][i])  # moments, step
    assert before[3:] == after[3:]  # the schedule did not advance
    guard = SkipGuard(2)  # counted in the skipped-step streak, with its own advice
    guard.update(True, 1, SKIP_NO_TOKENS)
    with pytest.raises(TrainingStopped, match="2 consecutive skipped steps, the last with no loss token"):
        guard.update(True, 2, SKIP_NO_TOKENS)


@pytest.mark.parametrize("overrides", [
    ["rollout.source=teacher", "loss.kind=ce"],
    ["rollout.source=mix", "views.teacher_source=none"],
    ["rollout.source=teacher", "views.teacher_images=[crop,full]"],
], ids=["teacher-ce", "mix-text-only-teacher", "teacher-multi-view"])
def test_token_sources_and_teacher_views_with_shared_prompts_equal_per_row_scoring(overrides, tmp_path, synth_dir,
                                                                                   monkeypatch):
    """train.share_prompts (each prompt scored once for its rows) gives the per-row step for teacher tokens, a mix
    with a text-only teacher and a multi-view teacher: the same tokens, loss and update (SGD, lr 1: the gradient)."""
    import vision_opd.scoring.forward as S

    calls = []
    shared_hidden = S.shared_response_hidden
    monkeypatch.setattr(S, "shared_response_hidden", lambda *a, **k: calls.append(1) or shared_hidden(*a, **k))
    out = {}
    for shared in (True, False):
        calls.clear()
        cfg = _cfg(tmp_path, synth_dir, *overrides, f"train.share_prompts={str(shared).lower()}")
        model, proc, records, teacher, _, _, suppress = _setup(cfg)
        sgd = torch.optim.SGD(model.parameters(), lr=1.0)
        setup = (model, proc, records, teacher, sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda s: 1.0), suppress)
        before = copy.deepcopy(model.state_dict())
        res = _step(cfg, setup, records[:3])
        assert bool(calls) == shared  # both views went through the shared path, or neither
        out[shared] = res.rollout.response_ids_B_T, res.metrics, {k: before[k] - v for k, v in model.state_dict().items()}
    (ids_s, m_s, up_s), (ids_r, m_r, up_r) = out[True], out[False]
    assert torch.equal(ids_s, ids_r) and m_s["tokens"] == m_r["tokens"] > 0
    assert m_s["loss"] == pytest.approx(m_r["loss"], rel=1e-4) and m_s["kl"] == pytest.approx(m_r["kl"], rel=1e-4, abs=1e-7)
    assert any(u.abs().max() > 0 for u in up_r.values())
    for name, u in up_r.items():
        torch.testing.assert_close(up_s[name], u, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("overrides, message", [
    (["loss.kind=ce"], "loss.kind=ce trains on the teacher's tokens"),
    (["loss.kind=sampled", "rollout.source=mix"], "loss.kind=sampled estimates reverse KL"),
    (["rollout.source=both"], "rollout.source='both': choose student, teacher or mix"),
    (["rollout.student_fraction=1.5"], "rollout.student_fraction=1.5"),
    (["views.teacher_source=none", "views.teacher_images=[crop,full]"], "views.teacher_images names crop"),
    (["views.teacher_images=[crop,zoom]"], "views.teacher_images: unknown ['zoom']"),
    (["rollout.source=teacher", "rollout.is_correction=true"], "rollout.is_correction weights the student's own samples"),
    (["views.teacher_source=fog"], "views.teacher_source='fog': choose auto, box, given, proposer, full, none, blur, mask"),
    (["rollout.hf_decoder=fast"], "rollout.hf_decoder='fast': choose compact or generate"),
])
def test_bad_source_and_view_settings_are_one_clear_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, overrides)


def test_keep_solved_prompts_leaves_out_the_prompts_no_response_answers_right(tmp_path, synth_dir):
    """CV-OPD's prompt filter (reads labels): greedy teacher answers are known in advance, so record 0's answer key is
    made its own greedy answer and the other two keys something no response says. Only prompt 0's rows are trained."""
    import dataclasses

    cfg = _cfg(tmp_path, synth_dir, "rollout.source=teacher", "rollout.teacher_do_sample=false",
               "rollout.keep_solved_prompts=true")
    setup = _setup(cfg)
    model, proc, records, *_ = setup
    records = [dataclasses.replace(r, options=None) for r in records[:3]]
    ids, mask = _greedy(model, proc, [teacher_view(r, cfg.views) for r in records[:1]], 1, 5, setup[6])
    said = proc.tokenizer.decode(ids[0, : int(mask[0].sum())].tolist(), skip_special_tokens=True)
    records = [dataclasses.replace(records[0], answer=said)] + [dataclasses.replace(r, answer="zzz") for r in records[1:]]
    res = _step(cfg, setup, records)
    assert res.metrics["unsolved_prompt_rate"] == pytest.approx(2 / 3) and res.metrics["left_out"] == 4
    assert res.metrics["tokens"] == int(mask[0].sum()) * 2  # prompt 0's two (identical, greedy) responses
    cfg_off = _cfg(tmp_path, synth_dir, "rollout.source=teacher", "rollout.teacher_do_sample=false")
    m = _step(cfg_off, _setup(cfg_off), records).metrics
    assert m["left_out"] == 0 and m["unsolved_prompt_rate"] == 0.0


def test_keep_solved_prompts_needs_answers_before_the_model_loads(tmp_path, synth_dir):
    import json

    from vision_opd.data.records import RecordError
    from vision_opd.data.sources import load_train_records

    rows = [json.loads(line) for line in (synth_dir / "train.jsonl").read_text().splitlines()[:3]]
    rows[1].pop("answer", None)
    for r in rows:  # the images stay where they are
        r["image"] = str(synth_dir / r["image"])
    path = tmp_path / "half_labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(tmp_path, synth_dir, f"data.train_file={path}", "data.allow_outside_root=true",
               "rollout.keep_solved_prompts=true")
    with pytest.raises(RecordError, match=rf"record '{rows[1]['id']}' \(1 of 3 in all\) has no 'answer'.*"
                                          r"rollout.keep_solved_prompts=false"):
        load_train_records(cfg.data, cfg.views, answers_for=cfg.label_option())
    assert load_train_records(cfg.data, cfg.views)[0][1].answer is None  # off: no label needed
