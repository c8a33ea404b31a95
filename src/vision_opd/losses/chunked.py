"""Memory-saving execution of the divergences in `losses.py`: chunk by chunk over tokens.

What: two custom `torch.autograd.Function`s that evaluate the per-token divergence of a
`DivergenceSpec` ("jsd", "topk", "sampled" or "ce") without ever holding more than one chunk of
[tokens, V] float32 temporaries:

- `ChunkedLogitsDivergence`: input = materialised logits [N, V] of student and teacher.
- `ChunkedHiddenDivergence`: input = final hidden states [N, H] and the lm_head weight [V, H];
  the logits of a chunk are computed (hidden @ W.T) in forward and computed again in backward,
  so full [N, V] logits never exist, for either view.

Why: with V = 151936 one [4096, V] float32 tensor is 2.5 GB and a plain autograd graph of a
JSD keeps several of them. Here forward saves only its inputs (plus, per token, at most K+1
numbers: see `_Outputs`) and backward recomputes each chunk and writes the analytic gradient
straight into the output.

How the gradients are derived (z = logits / temperature, s = softmax(z), t = teacher probs,
g_out = upstream gradient of the token's value; all per row):
- generalized JSD, 0 < a < 1, m = (1-a)*s + a*t:  dL/ds_i = (1-a)*(log s_i - log m_i) (+const),
  so dL/dz = g_out/temperature * (1-a) * s * (log s - log m - KL(S||M)).
- a = 1, reverse KL(S||T):   dL/dz = g_out/temperature * s * (log s - log t - KL(S||T)).
- a = 0, forward KL(T||S):   dL/dz = g_out/temperature * (s - t).
- top-k + tail: autograd on the small [rows, K+1] bucket function gives d = dL/d(log s at the
  top-k ids); then dL/dz = g_out/temperature * (scatter(d) - s * sum(d)).
- sampled token y:           dL/dz = g_out/temperature * adv * (onehot(y) - s) (adv clamped if asked).
- cross-entropy on y:        dL/dz = g_out/temperature * (s - onehot(y)).

Performance notes (2-core CPU, docs/performance.md): inside a chunk the element-wise math runs
on row blocks whose [rows, V] float32 temporaries are about `_CPU_BLOCK_BYTES` each (17 rows at
V = 151936): blocks of 8 to 64 rows ran equally fast, 4 rows 3x slower, so the smaller end was
taken (less memory, fits in cache). On accelerators a block is the whole chunk. What backward
needs of the teacher: "jsd" recomputes its logits (the gradient needs all of log t); "topk"
saves the teacher's K+1 bucket log-probs and "sampled" its advantage per token, so their fused
backward skips the teacher's matmul.

Logits must be finite: a -inf logit in both views would give 0 * inf = NaN, as it does in the
plain reference.
"""

from __future__ import annotations


import torch
from torch import Tensor

from .pure import DivergenceSpec, gjsd_from_logprobs, with_tail_bucket

# Row-block size for the element-wise math on the CPU: a block's [rows, V] float32 temporaries
# are about this many bytes each (17 rows at V = 151936). Chosen by measurement (see above).
_CPU_BLOCK_BYTES = 10 << 20
# Floor for the mixture probability before its log (see `_block_values`).
_TINY = torch.finfo(torch.float32).tiny


# ---------------------------------------------------------------------------------------------
# Block kernels: zs, zt are float32 [rows, V], already divided by the temperature.


def _block_values(spec: DivergenceSpec, zs: Tensor, zt: Tensor, y: Tensor | None, want_metrics: bool):
    """Per-row values (no grad). Returns (values, aux, metrics): aux are the small per-row tensors
    backward needs besides the student logits (see `_Outputs`); metrics is None unless want_metrics,
    else (reverse_kl, agree, student_logprob, teacher_logprob, student_entropy, teacher_entropy): the
    sampled token's log-prob under each view (log_softmax(z)[y]; None when no sampled ids y are given) and
    each view's entropy -sum p log p (nats, at the spec's temperature)."""
    ls = torch.log_softmax(zs, dim=-1)
    lt = torch.log_softmax(zt, dim=-1)
    a = spec.alpha
    ps = ls.exp() if (want_metrics or (spec.kind == "jsd" and a != 0.0)) else None
    aux = ()
    if spec.kind == "jsd":
        if a == 0.0:
            values = torch.linalg.vecdot(lt.exp(), lt - ls)
        elif a == 1.0:
            values = torch.linalg.vecdot(ps, ls - lt)
        else:
            pt = lt.exp()
            # log m from m = lerp(ps, pt, a) (a sum of positives, no cancellation). The floor only
            # touches entries where both probabilities are < 1e-38: their terms are weighted by
            # p <= 1e-38 / min(a, 1-a), i.e. nothing, and it keeps 0 * log(0) from giving NaN.
            lm = torch.lerp(ps, pt, a).clamp_min_(_TINY).log_()
            values = (1.0 - a) * torch.linalg.vecdot(ps, ls - lm) + a * torch.linalg.vecdot(pt, lt - lm)
    elif spec.kind == "topk":
        ids = torch.topk(zs, min(spec.top_k, zs.shape[-1]), dim=-1, sorted=False).indices
        lt_K1 = with_tail_bucket(lt.gather(-1, ids))
        values = gjsd_from_logprobs(with_tail_bucket(ls.gather(-1, ids)), lt_K1, a)
        aux = (ids, lt_K1)
    elif spec.kind == "sampled":
        lps_y = ls.gather(-1, y[:, None]).squeeze(-1)
        adv = lps_y - lt.gather(-1, y[:, None]).squeeze(-1)
        if spec.advantage_clip is not None:
            adv = adv.clamp(-spec.advantage_clip, spec.advantage_clip)
        values = adv * lps_y
        aux = (adv,)
    else:  # ce
        values = -ls.gather(-1, y[:, None]).squeeze(-1)
    if not want_metrics:
        return values, aux, None
    reverse_kl = values if (spec.kind == "jsd" and a == 1.0) else torch.linalg.vecdot(ps, ls - lt)
    agree = (zs.argmax(-1) == zt.argmax(-1)).float()
    lps_y = lpt_y = None
    if y is not None:
        lps_y, lpt_y = ls.gather(-1, y[:, None]).squeeze(-1), lt.gather(-1, y[:, None]).squeeze(-1)
    h_s, h_t = -torch.linalg.vecdot(ps, ls), -torch.linalg.vecdot(lt.exp(), lt)
    return values, aux, (reverse_kl, agree, lps_y, lpt_y, h_s, h_t)


def _block_grad(spec: DivergenceSpec, zs: Tensor, zt: Tensor | None, y: Tensor | None, aux: tuple,
                grad_rows: Tensor, out: Tensor) -> Tensor:
    """Writes d(sum_r grad_out[r] * value[r]) / d(zs) into `out` (float32 [rows, V], may be zs
    itself), with grad_rows = grad_out / temperature. Only "jsd" needs the teacher logits zt;
    "topk" and "sampled" get what they need of the teacher from aux, "ce" needs nothing of it."""
    ls = torch.log_softmax(zs, dim=-1)
    a = spec.alpha
    g = grad_rows[:, None]
    if spec.kind == "jsd":
        lt = torch.log_softmax(zt, dim=-1)
        if a == 0.0:
            return torch.sub(ls.exp_(), lt.exp_(), out=out).mul_(g)  # (s - t)
        ps = ls.exp()
        if a == 1.0:
            d = ls.sub_(lt)  # log s - log t
        else:
            d = ls.sub_(torch.lerp(ps, lt.exp_(), a).clamp_min_(_TINY).log_())  # log s - log m
        kl = torch.linalg.vecdot(ps, d)
        scale = g if a == 1.0 else g * (1.0 - a)
        return torch.mul(d.sub_(kl[:, None]).mul_(scale), ps, out=out)  # s * (d - KL)
    if spec.kind == "topk":
        ids, lt_K1 = aux
        with torch.enable_grad():
            ls_K = ls.gather(-1, ids).requires_grad_(True)
            values = gjsd_from_logprobs(with_tail_bucket(ls_K), lt_K1, a)
            (d,) = torch.autograd.grad(values, ls_K, grad_outputs=grad_rows)
        # log s_i = z_i - logsumexp(z): d/dz = scatter(d) - s * sum(d)
        return torch.mul(ls.exp_(), -d.sum(-1, keepdim=True), out=out).scatter_add_(-1, ids, d)
    if spec.kind == "ce":  # value = -log s_y: d/dz = s - onehot(y)
        return torch.mul(ls.exp_(), g, out=out).scatter_add_(-1, y[:, None], -g)
    # sampled: value = adv * log s_y with adv detached; d/dz = adv * (onehot(y) - s)
    (adv,) = aux
    w = adv[:, None] * g
    return torch.mul(ls.exp_(), -w, out=out).scatter_add_(-1, y[:, None], w)


def _blocks(n_rows: int, vocab: int, device: torch.device, chunk_size: int):
    """Row slices of at most chunk_size rows (and, on the CPU, of about _CPU_BLOCK_BYTES)."""
    rows = chunk_size
    if device.type == "cpu":
        rows = min(rows, max(1, _CPU_BLOCK_BYTES // (4 * vocab)))
    return [slice(i, min(i + rows, n_rows)) for i in range(0, n_rows, rows)]


def _scaled(z: Tensor, temperature: float) -> Tensor:
    """float32 logits / temperature; never modifies z in place."""
    z = z.float()
    return z if temperature == 1.0 else z / temperature


class _Outputs:
    """Per-token outputs of a forward pass, filled block by block, and the small per-token
    tensors saved for backward: "topk": the ids [N, K] and the teacher's bucket log-probs
    [N, K+1]; "sampled": the advantage [N]; "jsd": nothing (its backward needs the teacher).
    The metrics (`METRICS`, each [N], or [0] when not asked for; the sampled-token log-probs
    need the sampled ids) are outputs of the autograd Functions, non-differentiable."""

    def __init__(self, spec: DivergenceSpec, n: int, vocab: int, device: torch.device, want_metrics: bool,
                 has_ids: bool):
        def new(*shape, dtype=torch.float32):
            return torch.empty(*shape, dtype=dtype, device=device)

        self.values = new(n)
        k = min(spec.top_k, vocab)
        self.aux = {"jsd": (), "topk": (new(n, k, dtype=torch.long), new(n, k + 1)), "sampled": (new(n),), "ce": ()}[spec.kind]
        logprob_n = n if has_ids else 0  # the sampled-token log-probs need the sampled ids
        sizes = (n, n, logprob_n, logprob_n, n, n) if want_metrics else (0,) * len(METRICS)
        self.metrics = tuple(new(size) for size in sizes)

    def fill(self, rows: slice, out) -> None:
        values, aux, metrics = out
        self.values[rows] = values
        for buf, part in zip(self.aux, aux, strict=True):
            buf[rows] = part
        if metrics is None:
            return
        for buf, part in zip(self.metrics, metrics, strict=True):
            if part is not None:
                buf[rows] = part


# The per-token metrics the Functions return after the values, in this order.
METRICS = ("reverse_kl", "top1_agree", "student_logprob", "teacher_logprob", "student_entropy", "teacher_entropy")


def _rows_of(aux: tuple, rows: slice) -> tuple:
    return tuple(t[rows] for t in aux)


def _float32_only(device: torch.device):
    """Everything in here is float32 by construction: keep an enclosing autocast out of it."""
    return torch.autocast(device.type, enabled=False)


class ChunkedLogitsDivergence(torch.autograd.Function):
    """(student_logits [N, V], teacher_logits [N, V], sampled_ids [N] | None, spec, want_metrics)
    -> (values [N], *metrics): the `METRICS`, each [N] or [0]; grad only for student_logits.
    Kind "sampled" needs sampled_ids; the others use them only for the sampled-token log-probs."""

    @staticmethod
    def forward(ctx, student_logits_N_V, teacher_logits_N_V, sampled_ids_N, spec, want_metrics):
        with _float32_only(student_logits_N_V.device):
            return ChunkedLogitsDivergence._forward(ctx, student_logits_N_V, teacher_logits_N_V, sampled_ids_N, spec,
                                                    want_metrics)

    @staticmethod
    def backward(ctx, grad_values_N, *_grad_metrics):
        with _float32_only(grad_values_N.device):
            return ChunkedLogitsDivergence._backward(ctx, grad_values_N)

    @staticmethod
    def _forward(ctx, student_logits_N_V, teacher_logits_N_V, sampled_ids_N, spec, want_metrics):
        n, vocab = student_logits_N_V.shape
        out = _Outputs(spec, n, vocab, student_logits_N_V.device, want_metrics, sampled_ids_N is not None)
        for rows in _blocks(n, vocab, student_logits_N_V.device, spec.chunk_size):
            zs = _scaled(student_logits_N_V[rows], spec.temperature)
            zt = _scaled(teacher_logits_N_V[rows], spec.temperature)
            y = None if sampled_ids_N is None else sampled_ids_N[rows]
            out.fill(rows, _block_values(spec, zs, zt, y, want_metrics))
        ctx.spec = spec
        ctx.save_for_backward(student_logits_N_V, teacher_logits_N_V, sampled_ids_N, *out.aux)
        ctx.mark_non_differentiable(*out.metrics)
        return (out.values, *out.metrics)

    @staticmethod
    def _backward(ctx, grad_values_N):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        student_logits_N_V, teacher_logits_N_V, sampled_ids_N, *aux_N = ctx.saved_tensors
        spec = ctx.spec
        n, vocab = student_logits_N_V.shape
        grad_N_V = torch.empty_like(student_logits_N_V)
        grad_rows_N = grad_values_N.float() / spec.temperature
        for rows in _blocks(n, vocab, student_logits_N_V.device, spec.chunk_size):
            zs = _scaled(student_logits_N_V[rows], spec.temperature)
            zt = _scaled(teacher_logits_N_V[rows], spec.temperature) if spec.kind == "jsd" else None
            y = None if sampled_ids_N is None else sampled_ids_N[rows]
            args = (spec, zs, zt, y, _rows_of(aux_N, rows), grad_rows_N[rows])
            # float32 input: write straight into the grad; else into zs (our float32 copy), then cast
            if grad_N_V.dtype == torch.float32:
                _block_grad(*args, out=grad_N_V[rows])
            else:
                grad_N_V[rows] = _block_grad(*args, out=zs)
        return grad_N_V, None, None, None, None


def _project(hidden_C_H: Tensor, weight_V_H: Tensor, bias_V: Tensor | None, temperature: float,
             out_C_V: Tensor) -> Tensor:
    """float32 (hidden @ W.T + b) / temperature into a reused buffer. The matmul runs in the
    weight's dtype (as the model's own lm_head would); the logits are float32 from here on."""
    if weight_V_H.dtype == torch.float32:
        torch.matmul(hidden_C_H.float(), weight_V_H.t(), out=out_C_V)
    else:
        out_C_V.copy_(hidden_C_H.to(weight_V_H.dtype) @ weight_V_H.t())
    if bias_V is not None:
        out_C_V.add_(bias_V.float())
    if temperature != 1.0:
        out_C_V.div_(temperature)
    return out_C_V


class ChunkedHiddenDivergence(torch.autograd.Function):
    """(student_hidden [N, H], weight [V, H], bias [V] | None, teacher_hidden [N, H],
    teacher_weight [V, H], teacher_bias [V] | None, sampled_ids [N] | None, spec, want_metrics)
    -> (values [N], *metrics) as `ChunkedLogitsDivergence`. Grads for student_hidden, weight and bias only: the
    teacher's tensors are constants (pass them detached, even when they are the same weight)."""

    @staticmethod
    def forward(ctx, hs_N_H, w_V_H, b_V, ht_N_H, wt_V_H, bt_V, sampled_ids_N, spec, want_metrics):
        with _float32_only(hs_N_H.device):
            return ChunkedHiddenDivergence._forward(ctx, hs_N_H, w_V_H, b_V, ht_N_H, wt_V_H, bt_V, sampled_ids_N,
                                                    spec, want_metrics)

    @staticmethod
    def backward(ctx, grad_values_N, *_grad_metrics):
        with _float32_only(grad_values_N.device):
            return ChunkedHiddenDivergence._backward(ctx, grad_values_N)

    @staticmethod
    def _forward(ctx, hs_N_H, w_V_H, b_V, ht_N_H, wt_V_H, bt_V, sampled_ids_N, spec, want_metrics):
        n, vocab = hs_N_H.shape[0], w_V_H.shape[0]
        device = hs_N_H.device
        out = _Outputs(spec, n, vocab, device, want_metrics, sampled_ids_N is not None)
        c = min(spec.chunk_size, max(n, 1))
        zs_buf = torch.empty(c, vocab, dtype=torch.float32, device=device)
        zt_buf = torch.empty(c, vocab, dtype=torch.float32, device=device)
        for start in range(0, n, c):
            stop = min(start + c, n)
            zs = _project(hs_N_H[start:stop], w_V_H, b_V, spec.temperature, zs_buf[: stop - start])
            zt = _project(ht_N_H[start:stop], wt_V_H, bt_V, spec.temperature, zt_buf[: stop - start])
            for rows in _blocks(stop - start, vocab, device, c):
                glob = slice(start + rows.start, start + rows.stop)
                y = None if sampled_ids_N is None else sampled_ids_N[glob]
                out.fill(glob, _block_values(spec, zs[rows], zt[rows], y, want_metrics))
        ctx.spec = spec
        ctx.save_for_backward(hs_N_H, w_V_H, b_V, ht_N_H, wt_V_H, bt_V, sampled_ids_N, *out.aux)
        ctx.mark_non_differentiable(*out.metrics)
        return (out.values, *out.metrics)

    @staticmethod
    def _backward(ctx, grad_values_N):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        none6 = (None,) * 6
        if not (need_h or need_w or need_b):
            return (None, None, None) + none6
        hs_N_H, w_V_H, b_V, ht_N_H, wt_V_H, bt_V, sampled_ids_N, *aux_N = ctx.saved_tensors
        spec = ctx.spec
        n, vocab = hs_N_H.shape[0], w_V_H.shape[0]
        device = hs_N_H.device
        grad_rows_N = grad_values_N.float() / spec.temperature
        grad_h = torch.empty_like(hs_N_H) if need_h else None
        new = torch.empty if n > 0 else torch.zeros  # grad_w is written by the first chunk's matmul
        grad_w = new(w_V_H.shape, dtype=torch.float32, device=device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=device) if need_b else None
        c = min(spec.chunk_size, max(n, 1))
        zs_buf = torch.empty(c, vocab, dtype=torch.float32, device=device)
        # only "jsd" needs the teacher's logits again; "topk" / "sampled" saved what they need, "ce" needs none
        zt_buf = torch.empty(c, vocab, dtype=torch.float32, device=device) if spec.kind == "jsd" else None
        for start in range(0, n, c):
            stop = min(start + c, n)
            hs_C_H = hs_N_H[start:stop]
            zs = _project(hs_C_H, w_V_H, b_V, spec.temperature, zs_buf[: stop - start])
            zt = None
            if zt_buf is not None:
                zt = _project(ht_N_H[start:stop], wt_V_H, bt_V, spec.temperature, zt_buf[: stop - start])
            gz = zs  # each block's gradient overwrites its own logits, which are not needed after it
            for rows in _blocks(stop - start, vocab, device, c):
                glob = slice(start + rows.start, start + rows.stop)
                y = None if sampled_ids_N is None else sampled_ids_N[glob]
                _block_grad(spec, zs[rows], None if zt is None else zt[rows], y, _rows_of(aux_N, glob),
                            grad_rows_N[glob], out=gz[rows])
            if need_h:
                if w_V_H.dtype == torch.float32 and grad_h.dtype == torch.float32:
                    torch.matmul(gz, w_V_H, out=grad_h[start:stop])
                else:
                    grad_h[start:stop] = gz.to(w_V_H.dtype) @ w_V_H
            if need_w and start == 0:
                torch.matmul(gz.t(), hs_C_H.float(), out=grad_w)
            elif need_w:
                grad_w.addmm_(gz.t(), hs_C_H.float())
            if need_b:
                grad_b += gz.sum(0)
        grad_w = grad_w.to(w_V_H.dtype) if need_w else None
        grad_b = grad_b.to(b_V.dtype) if need_b else None
        return (grad_h, grad_w, grad_b) + none6
