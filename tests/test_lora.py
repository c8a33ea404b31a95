"""LoRA: the adapter trains, the base does not, checkpoints hold the adapter, and the teacher has no base copy."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from vision_opd.config import load_config  # noqa: E402
from vision_opd.training.teacher import adapter_params  # noqa: E402


def _cfg(tmp_path, synth_dir, *extra):
    return load_config(None, [
        f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={tmp_path / 'run'}", "train.steps=2",
        "train.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4", "train.micro_batch_size=2",
        "train.progress=false", "optim.warmup_steps=0", "optim.lr=1e-2", "views.teacher_pixels=12544", "model.lora_r=4",
        *extra])


def _setup(cfg):
    from vision_opd.data.sources import load_train_records
    from vision_opd.models.loading import load_model
    from vision_opd.models.lora import apply_lora
    from vision_opd.training import loop as T

    T.seed_everything(0)
    model, proc = load_model(cfg.model, seed=0, device=torch.device("cpu"))
    model = apply_lora(model, cfg.model.lora_r, cfg.model.lora_alpha)
    with torch.no_grad():  # peft initialises B = 0 (adapter = identity); start from a non-trivial adapter
        for n, p in adapter_params(model).items():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    records, _ = load_train_records(cfg.data, cfg.views)
    teacher = T.Teacher(model, cfg.teacher.mode, cfg.teacher.ema_rate)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.lr_lambda(cfg))
    return T, model, proc, records, teacher, opt, sched


@pytest.mark.parametrize("mode", ["frozen", "ema"])
def test_lora_teacher_shares_the_base(mode, tmp_path, synth_dir):
    cfg = _cfg(tmp_path, synth_dir, f"teacher.mode={mode}", "teacher.ema_rate=0.2")  # r != 0.5: r and 1 - r differ
    T, model, proc, records, teacher, opt, sched = _setup(cfg)
    assert teacher.model is None, "no second copy of the model"
    n_base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    n_teacher_state = sum(t.numel() for t in (teacher.state_dict() or {}).values())
    assert n_teacher_state < 0.2 * n_base  # only adapter-sized state (or none)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    adapter0 = {n: p.detach().clone() for n, p in adapter_params(model).items()}
    ema_prev = {n: t.clone() for n, t in (teacher.ema_adapter or {}).items()}
    res = T.vision_opd_step(cfg, T.StepContext(model, teacher, proc, opt, sched, T.vision_token_ids(model, proc), torch.device("cpu")), records[:2])
    assert res.metrics["loss"] > 0 and res.metrics["skipped"] == 0
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if "lora_" not in n), "base must not train"
    adapter1 = {n: p.detach() for n, p in adapter_params(model).items()}
    assert any(not torch.equal(adapter1[n], adapter0[n]) for n in adapter0), "adapter must train"
    if mode == "ema":
        for n, t in teacher.ema_adapter.items():
            torch.testing.assert_close(t, 0.8 * ema_prev[n] + 0.2 * adapter1[n], atol=1e-7, rtol=1e-6)
    # the teacher's forward: the base (frozen) or the EMA adapter, and the student's adapter is restored after
    inputs = T.encode_views(proc, [T.student_view(records[0])])
    with torch.no_grad():
        student_out = model(**inputs).logits
        with teacher.scoring() as tm:
            teacher_out = tm(**inputs).logits
        with model.disable_adapter():
            base_out = model(**inputs).logits
        assert torch.equal(model(**inputs).logits, student_out)
    if mode == "frozen":
        torch.testing.assert_close(teacher_out, base_out)
    else:
        assert not torch.allclose(teacher_out, base_out) and not torch.allclose(teacher_out, student_out)


def test_lora_run_checkpoints_the_adapter_and_resumes(tmp_path, synth_dir):
    from safetensors.torch import load_file

    from vision_opd.training.checkpoint import complete_checkpoints
    from vision_opd.training.loop import train

    cfg = _cfg(tmp_path, synth_dir, "train.steps=3", "train.save_every=2", "teacher.mode=ema")
    run = train(cfg)
    ck = complete_checkpoints(run)
    last = ck[-1]
    assert (last / "adapter_model.safetensors").is_file() and (last / "adapter_config.json").is_file()
    assert not (last / "model.safetensors").exists(), "a LoRA checkpoint holds the adapter, not the base"
    teacher_state = load_file(str(last / "teacher" / "model.safetensors"))
    assert teacher_state and all("lora_" in k for k in teacher_state)
    ref = load_file(str(last / "adapter_model.safetensors"))
    import shutil

    shutil.rmtree(last)
    train(cfg, resume=True)
    again = load_file(str(complete_checkpoints(run)[-1] / "adapter_model.safetensors"))
    for k, v in ref.items():
        torch.testing.assert_close(again[k], v, atol=1e-6, rtol=1e-5)
    # the adapter loads onto the base with peft
    from peft import PeftModel

    from vision_opd.models.tiny import build_tiny

    base, _ = build_tiny("qwen2_5_vl")
    PeftModel.from_pretrained(base, complete_checkpoints(run)[-1])


def test_lora_checkpoint_exports_merged_and_evaluates_like_the_adapter(tmp_path, synth_dir):
    """A tiny LoRA run; `export --merge` writes a full Hugging Face folder; `eval` of that folder gives the same answers
    as `eval` of the adapter checkpoint itself (base + adapter, unmerged)."""
    import json

    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from vision_opd.cli import main
    from vision_opd.models.loading import load_model_and_processor
    from vision_opd.training.checkpoint import latest_checkpoint
    from vision_opd.training.loop import train

    run = train(_cfg(tmp_path, synth_dir, "train.steps=2", "teacher.mode=frozen", "optim.lr=5e-2"))
    ck = latest_checkpoint(run)
    out = tmp_path / "merged"
    assert main(["export", str(ck), "--out", str(out), "--merge"]) == 0
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "processor_config.json", "preprocessor_config.json", "vision_opd_export.json"):
        assert (out / name).is_file(), name
    assert not (out / "trainer_state.pt").exists() and not (out / "adapter_config.json").exists()
    import transformers

    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):  # stock class names
        cls = json.loads((out / name).read_text())["processor_class"]
        assert cls == "Qwen2_5_VLProcessor" and hasattr(transformers, cls), (name, cls)
    assert json.loads((out / "preprocessor_config.json").read_text())["image_processor_type"] == "Qwen2VLImageProcessor"
    merged = AutoModelForImageTextToText.from_pretrained(out)  # stock loaders read it
    AutoTokenizer.from_pretrained(out)
    adapter_model, proc = load_model_and_processor(str(ck))  # base + adapter, not merged
    assert type(adapter_model).__name__ == "PeftModel"
    base, _ = __import__("vision_opd.models.tiny", fromlist=["build_tiny"]).build_tiny("qwen2_5_vl")
    key = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged.state_dict()[key], base.state_dict()[key]), "the adapter must change the weights"
    from vision_opd.data.views import encode_views, student_view

    records = __import__("vision_opd.data.validate", fromlist=["read_records"]).read_records(synth_dir / "train.jsonl")
    inputs = encode_views(proc, [student_view(r) for r in records[:2]])
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapter_model(**inputs).logits, atol=1e-4, rtol=1e-4)
    data = str(synth_dir / "train.jsonl")
    for model, name in ((str(out), "merged"), (str(ck), "adapter")):
        assert main(["eval", "--model", model, "--benchmark", "synthetic", "--data", data, "--out", str(tmp_path / name),
                     "--max-new-tokens", "6", "--no-progress"]) == 0
    a, b = ([json.loads(x) for x in (tmp_path / n / "samples.jsonl").read_text().splitlines()] for n in ("merged", "adapter"))
    assert len(a) == 12 and [s["response"] for s in a] == [s["response"] for s in b]
    # without --merge: the adapter folder (for peft or a server's LoRA support), naming its base
    assert main(["export", str(ck), "--out", str(tmp_path / "adapter_only")]) == 0
    assert json.loads((tmp_path / "adapter_only" / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny:qwen2_5_vl"
