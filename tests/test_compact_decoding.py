"""Compact decoding (rollout/compact.py, the HF engine's default loop) against transformers' `generate`, on every tiny
family it runs: the same tokens, the same recorded log-probs, greedy and sampled under one seed, with responses
ending at varied lengths (so rows leave the batch at different steps) and prompts of different lengths (left
padding). Random tiny models never end a response by themselves: a logits processor ends row b after lengths[b]
tokens on both sides."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vision_opd.data.views import encode_views, student_view
from vision_opd.models.loading import vision_token_ids
from vision_opd.models.tiny import build_tiny
from vision_opd.rollout import HFLoop, eos_ids_of, sample
from vision_opd.rollout.compact import COMPACT_FAMILIES, compact_applies


class EndAt:
    """Row b ends with EOS as its lengths[b]-th token (EOS impossible before): a logits processor on the whole batch."""

    def __init__(self, lengths: list[int], eos_id: int):
        self.lengths, self.eos_id, self.start = torch.tensor(lengths), eos_id, None

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = input_ids.shape[1]
        scores[:, self.eos_id] = float("-inf")
        stop = self.lengths == input_ids.shape[1] - self.start + 1
        scores[stop] = float("-inf")
        scores[stop, self.eos_id] = 0.0
        return scores


def _both(model, proc, inputs, lengths, **kw):
    eos = eos_ids_of(model, proc)[0]
    out = {}
    for decoder in ("generate", "compact"):
        torch.manual_seed(7)
        out[decoder] = sample(model, proc, inputs, loop=HFLoop(decoder, logits_processors=(EndAt(lengths, eos),)), **kw)
    return out["generate"], out["compact"]


@pytest.mark.parametrize("family", COMPACT_FAMILIES)
@pytest.mark.parametrize("do_sample", [True, False])
def test_compact_decoding_equals_generate(family, do_sample, synth_records):
    model, proc = build_tiny(family)
    model.eval()
    views = [student_view(r) for r in synth_records[:2]]
    views[1] = dataclasses.replace(views[1], text=views[1].text + " Look closely at it.")
    inputs = encode_views(proc, views)
    assert compact_applies(model, inputs, synced_gpus=False) and not compact_applies(model, inputs, synced_gpus=True)
    assert (inputs["attention_mask"] == 0).any()  # the prompts differ in length: one is left-padded
    G = 3 if do_sample else 1
    lengths = [1, 7, 3, 12, 2, 5][: 2 * G]
    want, got = _both(model, proc, inputs, lengths, samples_per_prompt=G, temperature=0.8, top_p=0.9,
                      max_new_tokens=10, suppress_ids=vision_token_ids(model, proc), do_sample=do_sample)
    assert torch.equal(got.response_ids_B_T, want.response_ids_B_T)
    assert torch.equal(got.response_mask_B_T, want.response_mask_B_T)
    assert got.response_mask_B_T.sum(-1).tolist() == [min(n, 10) for n in lengths]
    assert torch.equal(got.truncated_B, want.truncated_B)
    mask = want.response_mask_B_T.bool()
    torch.testing.assert_close(got.logprobs_B_T[mask], want.logprobs_B_T[mask], atol=1e-5, rtol=0)


def test_compact_decoding_leaves_the_model_as_it_found_it(synth_records):
    """The rope deltas (model state that later forwards read) are restored, and training mode comes back."""
    model, proc = build_tiny("qwen2_5_vl")
    model.train()
    model.model.rope_deltas = marker = torch.tensor([[5]])
    inputs = encode_views(proc, [student_view(r) for r in synth_records[:1]])
    sample(model, proc, inputs, samples_per_prompt=2, max_new_tokens=3, loop=HFLoop("compact"))
    assert model.model.rope_deltas is marker and model.training


@pytest.mark.parametrize("case", ["other model", "qwen3_5", "text-only prompt"])
def test_where_compact_decoding_does_not_apply_generate_decodes(case, synth_records):
    model, proc = build_tiny("qwen3_5" if case == "qwen3_5" else "qwen2_5_vl")
    view = student_view(synth_records[0])
    if case == "other model":
        model.config.model_type = "some_other_vlm"
    else:
        view = dataclasses.replace(view, images=[])
    inputs = encode_views(proc, [view])
    assert not compact_applies(model, inputs, synced_gpus=False)
    torch.manual_seed(0)
    a = sample(model, proc, inputs, samples_per_prompt=2, max_new_tokens=4, loop=HFLoop("compact"))
    torch.manual_seed(0)
    b = sample(model, proc, inputs, samples_per_prompt=2, max_new_tokens=4, loop=HFLoop("generate"))
    assert torch.equal(a.response_ids_B_T, b.response_ids_B_T)


def test_the_engine_adds_its_extra_processors_to_every_call(synth_records):
    """HFEngine(extra_processors=...): a fresh set of processors per call, run on the whole batch (the length
    benchmark forces its response lengths this way)."""
    from vision_opd.rollout import Decoding, HFEngine

    model, proc = build_tiny("qwen2_5_vl")
    eos = eos_ids_of(model, proc)[0]
    calls = iter([[2, 5], [4, 1]])  # one list of lengths per call
    engine = HFEngine(proc, Decoding(samples_per_prompt=2, do_sample=True, max_new_tokens=8),
                      extra_processors=lambda: [EndAt(next(calls), eos)])
    inputs = encode_views(proc, [student_view(synth_records[0])])
    assert engine.sample(model, inputs).response_mask_B_T.sum(-1).tolist() == [2, 5]
    assert engine.sample(model, inputs).response_mask_B_T.sum(-1).tolist() == [4, 1]
