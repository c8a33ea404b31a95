"""What a weight sync pushes to a rollout engine, checked without an engine: `engine_weights` yields every name the
engine holds, with the model's current (trained) values; full fine-tuning, a frozen vision tower, a tied output head,
LoRA merged (equal to peft's own merge at every name) and FSDP2 shards gathered over two processes."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from vision_opd.models.tiny import build_processor, build_tiny, tiny_config
from vision_opd.rollout.weights import engine_weights


def _tied(family="qwen2_5_vl", seed=0):
    """A tiny model saved as Qwen2.5-VL-3B is: `tie_word_embeddings=True` (lm_head.weight is the embedding)."""
    from transformers import AutoModelForImageTextToText

    proc = build_processor(family)
    config = tiny_config(family, proc.tokenizer)
    config.tie_word_embeddings = True
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    return model.eval(), proc


@torch.no_grad()
def _train(model, seed=1):
    """Move every trainable parameter as a step would (the values an engine must now receive)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _assert_pushes(pushed, expected: dict):
    names = [n for n, _ in pushed]
    assert len(names) == len(set(names)), "a name pushed twice"
    assert set(names) == set(expected), (f"missing {sorted(set(expected) - set(names))[:4]}, "
                                         f"extra {sorted(set(names) - set(expected))[:4]}")
    for n, t in pushed:
        assert torch.equal(t, expected[n]), f"{n}: not the model's current value"


def test_full_fine_tuning_pushes_every_tensor_in_its_trained_value():
    model, _ = build_tiny("qwen2_5_vl")
    initial = {n: t.clone() for n, t in model.state_dict().items()}
    _train(model)
    state = model.state_dict()
    assert all(not torch.equal(state[n], initial[n]) for n, p in model.named_parameters())
    _assert_pushes(engine_weights(model), state)
    _assert_pushes(engine_weights(model, trainable_only=True), dict(model.named_parameters()))


def test_a_frozen_vision_tower_is_left_out_of_each_sync_but_in_the_engines_first_weights():
    model, _ = build_tiny("qwen2_5_vl")
    model.model.visual.requires_grad_(False)
    _train(model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(".visual." in n for n in trainable)
    _assert_pushes(engine_weights(model, trainable_only=True), trainable)
    _assert_pushes(engine_weights(model), model.state_dict())  # the engine is built from every weight


def test_a_tied_model_pushes_the_output_head_under_its_own_name_with_the_trained_embedding():
    model, _ = _tied()
    _train(model)
    emb = model.get_input_embeddings().weight
    names = {n for n, _ in model.named_parameters()}
    assert "lm_head.weight" not in names  # named_parameters() lists a tied parameter once: the embedding's name
    for trainable_only in (True, False):
        pushed = dict(engine_weights(model, trainable_only=trainable_only))
        _assert_pushes(list(pushed.items()), model.state_dict())  # every name of the checkpoint, both tied ones
        assert torch.equal(pushed["lm_head.weight"], emb.detach())


def test_the_engine_folder_of_a_tied_model_is_untied_with_the_trained_head(tmp_path, monkeypatch):
    """vLLM skips `lm_head.*` for a tied model, so the engine is built untied: config says so, and the folder holds
    the head under its own name, equal to the current embedding (loaded back, the model gives the same logits)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from vision_opd.rollout import vllm_engine

    monkeypatch.setattr(vllm_engine, "stock_processor", lambda p: p)  # the stock processor needs torchvision
    model, proc = _tied()
    _train(model)
    folder = vllm_engine.write_engine_folder(model, proc, tmp_path / "engine")
    config = json.loads((folder / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["architectures"] == [type(model).__name__]
    tensors = load_file(str(folder / "model.safetensors"))
    state = model.state_dict()
    assert tensors.keys() == state.keys()
    for n, t in tensors.items():
        assert torch.equal(t, state[n]), n
    again = AutoModelForImageTextToText.from_pretrained(folder).eval()
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, atol=0, rtol=0)


def _lora(model, seed=2, r=4, alpha=12):
    """A LoRA model with trained (nonzero) adapters; scaling alpha / r = 3."""
    from vision_opd.models.lora import apply_lora

    peft_model = apply_lora(model, r, alpha)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return peft_model


@pytest.mark.parametrize("tied", [False, True])
def test_merged_lora_weights_equal_peffts_own_merge_at_every_name(tied):
    from vision_opd.models.lora import merged_lora_weights

    model, _ = _tied() if tied else build_tiny("qwen2_5_vl")
    peft_model = _lora(model)
    scaling = {s for m in peft_model.modules() if isinstance(getattr(m, "scaling", None), dict) for s in m.scaling.values()}
    assert scaling == {3.0}
    base_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "base_layer" in n}
    reference = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    merged = merged_lora_weights(peft_model)
    assert [n for n, _ in merged] == list(reference)  # the base model's names, in its order
    for n, t in merged:
        torch.testing.assert_close(t, reference[n], atol=1e-6, rtol=1e-6, msg=n)
    adapted = merged_lora_weights(peft_model, adapted_only=True)
    targets = {n.replace("base_model.model.", "").replace(".base_layer", "") for n, _ in peft_model.named_parameters()
               if n.endswith("base_layer.weight")}
    assert {n for n, _ in adapted} == targets and len(adapted) == len(targets)
    for n, t in adapted:
        torch.testing.assert_close(t, reference[n], atol=1e-6, rtol=1e-6, msg=n)
        base = base_before["base_model.model." + n.removesuffix(".weight") + ".base_layer.weight"]
        assert not torch.allclose(t, base), f"{n}: the adapter did not reach the merged weight"
    # the sync sends these; the trained model stays unmerged
    assert [n for n, _ in engine_weights(peft_model, trainable_only=True)] == [n for n, _ in adapted]
    assert [n for n, _ in engine_weights(peft_model)] == list(reference)
    for n, p in peft_model.named_parameters():
        if "base_layer" in n:
            assert torch.equal(p, base_before[n]), f"{n} changed: the trained model must stay unmerged"
    assert not any(getattr(m, "merged", False) for m in peft_model.modules())


# ----------------------------------------------------------------------------- FSDP2 over two processes

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")

FSDP_SCRIPT = textwrap.dedent('''
    """Each rank: the same trained tiny model (and a LoRA one), the references taken before sharding, then FSDP2
    over both ranks; what `engine_weights` gathers is compared with the references name by name."""
    import copy, json, os, sys
    import torch
    import torch.distributed as dist
    from vision_opd.models.lora import apply_lora
    from vision_opd.models.tiny import build_tiny
    from vision_opd.rollout.weights import engine_weights
    from vision_opd.training.distributed import shard_fsdp

    dist.init_process_group("gloo")
    rank, out = dist.get_rank(), sys.argv[1]
    report = {}

    def compare(key, pushed, expected):
        names = [n for n, _ in pushed]
        bad = [n for n, t in pushed if n not in expected or t.shape != expected[n].shape
               or not torch.allclose(t, expected[n], atol=1e-6, rtol=0)]
        report[key] = {"names_equal": sorted(names) == sorted(expected) and len(names) == len(set(names)), "bad": bad[:5]}

    torch.manual_seed(1)
    model, _ = build_tiny("qwen2_5_vl")
    model.model.visual.requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    full = {n: t.clone() for n, t in model.state_dict().items()}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    shard_fsdp(model)
    report["sharded"] = sum(p.to_local().numel() < p.numel() for p in model.parameters() if hasattr(p, "to_local"))
    compare("full", engine_weights(model), full)
    compare("trainable", engine_weights(model, trainable_only=True), trainable)

    base, _ = build_tiny("qwen2_5_vl")
    peft_model = apply_lora(base, 4, 12)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    adapted = {n for n, _ in peft_model.named_parameters() if n.endswith("base_layer.weight")}
    adapted = {n.replace("base_model.model.", "").replace(".base_layer", "") for n in adapted}
    reference = {n: t.clone() for n, t in merged.state_dict().items()}
    shard_fsdp(peft_model)
    compare("lora_full", engine_weights(peft_model), reference)
    compare("lora_adapted", engine_weights(peft_model, trainable_only=True), {n: reference[n] for n in adapted})
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two torchrun processes: about 30 s on a shared 2-core machine
@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_fsdp_shards_are_gathered_into_every_whole_tensor_on_every_rank(tmp_path):
    script = tmp_path / "fsdp_weights.py"
    script.write_text(FSDP_SCRIPT)
    res = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                          str(_free_port()), str(script), str(tmp_path)], check=False, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report.pop("sharded") > 10, "the parameters were not sharded over the two ranks"
        for case, r in report.items():
            assert r["names_equal"] and not r["bad"], (rank, case, r)
