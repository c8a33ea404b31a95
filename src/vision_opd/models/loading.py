"""Load a model and its processor from a hub id, a local directory, a LoRA checkpoint, or `tiny:FAMILY`.

    model, processor = load_model_and_processor("Qwen/Qwen2.5-VL-3B-Instruct", dtype="bfloat16", device="cuda")
    model, processor = load_model_and_processor("runs/lora/checkpoints/step_000390")   # base + adapter
    model, processor = load_model(cfg.model, seed=0, device="cpu")      # what `train` calls

Hub ids download as in any transformers program (set HF_HUB_OFFLINE=1 to use only the local cache). A name that is
neither a model folder nor loadable from the hub raises ModelLoadError: one line saying what was tried and what to
do. A LoRA checkpoint of `vision-opd train` (adapter_model.safetensors + config.yaml) loads its base model (the run's
`model.*` keys) and attaches the adapter (peft). The processor comes from `processors.load_processor` (which works
without torchvision).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .processors import FAMILY_OF_MODEL_TYPE, load_processor

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

# the names torch's dtypes go by (torch itself is imported only where a model loads: the CLI's checks run without it)
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[dtype])


class ModelLoadError(ValueError):
    """A model that cannot be loaded; the message says what was tried (folder? hub id?) and what to do."""


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
ADAPTER_FILE = "adapter_config.json"


def is_lora_checkpoint(name_or_path: str | Path) -> bool:
    p = Path(name_or_path).expanduser()
    return p.is_dir() and (p / ADAPTER_FILE).is_file() and not (p / "config.json").is_file()


def check_model_name(name_or_path: str) -> str:
    """A local model folder (returned as is), or a name that can be a hub id; ModelLoadError otherwise."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file() or (p / ADAPTER_FILE).is_file():
            return str(p)
        hint = f" (a training run? its checkpoints are {p}/checkpoints/step_NNNNNN)" if (p / "checkpoints").is_dir() else ""
        raise ModelLoadError(f"model {name_or_path}: the folder has no config.json, so it is not a Hugging Face model "
                             f"checkpoint{hint}")
    if p.exists():
        raise ModelLoadError(f"model {name_or_path}: a file, not a model folder or a hub id")
    if not _HUB_ID.fullmatch(name_or_path) or ".." in name_or_path:
        raise ModelLoadError(f"model {name_or_path}: no such folder ({p.resolve()}), and not a hub id (owner/name) "
                             "either: check the path")
    return name_or_path


def hub_failure(name: str, err: Exception) -> ModelLoadError:
    """The one-line message for a name that is no local folder and did not load from the hub."""
    offline = _hub_offline()
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    how = ("HF_HUB_OFFLINE=1 is set and the model is not in the local cache: download it where there is network "
           f"(`hf download {name}`) or unset HF_HUB_OFFLINE" if offline else
           "check the spelling of the id, log in for a gated or private model (`hf auth login`), or download it "
           f"where there is network (`hf download {name}`) and set HF_HUB_OFFLINE=1")
    return ModelLoadError(f"model {name}: not a local folder (no {Path(name).resolve()}), and the hub id {name!r} did "
                          f"not load ({first}); {how}")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def check_hub_reachable(name: str, timeout_s: float = 3.0) -> None:
    """A hub id that is not in the local cache while the hub cannot be reached: ModelLoadError in one line within
    `timeout_s` (a TCP connect to HF_ENDPOINT's host), instead of a minute of download retries. Nothing is checked
    under HF_HUB_OFFLINE=1 (the cache only) or when the model is cached."""
    import socket
    from urllib.parse import urlparse

    if _hub_offline():
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except Exception:  # noqa: BLE001 - a cache that cannot be read is no reason to refuse
        pass
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise ModelLoadError(f"model {name}: not a local folder (no {Path(name).resolve()}), not in the local cache, and "
                             f"the hub ({host}) cannot be reached from here ({type(e).__name__}: {e}); download it where "
                             f"there is network (`hf download {name}`) and set HF_HUB_OFFLINE=1, or pass a local "
                             "folder") from None


def load_model_and_processor(name_or_path: str, *, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
                             attn_implementation: str | None = None, min_pixels: int | None = None,
                             max_pixels: int | None = None, trust_remote_code: bool = False):
    """(model, processor) for any image-text-to-text checkpoint: a hub id, a local directory, a LoRA checkpoint."""
    from transformers import AutoModelForImageTextToText

    name_or_path = check_model_name(str(name_or_path))
    if is_lora_checkpoint(name_or_path):
        return load_lora_checkpoint(name_or_path, dtype=dtype, device=device, min_pixels=min_pixels, max_pixels=max_pixels)
    if not Path(name_or_path).expanduser().is_dir():
        check_hub_reachable(name_or_path)
    kw: dict[str, Any] = {"dtype": resolve_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kw).to(device)
    except OSError as e:
        if Path(name_or_path).is_dir():
            raise ModelLoadError(f"model {name_or_path}: the folder does not load as a model ({str(e).splitlines()[0]})") from e
        raise hub_failure(name_or_path, e) from e
    family = FAMILY_OF_MODEL_TYPE.get(model.config.model_type)
    processor = load_processor(name_or_path, family, min_pixels=min_pixels, max_pixels=max_pixels,
                               trust_remote_code=trust_remote_code)
    return model, processor


def lora_base(ckpt: str | Path) -> SimpleNamespace:
    """The base model of a LoRA checkpoint: the run's `model.*` keys and seed (config.yaml, written by `train`), else
    the adapter's own base_model_name_or_path (an adapter folder from elsewhere)."""
    import json

    import yaml

    ckpt = Path(ckpt)
    if (ckpt / "config.yaml").is_file():
        saved = yaml.safe_load((ckpt / "config.yaml").read_text(encoding="utf-8")) or {}
        m = dict(saved.get("model") or {})
        return SimpleNamespace(**{**_MODEL_DEFAULTS, **m, "seed": int((saved.get("train") or {}).get("seed", 0))})
    base = json.loads((ckpt / ADAPTER_FILE).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{ckpt}: a LoRA adapter that names no base model (no config.yaml, no "
                             "base_model_name_or_path in adapter_config.json)")
    return SimpleNamespace(**{**_MODEL_DEFAULTS, "name_or_path": base, "seed": 0})


def trained_dtype(ckpt: str | Path) -> str | None:
    """The dtype a LoRA checkpoint's adapter was trained in: bfloat16 under train.mixed_precision=bf16 (bf16 compute
    over fp32 weights), else the run's model.dtype; None for an adapter from elsewhere (no config.yaml)."""
    import yaml

    path = Path(ckpt) / "config.yaml"
    if not path.is_file():
        return None
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if (saved.get("train") or {}).get("mixed_precision") == "bf16":
        return "bfloat16"
    return str((saved.get("model") or {}).get("dtype") or _MODEL_DEFAULTS["dtype"])


_MODEL_DEFAULTS = {"dtype": "float32", "attn_implementation": None, "min_pixels": None, "max_pixels": None,
                   "trust_remote_code": False, "tiny_image_size": 112}


def load_lora_checkpoint(ckpt: str | Path, *, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
                         merge: bool = False, min_pixels: int | None = None, max_pixels: int | None = None):
    """(base + adapter, processor) of a LoRA checkpoint: the base model as trained (`lora_base`), the adapter attached
    by peft (merged into the weights with merge=True), the processor saved with the checkpoint. dtype None: the dtype
    the adapter was trained in (`trained_dtype`). merge=True merges in float32 and casts the merged weights to
    `dtype` once (never W + BA rounded twice)."""
    from .lora import attach_adapter

    base = lora_base(ckpt)
    dtype = dtype if dtype is not None else (trained_dtype(ckpt) or base.dtype)
    dtype = dtype if isinstance(dtype, str) else str(dtype).replace("torch.", "")
    base.dtype = "float32" if merge else dtype
    try:
        model, _ = load_model(base, seed=base.seed, device=device)
    except ModelLoadError as e:
        raise ModelLoadError(f"{ckpt} is a LoRA checkpoint whose base model did not load: {e}") from e
    model = model.to(resolve_dtype(base.dtype))  # tiny:FAMILY is built in float32
    model = attach_adapter(model, ckpt, merge=merge)
    if merge:
        model = model.to(resolve_dtype(dtype))  # merged in float32, cast once
    family = FAMILY_OF_MODEL_TYPE.get(model.config.model_type)
    processor = load_processor(str(ckpt), family, min_pixels=min_pixels, max_pixels=max_pixels)
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

