"""Checkpoints that survive faults: written to a temporary folder and renamed, the last K kept.

Layout of one checkpoint, `RUN/checkpoints/step_000020/`:
    model.safetensors, config.json, ...   the student, Hugging Face format (`from_pretrained` loads it)
    tokenizer / processor files
    teacher/model.safetensors             the EMA teacher's weights (frozen/live: absent; frozen is rebuilt from the base;
                                          tied weights written once, the other name kept as an alias in the metadata)
    trainer_state.pt                      optimizer, scheduler, step, data cursor, every rank's RNG states
                                          (tensors only: loaded with torch.load(weights_only=True))
    config.yaml                           the resolved config
    data_fingerprint.json                 the training records' ids and content hashes (data/fingerprint.py)
    COMPLETE                              written last: the step and every file's size and sha256 (checksums.py);
                                          a folder without it is ignored, a file that does not match it is damaged

A save that the file system refuses (a full disk, no permission) removes its temporary folder and raises
`WriteFailed` (data/writes.py): the checkpoints already complete are untouched.

torch and numpy are imported inside the functions that use them: finding a run's checkpoints (what `vision-opd train`
checks before anything loads, run_folder.py) imports neither.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.writes import writing
from .checksums import DONE_FILE, marker_text, read_marker

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

STATE_FILE = "trainer_state.pt"


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    # step_000020.tmp (being written) and step_000020.damaged (set aside by a resume) are not checkpoints
    return sorted(p for p in root.glob("step_*") if p.is_dir() and (p / DONE_FILE).is_file() and "." not in p.name)


def checkpoint_step(ckpt: Path) -> int:
    """The step a complete checkpoint was written at (its COMPLETE file)."""
    return read_marker(ckpt)[0]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def rng_state() -> dict:
    import numpy as np
    import torch

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_to_tensors(state: dict) -> dict:
    """Python/numpy RNG states as plain lists/tensors so that torch.load(weights_only=True) reads them."""
    import numpy as np
    import torch

    py = state["python"]
    npst = state["numpy"]
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], torch.from_numpy(np.asarray(npst[1]).astype(np.int64)), int(npst[2]), int(npst[3]), float(npst[4])],
        "torch": state["torch"],
        "cuda": list(state["cuda"]),
    }


def _rng_from_tensors(state: dict) -> dict:
    import numpy as np

    py = state["python"]
    npst = state["numpy"]
    return {
        "python": (py[0], tuple(py[1]), py[2]),
        "numpy": (npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]),
        "torch": state["torch"],
        "cuda": state["cuda"],
    }


def save_checkpoint(run_dir: str | Path, step: int, *, model, processor, trainer_state: dict, teacher_state: dict | None,
                    texts: dict[str, str], keep_last: int = 3, state_dict: dict | None = None,
                    rng_states: list[dict] | None = None) -> Path:
    """Write a complete checkpoint atomically (tmp folder + rename) and prune to the last `keep_last`.

    `texts`: small files written beside the weights ({"config.yaml": ..., "data_fingerprint.json": ...});
    `state_dict` overrides the model's own (FSDP: the gathered full state); `rng_states` are every rank's
    `rng_state()` in rank order (None: this process's only)."""
    final = step_dir(Path(run_dir), step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with writing(f"checkpoint {final.name}", tmp):
            tmp.mkdir(parents=True)
            _write_files(tmp, step, model=model, processor=processor, trainer_state=trainer_state,
                         teacher_state=teacher_state, texts=texts, state_dict=state_dict, rng_states=rng_states)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # half a checkpoint is never taken for one, and frees its space
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep_last > 0:
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write_files(tmp: Path, step: int, *, model, processor, trainer_state: dict, teacher_state: dict | None,
                 texts: dict[str, str], state_dict: dict | None, rng_states: list[dict] | None) -> None:
    """Every file of the checkpoint into `tmp`, the COMPLETE marker (checksums of all the others) last."""
    import torch
    from safetensors.torch import save_file

    model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict is not None else {}))
    if processor is not None:
        processor.save_pretrained(tmp)
    if teacher_state is not None:
        (tmp / "teacher").mkdir()
        tensors, aliases = unique_tensors(teacher_state)
        save_file(tensors, str(tmp / "teacher" / "model.safetensors"), metadata={"aliases": json.dumps(aliases)})
    state = dict(trainer_state)
    state["rng"] = [_rng_to_tensors(r) for r in (rng_states or [rng_state()])]
    torch.save(state, tmp / STATE_FILE)
    _test_pause(step)
    for name, text in texts.items():
        (tmp / name).write_text(text, encoding="utf-8")
    (tmp / DONE_FILE).write_text(marker_text(tmp, step), encoding="utf-8")


def _test_pause(step: int) -> None:
    """Fault-injection hook for the tests: VISION_OPD_TEST_PAUSE_SAVE_AT=N sleeps mid-write of checkpoint N
    (weights written, COMPLETE not yet), so that a test can SIGKILL the process there. Unset: does nothing."""
    import os
    import time

    if os.environ.get("VISION_OPD_TEST_PAUSE_SAVE_AT") == str(step):
        time.sleep(float(os.environ.get("VISION_OPD_TEST_PAUSE_SECONDS", "60")))


def load_trainer_state(ckpt: Path) -> dict:
    import torch

    state = torch.load(Path(ckpt) / STATE_FILE, map_location="cpu", weights_only=True)
    rng = state["rng"]
    state["rng"] = [_rng_from_tensors(r) for r in (rng if isinstance(rng, list) else [rng])]  # one per rank
    return state


def unique_tensors(state: dict) -> tuple[dict, dict]:
    """(tensors to write, {alias: written key}): a tensor that shares its memory with one already kept (tied input and
    output embeddings, as in Qwen2.5-VL-3B and Qwen3-VL-4B) is written once and named as an alias (safetensors
    refuses shared memory); a partial overlap is written as a copy."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[int] = set()
    for k, v in state.items():
        v = v.detach()
        ptr = v.untyped_storage().data_ptr()
        view = (v.device.type, ptr, v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype)
        if view in views:
            aliases[k] = views[view]
            continue
        t = v.cpu()
        kept[k] = (t.clone() if ptr in storages else t).contiguous()
        views[view] = k
        storages.add(ptr)
    return kept, aliases


def load_teacher_state(ckpt: Path) -> dict | None:
    """The EMA teacher's weights, aliases (tied weights) restored as the same tensor under both names."""
    from safetensors import safe_open

    p = Path(ckpt) / "teacher" / "model.safetensors"
    if not p.is_file():
        return None
    with safe_open(str(p), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    state.update({alias: state[key] for alias, key in aliases.items()})
    return state


def load_student_weights(model, path: Path) -> None:
    """Copy the weights of a saved checkpoint into `model` (strict: every key must match).

    Goes through from_pretrained because transformers may save keys under other names than it uses in memory;
    a LoRA student loads its adapter only.
    """
    from transformers import AutoModelForImageTextToText

    from ..models.parts import strip_wrappers, unwrap

    if hasattr(strip_wrappers(model), "peft_config"):
        from ..models.lora import load_adapter_weights

        load_adapter_weights(strip_wrappers(model), path)
        return
    target = unwrap(model)
    saved = AutoModelForImageTextToText.from_pretrained(path, dtype=next(target.parameters()).dtype)
    target.load_state_dict(saved.state_dict(), strict=True)
    del saved

