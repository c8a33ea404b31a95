"""The weights a rollout engine receives: whole tensors under the checkpoint's names.

DDP / accelerate wrappers are looked through; LoRA adapters are merged into copies of their base weights (the
trained model stays unmerged); FSDP2 shards (DTensors) are gathered with `full_tensor()`, a collective every rank
runs in the same order. `trainable_only` sends just what training can change (the requires-grad parameters, or
the adapted layers under LoRA): a frozen vision tower is pushed once, when the engine is built.

A tied parameter goes out under every name it has: a tied model's embedding is also `lm_head.weight`, which
`named_parameters()` lists only once (under the embedding's name). The engine is built untied
(`vllm_engine.write_engine_folder`), so its output head is a tensor of its own that only this name updates.
"""

from __future__ import annotations

import torch


def _whole(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach()


def engine_weights(model, *, trainable_only: bool = False) -> list[tuple[str, torch.Tensor]]:
    """[(name, tensor)] for `reload_weights`; names as in the model's own state_dict (every name of a tied tensor)."""
    from ..models.parts import strip_wrappers

    m = strip_wrappers(model)
    if hasattr(m, "peft_config"):
        from ..models.lora import merged_lora_weights

        return merged_lora_weights(m, adapted_only=trainable_only)
    if not trainable_only:
        return [(n, _whole(t)) for n, t in m.state_dict().items()]
    gathered: dict[int, torch.Tensor] = {}  # a tied parameter gathered once, sent under each of its names
    out = []
    for n, p in m.named_parameters(remove_duplicate=False):
        if p.requires_grad:
            if id(p) not in gathered:
                gathered[id(p)] = _whole(p)
            out.append((n, gathered[id(p)]))
    return out
