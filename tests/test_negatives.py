"""The negative teacher view and its three weightings (OPD-V token weights, CV-OPD margin + gate, V-Zero sequence
weights): the pure functions against hand-written float64 references on random inputs, the identities of each
method, the per-record negatives (the same after a resume and in another process, IoU-bounded random crops or a
counted fallback), and the step against an independent recomputation."""

from __future__ import annotations

import copy
import json
import hashlib
import math
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from vision_opd.config import ConfigError, load_config
from vision_opd.data.negatives import box_iou, mask_box, negative_view, patch_masked, sample_rng, same_size_region
from vision_opd.data.records import Record
from vision_opd.data.views import ViewConfig, encode_views, student_view, teacher_view
from vision_opd.losses.contrastive import (
    contrastive_margin,
    gated_mean,
    margin_gate,
    opdv_token_weights,
    sequence_scores,
    vzero_sequence_weights,
)
from vision_opd.scoring.forward import response_logits

# ----------------------------------------------------------------------------- pure functions vs float64 references


def test_opdv_weights_equal_a_float64_reference_and_vanish_for_equal_views():
    g = torch.Generator().manual_seed(0)
    pos, neg = -3 * torch.rand(50, generator=g), -3 * torch.rand(50, generator=g)
    ref = [max(0.0, float(p) - float(n)) for p, n in zip(pos.double(), neg.double(), strict=True)]
    w = opdv_token_weights(pos, neg)
    assert w.dtype == torch.float32 and not w.requires_grad
    assert w.tolist() == pytest.approx(ref, abs=1e-6)
    assert (w == 0).sum() > 0 and (w > 0).sum() > 0
    assert opdv_token_weights(pos, pos.clone()).eq(0).all()


def _vzero_reference(scores, groups, valid, scale, max_w):
    out = []
    for i, s in enumerate(scores):
        members = [scores[j] for j in range(len(scores)) if groups[j] == groups[i] and valid[j]]
        if not valid[i] or len(members) < 2:
            out.append(1.0)
            continue
        mean = sum(members) / len(members)
        std = math.sqrt(sum((m - mean) ** 2 for m in members) / len(members))
        out.append(min(max_w, max(0.0, 1.0 + scale * (s - mean) / (std + 1e-6))))
    return out


def test_vzero_weights_equal_a_float64_reference_and_are_one_when_scores_are_equal():
    g = torch.Generator().manual_seed(1)
    pos, neg = -2 * torch.rand(12, 7, generator=g), -2 * torch.rand(12, 7, generator=g)
    mask = (torch.rand(12, 7, generator=g) < 0.8).float()
    mask[5] = 0  # a response with no loss token
    scores = sequence_scores(pos, neg, mask)
    ref_scores = [sum((float(p) - float(n)) * float(m) for p, n, m in zip(pos[b].double(), neg[b].double(), mask[b], strict=True))
                  / max(1.0, float(mask[b].sum())) for b in range(12)]
    assert scores.tolist() == pytest.approx(ref_scores, abs=1e-6)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 3, 3, 3])  # group 2 has one response
    valid = mask.sum(-1) > 0
    for scale, max_w in ((0.5, 2.0), (3.0, 1.5)):
        w = vzero_sequence_weights(scores, groups, valid, scale, max_w)
        ref = _vzero_reference([float(s) for s in scores.double()], groups.tolist(), valid.tolist(), scale, max_w)
        assert w.tolist() == pytest.approx(ref, abs=1e-5)
    assert vzero_sequence_weights(scores, groups, valid, 3.0, 1.5).max() == 1.5  # the clip bites
    equal = vzero_sequence_weights(torch.full((12,), 0.37), groups, torch.ones(12, dtype=torch.bool))
    assert equal.eq(1.0).all()


def test_cvopd_margin_gate_and_gated_mean_equal_float64_references():
    for d_pos, d_neg, mu, want in ((0.30, 0.40, 0.10, 0.0), (0.30, 0.39, 0.10, 0.01), (0.69, 0.0, 0.69, 1.38),
                                   (0.30, 0.20, 0.10, 0.20)):  # the published checks
        assert contrastive_margin(torch.tensor([d_pos]), torch.tensor([d_neg]), mu).item() == pytest.approx(want, abs=1e-6)
    g = torch.Generator().manual_seed(2)
    d_pos, d_neg = math.log(2) * torch.rand(40, generator=g), math.log(2) * torch.rand(40, generator=g)
    mask = torch.rand(40, generator=g) < 0.7
    mean = sum(float(d) for d, m in zip(d_pos.double(), mask, strict=True) if m) / int(mask.sum())
    gate = margin_gate(d_pos, mask)
    assert gate.tolist() == [bool(m) and float(d) > mean for d, m in zip(d_pos.double(), mask, strict=True)]
    cdl = contrastive_margin(d_pos, d_neg, 0.1)
    ref = [max(0.0, 0.1 + float(p) - float(n)) for p, n in zip(d_pos.double(), d_neg.double(), strict=True)]
    assert cdl.tolist() == pytest.approx(ref, abs=1e-6)
    gated = [r for r, k in zip(ref, gate.tolist(), strict=True) if k]
    assert gated_mean(cdl, gate).item() == pytest.approx(sum(gated) / len(gated), abs=1e-6)
    # the margin vanishes wherever d- - d+ >= mu, with a zero gradient
    d_pos.requires_grad_(True)
    far = contrastive_margin(d_pos, d_pos.detach() + 0.1 + torch.rand(40, generator=g), 0.1)
    assert far.eq(0).all()
    gated_mean(far, torch.ones(40, dtype=torch.bool)).backward()
    assert d_pos.grad.eq(0).all()
    assert gated_mean(cdl, torch.zeros(40, dtype=torch.bool)).item() == 0.0


# ----------------------------------------------------------------------------- the negative views (pure PIL)


def _record(rid: str, path, box=(40.0, 40.0, 70.0, 70.0)) -> Record:
    return Record(id=rid, image=str(path), question="What colour?", options=["red", "blue"], answer="A",
                  box=list(box) if box is not None else None)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("neg") / "img.png"
    g = torch.Generator().manual_seed(3)
    Image.fromarray((torch.rand(160, 200, 3, generator=g) * 255).to(torch.uint8).numpy()).save(path)
    return path


def test_random_crops_meet_the_iou_bound_and_fall_back_counted(picture):
    cfg = ViewConfig(negative="random_crop", negative_max_iou=0.1, teacher_upscale=1.0)
    regions = set()
    for i in range(30):
        neg = negative_view(_record(f"r{i}", picture), cfg, seed=0)
        assert not neg.fell_back and neg.kind == "random_crop"
        assert box_iou(neg.region, (38, 38, 72, 72)) <= 0.1  # the positive region: the box expanded 5%
        assert neg.view.images[0].size == (34, 34)  # the positive region's size
        regions.add(neg.region)
    assert len(regions) > 20  # per record, not one box for every image of a size
    # a box covering (almost) the whole image leaves no same-size crop with IoU <= 0.1: the mask negative instead
    big = negative_view(_record("big", picture, box=(5, 5, 195, 155)), cfg, seed=0)
    assert big.fell_back and big.kind == "mask" and big.region is None
    given = Record(id="given", image=str(picture), question="q", options=["a", "b"], teacher_image=str(picture))
    assert negative_view(given, ViewConfig(negative="random_crop"), seed=0).fell_back  # no box to move: falls back
    rng = sample_rng(0, "x")
    assert same_size_region((0, 0, 100, 100), 100, 100, rng, 0.1, 50) is None


def test_degrading_negatives_keep_the_crop_size_and_hide_what_they_say(picture):
    cfg = ViewConfig(teacher_upscale=2.0)
    rec = _record("a", picture)
    positive = teacher_view(rec, cfg).images[0]
    for kind in ("blur", "random_blur", "mask", "patch_mask", "downsample"):
        img = negative_view(rec, ViewConfig(teacher_upscale=2.0, negative=kind), seed=0).view.images[0]
        assert img.size == positive.size and img.tobytes() != positive.tobytes(), kind
    assert negative_view(rec, ViewConfig(negative="noimage"), seed=0).view.images == []
    full = negative_view(rec, ViewConfig(negative="full"), seed=0).view.images[0]
    assert full.size == (200, 160)
    x1, y1, x2, y2 = mask_box(300, 200, sample_rng(0, "m"), 1 / 3)
    assert abs((x2 - x1) * (y2 - y1) / (300 * 200) - 1 / 3) < 0.02 and 0.45 <= (x2 - x1) / (y2 - y1) <= 2.1
    black = patch_masked(Image.new("RGB", (140, 140), (255, 255, 255)), sample_rng(0, "p"), 14, 0.6)
    share = sum(1 for px in black.getdata() if px == (0, 0, 0)) / (140 * 140)
    assert 0.45 < share < 0.75
    identical = negative_view(rec, ViewConfig(teacher_upscale=2.0, negative="downsample", negative_factor=1.0), seed=0)
    assert identical.view.images[0].tobytes() == positive.tobytes()


_REGION = ("from vision_opd.data.negatives import negative_view; from vision_opd.data.records import Record; "
           "from vision_opd.data.views import ViewConfig; import sys; "
           "r = Record(id=sys.argv[2], image=sys.argv[1], question='q', options=['a', 'b'], box=[40, 40, 70, 70]); "
           "n = negative_view(r, ViewConfig(negative='random_crop'), seed=int(sys.argv[3])); "
           "m = negative_view(r, ViewConfig(negative='mask'), seed=int(sys.argv[3])); "
           "print(repr(n.region)); print(__import__('hashlib').sha256(m.view.images[0].tobytes()).hexdigest())")


def test_negatives_are_the_same_in_another_process_and_differ_by_record_and_seed(picture):
    """A resumed run or another rank is another process (another PYTHONHASHSEED): same record id + seed, same box."""
    def run(rid, seed, hashseed):
        env = {**os.environ, "PYTHONHASHSEED": str(hashseed)}
        return subprocess.run([sys.executable, "-c", _REGION, str(picture), rid, str(seed)], env=env, check=True,
                              capture_output=True, text=True).stdout.splitlines()

    here = negative_view(_record("item7", picture), ViewConfig(negative="random_crop"), seed=5).region
    mask = negative_view(_record("item7", picture), ViewConfig(negative="mask"), seed=5).view.images[0]
    first, second = run("item7", 5, 1), run("item7", 5, 2)
    assert first == second
    assert first == [repr(here), hashlib.sha256(mask.tobytes()).hexdigest()]
    assert run("item8", 5, 1) != first and run("item7", 6, 1) != first


# ----------------------------------------------------------------------------- config refusals


@pytest.mark.parametrize("overrides, words", [
    (["loss.weighting=opdv"], "views.negative"),
    (["views.negative=mask", "loss.kind=ce", "rollout.source=teacher"], "loss.kind=ce"),
    (["views.negative=mask", "views.teacher_source=full"], "views.teacher_source"),
    (["views.negative=random_crop", "views.negative_fallback=random_crop"], "views.negative_fallback"),
    (["views.negative=mask", "loss.weighting=vzero", "rollout.samples_per_prompt=1"], "samples_per_prompt"),
    (["views.negative=smudge"], "views.negative"),
    (["loss.weighting=rank"], "loss.weighting"),
])
def test_config_refuses_what_the_weightings_cannot_do(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config(None, overrides)


# ----------------------------------------------------------------------------- the step


def _cfg(tmp_path, synth_dir, *extra):
    return load_config(None, [
        f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={tmp_path / 'run'}", "train.progress=false",
        "train.prompts_per_step=3", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=6",
        "rollout.temperature=0.7", "train.micro_batch_size=4", "teacher.mode=frozen", "views.teacher_pixels=12544",
        "optim.warmup_steps=0", "optim.grad_clip=0", *extra])


def _step(cfg, records):
    """One step from a fresh, seeded model, with plain SGD (lr 1): (metrics, rollout, token values, params before,
    params after, the initial model)."""
    from vision_opd.models.loading import load_model
    from vision_opd.training import loop as T

    T.seed_everything(cfg.train.seed)
    model, proc = load_model(cfg.model, seed=cfg.train.seed, device=torch.device("cpu"))
    before = copy.deepcopy(model)
    teacher = T.Teacher(model, cfg.teacher.mode, cfg.teacher.ema_rate)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.lr_lambda(cfg))
    ctx = T.StepContext(model, teacher, proc, opt, sched, T.vision_token_ids(model, proc), torch.device("cpu"))
    res = T.vision_opd_step(cfg, ctx, records)
    return res, before, model, proc


def _max_change(a, b) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


def test_opdv_with_the_negative_equal_to_the_positive_leaves_the_weights_unchanged(tmp_path, synth_dir, synth_records):
    cfg = _cfg(tmp_path, synth_dir, "views.negative=downsample", "views.negative_factor=1", "loss.weighting=opdv")
    res, before, after, _ = _step(cfg, synth_records[:3])
    m = res.metrics
    assert m["tokens"] > 0 and m["weight_zero_share"] == 1.0 and m["weight_mean"] == 0.0 and m["loss"] == 0.0
    assert m["negative_logprob_gap"] == 0.0 and all(w == 0.0 for ws in res.token_values["weight"] for w in ws)
    assert _max_change(before, after) == 0.0


@pytest.mark.parametrize("extra, tol", [
    (("views.negative=downsample", "views.negative_factor=1", "loss.weighting=vzero"), 0.0),  # all S_i equal: w_i = 1
    # d- = d+ and mu = 0: the margin is 0 at its kink, where the gradients of d+ and d- cancel (to fp32 rounding)
    (("views.negative=downsample", "views.negative_factor=1", "loss.weighting=cvopd", "loss.margin_mu=0"), 1e-7),
])
def test_vzero_with_equal_scores_and_cvopd_with_no_margin_equal_plain_vision_opd(tmp_path, synth_dir, synth_records, extra,
                                                                                  tol):
    plain, _, plain_after, _ = _step(_cfg(tmp_path, synth_dir), synth_records[:3])
    res, before, after, _ = _step(_cfg(tmp_path, synth_dir, *extra), synth_records[:3])
    assert res.metrics["loss"] == plain.metrics["loss"] and res.metrics["tokens"] == plain.metrics["tokens"]
    assert res.metrics.get("weight_mean", 1.0) == 1.0 and res.metrics.get("margin_term", 0.0) == 0.0
    assert _max_change(before, after) > 1e-4 and _max_change(plain_after, after) <= tol


def _jsd(s, t, a=0.5):
    m = torch.log((1 - a) * s.exp() + a * t.exp())
    return (1 - a) * (s.exp() * (s - m)).sum(-1) + a * (t.exp() * (t - m)).sum(-1)


def test_step_losses_equal_an_independent_float64_recomputation(tmp_path, synth_dir, synth_records):
    """Each response scored on its own (no padding, no sharing, no chunking), in float64: OPD-V's weighted token
    mean; CV-OPD's token mean plus lambda x the gated margin (one micro-batch holds the step); V-Zero's weights. The
    loss and the update (SGD, lr 1: minus the gradient, which reaches the student through the margin too)."""
    records = synth_records[:3]
    for weighting in ("opdv", "cvopd", "vzero"):
        cfg = _cfg(tmp_path, synth_dir, "views.negative=mask", f"loss.weighting={weighting}", "train.micro_batch_size=6",
                   "loss.margin_mu=0.05", "loss.vzero_scale=2.0")
        res, before, after, proc = _step(cfg, records)
        ro, tau = res.rollout, cfg.rollout.temperature
        rows = []
        for b in range(ro.response_ids_B_T.shape[0]):
            rec = records[int(ro.prompt_index_B[b])]
            n = int(ro.response_mask_B_T[b].sum())
            ids = ro.response_ids_B_T[b:b + 1, :n]
            ones = torch.ones_like(ids, dtype=torch.float32)
            views = (student_view(rec, cfg.views), teacher_view(rec, cfg.views),
                     negative_view(rec, cfg.views, cfg.train.seed).view)
            s = torch.log_softmax(response_logits(before, encode_views(proc, [views[0]]), ids, ones)[0].double() / tau, -1)
            with torch.no_grad():
                t, u = (torch.log_softmax(response_logits(before, encode_views(proc, [v]), ids, ones)[0].double() / tau, -1)
                        for v in views[1:])
            y = ids[0]
            rows.append((int(ro.prompt_index_B[b]), _jsd(s, t), _jsd(s, u), t[range(n), y] - u[range(n), y]))
        n_tok = sum(len(r[1]) for r in rows)
        if weighting == "opdv":
            want = sum((d * gap.detach().clamp(min=0)).sum() for _, d, _, gap in rows) / n_tok
        elif weighting == "cvopd":
            d_pos, d_neg = torch.cat([r[1] for r in rows]), torch.cat([r[2] for r in rows])
            gate = d_pos.detach() > d_pos.detach().mean()
            want = d_pos.mean() + 0.1 * ((0.05 + d_pos - d_neg).clamp(min=0) * gate).sum() / gate.sum()
        else:
            scores = [float(gap.detach().mean()) for *_, gap in rows]
            groups = [r[0] for r in rows]
            w = _vzero_reference(scores, groups, [True] * len(rows), 2.0, 2.0)
            want = sum(wi * r[1].sum() for wi, r in zip(w, rows, strict=True)) / n_tok
            assert res.metrics["weight_mean"] == pytest.approx(sum(wi * len(r[1]) for wi, r in zip(w, rows, strict=True)) / n_tok, rel=1e-4)
        assert res.metrics["tokens"] == n_tok
        assert res.metrics["loss"] == pytest.approx(float(want), rel=2e-4, abs=1e-7), weighting
        assert res.metrics["negative_logprob_gap"] == pytest.approx(float(torch.cat([r[3] for r in rows]).mean()), abs=1e-5)
        assert [len(v) for v in res.token_values["negative_logprob"]] == [len(r[1]) for r in rows]
        want.backward()
        start, moved = dict(before.named_parameters()), dict(after.named_parameters())
        grads = {n: p.grad for n, p in start.items() if p.requires_grad and p.grad is not None}
        assert grads
        for name, g in grads.items():  # SGD, lr 1, no clip: the update is exactly minus the gradient
            torch.testing.assert_close(start[name].detach() - moved[name].detach(), g.float(), atol=2e-6, rtol=2e-3,
                                       msg=f"{weighting}: {name}")


# ----------------------------------------------------------------------------- a run: dumps, report, the guard


def _train_args(synth_dir, out, *extra):
    return ["train", f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={out}", "train.steps=1",
            "train.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
            "train.micro_batch_size=4", "train.progress=false", "views.teacher_pixels=12544", *extra]


def test_a_run_dumps_the_negative_logprob_and_weight_per_token_and_the_report_colours_by_weight(tmp_path, synth_dir):
    from vision_opd.cli import main

    out = tmp_path / "run"
    assert main(_train_args(synth_dir, out, "views.negative=mask", "loss.weighting=opdv", "train.dump_tokens_every=1",
                            "train.sample_every=1", "train.report=true")) == 0
    rows = [json.loads(line) for line in (out / "tokens.jsonl").read_text().splitlines()]
    assert rows and all(len(r["negative_logprob"]) == len(r["weight"]) == len(r["tokens"]) for r in rows)
    for r in rows:  # OPD-V's weight is max(0, l+ - l-), read at the same temperature as the dump's teacher_logprob
        assert r["weight"] == pytest.approx([max(0.0, t - n) for t, n in zip(r["teacher_logprob"], r["negative_logprob"],
                                                                          strict=True)], abs=2e-5)
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"weight_mean", "weight_zero_share", "negative_logprob_gap", "negative_fallbacks"} <= set(metrics)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(len(s["weight"]) == len(s["tokens"]) for s in samples)
    page = (out / "report.html").read_text()
    assert 'data-colour="weight"' in page and "data-w=" in page and "colour by loss weight" in page
    plain = tmp_path / "plain"
    assert main(_train_args(synth_dir, plain, "train.sample_every=1", "train.report=true")) == 0
    assert 'data-colour="weight"' not in (plain / "report.html").read_text()


def test_teacher_signal_guard_names_the_step_when_the_teacher_is_uniform():
    from vision_opd.training.guards import TeacherSignalGuard, TrainingStopped

    guard = TeacherSignalGuard(384)
    guard.check({"teacher_entropy": 0.98 * math.log(384), "tokens": 10}, 3)  # informative enough: goes on
    with pytest.raises(TrainingStopped, match=r"^step 7: .*near uniform.*broken model load or teacher weight push"):
        guard.check({"teacher_entropy": 0.992 * math.log(384), "tokens": 10}, 7)
    TeacherSignalGuard(384, enabled=False).check({"teacher_entropy": math.log(384), "tokens": 10}, 7)


@pytest.fixture(scope="module")
def uniform_model_dir(tmp_path_factory):
    """A tiny model whose output weights were zeroed (a broken load): every token scored alike, saved as a folder."""
    from vision_opd.config import ModelConfig
    from vision_opd.models.loading import load_model

    model, proc = load_model(ModelConfig(), seed=0, device=torch.device("cpu"))
    with torch.no_grad():
        model.lm_head.weight.zero_()
    out = tmp_path_factory.mktemp("uniform")
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def test_a_run_with_a_uniform_teacher_stops_at_its_first_step_with_one_line(tmp_path, synth_dir, uniform_model_dir, capsys):
    from vision_opd.cli import main

    rc = main(_train_args(synth_dir, tmp_path / "run", f"model.name_or_path={uniform_model_dir}", "train.report=false"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and len(err) == 1 and "step 1: the teacher's per-token distribution is near uniform" in err[0]
    assert main(_train_args(synth_dir, tmp_path / "off", f"model.name_or_path={uniform_model_dir}", "train.report=false",
                            "train.guard_uniform_teacher=false")) == 0


def test_demo_negative_view_arms_run_through_the_training_step(tmp_path):
    """The study's negative-view arms are `vision_opd_step` with views.negative and loss.weighting set: their logs carry
    the weighting's metrics; the random crops of the demo world all meet the IoU bound (no fallback)."""
    from vision_opd.demo.arms import ArmConfig, run_arm
    from vision_opd.demo.run import ASSET_MODEL, prepare_data, world_of
    from vision_opd.demo.study import STUDY_ARMS

    opd, held = prepare_data(tmp_path, world_of(ASSET_MODEL), 16, 4)
    for name, key in (("opd-opdv-mask", "weight_zero_share"), ("opd-opdv-crop", "weight_mean"),
                      ("opd-cvopd", "gated_share"), ("opd-vzero", "weight_mean")):
        cfg = ArmConfig(**{**STUDY_ARMS[name], "steps": 1, "eval_every": 1, "prompts": 4, "samples": 2})
        assert cfg.opd_config().views.negative == STUDY_ARMS[name]["negative"]
        log = run_arm(cfg, ASSET_MODEL, opd, held, progress=False)["log"][0]
        assert log["skipped"] == 0 and key in log and log["negative_fallbacks"] == 0, name
