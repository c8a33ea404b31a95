"""Compact decoding: the HF engine's sampling loop (`rollout.hf_decoder=compact`, the default where it applies).

It decodes exactly as transformers' `generate` does for the sampling the rollout uses (float32 last-position logits,
the suppression, the given logits processors in order, softmax + `torch.multinomial` over the whole batch, or argmax;
a finished row gets the pad token; EOS ends a row) with three differences in the work, none in the distribution:

- **One prefill per prompt.** The P prompts (image included) run once and their cache is repeated G times;
  `generate` repeats every prompt G times before its prefill.
- **Finished rows leave the batch.** After each token, rows that ended are dropped from the cache and from the
  next forward: with long-tailed lengths most decode steps of a batch serve a few long responses, and `generate`
  runs every row until the longest one ends. The logits processors and the sampler still see the whole batch
  ([B, V], a finished row's scores zero), so a processor that indexes rows, and the random stream, are as in
  `generate`.
- **Positions from the prompt.** A new token's position is its row's count of real tokens so far plus the prompt's
  rope delta (`model.model.rope_deltas`, the multimodal rotary offset that `generate` also adds), passed
  explicitly, so a compacted batch needs nothing of `generate`'s bookkeeping.

Tokens equal `generate`'s, and so do the sampled ones under the same seed, up to float rounding (a smaller batch
may round a logit differently; tests/test_compact_decoding.py checks equality on every tiny family). It applies to
the families whose decode positions are text positions plus that delta (`COMPACT_FAMILIES`) on prompts with an
image; FSDP (every rank must run the same forwards: `synced_gpus`), text-only prompts and other models use
`generate`.
"""

from __future__ import annotations

import torch

# Qwen3.5 (linear-attention layers beside attention) is left to generate: under transformers 5.19 a sampled row
# parted from generate's after rows had left the batch (equal under 5.25); its recurrent state is not checked here
COMPACT_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def compact_applies(model, inputs, synced_gpus: bool) -> bool:
    """Whether `compact_generate` runs this (plain, unwrapped) model on these prompts: a known family, one process
    (or ranks free to run different numbers of forwards), and prompts with an image (a text-only prompt, as the
    text-only teacher control reads, has no rope delta; `generate` builds its positions)."""
    inner = getattr(model, "model", None)
    return (not synced_gpus and getattr(model.config, "model_type", None) in COMPACT_FAMILIES
            and inner is not None and hasattr(inner, "rope_deltas") and hasattr(inner, "language_model")
            and hasattr(model, "lm_head") and inputs.get("image_grid_thw") is not None)


@torch.no_grad()
def compact_generate(model, inputs, *, samples_per_prompt: int, max_new_tokens: int, do_sample: bool,
                     eos_ids: list[int], pad_id: int, suppress_ids: list[int] | None, processors) -> torch.Tensor:
    """Sequences [P * G, prompt + T] (the prompt, then the new tokens; pad after a row's EOS) as `generate` returns
    them with `num_return_sequences=G`, prompt-major. `processors`: HF logits processors, called in order on the
    whole batch's float32 scores after the suppression."""
    G, inner = samples_per_prompt, model.model
    saved_deltas = inner.rope_deltas
    try:
        out = model(**inputs, use_cache=True, logits_to_keep=1)  # 1. the P prompts once
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        # decode steps go straight to the text model (a new token has no image: the multimodal wrapper's work is
        # the embedding lookup, done here): the same ops, less per-call overhead
        text_model, embed = inner.language_model, inner.get_input_embeddings()
        cache_key = _cache_kwarg(text_model)
        sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"
        if G > 1:
            _take_rows(cache, torch.arange(inputs["input_ids"].shape[0], device=inputs["input_ids"].device)
                       .repeat_interleave(G))
        deltas_B = inner.rope_deltas.repeat_interleave(G, dim=0)
        logits_b_V = out.logits[:, -1].to(dtype=torch.float32).repeat_interleave(G, dim=0)
        del out
        attention_b_L = inputs["attention_mask"].repeat_interleave(G, dim=0)
        sequences = inputs["input_ids"].repeat_interleave(G, dim=0)
        B, V = logits_b_V.shape[0], logits_b_V.shape[-1]
        device = sequences.device
        eos = torch.tensor(eos_ids, device=device)
        suppress = torch.tensor(list(suppress_ids or []), dtype=torch.long, device=device)
        alive_b = torch.arange(B, device=device)  # the rows still decoding, in the cache's order
        unfinished_B = torch.ones(B, dtype=torch.bool, device=device)
        for t in range(max_new_tokens):
            scores_B_V = torch.zeros(B, V, dtype=torch.float32, device=device)  # 2. the whole batch's scores
            scores_B_V[alive_b] = logits_b_V
            if len(suppress):
                scores_B_V[:, suppress] = float("-inf")
            for proc in processors:
                scores_B_V = proc(sequences, scores_B_V)
            if do_sample:  # 3. the token, as generate draws it
                next_B = torch.multinomial(torch.softmax(scores_B_V, dim=-1), num_samples=1).squeeze(1)
            else:
                next_B = torch.argmax(scores_B_V, dim=-1)
            next_B = torch.where(unfinished_B, next_B, torch.full_like(next_B, pad_id))
            sequences = torch.cat([sequences, next_B[:, None]], dim=-1)
            unfinished_B &= ~torch.isin(next_B, eos)
            keep_b = unfinished_B[alive_b]  # 4. finished rows leave the batch
            if t == max_new_tokens - 1 or not bool(keep_b.any()):
                break
            if not bool(keep_b.all()):
                kept = keep_b.nonzero().squeeze(1)
                _take_rows(cache, kept)
                alive_b, attention_b_L = alive_b[kept], attention_b_L[kept]
            attention_b_L = torch.cat([attention_b_L, attention_b_L.new_ones(len(alive_b), 1)], dim=-1)
            deltas_b = deltas_B[alive_b]
            inner.rope_deltas = deltas_b
            position_1_b_1 = (attention_b_L.sum(-1, keepdim=True) - 1 + deltas_b)[None]
            # under SDPA the one new query may attend to every real position of its row: that 2D mask as the 4D
            # boolean mask transformers would build from it (passed as is, it skips the build each step)
            mask = attention_b_L.bool()[:, None, None, :] if sdpa else attention_b_L
            out = text_model(inputs_embeds=embed(sequences[alive_b, -1:]), attention_mask=mask,
                             position_ids=position_1_b_1, use_cache=True, **{cache_key: cache})
            logits_b_V = model.lm_head(out.last_hidden_state[:, -1]).to(dtype=torch.float32)
            del out
        return sequences
    finally:
        inner.rope_deltas = saved_deltas


def _cache_kwarg(model) -> str:
    """The forward's name for the KV cache: `cache` from transformers 5.2x on, `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _take_rows(cache, index: torch.Tensor) -> None:
    """Keep (or repeat) the cache's batch rows `index`, in that order, in every layer: attention layers' keys and
    values, and the conv / recurrent states of linear-attention layers (Qwen3.5), which have no batch methods."""
    for layer in cache.layers:
        if hasattr(layer, "batch_select_indices"):
            layer.batch_select_indices(index)
        else:
            layer.reorder_cache(index)
