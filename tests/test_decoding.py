"""Every decoding setting of the HF engine checked by the distribution it samples from, not only by running:
top_p (every sampled token in the nucleus of an independent forward, log-probs renormalised over it), temperature
(log-probs = log_softmax(logits / T), and the frequencies of many draws), and the suppressed vision tokens (never
drawn, and left out of the renormalisation). The vLLM engine's counterparts are in tests/test_vllm.py."""

from __future__ import annotations

import pytest
import torch

from vision_opd.data.views import encode_views, student_view
from vision_opd.models.loading import vision_token_ids
from vision_opd.models.tiny import build_tiny
from vision_opd.rollout import Decoding, HFEngine


def _peaked(model, scale=1.0, seed=0):
    """A fixed random bias on every logit (std `scale`): the tiny model's near-uniform next-token distribution made
    peaked, so that a nucleus is a small set and a temperature changes it visibly. The engine and the reference
    forward both see it (a hook on the output head)."""
    bias = torch.randn(model.lm_head.out_features, generator=torch.Generator().manual_seed(seed)) * scale
    return model.lm_head.register_forward_hook(lambda module, args, out: out + bias.to(out.dtype))


def _sample(model, proc, inputs, banned, **kw):
    torch.manual_seed(0)
    return HFEngine(proc, Decoding(do_sample=True, suppressed_ids=tuple(banned), **kw)).sample(model, inputs)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 0.5), (0.7, 0.8), (1.5, 1.0)])
def test_sampled_tokens_lie_in_the_nucleus_and_record_its_renormalised_logprobs(temperature, top_p, synth_records,
                                                                                forward_logprobs):
    model, proc = build_tiny("qwen2_5_vl")
    _peaked(model)
    banned = vision_token_ids(model, proc)
    inputs = encode_views(proc, [student_view(r) for r in synth_records[:2]])
    ro = _sample(model, proc, inputs, banned, samples_per_prompt=4, temperature=temperature, top_p=top_p,
                 max_new_tokens=12)
    mask = ro.response_mask_B_T.bool()
    assert mask.sum() > 40
    expected = forward_logprobs(model, inputs, ro, temperature, banned, top_p)
    outside = mask & ~torch.isfinite(expected)
    assert not outside.any(), f"{int(outside.sum())} of {int(mask.sum())} sampled tokens lie outside the nucleus"
    torch.testing.assert_close(ro.logprobs_B_T[mask], expected[mask], atol=1e-5, rtol=0)
    whole = forward_logprobs(model, inputs, ro, temperature, banned, top_p, whole=True)[mask]
    kept = torch.isfinite(whole).sum(-1)
    if top_p < 1.0:  # a real cut: the nucleus is a small part of the vocabulary and its mass is below 1
        plain = forward_logprobs(model, inputs, ro, temperature, banned)
        assert int(kept.max()) < whole.shape[-1] // 4
        assert ((expected - plain)[mask] > 1e-3).all()
    else:
        assert int(kept.min()) == whole.shape[-1] - len(banned)
        at_1 = forward_logprobs(model, inputs, ro, 1.0, banned)
        assert ((ro.logprobs_B_T - at_1)[mask].abs() > 1e-3).float().mean() > 0.5  # the temperature shows


def test_first_token_frequencies_follow_the_temperature_and_nucleus_distribution(synth_records, forward_logprobs):
    """600 draws of one prompt's first token (T=0.7, top_p=0.8): every draw in the nucleus, and each frequent
    token's count within 4.5 standard deviations of its expected count (a bound that rejects T=1)."""
    model, proc = build_tiny("qwen2_5_vl")
    _peaked(model)
    banned = vision_token_ids(model, proc)
    inputs = encode_views(proc, [student_view(synth_records[0])])
    n = 600
    ro = _sample(model, proc, inputs, banned, samples_per_prompt=n, temperature=0.7, top_p=0.8, max_new_tokens=1)
    first = ro.response_ids_B_T[:, 0]
    counts = torch.bincount(first, minlength=model.lm_head.out_features).double()

    def far(temperature, top_p):
        """The tokens whose count is more than 4.5 sd from `n` draws of that distribution (expected >= 10)."""
        q = forward_logprobs(model, inputs, ro, temperature, banned, top_p, whole=True)[0, 0].exp().double()
        frequent = q * n >= 10
        sd = (n * q * (1 - q)).sqrt()
        return int(((counts - n * q).abs() > 4.5 * sd)[frequent].sum()), q

    bad, q = far(0.7, 0.8)
    assert bad == 0 and (q[first] > 0).all() and not torch.isin(first, torch.tensor(banned)).any()
    assert int((q * n >= 10).sum()) >= 5  # several tokens checked
    assert far(1.0, 0.8)[0] > 0  # the bound tells the temperatures apart
    no_nucleus = forward_logprobs(model, inputs, ro, 0.7, banned, whole=True)[0, 0].exp()
    assert no_nucleus[q == 0].sum() > 0.1  # without the nucleus, about 1 draw in 10 would have landed outside it


@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_suppressed_vision_tokens_are_never_drawn_and_left_out_of_the_renormalisation(top_p, synth_records,
                                                                                     forward_logprobs):
    """<|image_pad|> made about as likely as the rest together: never sampled, and the recorded log-probs are those
    of the distribution without it (with top_p, the nucleus is taken after it is removed)."""
    model, proc = build_tiny("qwen2_5_vl")
    banned = vision_token_ids(model, proc)
    pad = model.config.image_token_id
    assert pad in banned

    def favour_image_pad(module, args, out):
        out = out.clone()
        out[..., pad] = out.logsumexp(-1)  # about half the probability mass
        return out

    model.lm_head.register_forward_hook(favour_image_pad)
    inputs = encode_views(proc, [student_view(r) for r in synth_records[:2]])
    ro = _sample(model, proc, inputs, banned, samples_per_prompt=4, top_p=top_p, max_new_tokens=10)
    mask = ro.response_mask_B_T.bool()
    assert mask.sum() > 30 and not torch.isin(ro.response_ids_B_T, torch.tensor(banned)).any()
    expected = forward_logprobs(model, inputs, ro, 1.0, banned, top_p)
    torch.testing.assert_close(ro.logprobs_B_T[mask], expected[mask], atol=1e-5, rtol=0)
    with_pad = forward_logprobs(model, inputs, ro, 1.0, [b for b in banned if b != pad], top_p)
    assert ((ro.logprobs_B_T - with_pad)[mask] > 0.5).all()  # renormalised without it: about log 2 higher
