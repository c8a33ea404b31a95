"""The processor of a checkpoint, with or without torchvision.

The Qwen-VL processors insist on a video processor, and the video processors need torchvision, which
cannot be installed beside some torch builds. `processor_class_for(family)` returns a subclass whose
`__init__` has no `video_processor` argument (it passes None to the parent); it is used only when
torchvision is missing, so that on machines with torchvision the stock processors keep working.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

# model_type -> family name used here
FAMILY_OF_MODEL_TYPE = {
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
    "qwen3_vl_moe": "qwen3_vl",
    "qwen3_5": "qwen3_5",
    "qwen3_5_moe": "qwen3_5",
}


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None and _torchvision_imports()


@cache
def _torchvision_imports() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # a torchvision built for another torch raises RuntimeError on import
        return False
    return True


@cache
def processor_class_for(family: str):
    """A processor class for `family` that builds without a video processor."""
    if family in ("qwen2_vl", "qwen2_5_vl"):
        from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

        base = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
    elif family in ("qwen3_vl", "qwen3_5"):
        from transformers import Qwen3VLProcessor as base
    else:
        raise ValueError(f"no processor known for family {family!r}")

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return type(f"{base.__name__}NoVideo", (base,), {"__init__": __init__, "__module__": __name__})


def load_processor(name_or_path: str, family: str | None = None, *, min_pixels: int | None = None,
                   max_pixels: int | None = None, trust_remote_code: bool = False):
    """The processor of a checkpoint; without torchvision, the PIL image processor and no video processor."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    kw: dict[str, Any] = {}
    proc = None
    if has_torchvision():
        proc = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kw)
        if not hasattr(proc, "image_processor"):
            # AutoProcessor falls back to the bare tokenizer when the checkpoint has no video-processor config
            # (e.g. one saved by the processor below, or by vision-opd's tiny models): build the processor ourselves
            proc = None
    if proc is None:
        if family is None:
            cfg = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
            family = FAMILY_OF_MODEL_TYPE.get(cfg.model_type)
            if family is None:
                raise ValueError(
                    f"{name_or_path}: model type {cfg.model_type!r} needs torchvision for its processor; "
                    f"without torchvision the supported families are {sorted(set(FAMILY_OF_MODEL_TYPE.values()))}"
                )
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        image_processor = Qwen2VLImageProcessorPil.from_pretrained(name_or_path, **kw)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        chat_template = getattr(tokenizer, "chat_template", None)
        proc = processor_class_for(family)(image_processor=image_processor, tokenizer=tokenizer,
                                           chat_template=_processor_chat_template(name_or_path) or chat_template)
    proc.tokenizer.padding_side = "left"
    set_pixel_budget(proc, min_pixels, max_pixels)
    return proc


def set_pixel_budget(processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Set the image processor's pixel budget (Qwen-VL: size = {shortest_edge: min_pixels, longest_edge: max_pixels})."""
    if not (min_pixels or max_pixels):
        return
    ip = processor.image_processor
    size = dict(ip.size) if ip.size is not None else {}
    size = {k: v for k, v in size.items() if v is not None}
    if min_pixels:
        size["shortest_edge"] = int(min_pixels)
        if not max_pixels and size.get("longest_edge", float("inf")) < min_pixels:
            size["longest_edge"] = int(min_pixels)  # only the lower bound given: lift the checkpoint's upper one
    if max_pixels:
        size["longest_edge"] = int(max_pixels)
        if not min_pixels and size.get("shortest_edge", 0) > max_pixels:
            size["shortest_edge"] = int(max_pixels)  # only the upper bound given: lower the checkpoint's lower one
    if size.get("shortest_edge", 0) > size.get("longest_edge", float("inf")):
        raise ValueError(f"min_pixels {size['shortest_edge']} is above max_pixels {size['longest_edge']}")
    ip.size = type(ip.size)(**size) if ip.size is not None and not isinstance(ip.size, dict) else size
    for name, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if v and hasattr(ip, name):
            setattr(ip, name, int(v))


def _processor_chat_template(name_or_path: str) -> str | None:
    """The processor's own chat template when the checkpoint ships one (chat_template.jinja / .json)."""
    p = Path(name_or_path)
    if (p / "chat_template.jinja").is_file():
        return (p / "chat_template.jinja").read_text(encoding="utf-8")
    if (p / "chat_template.json").is_file():
        import json

        return json.loads((p / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    return None
