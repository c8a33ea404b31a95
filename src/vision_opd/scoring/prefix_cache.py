"""The cache of prompts that several responses share: written once by the prompts' forward, read by the responses'.

Two Hugging Face `Cache` objects, one per phase, so that a decoder layer recomputed by gradient checkpointing (in
backward, after both phases ran) sees exactly what it saw the first time. Hugging Face's own caches append and copy
in place, which a recompute would repeat, and which autograd refuses where backward needs the old values.

- `PromptCache` (the P prompts' forward): each layer keeps the prompts' keys and values (attention layers), or the
  last conv columns and the final recurrent state (Qwen3.5's gated delta net), by rebinding, never by an in-place
  write; to the model it always looks empty (no previous state), so a recompute of the prompts' forward is the
  prompts' forward again.
- `ResponseCache` (the B response rows' forward): the prompts' tensors indexed by each row's prompt
  (`PromptCache.for_rows(prompt_of_row_B)`, an index_select, so the gradients of the G rows of a prompt sum back
  into it); read-only: `update` returns [prompt | new tokens] and stores nothing.

Layers other than full attention and linear attention (sliding windows, hybrids, indexers) are not supported:
`unsupported_layers(config)` names them, and scoring then takes the per-row path.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer, LinearAttentionLayer


def _plain_layer_types(config) -> list[type]:
    """The cache layer class Hugging Face would build for each decoder layer of `config`."""
    return [type(layer) for layer in DynamicCache(config=config).layers]


def unsupported_layers(config) -> list[str]:
    """Names of the cache layer kinds of `config` that a shared prompt cannot hold (empty: all supported)."""
    return sorted({t.__name__ for t in _plain_layer_types(config) if t not in (DynamicLayer, LinearAttentionLayer)})


class _PromptAttention(DynamicLayer):
    """Keys/values of the prompts' forward; always empty to the model."""

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys, self.values, self.device, self.is_initialized = key_states, value_states, key_states.device, True
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0


class _PromptLinear(LinearAttentionLayer):
    """Conv and recurrent states at the prompts' end; `has_previous_state` stays False (every call is a prefill)."""

    def update_conv_state(self, conv_states, state_idx: int = 0, conv_kernel_size: int | None = None, **kwargs):
        k = conv_kernel_size or conv_states.shape[-1]
        full = conv_states
        if full.shape[-1] < k:  # as Hugging Face's prefill: pad a short prompt on the left
            full = torch.nn.functional.pad(full, (k - full.shape[-1], 0))
        self.conv_states[state_idx], self.conv_kernel_size[state_idx] = full[..., -k:], k
        self.is_conv_states_initialized[state_idx] = True
        self.device, self.dtype = conv_states.device, conv_states.dtype
        return full

    def update_recurrent_state(self, recurrent_states, state_idx: int = 0, **kwargs):
        self.recurrent_states[state_idx] = recurrent_states
        self.is_recurrent_states_initialized[state_idx] = True
        return recurrent_states


class _ResponseAttention(DynamicLayer):
    """Read-only prompt keys/values per row: `update` returns [prompt | new] and keeps nothing."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.device, self.is_initialized = keys, values, keys.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


class _ResponseLinear(LinearAttentionLayer):
    """Read-only conv/recurrent states per row: the responses continue from the prompt's end, nothing is written."""

    def __init__(self, prompt: _PromptLinear, rows: torch.Tensor):
        super().__init__(number_of_states=prompt.number_of_states)
        for i in range(self.number_of_states):
            self.conv_states[i] = prompt.conv_states[i].index_select(0, rows)
            self.recurrent_states[i] = prompt.recurrent_states[i].index_select(0, rows)
            self.conv_kernel_size[i] = prompt.conv_kernel_size[i]
            self.is_conv_states_initialized[i] = self.is_recurrent_states_initialized[i] = True
            self.has_previous_state[i] = True
        self.device, self.dtype = prompt.device, prompt.dtype
        # "recording the past" keeps the model off its fused single-token path, which updates the conv state in place
        self.record_past = True

    def update_conv_state(self, conv_states, state_idx: int = 0, **kwargs):
        return torch.cat([self.conv_states[state_idx], conv_states], dim=-1)

    def update_recurrent_state(self, recurrent_states, state_idx: int = 0, **kwargs):
        return recurrent_states


class PromptCache(Cache):
    """What the P prompts' forward leaves for the responses (pass as `cache=`, with `use_cache=True`)."""

    def __init__(self, config):
        kinds = {DynamicLayer: _PromptAttention, LinearAttentionLayer: _PromptLinear}
        types = _plain_layer_types(config)
        if bad := unsupported_layers(config):
            raise NotImplementedError(f"a shared prompt cache cannot hold {', '.join(bad)} layers")
        super().__init__(layers=[kinds[t]() for t in types])

    def for_rows(self, prompt_of_row_B: torch.Tensor) -> "ResponseCache":
        """The read-only cache of B rows, row b continuing prompt `prompt_of_row_B[b]`."""
        layers = []
        for layer in self.layers:
            if isinstance(layer, _PromptLinear):
                layers.append(_ResponseLinear(layer, prompt_of_row_B.to(layer.device)))
            else:
                rows = prompt_of_row_B.to(layer.keys.device)
                layers.append(_ResponseAttention(layer.keys.index_select(0, rows), layer.values.index_select(0, rows)))
        return ResponseCache(layers)


class ResponseCache(Cache):
    """B rows continuing their prompts (made by `PromptCache.for_rows`); never modified by a forward."""

    def __init__(self, layers: list):
        super().__init__(layers=layers)
