"""On-policy sampling: an engine samples G responses per prompt on the student's view and returns a `Rollout`.

    engine = make_engine(cfg, model, processor, suppress_ids, device=device)   # once, from the student's weights
    ro = engine.sample(model, inputs, views)   # P prompts -> B = P * G rows, prompt-major
    engine.sync(model)                         # after every optimizer step (vLLM: push the new weights)

Two engines return the same Rollout: `hf.HFEngine` (`rollout.engine=hf`, transformers `generate` on the training
model) and `vllm_engine.VLLMEngine` (`rollout.engine=vllm`, a vLLM engine in this process holding a copy of the
weights). Both decode exactly as `decoding.Decoding` says, never as the checkpoint's generation config says.
`rollout.engine=auto` (the default, `choose_engine`): vLLM where it is installed and runs this model on this
device, else HF; `make_engine` prints which, and why, once.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from .decoding import Decoding
from .hf import HFEngine, HFLoop, sample
from .samples import Rollout, build_rollout, eos_ids_of, response_mask, response_text


def decoding_of(rollout_cfg, suppress_ids) -> Decoding:
    """The rollout's decoding from the `rollout` config section."""
    r = rollout_cfg
    return Decoding(samples_per_prompt=r.samples_per_prompt, do_sample=r.do_sample, temperature=r.temperature,
                    top_p=r.top_p, max_new_tokens=r.max_new_tokens, suppressed_ids=tuple(suppress_ids))


def check_engine_available(cfg) -> None:
    """rollout.engine=vllm: vLLM must import (else one line naming the extra), checked before anything loads."""
    if cfg.rollout.engine == "vllm":
        from .vllm_engine import import_vllm

        import_vllm(cfg.vllm.cpu_kv_cache_gb)


RANK_STRIDE = 1_000_003  # a prime above any seed in use: rank_seed is one-to-one for seeds below it


def rank_seed(seed: int, rank: int) -> int:
    """The sampling seed of `rank`: ranks draw independent noise (rank 0 keeps `seed`). One-to-one over seeds in
    [0, RANK_STRIDE) and ranks below 4294 (so it stays under 2**32, as numpy needs): rank r of seed s never shares
    rank 0's stream of seed s + 1, as `seed + rank` did."""
    return seed + RANK_STRIDE * rank


@contextlib.contextmanager
def preserved_rng():
    """The process's RNG states (random, numpy, torch, CUDA) as they were before the block, whatever it seeds."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def choose_engine(cfg, model, device, world: int = 1) -> tuple[str, str]:
    """(engine, why) for `cfg.rollout.engine`: hf or vllm as named; auto: vllm when it imports and supports this
    model on this device (`vllm_engine.check_supported`: the model type, vLLM's CPU head sizes), else hf. auto never
    picks vLLM where it would sample nothing (rollout.source=teacher: the teacher writes every response with HF
    generate) nor under several processes (that launch is not tested here)."""
    name = cfg.rollout.engine
    if name != "auto":
        return name, "as configured"
    if cfg.rollout.source == "teacher":
        return "hf", "rollout.source=teacher: the teacher writes every response with HF generate"
    if world > 1:
        return "hf", f"{world} processes: vLLM rollouts under several processes are not tested; rollout.engine=vllm asks for them"
    from ..models.parts import unwrap
    from .vllm_engine import EngineError, check_supported, import_vllm

    try:
        import_vllm(cfg.vllm.cpu_kv_cache_gb)
    except EngineError:
        return "hf", "vLLM is not installed (pip install 'vision-opd[vllm]')"
    plain = unwrap(model)
    if hasattr(plain, "get_base_model"):
        plain = plain.get_base_model()
    device_type = torch.device(device).type
    try:
        check_supported(plain.config, device_type)
    except EngineError as e:
        return "hf", f"vLLM cannot run this model here ({str(e).removeprefix('rollout.engine=vllm: ')})"
    return "vllm", f"vLLM is installed and supports {plain.config.model_type} on {device_type}"


def make_engine(cfg, model, processor, suppress_ids, *, device, rank: int = 0, world: int = 1, synced_gpus: bool = False):
    """The engine `cfg.rollout.engine` names (auto: `choose_engine`'s, printed on rank 0), built from the model's
    current weights.

    Building it leaves the process's RNG as it was (vLLM's `LLM(seed=...)` reseeds random, numpy and torch, which
    would undo a resumed run's restored RNG state and replay step 1's sampling noise); the engine's own seed is
    `rank_seed(vllm.seed or train.seed, rank)`."""
    decoding = decoding_of(cfg.rollout, suppress_ids)
    name, why = choose_engine(cfg, model, device, world)
    if cfg.rollout.engine == "auto" and rank == 0:
        print(f"[vision-opd] rollout.engine=auto: {name} ({why})")
    if name == "vllm":
        from .vllm_engine import VLLMEngine

        seed = rank_seed(cfg.train.seed if cfg.vllm.seed is None else cfg.vllm.seed, rank)
        with preserved_rng():
            return VLLMEngine(model, processor, decoding, cfg.vllm, seed=seed, device=device, distributed=world > 1,
                              mixed_bf16=cfg.train.mixed_precision == "bf16")
    return HFEngine(processor, decoding, synced_gpus=synced_gpus, decoder=cfg.rollout.hf_decoder)


__all__ = ["Decoding", "HFEngine", "HFLoop", "Rollout", "build_rollout", "check_engine_available", "choose_engine", "decoding_of",
           "eos_ids_of", "make_engine", "preserved_rng", "rank_seed", "response_mask", "response_text", "sample"]
