"""Evaluation with vLLM in this process: `vision-opd eval | gap --backend vllm` (batched greedy decoding).

    vision-opd eval --model runs/x/checkpoints/step_000020 --benchmark vstar --data /data/vstar --out runs/eval --backend vllm

vLLM reads the checkpoint itself (a hub id or a folder; `tiny:FAMILY` is built and saved to a temporary folder
first). A folder saved without the stock processor (vision-opd's no-video processor, written where torchvision
is missing) is read through a temporary folder of links to its files with the stock processor written beside
them. Each view becomes the same chat text as the HF backend's (`hf_backend.chat_texts`) with its images; vision
special tokens cannot be produced (`allowed_token_ids`), the checkpoint's generation config is not read, and the
response text is decoded from the token ids by the same rule as the HF backend (`rollout.response_text`), so
samples.jsonl and results.json are the same files with `settings.model.backend = "vllm"`.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

from ..data.views import View
from .hf_backend import chat_texts, generations
from .samples import Generation
from .views import EvalError


def _model_folder(model: str, tmp: Path) -> str:
    """What vLLM can load: the model itself, or a folder with the stock processor beside the model's files."""
    from ..models.processors import load_processor
    from ..rollout.vllm_engine import stock_processor

    if model.startswith("tiny:"):
        from ..models.tiny import FAMILIES, save_tiny

        family = model.split(":", 1)[1] or "qwen2_5_vl"
        if family not in FAMILIES:
            raise EvalError(f"--model {model}: unknown tiny family {family!r}; choose tiny:{', tiny:'.join(FAMILIES)}")
        src = save_tiny(tmp / "tiny", family=family)
    elif Path(model).is_dir():
        src = Path(model)
    else:
        return model  # a hub id: published checkpoints ship the stock processor
    from transformers import AutoProcessor

    if getattr(AutoProcessor.from_pretrained(str(src)), "video_processor", None) is not None:
        return str(src)
    shadow = tmp / "model"
    shadow.mkdir()
    for f in src.iterdir():
        (shadow / f.name).symlink_to(f.resolve())
    stock = stock_processor(load_processor(str(src)))
    for name in ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json"):
        if (shadow / name).is_symlink():
            (shadow / name).unlink()
    stock.save_pretrained(str(tmp / "processor"))
    for f in (tmp / "processor").iterdir():
        if not (shadow / f.name).exists():
            (shadow / f.name).symlink_to(f)
    return str(shadow)


class VLLMGenerator:
    """Batched greedy decoding with vLLM in this process; the same `Generation`s as `HFGenerator`."""

    def __init__(self, model: str, *, max_new_tokens: int = 32, min_pixels: int | None = None,
                 max_pixels: int | None = None, enable_thinking: bool | None = None, dtype: str | None = None,
                 max_model_len: int | None = None, max_images_per_prompt: int = 2, seed: int = 0):
        from transformers import AutoConfig

        from ..models.loading import vision_token_ids
        from ..models.processors import load_processor
        from ..rollout import Decoding, eos_ids_of
        from ..rollout.vllm_engine import check_supported, import_vllm

        vllm = import_vllm()
        self._tmp = tempfile.TemporaryDirectory(prefix="vision-opd-eval-vllm-")
        self.folder = _model_folder(model, Path(self._tmp.name))
        self.name, self.max_new_tokens, self.enable_thinking = model, max_new_tokens, enable_thinking
        self.config = AutoConfig.from_pretrained(self.folder)
        device = "cuda" if _cuda() else "cpu"
        check_supported(self.config, device)
        self.processor = load_processor(self.folder, min_pixels=min_pixels, max_pixels=max_pixels)
        # the EOS ids as the HF backend reads them: generation_config.json's when the checkpoint has one (instruct
        # checkpoints list <|im_end|> and <|endoftext|> there, config.json only the first), else config.json's
        shim = SimpleNamespace(config=self.config, generation_config=SimpleNamespace(eos_token_id=_eos_token_id(self.folder, self.config)))
        self.suppress = vision_token_ids(shim, self.processor)
        self.eos_ids = eos_ids_of(shim, self.processor)
        self.decoding = Decoding(max_new_tokens=max_new_tokens, suppressed_ids=tuple(self.suppress))
        size = getattr(self.processor.image_processor, "size", None) or {}
        self.min_pixels, self.max_pixels = size.get("shortest_edge"), size.get("longest_edge")
        self.dtype = dtype or ("bfloat16" if device == "cuda" else "float32")
        max_model_len = max_model_len or min(8192, int(getattr(self.config.get_text_config(), "max_position_embeddings", 8192)))
        kw: dict[str, Any] = dict(model=self.folder, dtype=self.dtype, seed=seed, enforce_eager=True, max_model_len=max_model_len,
                                  generation_config="vllm", limit_mm_per_prompt={"image": max_images_per_prompt, "video": 0})
        if min_pixels or max_pixels:
            kw["mm_processor_kwargs"] = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
        self.llm = vllm.LLM(**kw)
        banned = set(self.suppress)
        self.params = vllm.SamplingParams(
            n=1, temperature=0.0, max_tokens=max(1, max_new_tokens), stop_token_ids=self.eos_ids, skip_special_tokens=False,
            detokenize=False, allowed_token_ids=[i for i in range(self.config.get_text_config().vocab_size) if i not in banned])

    def __call__(self, views: Sequence[View]) -> list[Generation]:
        from ..rollout import build_rollout

        t0 = time.perf_counter()
        texts = chat_texts(self.processor, views, self.enable_thinking)
        requests = [{"prompt": t, **({"multi_modal_data": {"image": v.images if len(v.images) > 1 else v.images[0]}}
                                      if v.images else {})} for t, v in zip(texts, views, strict=True)]
        outs = self.llm.generate(requests, self.params, use_tqdm=False)
        rows = [list(o.outputs[0].token_ids) if self.max_new_tokens > 0 else [] for o in outs]
        import torch

        pad = self.processor.tokenizer.pad_token_id
        ids = torch.full((len(rows), max(1, max(map(len, rows), default=1))), pad, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.tensor(r, dtype=torch.long)
        ro = build_rollout(ids, None, self.eos_ids, pad, 1)
        return generations(ro, self.processor.tokenizer, self.eos_ids, texts, (time.perf_counter() - t0) / max(1, len(views)))

    def settings(self) -> dict[str, Any]:
        template = getattr(self.processor, "chat_template", None) or getattr(self.processor.tokenizer, "chat_template", "")
        return {
            "backend": "vllm",
            "model": self.name,
            "model_type": self.config.model_type,
            "dtype": self.dtype,
            "pixel_budget": {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels},
            "decoding": self.decoding.settings(),
            "chat_template_sha256": hashlib.sha256(str(template).encode()).hexdigest(),
            "enable_thinking": self.enable_thinking,
        }


def _eos_token_id(folder: str, config):
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(folder).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    return eos if eos is not None else config.get_text_config().eos_token_id


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
