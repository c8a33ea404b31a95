"""The weights a rollout engine receives: whole tensors under the checkpoint's names.

DDP / accelerate wrappers are looked through; LoRA adapters are merged into copies of their base weights (the
trained model stays unmerged); FSDP2 shards (DTensors) are gathered with `full_tensor()`, a collective every rank
runs in the same order. `trainable_only` sends just what training can change (the requires-grad parameters, or
the adapted layers under LoRA): a frozen vision tower is pushed once, when the engine is built.
"""

from __future__ import annotations

import torch


def _whole(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach()


def engine_weights(model, *, trainable_only: bool = False) -> list[tuple[str, torch.Tensor]]:
    """[(name, tensor)] for `reload_weights`; names as in the model's own state_dict."""
    from ..models.parts import strip_wrappers

    m = strip_wrappers(model)
    if hasattr(m, "peft_config"):
        from ..models.lora import merged_lora_weights

        return merged_lora_weights(m, adapted_only=trainable_only)
    if trainable_only:
        return [(n, _whole(p)) for n, p in m.named_parameters() if p.requires_grad]
    return [(n, _whole(t)) for n, t in m.state_dict().items()]
