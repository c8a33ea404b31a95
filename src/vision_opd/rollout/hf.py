"""The HF engine: the student samples G responses per prompt on its own view with the training model's transformers
forward: compact decoding (compact.py: one prefill per prompt, finished rows out of the batch; the default,
`rollout.hf_decoder=compact`, where it applies) or transformers' `generate` (`rollout.hf_decoder=generate`, and
wherever compact decoding does not apply). Both decode the same distribution, token for token.

Generation runs on the training model itself (nothing to copy or sync) under `neutral_generation_config`,
so only what `Decoding` says applies (see decoding.py). Vision special tokens are suppressed. The log-prob of
each sampled token under the distribution it was drawn from is recorded on the fly by a logits processor
that sees the final scores of every step (one [B, V] tensor at a time, never the whole [B, T, V]).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .compact import compact_applies, compact_generate
from .decoding import Decoding, neutral_generation_config
from .samples import Rollout, build_rollout, eos_ids_of


class _SampledTokenLogprobs:
    """A logits processor placed last: keeps log_softmax(final scores) of the current step and, at the next step
    (or at the end), gathers the log-prob of the token that was chosen from it."""

    def __init__(self):
        self.last, self.taken = None, []

    def __call__(self, input_ids, scores):
        if self.last is not None:
            self.taken.append(self.last.gather(-1, input_ids[:, -1:].to(self.last.device)).squeeze(-1))
        self.last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def result(self, sequences_B_T: torch.Tensor, n_new: int) -> torch.Tensor:
        if self.last is not None and len(self.taken) < n_new:
            self.taken.append(self.last.gather(-1, sequences_B_T[:, -1:].to(self.last.device)).squeeze(-1))
        if not self.taken:
            return torch.zeros(sequences_B_T.shape[0], 0)
        return torch.stack(self.taken, dim=1)


@contextlib.contextmanager
def _neutral_generation(model):
    """The checkpoint's generation config swapped out for the duration (transformers fills every setting left
    unset from it, so passing explicit values alone is not enough)."""
    saved = model.generation_config
    model.generation_config = neutral_generation_config(saved)
    try:
        yield
    finally:
        model.generation_config = saved


@dataclass(frozen=True)
class HFLoop:
    """How the HF engine runs its decoding loop (not what it samples: that is `Decoding`)."""

    decoder: str = "compact"  # rollout.hf_decoder: compact (compact.py, where it applies; else generate) | generate
    synced_gpus: bool = False  # FSDP: every rank runs the same number of forwards (generate's synced_gpus)
    logits_processors: tuple = ()  # extra HF logits processors, run first (after the suppression), on the whole batch


@torch.no_grad()
def sample(model, processor, inputs, *, samples_per_prompt: int, temperature: float = 1.0, top_p: float = 1.0,
           max_new_tokens: int = 64, suppress_ids: list[int] | None = None, do_sample: bool = True,
           loop: HFLoop = HFLoop()) -> Rollout:
    """Sample `samples_per_prompt` responses for each of the P prompts in `inputs` (left-padded processor output).

    Returns a Rollout with B = P * G rows, ordered prompt-major (rows p*G .. p*G+G-1 answer prompt p), with the
    sampled tokens' log-probs at `temperature` (greedy: the argmax token's log-prob at temperature 1, as vLLM's).
    """
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from ..models.parts import strip_wrappers

    model = strip_wrappers(model)  # generate runs on the plain module (DDP has no generate); FSDP2 modules stay
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    eos_ids = eos_ids_of(model, processor)
    pad_id = processor.tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    # transformers places custom processors before its own temperature / top-p warpers: so it gets none (T=1, top_p=1,
    # top_k=0) and ours run in order (suppression is built in, before them), the recorder last
    warpers = [TemperatureLogitsWarper(temperature)] if do_sample and temperature != 1.0 else []
    warpers += [TopPLogitsWarper(top_p)] if do_sample and top_p < 1.0 else []
    recorder = _SampledTokenLogprobs()
    processors = [*loop.logits_processors, *warpers, recorder]
    G = samples_per_prompt if do_sample else 1
    prompt_len = inputs["input_ids"].shape[1]
    if loop.decoder == "compact" and compact_applies(model, inputs, loop.synced_gpus):
        out = compact_generate(model, inputs, samples_per_prompt=G, max_new_tokens=max_new_tokens, do_sample=do_sample,
                               eos_ids=eos_ids, pad_id=pad_id, suppress_ids=suppress_ids, processors=processors)
    else:
        out = _generate(model, inputs, G, processors, dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                                           eos_token_id=eos_ids, pad_token_id=pad_id,
                                                           suppress_ids=suppress_ids, synced_gpus=loop.synced_gpus))
    if was_training:
        model.train()
    ids = out[:, prompt_len:]
    logprobs = recorder.result(out, ids.shape[1]).to(ids.device)
    if not do_sample and samples_per_prompt > 1:  # greedy: the G samples of a prompt are identical
        ids = ids.repeat_interleave(samples_per_prompt, dim=0)
        logprobs = logprobs.repeat_interleave(samples_per_prompt, dim=0)
    if ids.shape[1] == 0:  # nothing generated at all (max_new_tokens=0)
        ids = torch.full((out.shape[0], 1), pad_id, dtype=out.dtype, device=out.device)
        logprobs = torch.zeros(ids.shape, device=ids.device)
    return build_rollout(ids, logprobs, eos_ids, pad_id, samples_per_prompt)


def _generate(model, inputs, G: int, processors: list, kw: dict):
    """transformers' `generate`, with every setting explicit (see `_neutral_generation`)."""
    from transformers import LogitsProcessorList

    suppress_ids, synced_gpus = kw.pop("suppress_ids"), kw.pop("synced_gpus")
    gen_kw = dict(**kw, num_return_sequences=G, suppress_tokens=list(suppress_ids) if suppress_ids else None,
                  logits_processor=LogitsProcessorList(processors))
    if synced_gpus:  # FSDP: every rank must run the same number of forward passes
        gen_kw["synced_gpus"] = True
    if kw["do_sample"]:
        gen_kw.update(temperature=1.0, top_p=1.0, top_k=0)
    with _neutral_generation(model):
        return model.generate(**inputs, **gen_kw)


class HFEngine:
    """Rollouts with `generate` on the training model: the default engine (`rollout.engine=hf`)."""

    name = "hf"

    def __init__(self, processor, decoding: Decoding, *, synced_gpus: bool = False, decoder: str = "compact",
                 extra_processors=None):
        """`decoder`: rollout.hf_decoder. `extra_processors`: None, or a callable returning the HF logits processors
        to add (first) to each call's (a benchmark forces response lengths this way)."""
        self.processor, self.decoding, self.synced_gpus = processor, decoding, synced_gpus
        self.decoder, self.extra_processors = decoder, extra_processors

    def sample(self, model, inputs, views=None) -> Rollout:
        d = self.decoding
        return sample(model, self.processor, inputs, samples_per_prompt=d.samples_per_prompt, temperature=d.temperature,
                      top_p=d.top_p, max_new_tokens=d.max_new_tokens, suppress_ids=list(d.suppressed_ids),
                      do_sample=d.do_sample,
                      loop=HFLoop(self.decoder, self.synced_gpus, tuple(self.extra_processors() if self.extra_processors else ())))

    def sync(self, model) -> float:
        """Nothing to do: generation reads the training weights themselves."""
        return 0.0

    def close(self) -> None:
        pass
