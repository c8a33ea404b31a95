"""Divergence memory and time: chunked vs plain, side by side in one run (CPU).

What it measures, for V = 151936 (Qwen vocabulary), H = 2048, and each --tokens N:
  (a) logits path: public `generalized_jsd` (chunked, backward recomputation) vs
      `generalized_jsd_plain` (plain autograd), on materialised float32 logits [N, V];
  (b) hidden path: `token_divergence_from_hidden` fused (logits computed chunk by chunk in forward
      and again in backward) vs the same call with chunk_size=None (plain: hidden @ W.T for both
      views, then the plain loss).
Each: forward + backward of sum(values), JSD alpha = 0.5 by default.

How memory is measured: every case runs in a fresh subprocess. After its inputs are allocated
(and a tiny warm-up call has loaded the kernels) the child reads its current RSS from
/proc/self/statm (the baseline); after forward + backward it reads its peak RSS,
resource.getrusage(RUSAGE_SELF).ru_maxrss. "Peak extra" = peak - baseline - bytes of the
gradients of the inputs (the grad of the logits, resp. of hidden and lm_head weight), i.e. the
memory the loss itself needs beyond its inputs and their grads. Before a case starts, the parent
predicts its footprint (inputs + grads + the peak extra of the largest smaller run of the same
case, scaled linearly in tokens plus 5%; without one, 12 [N, V] float32 tensors for plain) and
skips it, saying so in the table, if it would not fit in MemAvailable minus a 4 GB margin (the
machine is shared); each child also runs under RLIMIT_AS, so it fails with an error, not the
OOM killer. Time is wall-clock (and the child's CPU time, time.process_time(), which other users
of the machine inflate less) of one forward + backward, with torch.set_num_threads(--threads);
with --repeats R the pair is run R times in alternating order and the fastest run is kept.
A plain case that does not fit is reported as such, and the ratios in its row then use the
plain numbers of the largest size that fitted, scaled linearly in tokens (marked "~").

Run (docs/performance.md lists the exact command of each of its tables):
    python perf/bench_divergence.py --tokens 1024 2048 4096 --repeats 2
Options: --chunk-size N (default: vision_opd.losses.pure.DEFAULT_CHUNK_SIZE), --sweep 64 128 256 512
(time the fused and chunked paths at several chunk sizes, no plain), --repeats, --alpha, --threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GB = 1 << 30


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def run_case(case: str, tokens: int, vocab: int, hidden: int, chunk_size: int, alpha: float, threads: int) -> dict:
    """Runs inside the child process; returns the measurement as a dict."""
    import torch

    from vision_opd.losses.divergence import generalized_jsd, token_divergence_from_hidden
    from vision_opd.losses.pure import DivergenceSpec, generalized_jsd_plain

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    path, mode = case.split("-")  # logits|hidden - plain|chunked

    if path == "logits":
        def make(n):
            # logits with a realistic spread (std 3), teacher a perturbed student
            zs = (3 * torch.randn(n, vocab)).requires_grad_(True)
            zt = zs.detach() + torch.randn(n, vocab)
            return (zs, zt), [zs]

        def step(inputs):
            zs, zt = inputs
            if mode == "plain":
                values = generalized_jsd_plain(zs, zt, alpha)
            else:
                values = generalized_jsd(zs, zt, alpha, chunk_size=chunk_size)
            values.sum().backward()
    else:
        def make(n):
            w = (torch.randn(vocab, hidden) / hidden**0.5).requires_grad_(True)
            hs = (3 * torch.randn(n, hidden)).requires_grad_(True)
            ht = hs.detach() + torch.randn(n, hidden)
            return (hs, ht, w), [hs, w]

        def step(inputs):
            hs, ht, w = inputs
            spec = DivergenceSpec("jsd", alpha=alpha, chunk_size=None if mode == "plain" else chunk_size)
            values, _metrics = token_divergence_from_hidden(hs, ht, w, None, spec)
            values.sum().backward()

    small, _ = make(4)
    step(small)  # warm-up: load kernels, lazy init
    del small
    inputs, leaves = make(tokens)
    base = _rss_bytes()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0, c0 = time.perf_counter(), time.process_time()
    step(inputs)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    grad_bytes = sum(leaf.grad.numel() * leaf.grad.element_size() for leaf in leaves)
    return {"case": case, "tokens": tokens, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "extra_bytes": peak - base - grad_bytes,
            "input_bytes": sum(t.numel() * t.element_size() for t in inputs), "grad_bytes": grad_bytes,
            "warning": "peak before the step exceeded the baseline" if peak_before > base + 64 * 2**20 else ""}


def spawn(case: str, tokens: int, args, limit_bytes: int) -> dict:
    cmd = [sys.executable, __file__, "--_case", case, "--tokens", str(tokens), "--vocab", str(args.vocab),
           "--hidden", str(args.hidden), "--chunk-size", str(args.chunk_size), "--alpha", str(args.alpha),
           "--threads", str(args.threads), "--_limit", str(limit_bytes)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"case": case, "tokens": tokens, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _estimate(case: str, tokens: int, args, measured: dict) -> int:
    """Predicted RSS of a case: inputs + grads + extra (scaled from a smaller measured run)."""
    v, h = args.vocab, args.hidden
    inputs = 2 * tokens * v * 4 if case.startswith("logits") else (2 * tokens * h + v * h) * 4
    grads = tokens * v * 4 if case.startswith("logits") else (tokens * h + v * h) * 4
    smaller = [r for r in measured.get(case, []) if "extra_bytes" in r]
    if smaller:
        r = max(smaller, key=lambda r: r["tokens"])
        extra = 1.05 * r["extra_bytes"] * tokens / r["tokens"]
    else:
        extra = (12 if case.endswith("plain") else 1) * tokens * v * 4
    return int(inputs + grads + extra + 0.5 * GB)


def _fmt_gb(x: float | None) -> str:
    return "-" if x is None else f"{x / GB:.2f}"


def main() -> None:
    from vision_opd.losses.pure import DEFAULT_CHUNK_SIZE

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="alternate plain/chunked this often, keep the fastest")
    p.add_argument("--sweep", type=int, nargs="*", default=None, help="chunk sizes to time (chunked paths only)")
    p.add_argument("--_case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_limit", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args._case:  # child
        if args._limit:
            resource.setrlimit(resource.RLIMIT_AS, (args._limit, args._limit))
        print(json.dumps(run_case(args._case, args.tokens[0], args.vocab, args.hidden, args.chunk_size,
                                  args.alpha, args.threads)))
        return

    print(f"V={args.vocab} H={args.hidden} alpha={args.alpha} threads={args.threads} "
          f"chunk_size={args.chunk_size if args.sweep is None else args.sweep}", flush=True)
    if args.sweep is not None:
        print("| path | tokens | chunk | peak extra GB | seconds |\n|---|---:|---:|---:|---:|")
        for tokens in sorted(args.tokens):
            for cs in args.sweep:
                args.chunk_size = cs
                for case in ("logits-chunked", "hidden-chunked"):
                    r = spawn(case, tokens, args, _mem_available() + 8 * GB)
                    if "error" in r:
                        print(f"| {case} | {tokens} | {cs} | error: {r['error']} | |", flush=True)
                    else:
                        print(f"| {case} | {tokens} | {cs} | {_fmt_gb(r['extra_bytes'])} | {r['seconds']:.2f} |",
                              flush=True)
        return

    measured: dict[str, list[dict]] = {}
    rows = []
    for tokens in sorted(args.tokens):
        for path in ("logits", "hidden"):
            pair = {}
            for rep in range(args.repeats):
                for mode in ("chunked", "plain") if rep % 2 == 0 else ("plain", "chunked"):
                    case = f"{path}-{mode}"
                    need = _estimate(case, tokens, args, measured)
                    avail = _mem_available() - 4 * GB
                    if need > avail:
                        r = {"case": case, "tokens": tokens,
                             "error": f"does not fit: needs ~{need / GB:.0f} GB, {avail / GB:.0f} GB free"}
                    else:
                        # address-space cap: what is available plus ~3 GB of mappings of the interpreter
                        r = spawn(case, tokens, args, avail + 3 * GB)
                    r["load"] = os.getloadavg()[0]
                    measured.setdefault(case, []).append(r)
                    if "error" not in r and "error" not in pair.get(mode, {}):
                        best = pair.get(mode)
                        pair[mode] = r if best is None or r["seconds"] < best["seconds"] else best
                    elif mode not in pair:
                        pair[mode] = r
                    status = r.get("error") or (f"{r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s cpu, "
                                                f"{_fmt_gb(r['extra_bytes'])} GB extra")
                    print(f"  {case} N={tokens}: {status} (load {r['load']:.1f})", flush=True)
            rows.append((path, tokens, pair))

    print("\n| path | tokens | plain peak extra GB | chunked peak extra GB | plain / chunked memory "
          "| plain s (wall / cpu) | chunked s (wall / cpu) | chunked / plain time (wall / cpu) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for path, tokens, pair in rows:
        pl, ch = dict(pair["plain"]), pair["chunked"]
        name = "logits: generalized_jsd" if path == "logits" else "hidden: token_divergence_from_hidden"
        note = ""
        if "error" in pl:  # estimate linearly from the largest plain run that fitted, marked as such
            done = [r for r in measured[f"{path}-plain"] if "error" not in r and r["tokens"] < tokens]
            if done:
                ref = max(done, key=lambda r: (r["tokens"], -r["seconds"]))
                f = tokens / ref["tokens"]
                pl.update(seconds=f * ref["seconds"], cpu_seconds=f * ref["cpu_seconds"],
                          extra_bytes=f * ref["extra_bytes"])
                note = f" ({pl.pop('error')}; plain numbers = {f:g} x those at {ref['tokens']} tokens)"
        if "error" in pl or "error" in ch:
            err = pl.get("error") or ch.get("error")
            print(f"| {name} | {tokens} | {err} | {_fmt_gb(ch.get('extra_bytes'))} | - | - | - | - |")
            continue
        est = "~" if note else ""
        print(f"| {name}{note} | {tokens} | {est}{_fmt_gb(pl['extra_bytes'])} | {_fmt_gb(ch['extra_bytes'])} "
              f"| {est}{pl['extra_bytes'] / ch['extra_bytes']:.0f}x "
              f"| {est}{pl['seconds']:.1f} / {est}{pl['cpu_seconds']:.1f} "
              f"| {ch['seconds']:.1f} / {ch['cpu_seconds']:.1f} "
              f"| {est}{ch['seconds'] / pl['seconds']:.2f} / {est}{ch['cpu_seconds'] / pl['cpu_seconds']:.2f} |")

if __name__ == "__main__":
    main()
