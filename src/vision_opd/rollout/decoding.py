"""Decoding that is what it says: the sampling settings an engine applies, and nothing else.

A checkpoint's `generation_config.json` may carry sampling defaults (instruct checkpoints ship e.g.
`repetition_penalty` 1.05, `top_k`, a tiny `temperature`, `no_repeat_ngram_size`). Rollouts must be drawn
from the student's own distribution, softmax(logits / temperature) with top_p as configured, because the
loss assumes it; and "greedy" evaluation must be the argmax. So neither engine reads the checkpoint's
generation config: the HF engine generates under `neutral_generation_config` (only the EOS / pad / BOS
ids are kept), the vLLM engine is built with `generation_config="vllm"` and explicit `SamplingParams`.
The one deliberate change to the model's distribution: vision special tokens can never be sampled (a
sampled `<|image_pad|>` breaks the next forward), so probabilities are renormalised over the other tokens.
`Decoding.settings()` is the full effective setting, written into results.json by evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decoding:
    samples_per_prompt: int = 1  # G
    do_sample: bool = False  # False = greedy (argmax); the G samples of a prompt are then identical
    temperature: float = 1.0  # sampling: logits / temperature; also the temperature of the recorded logprobs
    top_p: float = 1.0  # nucleus sampling (1.0 = off)
    max_new_tokens: int = 64
    suppressed_ids: tuple[int, ...] = field(default=())  # tokens that can never be sampled (vision specials)

    def settings(self) -> dict:
        """Every setting that shapes the responses (and the ones explicitly off)."""
        return {
            "strategy": "sample" if self.do_sample else "greedy",
            "samples_per_prompt": self.samples_per_prompt,
            "temperature": self.temperature if self.do_sample else None,
            "top_p": self.top_p if self.do_sample else None,
            "top_k": None,
            "max_new_tokens": self.max_new_tokens,
            "suppressed_token_ids": list(self.suppressed_ids),
            "repetition_penalty": None,
            "no_repeat_ngram_size": None,
            "min_new_tokens": None,
            "checkpoint_generation_config": "ignored",
        }


def neutral_generation_config(model_generation_config):
    """A GenerationConfig with the checkpoint's special-token ids and nothing else of it."""
    from transformers import GenerationConfig

    g = model_generation_config
    return GenerationConfig(eos_token_id=getattr(g, "eos_token_id", None), pad_token_id=getattr(g, "pad_token_id", None),
                            bos_token_id=getattr(g, "bos_token_id", None))
