"""Numerics of vision_opd.losses.pure: values against independent formulas, chunked vs plain parity,
masks, gradient routing, micro-batching, temperature. Run: python -m pytest tests/test_losses.py"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vision_opd.losses import chunked as losses_chunked
from vision_opd.losses.divergence import (
    generalized_jsd,
    sampled_token_loss,
    token_divergence,
    token_divergence_from_hidden,
    topk_tail_jsd,
)
from vision_opd.losses.pure import DivergenceSpec, generalized_jsd_plain, masked_token_mean

ALPHAS = (0.0, 0.25, 0.5, 1.0)
KINDS = ("jsd", "topk", "sampled", "ce")


def _logits(*shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g)


def _ids(n, vocab, seed=0):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def _call(kind, zs, zt, ids, alpha, temperature=1.0, chunk_size=4, top_k=5):
    if kind == "jsd":
        return generalized_jsd(zs, zt, alpha, temperature, chunk_size=chunk_size)
    if kind == "topk":
        return topk_tail_jsd(zs, zt, alpha, temperature, top_k=top_k, chunk_size=chunk_size)
    return sampled_token_loss(zs, zt, ids, temperature, chunk_size=chunk_size)


def _np_gjsd(logits_s, logits_t, a):
    """docs/method.md, written independently in float64 numpy."""
    def softmax(z):
        z = np.asarray(z, dtype=np.float64)
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    s, t = softmax(logits_s), softmax(logits_t)

    def kl(p, q):
        return np.sum(p * np.log(p / q), axis=-1)

    if a == 0.0:
        return kl(t, s)
    if a == 1.0:
        return kl(s, t)
    m = (1 - a) * s + a * t
    return (1 - a) * kl(s, m) + a * kl(t, m)


# --------------------------------------------------------------------------------------------
# Values


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("kind", KINDS)
def test_zero_when_student_equals_teacher(kind, alpha, chunk_size):
    z = _logits(2, 5, 13)
    values = _call(kind, z, z.clone(), _ids(10, 13).view(2, 5), alpha, chunk_size=chunk_size)
    assert values.shape == (2, 5)
    torch.testing.assert_close(values, torch.zeros(2, 5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_hand_computed_three_token_vocabulary(chunk_size):
    s, t = [0.7, 0.2, 0.1], [0.2, 0.5, 0.3]
    zs, zt = torch.tensor([s]).log(), torch.tensor([t]).log()
    # numbers from the formulas in float64 numpy, e.g. a = 0.5: M = [0.45, 0.35, 0.2],
    # KL(S||M) = 0.12805, KL(T||M) = 0.13779 -> 0.5 * (0.12805 + 0.13779)
    expected = {0.0: 0.5371764588384369,  # KL(T||S)
                0.25: 0.09900799162726871,
                0.5: 0.1329180060553991,
                1.0: 0.5838147027051154}  # KL(S||T)
    for alpha, value in expected.items():
        got = generalized_jsd(zs, zt, alpha, chunk_size=chunk_size)
        assert got.item() == pytest.approx(value, rel=1e-6), alpha
    # top-1 + tail: buckets S = [0.7, 0.3], T = [0.2, 0.8]
    got = topk_tail_jsd(zs, zt, 0.5, top_k=1, chunk_size=chunk_size)
    assert got.item() == pytest.approx(0.13250545091704782, rel=1e-6)
    # sampled y = 1: (log .2 - log .5) * log .2
    got = sampled_token_loss(zs, zt, torch.tensor([1]), chunk_size=chunk_size)
    assert got.item() == pytest.approx(1.474713042690254, rel=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_full_vocab_jsd_matches_independent_formula(alpha, chunk_size):
    zs, zt = _logits(2, 5, 11, seed=1), _logits(2, 5, 11, seed=2)
    got = generalized_jsd(zs, zt, alpha, chunk_size=chunk_size)
    np.testing.assert_allclose(got.numpy(), _np_gjsd(zs.numpy(), zt.numpy(), alpha), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_forward_and_reverse_kl_match_f_kl_div(chunk_size):
    zs, zt = _logits(3, 4, 17, seed=3), _logits(3, 4, 17, seed=4)
    ls, lt = F.log_softmax(zs, -1), F.log_softmax(zt, -1)
    forward_kl = F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)  # KL(T||S)
    reverse_kl = F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)  # KL(S||T)
    torch.testing.assert_close(generalized_jsd(zs, zt, 0.0, chunk_size=chunk_size), forward_kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(generalized_jsd(zs, zt, 1.0, chunk_size=chunk_size), reverse_kl, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_alpha_limits_approach_the_exact_kls(chunk_size):
    """The mixture formula -> a * KL(T||S) as a -> 0 and (1-a) * KL(S||T) as a -> 1: value and
    gradient divided by a (resp. 1-a) tend continuously to the exact KLs at a = 0 (resp. 1)."""
    zs = _logits(6, 9, seed=5, scale=1.0).requires_grad_(True)
    zt = _logits(6, 9, seed=6, scale=1.0)

    def value_and_grad(alpha):
        v = generalized_jsd(zs, zt, alpha, chunk_size=chunk_size)
        (g,) = torch.autograd.grad(v.sum(), zs)
        return v.detach(), g

    def rel_err(got, ref):
        return ((got - ref).abs().max() / ref.abs().max()).item()

    v0, g0 = value_and_grad(0.0)
    v1, g1 = value_and_grad(1.0)
    near0, near1 = [], []
    for eps in (1e-1, 1e-2, 1e-3, 1e-4):
        va, ga = value_and_grad(eps)
        near0.append((rel_err(va / eps, v0), rel_err(ga / eps, g0)))
        vb, gb = value_and_grad(1.0 - eps)
        near1.append((rel_err(vb / eps, v1), rel_err(gb / eps, g1)))
    for errors in (near0, near1):
        for e in zip(*errors, strict=True):  # values, then gradients
            # O(eps) convergence down to eps = 1e-4 (below that, float32 rounding dominates)
            assert e[0] > e[1] > e[2] > e[3] and e[3] < 5e-3, errors
    # ... while the value itself jumps at the ends (TRL / reference convention): it is ~eps * KL
    assert generalized_jsd(zs, zt, 1e-4, chunk_size=chunk_size).max() < 1e-3 * v0.max()


# --------------------------------------------------------------------------------------------
# Chunked vs plain


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 16, 1000])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("kind", KINDS)
def test_chunked_equals_plain_on_logits(kind, alpha, chunk_size):
    n, vocab = 15, 23  # 15 tokens: most chunk sizes do not divide it
    zs_leaf, zt = _logits(n, vocab, seed=7), _logits(n, vocab, seed=8)
    ids, weights = _ids(n, vocab, seed=9), torch.rand(n, generator=torch.Generator().manual_seed(10))
    results = []
    for cs in (None, chunk_size):
        zs = zs_leaf.clone().requires_grad_(True)
        spec = DivergenceSpec(kind, alpha=alpha, temperature=0.8, top_k=6, chunk_size=cs)
        values, metrics = token_divergence(zs, zt, ids, spec)
        (values * weights).sum().backward()
        results.append((values.detach(), zs.grad, metrics))
    (v_plain, g_plain, m_plain), (v_chunk, g_chunk, m_chunk) = results
    torch.testing.assert_close(v_chunk, v_plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_chunk, g_plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m_chunk["reverse_kl"], m_plain["reverse_kl"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m_chunk["top1_agree"], m_plain["top1_agree"])


def _hidden_case(n=14, hidden=8, vocab=29, seed=11):
    g = torch.Generator().manual_seed(seed)
    hs = 0.7 * torch.randn(n, hidden, generator=g)
    ht = hs + 0.5 * torch.randn(n, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g)
    b = 0.3 * torch.randn(vocab, generator=g)
    w_teacher = w + 0.2 * torch.randn(vocab, hidden, generator=g)
    return hs, ht, w, b, w_teacher, torch.randint(0, vocab, (n,), generator=g)


@pytest.mark.parametrize("separate_teacher_head", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 100])
@pytest.mark.parametrize("kind", KINDS)
def test_fused_hidden_path_equals_plain_matmul_then_plain_loss(kind, chunk_size, separate_teacher_head):
    hs0, ht, w0, b0, w_teacher, ids = _hidden_case()
    weights = torch.rand(hs0.shape[0], generator=torch.Generator().manual_seed(12))
    spec = DivergenceSpec(kind, alpha=0.5, temperature=1.3, top_k=6, chunk_size=chunk_size)

    # reference written out: plain matmul for both views, plain (unchunked) loss
    hs, w, b = (t.clone().requires_grad_(True) for t in (hs0, w0, b0))
    teacher_logits = (ht @ (w_teacher if separate_teacher_head else w).T + (0 if separate_teacher_head else b)).detach()
    ref_values, ref_metrics = token_divergence(hs @ w.T + b, teacher_logits, ids,
                                               DivergenceSpec(kind, 0.5, 1.3, 6, chunk_size=None))
    (ref_values * weights).sum().backward()
    ref_grads = (hs.grad, w.grad, b.grad)

    hs, w, b = (t.clone().requires_grad_(True) for t in (hs0, w0, b0))
    teacher_kwargs = {"teacher_lm_head_weight": w_teacher} if separate_teacher_head else {}
    values, metrics = token_divergence_from_hidden(hs, ht, w, ids, spec, lm_head_bias=b, **teacher_kwargs)
    (values * weights).sum().backward()

    torch.testing.assert_close(values.detach(), ref_values.detach(), rtol=1e-5, atol=1e-5)
    for got, ref, name in zip((hs.grad, w.grad, b.grad), ref_grads, ("hidden", "weight", "bias"), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"grad {name}: {m}")
    torch.testing.assert_close(metrics["reverse_kl"], ref_metrics["reverse_kl"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metrics["top1_agree"], ref_metrics["top1_agree"])


@pytest.mark.parametrize("kind", KINDS)
def test_cpu_row_blocks_inside_a_chunk(kind, monkeypatch):
    """On the CPU a chunk is processed in cache-sized row blocks: force 2-row blocks."""
    hs0, ht, w0, _, _, ids = _hidden_case(n=11)
    monkeypatch.setattr(losses_chunked, "_CPU_BLOCK_BYTES", 2 * 4 * w0.shape[0])
    results = []
    for cs in (None, 5):
        hs, w = hs0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        values, _ = token_divergence_from_hidden(hs, ht, w, ids, DivergenceSpec(kind, top_k=4, chunk_size=cs))
        values.sum().backward()
        results.append((values.detach(), hs.grad, w.grad))
    for got, ref in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_chunked_function_saves_only_its_inputs():
    """The memory claim in structure: besides its inputs, autograd keeps only per-token tensors of
    at most K+1 entries (top-k ids and teacher bucket log-probs; the sampled-token advantage)."""
    n, vocab, k = 12, 40, 3
    zs, zt = _logits(n, vocab, seed=13).requires_grad_(True), _logits(n, vocab, seed=14)
    hs, ht, w, _, _, ids = _hidden_case(n=n, vocab=vocab)
    hs.requires_grad_(True), w.requires_grad_(True)
    for kind in KINDS:
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            token_divergence(zs, zt, ids, DivergenceSpec(kind, top_k=k, chunk_size=4))
            token_divergence_from_hidden(hs, ht, w, ids, DivergenceSpec(kind, top_k=k, chunk_size=4))
        inputs = {t.data_ptr() for t in (zs, zt, hs, ht, w, ids)}
        others = [tuple(t.shape) for t in saved if t.data_ptr() not in inputs]
        assert all(math.prod(shape) <= n * (k + 1) for shape in others), f"{kind}: saved {others}"


def test_bfloat16_logits_get_a_bfloat16_gradient_close_to_float32():
    z32, zt = _logits(6, 31, seed=15), _logits(6, 31, seed=16)
    z16 = z32.bfloat16().requires_grad_(True)
    generalized_jsd(z16, zt.bfloat16(), 0.5, chunk_size=4).sum().backward()
    ref = z16.detach().float().requires_grad_(True)
    generalized_jsd_plain(ref, zt.bfloat16().float(), 0.5).sum().backward()
    assert z16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(z16.grad.float(), ref.grad, rtol=1e-2, atol=1e-3)


# --------------------------------------------------------------------------------------------
# Masks, gradient routing, micro-batching


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_masked_positions_contribute_exactly_nothing(kind, chunk_size):
    n, vocab = 8, 13
    mask = torch.tensor([1, 1, 0, 1, 0, 0, 1, 1], dtype=torch.bool)
    clean = _logits(n, vocab, seed=17)
    poisoned = clean.clone()
    poisoned[2] = float("nan")
    poisoned[4, 3] = float("inf")
    zt, ids = _logits(n, vocab, seed=18), _ids(n, vocab, seed=19)
    spec = DivergenceSpec(kind, top_k=4, chunk_size=chunk_size)
    losses, grads = [], []
    for zs0 in (clean, poisoned):
        zs = zs0.clone().requires_grad_(True)
        values, _ = token_divergence(zs, zt, ids, spec)
        loss = masked_token_mean(values, mask, int(mask.sum()))
        loss.backward()
        losses.append(loss.detach())
        grads.append(zs.grad)
    assert torch.isfinite(losses[1])
    assert losses[1] == losses[0]  # bit-exact: masked tokens are not even added
    torch.testing.assert_close(grads[1][mask], grads[0][mask], rtol=0, atol=0)
    assert (grads[0][~mask] == 0).all()


def test_masked_token_mean_ignores_nan_and_inf_and_handles_empty():
    values = torch.tensor([1.0, float("nan"), 3.0, float("inf"), float("-inf")], requires_grad=True)
    mask = torch.tensor([1, 0, 1, 0, 0])
    loss = masked_token_mean(values, mask, 4)  # global count 4: other micro-batches hold 2 more
    assert loss.item() == 1.0
    loss.backward()
    assert values.grad.tolist() == [0.25, 0.0, 0.25, 0.0, 0.0]
    for count in (0, 3, torch.tensor(0), torch.tensor(3.0)):
        values.grad = None
        all_masked = masked_token_mean(values, torch.zeros(5, dtype=torch.bool), count)
        assert all_masked.item() == 0.0 and all_masked.requires_grad, count
        all_masked.backward()
        assert values.grad.tolist() == [0.0] * 5
    values.grad = None
    nothing = masked_token_mean(values, mask, 0)  # num_tokens == 0 wins: exactly 0, not NaN
    assert nothing.item() == 0.0 and nothing.requires_grad
    assert masked_token_mean(values, mask, torch.tensor(4)).item() == 1.0


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_only_the_student(kind, chunk_size):
    zs = _logits(2, 3, 11, seed=20).requires_grad_(True)
    zt = _logits(2, 3, 11, seed=21).requires_grad_(True)  # a teacher that (wrongly) requires grad
    _call(kind, zs, zt, _ids(6, 11).view(2, 3), 0.5, chunk_size=chunk_size).sum().backward()
    assert zt.grad is None
    assert zs.grad is not None and zs.grad.abs().sum() > 0

    hs, ht, w, b, w_teacher, ids = (t.clone() for t in _hidden_case())
    for t in (hs, ht, w, b, w_teacher):
        t.requires_grad_(True)
    spec = DivergenceSpec(kind, top_k=4, chunk_size=chunk_size)
    values, metrics = token_divergence_from_hidden(hs, ht, w, ids, spec, lm_head_bias=b,
                                                   teacher_lm_head_weight=w_teacher)
    values.sum().backward()
    assert ht.grad is None and w_teacher.grad is None
    assert hs.grad is not None and w.grad is not None and b.grad is not None
    assert not metrics["reverse_kl"].requires_grad and not metrics["top1_agree"].requires_grad


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_micro_batching_4x2_equals_1x8(kind, chunk_size):
    batch, tokens, vocab = 8, 5, 17
    student = _logits(batch, tokens, vocab, seed=22)
    teacher = _logits(batch, tokens, vocab, seed=23)
    ids = _ids(batch * tokens, vocab, seed=24).view(batch, tokens)
    lengths = torch.tensor([5, 1, 3, 0, 4, 2, 5, 3])
    mask = torch.arange(tokens)[None, :] < lengths[:, None]  # right-padded responses
    num_tokens = int(mask.sum())  # the global count, passed to every micro-batch
    spec = DivergenceSpec(kind, top_k=4, chunk_size=chunk_size)

    def loss_of(rows, leaf):
        zs = leaf[rows].reshape(-1, vocab)
        values, _ = token_divergence(zs, teacher[rows].reshape(-1, vocab), ids[rows].reshape(-1), spec)
        return masked_token_mean(values, mask[rows].reshape(-1), num_tokens)

    whole = student.clone().requires_grad_(True)
    full_loss = loss_of(slice(0, 8), whole)
    full_loss.backward()
    parts = student.clone().requires_grad_(True)
    summed = torch.zeros(())
    for start in range(0, batch, 2):
        micro = loss_of(slice(start, start + 2), parts)
        micro.backward()  # gradient accumulation
        summed += micro.detach()
    torch.testing.assert_close(summed, full_loss.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(parts.grad, whole.grad, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------
# Temperature, top-k, sampled token, spec


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_temperature_equals_loss_on_scaled_logits(kind, chunk_size):
    tau = 0.6
    zs0, zt, ids = _logits(9, 19, seed=25), _logits(9, 19, seed=26), _ids(9, 19, seed=27)
    zs = zs0.clone().requires_grad_(True)
    got = _call(kind, zs, zt, ids, 0.25, temperature=tau, chunk_size=chunk_size)
    got.sum().backward()
    ref_leaf = zs0.clone().requires_grad_(True)
    ref = _call(kind, ref_leaf / tau, zt / tau, ids, 0.25, temperature=1.0, chunk_size=chunk_size)
    ref.sum().backward()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zs.grad, ref_leaf.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_topk_with_k_equal_vocab_is_the_full_jsd(alpha, chunk_size):
    vocab = 21
    zs0, zt = _logits(7, vocab, seed=28), _logits(7, vocab, seed=29)
    results = []
    for k in (vocab, None, 10 * vocab):  # None = full JSD; k > V is clamped to V
        zs = zs0.clone().requires_grad_(True)
        if k is None:
            values = generalized_jsd(zs, zt, alpha, chunk_size=chunk_size)
        else:
            values = topk_tail_jsd(zs, zt, alpha, top_k=k, chunk_size=chunk_size)
        values.sum().backward()
        assert torch.isfinite(values).all() and torch.isfinite(zs.grad).all()
        results.append((values.detach(), zs.grad))
    for values, grad in (results[0], results[2]):
        torch.testing.assert_close(values, results[1][0], rtol=1e-5, atol=2e-6)
        torch.testing.assert_close(grad, results[1][1], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_topk_uses_student_full_normaliser(chunk_size):
    """Gradient reaches logits outside the top-k (through the normaliser and the tail bucket)."""
    zs = _logits(3, 12, seed=30).requires_grad_(True)
    zt = _logits(3, 12, seed=31)
    topk_tail_jsd(zs, zt, 0.5, top_k=3, chunk_size=chunk_size).sum().backward()
    outside = torch.ones_like(zs, dtype=torch.bool).scatter_(-1, zs.detach().topk(3, -1).indices, False)
    assert (zs.grad[outside] != 0).all()
    torch.testing.assert_close(zs.grad.sum(-1), torch.zeros(3), atol=1e-6, rtol=0)  # softmax shift invariance


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_sampled_token_gradient_is_the_hand_written_surrogate(chunk_size):
    zs0, zt, ids = _logits(2, 5, 9, seed=32), _logits(2, 5, 9, seed=33), _ids(10, 9, seed=34).view(2, 5)
    tau = 0.9
    zs = zs0.clone().requires_grad_(True)
    got = sampled_token_loss(zs, zt, ids, temperature=tau, chunk_size=chunk_size)
    got.sum().backward()
    ref_leaf = zs0.clone().requires_grad_(True)
    logp_s = torch.log_softmax(ref_leaf / tau, -1).gather(-1, ids[..., None]).squeeze(-1)
    logp_t = torch.log_softmax(zt / tau, -1).gather(-1, ids[..., None]).squeeze(-1)
    ref = (logp_s - logp_t).detach() * logp_s
    ref.sum().backward()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zs.grad, ref_leaf.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", ["plain", "chunked", "fused"])
def test_sampled_token_advantage_clip_matches_a_float64_reference(path):
    """loss.sampled_clip (V-Zero's clamp): value and gradient = sg[clamp(log S(y) - log T(y), -c, c)] * log S(y).
    The teacher is made very confident against the sampled tokens so that some advantages pass the bound."""
    n, vocab, hidden, clip = 12, 9, 6, 2.0
    gen = torch.Generator().manual_seed(40)
    hs0, ht = torch.randn(n, hidden, generator=gen), torch.randn(n, hidden, generator=gen)
    w = torch.randn(vocab, hidden, generator=gen)
    wt = w.clone()
    wt[0] += 6.0 * ht.mean(0) / ht.mean(0).norm()  # the teacher piles mass on token 0
    ids = torch.randint(1, vocab, (n,), generator=gen)
    spec = DivergenceSpec("sampled", temperature=0.8, chunk_size=None if path == "plain" else 5, advantage_clip=clip)
    hs = hs0.clone().requires_grad_(True)
    if path == "fused":
        got, _ = token_divergence_from_hidden(hs, ht, w, ids, spec, teacher_lm_head_weight=wt)
    else:
        got, _ = token_divergence(hs @ w.T, ht @ wt.T, ids, spec)
    got.sum().backward()
    ref_leaf = hs0.double().clone().requires_grad_(True)
    logp_s = torch.log_softmax(ref_leaf @ w.double().T / 0.8, -1).gather(-1, ids[:, None]).squeeze(-1)
    logp_t = torch.log_softmax(ht.double() @ wt.double().T / 0.8, -1).gather(-1, ids[:, None]).squeeze(-1)
    adv = (logp_s - logp_t).detach()
    assert (adv.abs() > clip).any() and (adv.abs() < clip).any()  # the bound bites on some tokens, not all
    ref = adv.clamp(-clip, clip) * logp_s
    ref.sum().backward()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hs.grad.double(), ref_leaf.grad, rtol=1e-4, atol=1e-5)


def test_sampled_clip_is_refused_with_a_clear_line_off_the_sampled_kind():
    from vision_opd.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="loss.sampled_clip .*needs loss.kind=sampled"):
        load_config(None, ["loss.sampled_clip=10"])
    with pytest.raises(ConfigError, match="loss.sampled_clip=0.0: must be > 0"):
        load_config(None, ["loss.kind=sampled", "loss.sampled_clip=0"])
    assert load_config(None, ["loss.kind=sampled", "loss.sampled_clip=10"]).loss.sampled_clip == 10.0
    with pytest.raises(ValueError, match="advantage_clip"):
        DivergenceSpec("sampled", advantage_clip=-1.0)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_sampled_token_gradient_is_unbiased_for_reverse_kl(chunk_size):
    """E_{y ~ S}[grad of the surrogate] == grad KL(S||T), exactly, by summing over all y."""
    vocab = 6
    zs = _logits(1, vocab, seed=35).requires_grad_(True)
    zt = _logits(1, vocab, seed=36)
    probs = torch.softmax(zs.detach(), -1)[0]
    expected_grad = torch.zeros_like(zs)
    for y in range(vocab):
        (g,) = torch.autograd.grad(sampled_token_loss(zs, zt, torch.tensor([y]), chunk_size=chunk_size).sum(), zs)
        expected_grad += probs[y] * g
    (reverse_kl_grad,) = torch.autograd.grad(generalized_jsd(zs, zt, 1.0, chunk_size=chunk_size).sum(), zs)
    torch.testing.assert_close(expected_grad, reverse_kl_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_metrics_are_reverse_kl_and_top1_agreement(kind):
    zs, zt = _logits(10, 7, seed=37), _logits(10, 7, seed=38)
    zt[:4] = zs[:4] + 0.01  # same argmax on the first 4 rows
    for chunk_size in (None, 3):
        _, metrics = token_divergence(zs, zt, _ids(10, 7), DivergenceSpec(kind, top_k=3, chunk_size=chunk_size))
        reverse_kl = F.kl_div(F.log_softmax(zt, -1), F.log_softmax(zs, -1), reduction="none", log_target=True).sum(-1)
        torch.testing.assert_close(metrics["reverse_kl"], reverse_kl, rtol=1e-5, atol=1e-6)
        assert metrics["top1_agree"].tolist() == (zs.argmax(-1) == zt.argmax(-1)).float().tolist()
        assert metrics["top1_agree"][:4].tolist() == [1.0] * 4


def test_spec_rejects_bad_settings_loudly():
    for kwargs in ({"kind": "kl"}, {"alpha": 1.5}, {"temperature": 0.0}, {"top_k": 0}, {"chunk_size": 0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            DivergenceSpec(**kwargs)
    with pytest.raises(ValueError, match="alpha"):
        generalized_jsd(torch.zeros(1, 3), torch.zeros(1, 3), -0.1)
    with pytest.raises(AssertionError, match="sampled_ids"):
        token_divergence(torch.zeros(2, 3), torch.zeros(2, 3), None, DivergenceSpec("sampled"))
    with pytest.raises(AssertionError, match="same shape"):
        generalized_jsd(torch.zeros(2, 3), torch.zeros(2, 4), 0.5)


def test_empty_batch_gives_empty_values_and_zero_grads():
    zs = torch.zeros(0, 5, requires_grad=True)
    values, metrics = token_divergence(zs, torch.zeros(0, 5), None, DivergenceSpec())
    assert values.shape == (0,) and metrics["reverse_kl"].shape == (0,)
    hs, ht, w, _, _, _ = _hidden_case()
    w.requires_grad_(True)
    values, _ = token_divergence_from_hidden(hs[:0], ht[:0], w, None, DivergenceSpec())
    masked_token_mean(values, torch.zeros(0, dtype=torch.bool), 0).backward()
    assert w.grad is not None and (w.grad == 0).all()
    assert math.isfinite(values.sum().item())


def test_chunked_paths_stay_float32_under_autocast():
    hs, ht, w, b, _, ids = _hidden_case()
    spec = DivergenceSpec("jsd", chunk_size=4)
    ref, _ = token_divergence_from_hidden(hs, ht, w, ids, spec, lm_head_bias=b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = token_divergence_from_hidden(hs, ht, w, ids, spec, lm_head_bias=b)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 100])
@pytest.mark.parametrize("kind", KINDS)
def test_per_token_logprobs_and_entropies_of_both_views(kind, chunk_size):
    """student_logprob / teacher_logprob = log_softmax(logits / T) at the sampled id and student_entropy /
    teacher_entropy = -sum p log p of it, on both paths, without grad."""
    temperature = 0.7
    hs, ht, w, b, w_teacher, ids = _hidden_case()
    spec = DivergenceSpec(kind, alpha=0.5, temperature=temperature, top_k=5, chunk_size=chunk_size)
    zs, zt = hs @ w.T + b, ht @ w_teacher.T
    ls, lt = F.log_softmax(zs / temperature, dim=-1), F.log_softmax(zt / temperature, dim=-1)
    expected = {"student_logprob": ls.gather(-1, ids[:, None]).squeeze(-1),
                "teacher_logprob": lt.gather(-1, ids[:, None]).squeeze(-1),
                "student_entropy": -(ls.exp() * ls).sum(-1), "teacher_entropy": -(lt.exp() * lt).sum(-1)}
    _, from_logits = token_divergence(zs.requires_grad_(True), zt, ids, spec)
    _, from_hidden = token_divergence_from_hidden(hs, ht, w, ids, spec, lm_head_bias=b, teacher_lm_head_weight=w_teacher)
    for metrics in (from_logits, from_hidden):
        for name, want in expected.items():
            torch.testing.assert_close(metrics[name], want, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
            assert not metrics[name].requires_grad
    for view in ("logprob", "entropy"):  # the two views differ: the check can tell them apart
        assert not torch.allclose(expected[f"student_{view}"], expected[f"teacher_{view}"])
    _, uniform = token_divergence(torch.zeros(3, 7), torch.zeros(3, 7), ids[:3] % 7, DivergenceSpec(kind, top_k=2))
    torch.testing.assert_close(uniform["student_entropy"], torch.full((3,), math.log(7)))  # by hand: log V


def test_sampled_token_logprobs_need_the_ids():
    zs, zt = _logits(6, 9, seed=40), _logits(6, 9, seed=41)
    for chunk_size in (None, 4):
        _, metrics = token_divergence(zs, zt, None, DivergenceSpec("jsd", chunk_size=chunk_size))
        assert set(metrics) == {"reverse_kl", "top1_agree", "student_entropy", "teacher_entropy"}
    with pytest.raises(AssertionError, match="sampled_ids must be integer"):
        token_divergence(zs, zt, torch.zeros(5, dtype=torch.long), DivergenceSpec("jsd"))


@pytest.mark.parametrize("chunk_size", [None, 2, 100])
def test_ce_is_cross_entropy_on_the_tokens_with_the_teacher_unused(chunk_size):
    """kind "ce": -log softmax(z)[y], equal to F.cross_entropy in value and gradient; the teacher's logits
    change nothing (sequence-level KD reads only the teacher's tokens)."""
    hs0, ht, w0, b0, w_teacher, ids = _hidden_case()
    spec = DivergenceSpec("ce", chunk_size=chunk_size)
    hs, w = hs0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    ref = F.cross_entropy(hs @ w.T + b0, ids, reduction="none")
    ref.mean().backward()
    ref_grads = hs.grad.clone(), w.grad.clone()
    for teacher_hidden in (ht, torch.randn_like(ht)):
        hs, w = hs0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        values, _ = token_divergence_from_hidden(hs, teacher_hidden, w, ids, spec, lm_head_bias=b0,
                                                 teacher_lm_head_weight=w_teacher)
        torch.testing.assert_close(values, ref.detach(), rtol=1e-5, atol=1e-6)
        masked_token_mean(values, torch.ones_like(values), values.numel()).backward()
        torch.testing.assert_close(hs.grad, ref_grads[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(w.grad, ref_grads[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(AssertionError, match="needs sampled_ids"):
        token_divergence(hs0 @ w0.T, ht @ w0.T, None, spec)
