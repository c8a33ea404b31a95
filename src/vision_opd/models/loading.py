"""Load a model and its processor from a hub id, a local directory, or `tiny:FAMILY` (built in code).

    model, processor = load_model_and_processor("Qwen/Qwen2.5-VL-3B-Instruct", dtype="bfloat16", device="cuda")
    model, processor = load_model(cfg.model, seed=0, device="cpu")      # what `train` calls

The processor comes from `processors.load_processor` (which works without torchvision).
"""

from __future__ import annotations

from typing import Any

import torch

from .processors import FAMILY_OF_MODEL_TYPE, load_processor

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model_and_processor(name_or_path: str, *, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
                             attn_implementation: str | None = None, min_pixels: int | None = None,
                             max_pixels: int | None = None, trust_remote_code: bool = False):
    """(model, processor) for any image-text-to-text checkpoint: a hub id or a local directory."""
    from transformers import AutoModelForImageTextToText

    kw: dict[str, Any] = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kw).to(device)
    family = FAMILY_OF_MODEL_TYPE.get(model.config.model_type)
    processor = load_processor(name_or_path, family, min_pixels=min_pixels, max_pixels=max_pixels,
                               trust_remote_code=trust_remote_code)
    return model, processor


def vision_token_ids(model, processor) -> list[int]:
    """Token ids that must never be sampled: image/video pads and the vision start/end markers."""
    ids = set()
    for attr in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        v = getattr(model.config, attr, None)
        if v is not None:
            ids.add(int(v))
    tok = processor.tokenizer
    for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
              "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|object_ref_start|>",
              "<|object_ref_end|>"):
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tok.unk_token_id and i is not None and i >= 0:
            ids.add(i)
    return sorted(i for i in ids if i < model.config.get_text_config().vocab_size)


def load_model(model_cfg, *, seed: int = 0, device: str | torch.device = "cpu"):
    """(model, processor) for a `config.ModelConfig`: a hub id / local directory, or tiny:FAMILY built in code."""
    name = model_cfg.name_or_path
    if name.startswith("tiny:"):
        from .tiny import build_tiny

        model, processor = build_tiny(name.split(":", 1)[1], seed=seed, image_size=model_cfg.tiny_image_size)
        return model.to(device), processor
    return load_model_and_processor(name, dtype=model_cfg.dtype, device=device, attn_implementation=model_cfg.attn_implementation,
                                    min_pixels=model_cfg.min_pixels, max_pixels=model_cfg.max_pixels,
                                    trust_remote_code=model_cfg.trust_remote_code)


def set_trainable(model, *, freeze_vision: bool = False, gradient_checkpointing: bool = False) -> list:
    """Freeze the vision tower and/or switch on gradient checkpointing; returns the trainable parameters."""
    from .parts import unwrap

    if freeze_vision:
        vis = getattr(unwrap(model).model, "visual", None)
        if vis is None:
            raise ValueError("model.freeze_vision: this model has no .model.visual tower")
        for p in vis.parameters():
            p.requires_grad_(False)
    if gradient_checkpointing:
        unwrap(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return [p for p in model.parameters() if p.requires_grad]

