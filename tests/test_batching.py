"""Micro-batches by a budget of positions (`train.micro_batch_tokens`, training/batching.py): every row once, the
budget kept, prompt groups together when that is cheaper, padding cut; the step gives the row-count path's weights."""

from __future__ import annotations

import json

import pytest
import torch

from vision_opd.config import ConfigError, load_config
from vision_opd.training.batching import (
    StepPlan,
    consecutive_micro_batches,
    micro_batch_cost,
    plan_counts,
    plan_micro_batches,
)


def _cost(mb, lengths, prompts, widths, share):
    return micro_batch_cost(mb.tolist(), lengths.tolist(), prompts.tolist(), widths.tolist(), share)


def _case(seed: int, P: int, G: int, width: int, longest: int = 512):
    g = torch.Generator().manual_seed(seed)
    lengths = (8 * torch.exp(torch.rand(P * G, generator=g) * torch.log(torch.tensor(longest / 8)))).long()  # 8..512
    return lengths, torch.arange(P).repeat_interleave(G), torch.full((P,), width)


@pytest.mark.parametrize("share", [True, False])
def test_every_row_once_and_the_budget_kept_unless_one_row_alone_exceeds_it(share):
    for seed in range(20):
        lengths, prompts, widths = _case(seed, P=1 + seed % 5, G=1 + seed % 8, width=40 + 20 * seed)
        lengths[seed % len(lengths)] = 0  # a left-out response (zero loss tokens)
        budget = 300 + 97 * seed
        plan = plan_micro_batches(lengths, prompts, widths, budget, share)
        assert sorted(torch.cat(plan).tolist()) == list(range(len(lengths)))
        for mb in plan:
            assert _cost(mb, lengths, prompts, widths, share) <= budget or len(mb) == 1
    # a row over the budget on its own: a micro-batch of its own; the others still within it
    lengths, prompts, widths = torch.tensor([900, 10, 12, 11]), torch.tensor([0, 0, 1, 1]), torch.tensor([50, 50])
    plan = plan_micro_batches(lengths, prompts, widths, 200, share)
    assert [0] in [mb.tolist() for mb in plan]
    assert all(_cost(mb, lengths, prompts, widths, share) <= 200 for mb in plan if mb.tolist() != [0])


def test_a_prompts_rows_stay_together_when_they_fit():
    """Equal lengths (no padding to save): whole groups, as many as the budget holds; each prompt runs once."""
    lengths, prompts, widths = torch.full((5 * 4,), 30), torch.arange(5).repeat_interleave(4), torch.full((5,), 200)
    plan = plan_micro_batches(lengths, prompts, widths, 2 * (200 + 4 * 30), True)  # two groups a micro-batch
    groups = [sorted(set(prompts[mb].tolist())) for mb in plan]
    assert len(plan) == 3 and sorted(p for g in groups for p in g) == [0, 1, 2, 3, 4]  # each prompt in one
    assert all(len(mb) == 4 * len(g) for mb, g in zip(plan, groups, strict=True))
    # long prompts, close lengths: grouping wins even when lengths differ a little
    lengths = 100 + torch.arange(20) % 3
    plan = plan_micro_batches(lengths, prompts, torch.full((5,), 1000), 4000, True)
    assert all(len(set(prompts[mb].tolist())) == len(mb) // 4 for mb in plan)


def test_long_tailed_lengths_with_short_prompts_are_packed_by_length():
    """Short prompts, responses of 8-512 tokens: the plan pads less than a third of the row-count plan, and less
    than 15% of its response positions."""
    lengths, prompts, widths = _case(0, P=8, G=8, width=60)
    budget = 4096
    plan = plan_micro_batches(lengths, prompts, widths, budget, True)
    rows = consecutive_micro_batches(len(lengths), 8)
    real = torch.ones(8, dtype=torch.long) * 60
    by_budget, by_rows = (plan_counts(p, lengths, prompts, widths, real, True) for p in (plan, rows))
    pad = {k: 1 - c["response_tokens"] / c["response_positions"] for k, c in (("budget", by_budget), ("rows", by_rows))}
    assert pad["budget"] < 0.15 and pad["budget"] < pad["rows"] / 3, pad
    assert by_budget["positions_scored"] < by_rows["positions_scored"]


def test_split_to_gives_as_many_micro_batches_as_asked_within_the_cost():
    lengths, prompts, widths = _case(3, P=2, G=4, width=50)
    plan = consecutive_micro_batches(8, 8)
    step = StepPlan(plan, lengths, prompts, widths, widths, True).split_to(5)
    assert len(step.rows) == 5 and sorted(torch.cat(step.rows).tolist()) == list(range(8))
    assert max(_cost(mb, lengths, prompts, widths, True) for mb in step.rows) <= _cost(plan[0], lengths, prompts, widths, True)


def test_a_negative_budget_is_one_line():
    with pytest.raises(ConfigError, match=r"train.micro_batch_tokens=-1: must be >= 0"):
        load_config(None, ["train.micro_batch_tokens=-1"])


class _CutEngine:
    """The HF engine's rollout with each response cut at a length drawn from its own generator (so every run cuts
    the same way): variable lengths from a tiny random model, which never emits EOS itself."""

    def __init__(self, hf, pad_id: int, seed: int = 0):
        self.hf, self.pad_id, self.gen = hf, pad_id, torch.Generator().manual_seed(seed)

    def sample(self, model, inputs, views=None):
        ro = self.hf.sample(model, inputs, views)
        B, T = ro.response_ids_B_T.shape
        cut_B = torch.randint(1, T + 1, (B,), generator=self.gen)
        keep_B_T = torch.arange(T)[None, :] < cut_B[:, None]
        ro.response_ids_B_T = torch.where(keep_B_T, ro.response_ids_B_T, self.pad_id)
        ro.response_mask_B_T = ro.response_mask_B_T * keep_B_T
        ro.logprobs_B_T = ro.logprobs_B_T * keep_B_T
        ro.truncated_B = cut_B >= T
        return ro

    def sync(self, model):
        return 0.0


def _one_step(tmp_path, synth_dir, *extra):
    from vision_opd.data.sources import load_train_records
    from vision_opd.models.loading import load_model
    from vision_opd.rollout import HFEngine, decoding_of
    from vision_opd.training import loop as T

    cfg = load_config(None, [f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={tmp_path / 'run'}",
                             "train.progress=false", "train.prompts_per_step=3", "rollout.samples_per_prompt=4",
                             "rollout.max_new_tokens=12", "train.micro_batch_size=5", "teacher.mode=frozen",
                             "views.teacher_pixels=12544", "optim.warmup_steps=0", "optim.lr=1.0", "optim.grad_clip=0", *extra])
    T.seed_everything(0)
    model, proc = load_model(cfg.model, seed=0, device=torch.device("cpu"))
    records, _ = load_train_records(cfg.data, cfg.views)
    teacher = T.Teacher(model, cfg.teacher.mode, cfg.teacher.ema_rate)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)  # update = -lr x grad
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.lr_lambda(cfg))
    suppress = T.vision_token_ids(model, proc)
    engine = _CutEngine(HFEngine(proc, decoding_of(cfg.rollout, suppress)), proc.tokenizer.pad_token_id)
    ctx = T.StepContext(model, teacher, proc, opt, sched, suppress, torch.device("cpu"), engine)
    res = T.vision_opd_step(cfg, ctx, records[:3])
    return {n: p.detach().clone() for n, p in model.named_parameters()}, res


@pytest.mark.parametrize("share", ["true", "false"])
def test_token_budget_step_ends_with_the_row_count_steps_weights(tmp_path, synth_dir, share):
    """Variable lengths, rows regrouped and reordered by the budget: the same weights (fp32 rounding), the same
    per-token values row by row, fewer padded positions."""
    w_rows, rows = _one_step(tmp_path / "rows", synth_dir, f"train.share_prompts={share}")
    w_tok, tok = _one_step(tmp_path / "tok", synth_dir, f"train.share_prompts={share}", "train.micro_batch_tokens=160")
    lengths = rows.rollout.lengths_B
    assert torch.equal(lengths, tok.rollout.lengths_B) and len(set(lengths.tolist())) > 4  # the same varied rollout
    for n, w in w_rows.items():
        torch.testing.assert_close(w_tok[n], w, rtol=1e-5, atol=1e-6, msg=n)
    assert rows.metrics["grad_norm"] > 0 and rows.metrics["skipped"] == 0
    for name, per_row in rows.token_values.items():
        for a, b in zip(per_row, tok.token_values[name], strict=True):
            torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=1e-5)
    assert tok.metrics["response_padding_share"] < rows.metrics["response_padding_share"]
    assert tok.metrics["loss"] == pytest.approx(rows.metrics["loss"], rel=1e-5)


def test_padding_metrics_reach_metrics_jsonl(tmp_path, synth_dir):
    from vision_opd.cli import main

    out = tmp_path / "run"
    assert main(["train", f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={out}", "train.steps=1",
                 "train.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
                 "train.micro_batch_tokens=1000", "train.progress=false", "views.teacher_pixels=12544",
                 "train.threads=1", "train.report=false"]) == 0
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    # tiny random models never stop: 4 rows of 4 tokens, both prompts in one micro-batch, no response padding
    assert m["micro_batches"] == 1 and m["response_padding_share"] == 0.0
    assert m["positions_scored"] > m["positions_real"] > 16 and 0 < m["padding_share"] < 1
