"""Scoring each prompt once for its responses (train.share_prompts) equals scoring every row with its own prompt.

Four tiny families, fp32, train mode: per-token log-probs within 1e-5, the loss within 1e-5, and every parameter
gradient within a per-tensor relative 1e-5 (max abs difference / max abs gradient: gradient entries reach 1e2, so
fp32 summation order alone moves them by more than any absolute tolerance), for full fine-tuning and LoRA, with
gradient checkpointing, for left-padded prompts of different lengths (a crop and full images in one batch) and a
micro-batch holding part of a group; a short training run ends with the same weights.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

from vision_opd.data.views import ViewConfig, encode_views, student_view, teacher_view
from vision_opd.models.loading import set_trainable
from vision_opd.models.parts import unwrap
from vision_opd.models.tiny import FAMILIES, build_processor, build_tiny
from vision_opd.scoring.forward import score_responses
from vision_opd.scoring.shared import sharing_blocker

# Qwen3.5's gated-delta decay parameters: their gradients (~1e-8 against a largest gradient ~0.2 in the tiny model)
# are what is left after large terms cancel, so fp32 rounding is ~100% of them (the per-row path itself moves that
# much when only the kernel's chunk size changes); they are held to 1e-5 of the model's largest gradient instead
NOISY = ("linear_attn.A_log", "linear_attn.dt_bias", "linear_attn.in_proj_a")
# rows -> prompt: whole groups of G = 3, and a micro-batch holding part of groups, out of order
ROW_MAPS = {"groups": [0, 0, 0, 1, 1, 1, 2, 2, 2], "partial": [2, 0, 0, 1, 2]}


@functools.lru_cache(maxsize=None)
def _batch(family: str, synth_dir):
    """Three left-padded prompts of different lengths: a full image, a 336 px crop (many more image tokens, another
    rope delta) and another full image with another question."""
    from vision_opd.data.validate import read_records

    recs = read_records(synth_dir / "train.jsonl")
    proc = build_processor(family)
    proc.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}  # tokens follow image size
    views = [student_view(recs[0]), teacher_view(recs[2], ViewConfig(teacher_pixels=336 * 336)), student_view(recs[1])]
    inputs = encode_views(proc, views)
    lengths = inputs["attention_mask"].sum(-1).tolist()
    assert len(set(lengths)) == 3 and max(lengths) > min(lengths) + 20  # really different, really left-padded
    return inputs


def _responses(n_rows: int, T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, 300, (n_rows, T), generator=g)
    lengths = torch.randint(1, T + 1, (n_rows,), generator=g)
    lengths[0] = T
    return ids, (torch.arange(T)[None] < lengths[:, None]).float()


def _score(model, inputs, rows, ids, mask, shared: bool, fallback: bool = False):
    """(log-probs [B, T] of the response tokens, loss, {name: gradient}) of one forward + backward."""
    model.zero_grad(set_to_none=True)
    hf = unwrap(model)
    assert not shared or fallback or sharing_blocker(model) is None  # the shared path really runs
    hidden = score_responses(model, inputs, torch.tensor(rows), ids, mask, vision_start_id=hf.config.vision_start_token_id,
                             shared=shared)
    head = hf.get_output_embeddings()
    logprobs = torch.log_softmax(head(hidden), -1).gather(-1, ids[..., None])[..., 0]
    loss = -(logprobs * mask).sum() / mask.sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logprobs.detach(), loss.item(), grads


def _assert_same(per_row, shared, mask):
    (lp_a, loss_a, g_a), (lp_b, loss_b, g_b) = per_row, shared
    sel = mask.bool()
    assert (lp_a[sel] - lp_b[sel]).abs().max().item() <= 1e-5
    assert abs(loss_a - loss_b) <= 1e-5
    assert g_a.keys() == g_b.keys() and len(g_a) > 0
    largest = max(g.abs().max().item() for g in g_a.values())
    for name, ga in g_a.items():
        diff = (ga - g_b[name]).abs().max().item()
        scale = largest if any(k in name for k in NOISY) else ga.abs().max().item()
        assert diff <= 1e-5 * scale, (name, diff, scale)


@pytest.mark.parametrize("rows", ROW_MAPS, ids=list(ROW_MAPS))
@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prompts_equal_per_row_scoring(family, rows, synth_dir):
    model, _ = build_tiny(family)
    model.train()
    inputs = _batch(family, synth_dir)
    ids, mask = _responses(len(ROW_MAPS[rows]), T=9)
    _assert_same(_score(model, inputs, ROW_MAPS[rows], ids, mask, False),
                 _score(model, inputs, ROW_MAPS[rows], ids, mask, True), mask)
    with torch.no_grad():  # the teacher's call: eval mode, no grad
        model.eval()
        a, b = (score_responses(model, inputs, torch.tensor(ROW_MAPS[rows]), ids, mask, shared=s,
                                vision_start_id=model.config.vision_start_token_id) for s in (False, True))
    assert (a - b)[mask.bool()].abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prompts_with_lora(family, synth_dir):
    pytest.importorskip("peft")
    from vision_opd.models.lora import apply_lora
    from vision_opd.training.teacher import adapter_params

    model, _ = build_tiny(family)
    model = apply_lora(model, 4, 8)
    with torch.no_grad():  # peft starts with B = 0 (the adapter is the identity); make it non-trivial
        for name, p in adapter_params(model).items():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.train()
    inputs, rows = _batch(family, synth_dir), ROW_MAPS["groups"]
    ids, mask = _responses(len(rows), T=7, seed=1)
    per_row, shared = _score(model, inputs, rows, ids, mask, False), _score(model, inputs, rows, ids, mask, True)
    assert all("lora_" in n for n in shared[2])  # only the adapter trains
    _assert_same(per_row, shared, mask)


def _count_checkpoints(model) -> list[str]:
    """Replace each checkpointed layer's function by a counting one (still non-reentrant)."""
    calls = []
    for name, m in model.named_modules():
        if getattr(m, "gradient_checkpointing", False):
            def counted(fn, *args, _name=name, **kw):
                calls.append(_name)
                return torch.utils.checkpoint.checkpoint(fn, *args, **kw)

            m._gradient_checkpointing_func = functools.partial(counted, use_reentrant=False)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prompts_with_gradient_checkpointing(family, synth_dir):
    """Checkpointed layers keep the prompt's cache (the caches are read-only), both forwards are checkpointed, and
    the result equals the per-row path without checkpointing."""
    reference, _ = build_tiny(family)
    model, _ = build_tiny(family)
    set_trainable(model, gradient_checkpointing=True)
    calls = _count_checkpoints(model)
    reference.train(), model.train()
    inputs, rows = _batch(family, synth_dir), ROW_MAPS["partial"]
    ids, mask = _responses(len(rows), T=6, seed=2)
    shared = _score(model, inputs, rows, ids, mask, True)
    n_layers = model.config.get_text_config().num_hidden_layers
    assert sum(".language_model.layers." in c for c in calls) == 2 * n_layers  # the prompts', then the responses'
    _assert_same(_score(reference, inputs, rows, ids, mask, False), shared, mask)


def test_shared_prompts_with_a_frozen_vision_tower(synth_dir):
    """Qwen3-VL (its vision tower also feeds deepstack features into the first decoder layers), vision frozen."""
    model, _ = build_tiny("qwen3_vl")
    set_trainable(model, freeze_vision=True)
    model.train()
    inputs, rows = _batch("qwen3_vl", synth_dir), ROW_MAPS["partial"]
    ids, mask = _responses(len(rows), T=8, seed=5)
    per_row, shared = _score(model, inputs, rows, ids, mask, False), _score(model, inputs, rows, ids, mask, True)
    assert not any(".visual." in n for n in shared[2])
    _assert_same(per_row, shared, mask)


@pytest.mark.parametrize("T", [1, 2])
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_5"])
def test_shared_prompts_with_one_or_two_response_tokens(family, T, synth_dir):
    """T = 1: the prompt's last hidden state alone; T = 2: a one-token response forward (Qwen3.5's single-step
    recurrent path, whose fused conv update would write the shared state in place)."""
    model, _ = build_tiny(family)
    model.train()
    inputs, rows = _batch(family, synth_dir), ROW_MAPS["groups"]
    ids, mask = _responses(len(rows), T=T, seed=3)
    _assert_same(_score(model, inputs, rows, ids, mask, False), _score(model, inputs, rows, ids, mask, True), mask)


def test_a_model_that_cannot_share_says_so_once_and_scores_per_row(synth_dir, capsys):
    from vision_opd.scoring import forward as scoring

    model, _ = build_tiny("qwen2_vl")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    scoring._SAID.clear()
    inputs, rows = _batch("qwen2_vl", synth_dir), ROW_MAPS["groups"]
    ids, mask = _responses(len(rows), T=4, seed=4)
    fallback = _score(model, inputs, rows, ids, mask, True, fallback=True)
    _score(model, inputs, rows, ids, mask, True, fallback=True)
    out = capsys.readouterr().out
    assert out.count("train.share_prompts: reentrant gradient checkpointing") == 1, out
    lp, loss, grads = _score(model, inputs, rows, ids, mask, False)
    assert torch.equal(lp, fallback[0]) and loss == fallback[1]  # exactly the per-row path


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_5"])
def test_training_with_shared_prompts_ends_with_the_same_weights(family, tmp_path, synth_dir, monkeypatch):
    """`vision-opd train` as a user runs it, 3 steps, G = 3 with micro-batches of 4 rows (groups split across
    micro-batches), with and without sharing: the same metrics and the same final weights."""
    from transformers import AutoModelForImageTextToText

    from vision_opd.cli import main
    from vision_opd.scoring import shared as scoring_shared

    calls = []
    monkeypatch.setattr(scoring_shared, "_hidden", lambda *a, real=scoring_shared._hidden: calls.append(1) or real(*a))
    runs = {}
    for shared in ("true", "false"):
        calls.clear()
        out = tmp_path / f"share_{shared}"
        main(["train", f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={out}",
              f"model.name_or_path=tiny:{family}", "train.steps=3", "train.prompts_per_step=2",
              "rollout.samples_per_prompt=3", "rollout.max_new_tokens=6", "train.micro_batch_size=4",
              "train.progress=false", "optim.warmup_steps=0", "optim.lr=1e-3", "views.teacher_pixels=12544",
              "teacher.mode=ema", "train.threads=1", f"train.share_prompts={shared}"])
        metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        weights = AutoModelForImageTextToText.from_pretrained(out / "checkpoints" / "step_000003").state_dict()
        runs[shared] = metrics, weights
        assert len(calls) == (3 * 2 * 2 if shared == "true" else 0)  # 3 steps x 2 micro-batches x (teacher, student)
    (m_s, w_s), (m_r, w_r) = runs["true"], runs["false"]
    assert [m["tokens"] for m in m_s] == [m["tokens"] for m in m_r]  # the same sampled responses
    for a, b in zip(m_s, m_r, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert any(not torch.equal(w_r[k], v) for k, v in build_tiny(family)[0].state_dict().items())  # weights moved
    # AdamW divides each gradient entry by its own running scale, so an entry whose gradient is at rounding level
    # (seen: 6e-9 against its tensor's largest 1e-3) moves by a sizeable part of a step either way: a few such
    # entries may differ by up to a tenth of a step (lr = 1e-3); every other entry agrees within 1e-5
    for k, b in w_r.items():
        diff = (w_s[k] - b).abs()
        off = diff > 1e-5 + 1e-4 * b.abs()
        assert off.sum().item() <= max(1, b.numel() // 1000) and diff.max().item() <= 1e-4, (k, off.sum().item(), diff.max().item())


def test_right_padded_prompts_are_refused(synth_dir):
    """Both paths read a prompt's last column as its last real token: a right-padded batch would be silently wrong."""
    model, _ = build_tiny("qwen2_vl")
    inputs = dict(_batch("qwen2_vl", synth_dir))
    mask = inputs["attention_mask"]
    inputs["attention_mask"] = torch.stack([m.roll(-int((m == 0).sum()), 0) for m in mask])  # padding moved right
    ids, rmask = _responses(3, T=4)
    for shared in (True, False):
        with pytest.raises(ValueError, match="left-padded"):
            score_responses(model, inputs, torch.tensor([0, 1, 2]), ids, rmask, shared=shared,
                            vision_start_id=model.config.vision_start_token_id)
