"""Decoding that is what it says (HF engine), sampled-token log-probs, the mismatch and its truncated IS weight."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from vision_opd.data.views import encode_views, student_view
from vision_opd.models.loading import load_model_and_processor, vision_token_ids
from vision_opd.models.tiny import save_tiny
from vision_opd.rollout import Decoding, HFEngine
from vision_opd.scoring.forward import response_logits

ROOT = Path(__file__).resolve().parents[1]
BAD_GENERATION_CONFIG = {"repetition_penalty": 1.05, "top_k": 1, "temperature": 0.01, "no_repeat_ngram_size": 2,
                         "do_sample": True, "top_p": 0.5}


def _checkpoint_with_sampling_defaults(path, family="qwen2_5_vl"):
    """A tiny checkpoint whose generation_config.json carries an instruct model's sampling defaults."""
    save_tiny(path, family=family)
    gc_path = path / "generation_config.json"
    gc = json.loads(gc_path.read_text())
    gc.update(BAD_GENERATION_CONFIG)
    gc_path.write_text(json.dumps(gc))
    model, proc = load_model_and_processor(str(path))
    assert model.generation_config.repetition_penalty == 1.05 and model.generation_config.top_k == 1
    return model, proc


def test_rollouts_sample_the_models_own_distribution_not_the_checkpoints_generation_config(tmp_path, synth_records,
                                                                                          forward_logprobs):
    model, proc = _checkpoint_with_sampling_defaults(tmp_path)
    banned = vision_token_ids(model, proc)
    inputs = encode_views(proc, [student_view(r) for r in synth_records[:2]])
    torch.manual_seed(0)
    temperature = 0.7
    engine = HFEngine(proc, Decoding(samples_per_prompt=4, do_sample=True, temperature=temperature, max_new_tokens=12,
                                     suppressed_ids=tuple(banned)))
    ro = engine.sample(model, inputs)
    mask = ro.response_mask_B_T.bool()
    expected = forward_logprobs(model, inputs, ro, temperature, banned)
    assert mask.sum() > 20
    torch.testing.assert_close(ro.logprobs_B_T[mask], expected[mask], atol=1e-5, rtol=0)
    # top_k 1 / temperature 0.01 of the checkpoint would make the 4 samples of a prompt identical
    assert len({tuple(r) for r in ro.response_ids_B_T[:4].tolist()}) > 1
    assert model.generation_config.repetition_penalty == 1.05  # the checkpoint's config is restored afterwards


def test_greedy_evaluation_is_the_argmax_and_records_its_decoding(tmp_path, synth_records):
    """Greedy = argmax at every step (a plain loop of full forwards), whatever the checkpoint's generation config."""
    from vision_opd.eval.hf_backend import HFGenerator
    from vision_opd.eval.views import view_of

    model, proc = _checkpoint_with_sampling_defaults(tmp_path)
    banned = vision_token_ids(model, proc)
    gen = HFGenerator(model, proc, max_new_tokens=10)
    views = [view_of(r, "full") for r in synth_records[:2]]
    out = gen(views)
    eos = model.generation_config.eos_token_id
    for view, g in zip(views, out, strict=True):
        inputs = encode_views(proc, [view])
        new: list[int] = []
        with torch.no_grad():
            for _ in range(10):  # [prompt + response so far + a placeholder]: the last logits predict the next token
                ids = torch.tensor([new + [0]])
                z = response_logits(model, inputs, ids, torch.ones_like(ids, dtype=torch.float))[0, -1]
                z[banned] = float("-inf")
                t = int(z.argmax())
                new.append(t)
                if t == eos:
                    break
        text = proc.tokenizer.decode([t for t in new if t != eos], skip_special_tokens=False)
        assert g.text == text and g.tokens == len(new)
    d = gen.settings()["decoding"]
    assert d["strategy"] == "greedy" and d["max_new_tokens"] == 10 and d["repetition_penalty"] is None
    assert d["checkpoint_generation_config"] == "ignored" and d["suppressed_token_ids"] == banned


def test_greedy_rollout_logprobs_are_the_argmax_log_probs_at_temperature_1(synth_records, forward_logprobs):
    from vision_opd.models.tiny import build_tiny

    model, proc = build_tiny("qwen2_vl")
    banned = vision_token_ids(model, proc)
    inputs = encode_views(proc, [student_view(r) for r in synth_records[:2]])
    ro = HFEngine(proc, Decoding(samples_per_prompt=2, do_sample=False, temperature=1.5, max_new_tokens=6,
                                 suppressed_ids=tuple(banned))).sample(model, inputs)
    mask = ro.response_mask_B_T.bool()
    expected = forward_logprobs(model, inputs, ro, 1.0, banned)
    torch.testing.assert_close(ro.logprobs_B_T[mask], expected[mask], atol=1e-5, rtol=0)
    assert torch.equal(ro.response_ids_B_T[0], ro.response_ids_B_T[1])  # greedy: G identical copies
    assert (ro.logprobs_B_T[~mask] == 0).all()


# ----------------------------------------------------------------------------- mismatch and IS weights


def test_truncated_is_weights_by_hand():
    from vision_opd.rollout.mismatch import MismatchStats, truncated_is_weights

    trainer = torch.tensor([-1.0, -2.0, -0.5, -3.0])
    rollout = torch.tensor([-1.0, -1.0, -1.5, -3.0 + math.log(4.0)])
    w = truncated_is_weights(trainer, rollout, threshold=2.0)
    torch.testing.assert_close(w, torch.tensor([1.0, math.exp(-1.0), 2.0, 0.25]))  # exp(1) = 2.72 is cut at 2
    stats = MismatchStats()
    stats.add(trainer, rollout, w, 2.0)
    m = stats.metrics(lambda x: x, lambda x: x, correction=True)
    assert m["rollout_logprob_diff_mean"] == pytest.approx((0 + 1 + 1 + math.log(4.0)) / 4)
    assert m["rollout_logprob_diff_max"] == pytest.approx(math.log(4.0))
    assert m["is_weight_mean"] == pytest.approx((1 + math.exp(-1) + 2 + 0.25) / 4) and m["is_clipped_rate"] == 0.25


def test_sampled_token_logprobs_chunked_equal_plain():
    from vision_opd.rollout.mismatch import sampled_token_logprobs, sampled_token_logprobs_from_hidden

    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(37, 8, generator=g), torch.randn(50, 8, generator=g)
    ids = torch.randint(0, 45, (37,), generator=g)
    plain = sampled_token_logprobs(h @ w.t(), ids, 0.7, suppressed_ids=(45, 46))
    keep = [i for i in range(50) if i not in (45, 46)]  # ids < 45 keep their index among the kept columns
    ref = torch.log_softmax((h @ w.t())[:, keep] / 0.7, -1).gather(-1, ids[:, None]).squeeze(-1)
    torch.testing.assert_close(plain, ref)
    torch.testing.assert_close(sampled_token_logprobs_from_hidden(h, w, ids, 0.7, (45, 46), chunk_size=8), plain)


class _ShiftedEngine(HFEngine):
    """The HF engine reporting every sampled token's log-prob `shift` higher than it was."""

    def __init__(self, processor, decoding, shift):
        super().__init__(processor, decoding)
        self.shift = shift

    def sample(self, model, inputs, views=None):
        ro = super().sample(model, inputs, views)
        ro.logprobs_B_T = ro.logprobs_B_T + self.shift * ro.response_mask_B_T
        return ro


def _one_step(tmp_path, synth_dir, engine_shift, *extra):
    from vision_opd.config import load_config
    from vision_opd.data.sources import load_train_records
    from vision_opd.models.loading import load_model
    from vision_opd.rollout import decoding_of
    from vision_opd.training import loop as T

    cfg = load_config(None, [f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={tmp_path}",
                             "train.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=6",
                             "train.micro_batch_size=2", "optim.warmup_steps=0", "views.teacher_pixels=12544",
                             "teacher.mode=frozen", *extra])
    T.seed_everything(0)
    model, proc = load_model(cfg.model, seed=0)
    records, _ = load_train_records(cfg.data, cfg.views)
    teacher = T.Teacher(model, cfg.teacher.mode, cfg.teacher.ema_rate)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    suppress = vision_token_ids(model, proc)
    engine = _ShiftedEngine(proc, decoding_of(cfg.rollout, suppress), engine_shift)
    return T.vision_opd_step(cfg, T.StepContext(model, teacher, proc, opt, sched, suppress, torch.device("cpu"), engine), records[:2]).metrics


@pytest.mark.parametrize("share", ["true", "false"])
def test_hf_engine_logprobs_match_the_trainer(tmp_path, synth_dir, share):
    m = _one_step(tmp_path, synth_dir, 0.0, f"train.share_prompts={share}")
    assert m["tokens"] > 0 and m["rollout_logprob_diff_max"] < 1e-5 and "is_weight_mean" not in m


@pytest.mark.parametrize("share", ["true", "false"])
def test_is_correction_weights_the_loss_numerically(tmp_path, synth_dir, share):
    """The engine claims every token was log(2) likelier than the trainer finds it: w = 1/2 (cut at C when C < 1/2)."""
    s = f"train.share_prompts={share}"
    plain = _one_step(tmp_path, synth_dir, math.log(2.0), s)
    half = _one_step(tmp_path, synth_dir, math.log(2.0), s, "rollout.is_correction=true", "rollout.is_threshold=2.0")
    cut = _one_step(tmp_path, synth_dir, math.log(2.0), s, "rollout.is_correction=true", "rollout.is_threshold=0.3")
    assert plain["rollout_logprob_diff_mean"] == pytest.approx(math.log(2.0), abs=1e-5)
    assert plain["tokens"] == half["tokens"] == cut["tokens"]
    assert half["loss"] == pytest.approx(0.5 * plain["loss"], rel=1e-4) and half["is_weight_mean"] == pytest.approx(0.5, abs=1e-5)
    assert cut["loss"] == pytest.approx(0.3 * plain["loss"], rel=1e-6) and cut["is_clipped_rate"] == 1.0
    assert half["grad_norm"] == pytest.approx(0.5 * plain["grad_norm"], rel=1e-4)


def test_engine_vllm_without_vllm_names_the_extra(tmp_path, synth_dir, capsys):
    if _has_vllm():
        pytest.skip("vLLM is installed here: the missing-vLLM message cannot be shown")
    from vision_opd.cli import main

    rc = main(["train", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), f"data.train_file={synth_dir / 'train.jsonl'}",
               f"train.out_dir={tmp_path / 'run'}", "rollout.engine=vllm"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'vision-opd[vllm]'" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def test_vllm_evaluation_reads_the_eos_ids_where_the_hf_backend_does(tmp_path):
    """generation_config.json's EOS list (instruct checkpoints: <|im_end|> and <|endoftext|>) over config.json's one id."""
    from transformers import AutoConfig

    from vision_opd.eval.vllm_backend import _eos_token_id

    path = save_tiny(tmp_path / "m", family="qwen2_vl")
    config = AutoConfig.from_pretrained(path)
    gc = json.loads((path / "generation_config.json").read_text())
    assert _eos_token_id(str(path), config) == gc["eos_token_id"]
    gc["eos_token_id"] = [gc["eos_token_id"], config.get_text_config().pad_token_id]
    (path / "generation_config.json").write_text(json.dumps(gc))
    model, _ = load_model_and_processor(str(path))
    assert _eos_token_id(str(path), config) == model.generation_config.eos_token_id == gc["eos_token_id"]
    (path / "generation_config.json").unlink()
    assert _eos_token_id(str(path), config) == config.get_text_config().eos_token_id


def test_engine_auto_without_vllm_is_hf_and_says_so_once(tmp_path, synth_dir, capsys, monkeypatch):
    """rollout.engine=auto (the default) where vLLM does not import: HF rollouts, one line at the start of the run."""
    import sys

    from vision_opd.cli import main

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, installed or not
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the VLLM_* defaults set on the way stay in this test
    assert main(["train", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), f"data.train_file={synth_dir / 'train.jsonl'}",
                 f"train.out_dir={tmp_path / 'run'}", "train.steps=2", "train.progress=false", "train.report=false"]) == 0
    out = capsys.readouterr().out
    assert out.count("rollout.engine=auto") == 1
    assert "[vision-opd] rollout.engine=auto: hf (vLLM is not installed (pip install 'vision-opd[vllm]'))" in out
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["sec_sync"] for m in metrics] == [0.0, 0.0]  # the HF engine: generate reads the training weights


def test_engine_auto_chooses_vllm_where_it_imports_and_runs_the_model(monkeypatch):
    """With an importable vLLM (a stand-in module here; the real one in tests/test_vllm.py): vllm for a tiny model
    (head_dim 32) on the CPU; hf for the demo model (head_dim 16: vLLM's CPU attention refuses it), for
    rollout.source=teacher (nothing for vLLM to sample) and under several processes; a named engine as named."""
    import sys
    import types

    from vision_opd.config import load_config
    from vision_opd.demo.pretrain import build_demo_model
    from vision_opd.models.tiny import build_tiny
    from vision_opd.rollout import choose_engine

    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(os, "environ", dict(os.environ))
    tiny, _ = build_tiny("qwen2_vl")
    demo, _ = build_demo_model()
    cfg = load_config(None, [])
    assert cfg.rollout.engine == "auto"
    assert choose_engine(cfg, tiny, "cpu") == ("vllm", "vLLM is installed and supports qwen2_vl on cpu")
    engine, why = choose_engine(cfg, demo, "cpu")
    assert engine == "hf" and "head_dim=16 is not supported by vLLM's CPU attention" in why
    assert choose_engine(cfg, tiny, "cpu", world=2)[0] == "hf"
    assert choose_engine(load_config(None, ["rollout.source=teacher"]), tiny, "cpu")[0] == "hf"
    assert choose_engine(load_config(None, ["rollout.engine=hf"]), tiny, "cpu") == ("hf", "as configured")
