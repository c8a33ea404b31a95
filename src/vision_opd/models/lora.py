"""LoRA through peft: adapters on the language model's linear layers, the base frozen.

    model.lora_r=16 model.lora_alpha=32        (config keys; lora_r=0 = full fine-tuning)

The lm_head and the vision tower are never adapted (the teacher's lm_head is then the student's, and a
frozen teacher is exactly the base with the adapter disabled). Checkpoints hold the adapter only
(`adapter_model.safetensors` + `adapter_config.json`); `attach_adapter(base, path)` loads one onto its base
(`models.loading.load_model_and_processor(checkpoint)` finds the base itself), `vision-opd export --merge` folds it in.
"""

from __future__ import annotations

# the language model's projections in every supported family (Qwen2-VL ... Qwen3.5, incl. gated-delta layers)
LM_TARGET_REGEX = (r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|"
                   r"in_proj_qkvz|in_proj_ba|in_proj_qkv|in_proj_z|in_proj_b|in_proj_a|out_proj)")


def apply_lora(model, r: int, alpha: int, dropout: float = 0.0, target: str | None = None):
    """Wrap `model` in a peft LoRA model; only the adapter trains."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:  # pragma: no cover - peft is a declared dependency of the lora extra
        raise ImportError("LoRA needs peft: pip install 'vision-opd[lora]'") from e
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target or LM_TARGET_REGEX, bias="none")
    peft_model = get_peft_model(model, cfg)
    adapted = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
    if not adapted:
        raise ValueError(f"LoRA matched no module with target {cfg.target_modules!r}")
    if any("lm_head" in n or ".visual." in n for n in adapted):
        raise ValueError("LoRA target must not include the lm_head or the vision tower")
    return peft_model


def attach_adapter(base, path, *, merge: bool = False):
    """The base model with a saved adapter attached (peft, eval mode); merge=True folds it into the weights and
    returns a plain transformers model."""
    try:
        from peft import PeftModel
    except ImportError as e:  # pragma: no cover - peft is a declared dependency of the lora extra
        raise ImportError("a LoRA checkpoint needs peft: pip install 'vision-opd[lora]'") from e
    model = PeftModel.from_pretrained(base, str(path), is_trainable=False).eval()
    return model.merge_and_unload() if merge else model


def load_adapter_weights(model, path) -> None:
    """Load a saved adapter (adapter_model.safetensors) into a peft model, strictly."""
    from pathlib import Path

    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(path) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"adapter checkpoint mismatch: unexpected keys {unexpected[:5]}")


def merged_lora_weights(peft_model, *, adapted_only: bool = False) -> list[tuple[str, object]]:
    """(name, tensor) of the model with every adapter merged into a *copy* of its base weight, under the base
    model's names (no `base_model.model.` prefix, no `.base_layer`, no lora_ tensors); the peft model is not
    touched. adapted_only: just the merged weights of the adapted layers (what training changes)."""
    import torch
    from peft.tuners.lora import LoraLayer

    merged = {}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and module.active_adapters:
            weight = module.get_base_layer().weight
            full = weight.full_tensor() if hasattr(weight, "full_tensor") else weight  # FSDP2: gather the shard
            w = full.detach().clone()
            for adapter in module.active_adapters:
                if adapter not in module.lora_A:
                    continue
                a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
                a = a.full_tensor() if hasattr(a, "full_tensor") else a
                b = b.full_tensor() if hasattr(b, "full_tensor") else b
                if module.use_dora.get(adapter, False):
                    raise ValueError("merged weights: DoRA adapters are not supported")
                w += (b.detach().to(torch.float32) @ a.detach().to(torch.float32)).to(w.dtype) * module.scaling[adapter]
            merged[_base_name(name) + ".weight"] = w
    if adapted_only:
        return list(merged.items())
    out = []
    for name, t in peft_model.state_dict().items():
        if "lora_" in name:
            continue
        base = _base_name(name.rsplit(".", 1)[0]) + "." + name.rsplit(".", 1)[1]
        t = merged.get(base, t)
        out.append((base, t.full_tensor() if hasattr(t, "full_tensor") else t.detach()))
    return out


def _base_name(peft_name: str) -> str:
    name = peft_name.removeprefix("base_model.model.")
    return name.replace(".base_layer", "")
