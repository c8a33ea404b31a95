"""The parts of a (possibly wrapped) image-text-to-text model that the rest of the package reaches for.

DDP / FSDP / accelerate wrap the model, peft wraps it once more; `strip_wrappers` removes the former,
`unwrap` both; `backbone_and_head` gives the decoder (returning final hidden states) and the lm_head, so
that the divergence can apply the lm_head chunk by chunk instead of materialising [tokens x vocab] logits.
"""

from __future__ import annotations

import torch


def strip_wrappers(model):
    """The model behind DDP/FSDP/accelerate wrappers (a peft model stays a peft model)."""
    while hasattr(model, "module") and isinstance(model, torch.nn.Module) and type(model).__name__ in _WRAPPERS:
        model = model.module
    return model


_WRAPPERS = {"DistributedDataParallel", "FullyShardedDataParallel", "DataParallel", "DeepSpeedEngine"}


def unwrap(model):
    """The underlying HF model behind DDP/FSDP/accelerate wrappers and peft."""
    model = strip_wrappers(model)
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    return model


def backbone_and_head(model):
    """(callable returning last hidden states, lm_head module) of an image-text-to-text model."""
    m = unwrap(model)
    head = m.get_output_embeddings()
    if not hasattr(m, "model") or head is None:
        raise TypeError(f"{type(m).__name__}: expected a *ForConditionalGeneration model with .model and an lm_head")
    return m.model, head


def is_fsdp(model) -> bool:
    """Whether `model` (or what it wraps) is sharded by FSDP2 (its class name starts with FSDP)."""
    return type(model).__name__.startswith("FSDP") or any(type(m).__name__.startswith("FSDP") for m in [unwrap(model)])
