"""The model in-process: batched greedy decoding with a Hugging Face model (left padding, vision tokens suppressed).

    gen = load_hf_generator("tiny:qwen2_5_vl", max_new_tokens=16)
    gen([view_of(record, "full")])   # -> [Generation(text, tokens, truncated, seconds)]
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Sequence

import torch

from ..data.views import View
from .samples import Generation
from .thinking import as_thought, prompt_opens_think
from .views import EvalError


def chat_texts(processor, views: Sequence[View], enable_thinking: bool | None = None) -> list[str]:
    kw = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    out = []
    for v in views:
        content = [{"type": "image"} for _ in v.images] + [{"type": "text", "text": v.text}]
        out.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                 tokenize=False, **kw))
    return out


class HFGenerator:
    """Batched greedy decoding with a Hugging Face model: left padding, vision tokens suppressed.

    `min_pixels` / `max_pixels` override the image processor's pixel budget for every image.
    """

    def __init__(self, model, processor, *, max_new_tokens: int = 32, min_pixels: int | None = None,
                 max_pixels: int | None = None, enable_thinking: bool | None = None, name: str = "",
                 synced_gpus: bool = False):
        from ..models.parts import unwrap
        from ..models.loading import vision_token_ids

        self.model, self.processor, self.name = model, processor, name
        self.synced_gpus = synced_gpus  # FSDP: every rank runs the same decoding steps (sharded weights gather in each)
        self.max_new_tokens, self.enable_thinking = max_new_tokens, enable_thinking
        self.suppress = vision_token_ids(unwrap(model), processor)
        size = getattr(processor.image_processor, "size", None) or {}
        self.min_pixels = min_pixels or size.get("shortest_edge") or getattr(processor.image_processor, "min_pixels", None)
        self.max_pixels = max_pixels or size.get("longest_edge") or getattr(processor.image_processor, "max_pixels", None)
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise EvalError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}; set both")
        self.images_kwargs = {"size": {"shortest_edge": int(self.min_pixels), "longest_edge": int(self.max_pixels)}} \
            if (min_pixels or max_pixels) else {}

    def encode(self, views: Sequence[View], texts: Sequence[str] | None = None):
        texts = list(texts) if texts is not None else chat_texts(self.processor, views, self.enable_thinking)
        images = [img for v in views for img in v.images]
        self.processor.tokenizer.padding_side = "left"  # generation appends on the right: pad on the left
        kw = {"images_kwargs": self.images_kwargs} if self.images_kwargs and images else {}
        return self.processor(text=texts, images=images or None, return_tensors="pt", padding=True, **kw)

    @property
    def decoding(self):
        """Greedy, as `--max-new-tokens` says, vision tokens suppressed; the checkpoint's generation config ignored."""
        from ..rollout import Decoding

        return Decoding(max_new_tokens=self.max_new_tokens, suppressed_ids=tuple(self.suppress))

    @torch.no_grad()
    def __call__(self, views: Sequence[View]) -> list[Generation]:
        from ..rollout import HFEngine, eos_ids_of

        t0 = time.perf_counter()
        chats = chat_texts(self.processor, views, self.enable_thinking)
        inputs = self.encode(views, chats).to(next(self.model.parameters()).device)
        ro = HFEngine(self.processor, self.decoding, synced_gpus=self.synced_gpus).sample(self.model, inputs, views)
        return generations(ro, self.processor.tokenizer, eos_ids_of(self.model, self.processor), chats,
                           (time.perf_counter() - t0) / len(views))

    def settings(self) -> dict[str, Any]:
        m = self.model
        template = getattr(self.processor, "chat_template", None) or getattr(self.processor.tokenizer, "chat_template", "")
        return {
            "backend": "hf",
            "model": self.name or getattr(m, "name_or_path", type(m).__name__),
            "model_type": m.config.model_type,
            "dtype": str(next(m.parameters()).dtype).replace("torch.", ""),
            "n_parameters": sum(p.numel() for p in m.parameters()),
            "pixel_budget": {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels},
            "decoding": self.decoding.settings(),
            "chat_template_sha256": hashlib.sha256(str(template).encode()).hexdigest(),
            "enable_thinking": self.enable_thinking,
        }


def generations(ro, tokenizer, eos_ids: list[int], chats: Sequence[str], seconds_per_item: float) -> list[Generation]:
    """One Generation per Rollout row: the decoded response (`response_text`; a thought its prompt opened is marked
    as one), its length and truncation. Shared by the HF and vLLM backends."""
    from ..rollout import response_text

    return [Generation(as_thought(response_text(tokenizer, ids_T, mask_T, eos_ids), prompt_opens_think(chat)), int(n),
                       bool(tr), seconds_per_item)
            for ids_T, mask_T, n, tr, chat in zip(ro.response_ids_B_T.tolist(), ro.response_mask_B_T.tolist(),
                                                  ro.lengths_B.tolist(), ro.truncated_B.tolist(), chats, strict=True)]


def load_hf_generator(model: str, *, dtype: str | None = None, device: str | None = None, max_new_tokens: int = 32,
                      min_pixels: int | None = None, max_pixels: int | None = None,
                      enable_thinking: bool | None = None) -> HFGenerator:
    """An HFGenerator for a hub id, a local directory, or `tiny:FAMILY` (a random tiny model, for trying it out)."""
    from ..models.loading import is_lora_checkpoint, trained_dtype

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None and is_lora_checkpoint(model):  # an adapter runs on its base in the dtype it was trained in
        dtype = trained_dtype(model)
    dtype = dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    if model.startswith("tiny:"):
        from ..models.loading import resolve_dtype
        from ..models.tiny import FAMILIES, build_tiny

        family = model.split(":", 1)[1] or "qwen2_5_vl"
        if family not in FAMILIES:
            raise EvalError(f"--model {model}: unknown tiny family {family!r}; choose tiny:{', tiny:'.join(FAMILIES)}")
        m, proc = build_tiny(family)
        m = m.to(device=device, dtype=resolve_dtype(dtype))
    else:
        from ..models.loading import load_model_and_processor

        m, proc = load_model_and_processor(model, dtype=dtype, device=device, min_pixels=min_pixels, max_pixels=max_pixels)
    return HFGenerator(m.eval(), proc, max_new_tokens=max_new_tokens, min_pixels=min_pixels, max_pixels=max_pixels,
                       enable_thinking=enable_thinking, name=model)
