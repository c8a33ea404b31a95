"""On-policy sampling: an engine samples G responses per prompt on the student's view and returns a `Rollout`.

    engine = make_engine(cfg, model, processor, suppress_ids, device=device)   # once, from the student's weights
    ro = engine.sample(model, inputs, views)   # P prompts -> B = P * G rows, prompt-major
    engine.sync(model)                         # after every optimizer step (vLLM: push the new weights)

Two engines return the same Rollout: `hf.HFEngine` (`rollout.engine=hf`, transformers `generate` on the training
model) and `vllm_engine.VLLMEngine` (`rollout.engine=vllm`, a vLLM engine in this process holding a copy of the
weights). Both decode exactly as `decoding.Decoding` says, never as the checkpoint's generation config says.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from .decoding import Decoding
from .hf import HFEngine, sample
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


def make_engine(cfg, model, processor, suppress_ids, *, device, rank: int = 0, world: int = 1, synced_gpus: bool = False):
    """The engine `cfg.rollout.engine` names, built from the model's current weights.

    Building it leaves the process's RNG as it was (vLLM's `LLM(seed=...)` reseeds random, numpy and torch, which
    would undo a resumed run's restored RNG state and replay step 1's sampling noise); the engine's own seed is
    `rank_seed(vllm.seed or train.seed, rank)`."""
    decoding = decoding_of(cfg.rollout, suppress_ids)
    if cfg.rollout.engine == "vllm":
        from .vllm_engine import VLLMEngine

        seed = rank_seed(cfg.train.seed if cfg.vllm.seed is None else cfg.vllm.seed, rank)
        with preserved_rng():
            return VLLMEngine(model, processor, decoding, cfg.vllm, seed=seed, device=device, distributed=world > 1,
                              mixed_bf16=cfg.train.mixed_precision == "bf16")
    return HFEngine(processor, decoding, synced_gpus=synced_gpus)


__all__ = ["Decoding", "HFEngine", "Rollout", "build_rollout", "check_engine_available", "decoding_of", "eos_ids_of", "make_engine",
           "preserved_rng", "rank_seed", "response_mask", "response_text", "sample"]
