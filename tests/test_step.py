"""One Vision-OPD step pinned by its outcome, not its wiring: the logged loss and KL and the update equal an
independent recomputation from the step's own rollout (temperature != 1, several micro-batches); the gradient
clip and the warm-up reach the update; a few steps on the shipped demo model lower the divergence."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from vision_opd.config import load_config
from vision_opd.data.views import encode_views, student_view, teacher_view
from vision_opd.scoring.forward import response_logits


def _cfg(tmp_path, synth_dir, *extra):
    return load_config(None, [
        f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={tmp_path / 'run'}", "train.progress=false",
        "train.prompts_per_step=4", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=6",
        "rollout.temperature=0.7", "train.micro_batch_size=3", "teacher.mode=frozen", "views.teacher_pixels=12544",
        "optim.warmup_steps=0", "optim.grad_clip=0", *extra])


def _setup(cfg, lr: float = 1.0):
    """What train() builds, with plain SGD (no momentum, no decay): the update is then -lr x the clipped gradient."""
    from vision_opd.data.sources import load_train_records
    from vision_opd.models.loading import load_model
    from vision_opd.training import loop as T

    T.seed_everything(cfg.train.seed)
    model, proc = load_model(cfg.model, seed=cfg.train.seed, device=torch.device("cpu"))
    records, _ = load_train_records(cfg.data, cfg.views)
    teacher = T.Teacher(model, cfg.teacher.mode, cfg.teacher.ema_rate)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.lr_lambda(cfg))
    return T, model, proc, records, teacher, opt, sched


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _independent_loss(student, teacher_model, proc, records, rollout, cfg):
    """The step's loss recomputed one response at a time, with no padding, no chunking, no shared code path
    beyond the views: sum over every response token of JSD_a(S || T) at temperature tau, divided by the total
    token count; also the mean reverse KL(S || T)."""
    tau, a = cfg.rollout.temperature, cfg.loss.alpha
    total, kl, n = 0.0, 0.0, 0
    for b in range(rollout.response_ids_B_T.shape[0]):
        rec = records[int(rollout.prompt_index_B[b])]
        length = int(rollout.response_mask_B_T[b].sum())
        ids = rollout.response_ids_B_T[b:b + 1, :length]
        ones = torch.ones_like(ids, dtype=torch.float32)
        s_logits = response_logits(student, encode_views(proc, [student_view(rec, cfg.views)]), ids, ones)[0]
        with torch.no_grad():
            t_logits = response_logits(teacher_model, encode_views(proc, [teacher_view(rec, cfg.views)]), ids, ones)[0]
        s = torch.log_softmax(s_logits.float() / tau, -1)
        t = torch.log_softmax(t_logits.float() / tau, -1)
        m = torch.log((1 - a) * s.exp() + a * t.exp())
        jsd = (1 - a) * (s.exp() * (s - m)).sum(-1) + a * (t.exp() * (t - m)).sum(-1)
        total = total + jsd.sum()
        kl += float((s.exp() * (s - t)).sum().detach())
        n += length
    return total / n, kl / n, n


def test_step_loss_kl_and_update_equal_an_independent_recomputation(tmp_path, synth_dir):
    cfg = _cfg(tmp_path, synth_dir)
    T, model, proc, records, teacher, opt, sched = _setup(cfg, lr=1.0)
    batch = records[:4]
    before = copy.deepcopy(model)
    res = T.vision_opd_step(cfg, T.StepContext(model, teacher, proc, opt, sched, T.vision_token_ids(model, proc), torch.device("cpu")), batch)
    ro, m = res.rollout, res.metrics
    assert ro.response_ids_B_T.shape[0] == 8 and m["skipped"] == 0  # micro-batches of 3, 3 and 2 responses
    loss, kl, n = _independent_loss(before, teacher.module(), proc, batch, ro, cfg)
    assert m["tokens"] == n
    assert m["loss"] == pytest.approx(loss.item(), rel=1e-4)
    assert m["kl"] == pytest.approx(kl, rel=1e-4)
    loss.backward()
    grads = {n_: p.grad for n_, p in before.named_parameters() if p.requires_grad and p.grad is not None}
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())).item()
    assert m["grad_norm"] == pytest.approx(norm, rel=1e-4)
    after, start = _params(model), dict(before.named_parameters())
    for name, g in grads.items():  # SGD, lr 1, no clip: the update is exactly minus the gradient
        torch.testing.assert_close(start[name].detach() - after[name], g, atol=2e-6, rtol=2e-3, msg=name)


def test_grad_clip_bounds_the_update(tmp_path, synth_dir):
    cfg = _cfg(tmp_path, synth_dir, "optim.grad_clip=0.001")
    T, model, proc, records, teacher, opt, sched = _setup(cfg, lr=1.0)
    start = _params(model)
    m = T.vision_opd_step(cfg, T.StepContext(model, teacher, proc, opt, sched, T.vision_token_ids(model, proc), torch.device("cpu")), records[:4]).metrics
    step = math.sqrt(sum(((start[k] - v).double() ** 2).sum().item() for k, v in _params(model).items()))
    assert m["grad_norm"] > 0.01  # the logged norm is the one before clipping
    assert step == pytest.approx(0.001, rel=1e-3)


def test_first_warmup_step_uses_lr_over_warmup_steps(tmp_path, synth_dir):
    """warmup_steps=4: the first update is taken at lr / 4 (not 0), the second at lr / 2; the logged lr is the
    lr the step used."""
    cfg = _cfg(tmp_path, synth_dir, "optim.warmup_steps=4", "optim.lr=1.0", "optim.grad_clip=0.001")
    T, model, proc, records, teacher, opt, sched = _setup(cfg, lr=cfg.optim.lr)
    for expected, batch in ((0.25, records[:4]), (0.5, records[4:8])):
        start = _params(model)
        m = T.vision_opd_step(cfg, T.StepContext(model, teacher, proc, opt, sched, T.vision_token_ids(model, proc), torch.device("cpu")), batch).metrics
        step = math.sqrt(sum(((start[k] - v).double() ** 2).sum().item() for k, v in _params(model).items()))
        assert m["lr"] == pytest.approx(expected)
        assert step == pytest.approx(expected * 0.001, rel=1e-3)  # clipped gradient of norm 0.001, times the lr


# ----------------------------------------------------------------------------- the shipped demo model


def _divergence(model, teacher_model, proc, records, responses, views):
    """Mean per-token JSD(student on the full image || teacher on the crop) along fixed responses."""
    total, n = 0.0, 0
    with torch.no_grad():
        for rec, (ids, mask) in zip(records, responses, strict=True):
            s = torch.log_softmax(response_logits(model, encode_views(proc, [student_view(rec, views)]), ids, mask)[0], -1)
            t = torch.log_softmax(response_logits(teacher_model, encode_views(proc, [teacher_view(rec, views)]), ids, mask)[0], -1)
            mlog = torch.log(0.5 * s.exp() + 0.5 * t.exp())
            jsd = 0.5 * (s.exp() * (s - mlog)).sum(-1) + 0.5 * (t.exp() * (t - mlog)).sum(-1)
            keep = mask[0].bool()
            total += float(jsd[keep].sum())
            n += int(keep.sum())
    return total / n


def test_a_few_steps_on_the_demo_model_lower_the_divergence(tmp_path):
    """The shipped pre-trained demo model with a frozen crop teacher: 6 Vision-OPD steps lower the divergence
    between its full-image and crop distributions on held-out items (a loss whose sign is flipped raises it)."""
    from vision_opd.demo.arms import ArmConfig
    from vision_opd.demo.pretrain import DEMO_VIEWS, eval_split, load_demo_model
    from vision_opd.demo.run import ASSET_MODEL, world_of
    from vision_opd.rollout import sample
    from vision_opd.training import loop as T
    from vision_opd.training.stream import PromptStream

    world = world_of(ASSET_MODEL)
    train_recs = eval_split(tmp_path / "data", "opd", 48, world)
    held = eval_split(tmp_path / "data", "val", 8, world)
    views = DEMO_VIEWS
    T.seed_everything(0)
    model, proc = load_demo_model(ASSET_MODEL)
    cfg = ArmConfig(steps=6, prompts=8, samples=4, lr=1e-3, teacher="frozen").opd_config()
    cfg.views = views
    teacher = T.Teacher(model, "frozen")
    suppress = T.vision_token_ids(model, proc)
    responses = []  # the initial student's own greedy answers on the held-out full images: fixed for both measures
    for rec in held:
        ro = sample(model, proc, encode_views(proc, [student_view(rec, views)]), samples_per_prompt=1,
                    max_new_tokens=8, suppress_ids=suppress, do_sample=False)
        responses.append((ro.response_ids_B_T, ro.response_mask_B_T))
    d0 = _divergence(model, teacher.module(), proc, held, responses, views)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.lr_lambda(cfg))
    stream = PromptStream(len(train_recs), 0)
    for _ in range(cfg.train.steps):
        batch = [train_recs[i] for i in stream.take(cfg.train.prompts_per_step)]
        T.vision_opd_step(cfg, T.StepContext(model, teacher, proc, opt, sched, suppress, torch.device("cpu")), batch)
    d1 = _divergence(model, teacher.module(), proc, held, responses, views)
    assert d0 > 0.01, "the demo model has a gap to close"
    assert d1 < 0.8 * d0, (d0, d1)
