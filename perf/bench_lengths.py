"""Steps on responses of real, varied lengths: vision-opd (micro-batches by row count vs by a token budget, shared
prompts, HF engine) and TRL's DistillationTrainer on the same work, side by side in one run, sides alternating.

    python perf/bench_lengths.py --trl-python .venv-trl/bin/python           # the tables in docs/performance.md
    python perf/bench_lengths.py --settings small --steps 2 --no-trl          # vision-opd only, quick

Lengths: a tiny random-weight model never stops by itself, so every side decodes under one extra logits processor
that forces EOS at a drawn length per response (`ForcedLengths`; vision-opd's HF engine takes it as an extra
processor, TRL's `generate` through a wrapper): log-normal, median 48 tokens,
sigma 1, clipped to 8..512 (long-tailed: most answers a few dozen tokens, a few hundreds). Step k of every case
draws the same lengths (seed k) for its B = P x G rows, prompt-major, so both sides score the same lengths of
responses to the same prompts; generation still runs until the step's longest response ends (as real batched
generation does). The memory step (one more, after the timed ones) has one response forced to 512 tokens.

Cases (each in a fresh process, so peak RSS is its own; in each round the cases alternate):
  rows     vision-opd, train.micro_batch_size = G rows (one prompt group), shared prompts, HF engine
  budget   vision-opd, train.micro_batch_tokens = --budget positions, shared prompts, HF engine
  budget-generate  the budget case with rollout.hf_decoder=generate (transformers' generate instead of compact
           decoding: one prefill per prompt copy, every row decoded until the step's longest ends)
  trl      TRL DistillationTrainer: per_device_train_batch_size = G rows, gradient_accumulation_steps = P, beta 0.5
           (JSD), temperature 1, its teacher a frozen copy of the student reading the same (full-image) prompt
Both: tiny Qwen2.5-VL, fp32, AdamW, 1 torch thread, the same prompts (synthetic records) and images. vision-opd's
teacher (frozen) reads its crop view, as Vision-OPD does; TRL's reads the student's prompt. vLLM: not here (the
CPU vLLM environment is separate; `make setup-vllm`).
Columns: step s = the median of --steps steps after a warm-up (generation included); padding = the share of
the student's scored positions that are padding (prompts + responses; responses only in brackets); max mb
positions = the largest micro-batch's language-model positions; saved MB = the most autograd held for one
micro-batch's backward (weights excluded; the memory step); peak RSS = the process's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SETTINGS = {  # image side (pixel budget), prompts P, samples G
    "small": dict(image=112, prompts=4, samples=4),
    "prompt": dict(image=336, prompts=2, samples=8),
}
CAP = 512


def draw_lengths(step: int, B: int, memory_step: bool) -> list[int]:
    """The response lengths of step `step`: log-normal (median 48, sigma 1) clipped to 8..CAP; the memory step
    has its first response at CAP."""
    rng = np.random.default_rng(1000 + step)
    out = np.clip(np.round(np.exp(rng.normal(np.log(48), 1.0, B))), 8, CAP).astype(int).tolist()
    if memory_step:
        out[0] = CAP
    return out


class ForcedLengths:
    """A logits processor: row b ends after exactly lengths[b] tokens, EOS included (every end-of-sequence id is
    impossible before, only the first is possible there). Put first, so the rest (temperature, the log-prob
    recorder) see it."""

    def __init__(self, lengths: list[int], eos_ids: list[int]):
        self.lengths, self.eos_ids, self.start = torch.tensor(lengths), eos_ids, None

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = input_ids.shape[1]
        stop = self.lengths == input_ids.shape[1] - self.start + 1
        scores[:, self.eos_ids] = float("-inf")
        if stop.any():
            scores[stop] = float("-inf")
            scores[stop, self.eos_ids[0]] = 0.0
        return scores


def end_ids(model, proc) -> list[int]:
    """The model's EOS ids, then the tokenizer's (TRL stops at both)."""
    from vision_opd.rollout import eos_ids_of


    ids = eos_ids_of(model, proc)
    return ids + [i for i in [proc.tokenizer.eos_token_id, proc.tokenizer.pad_token_id] if i is not None and i not in ids]


def force_lengths(model, lengths_of_call, eos_ids: list[int]) -> None:
    """Every `model.generate` call gets a ForcedLengths for the next step's lengths (`lengths_of_call()`)."""
    from transformers import LogitsProcessorList

    real = model.generate

    def generate(*args, **kwargs):
        kwargs["logits_processor"] = LogitsProcessorList([ForcedLengths(lengths_of_call(), eos_ids),
                                                          *(kwargs.get("logits_processor") or [])])
        return real(*args, **kwargs)

    model.generate = generate


class SavedBytes:
    """The most bytes autograd saved for one backward (storage counted once, parameters excluded), while on."""

    def __init__(self, params):
        self.params, self.on, self.now, self.seen, self.peak = {p.untyped_storage().data_ptr() for p in params}, False, 0, set(), 0
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        real = torch.autograd.backward

        def backward(*args, **kwargs):  # one micro-batch's backward: close its count
            self.peak, self.now, self.seen = max(self.peak, self.now), 0, set()
            return real(*args, **kwargs)

        torch.autograd.backward = backward

    def pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.params and ptr not in self.seen:
            self.seen.add(ptr)
            self.now += t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        self.hooks.__enter__()

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


def records_for(n: int):
    from vision_opd.data.validate import read_records
    from vision_opd.demo.world import write_synthetic

    tmp = Path(tempfile.mkdtemp())
    write_synthetic(tmp, n, seed=0, name="train.jsonl")
    return tmp / "train.jsonl", read_records(tmp / "train.jsonl")


def run_vision_opd(setting: str, case: str, steps: int, budget: int) -> dict:
    from vision_opd.config import load_config
    from vision_opd.models.loading import load_model
    from vision_opd.training import batching
    from vision_opd.training import loop as T
    from vision_opd.training import step as S

    s = SETTINGS[setting]
    P, G = s["prompts"], s["samples"]
    path, records = records_for(P * (steps + 2))
    cfg = load_config(None, [f"data.train_file={path}", "model.name_or_path=tiny:qwen2_5_vl",
                             f"model.tiny_image_size={s['image']}", f"views.teacher_pixels={s['image'] ** 2}",
                             f"train.prompts_per_step={P}", f"rollout.samples_per_prompt={G}", f"rollout.max_new_tokens={CAP}",
                             f"train.micro_batch_size={G}", f"train.micro_batch_tokens={budget if case.startswith('budget') else 0}",
                             f"rollout.hf_decoder={'generate' if case.endswith('generate') else 'compact'}",
                             "teacher.mode=frozen", "loss.kind=jsd", "loss.alpha=0.5", "optim.lr=1e-5", "train.progress=false"])
    T.seed_everything(0)
    model, proc = load_model(cfg.model, seed=0, device=torch.device("cpu"))
    teacher = T.Teacher(model, "frozen", cfg.teacher.ema_rate)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.lr_lambda(cfg))
    suppress = T.vision_token_ids(model, proc)
    calls, eos = iter(range(steps + 2)), end_ids(model, proc)
    from vision_opd.rollout import HFEngine, decoding_of

    engine = HFEngine(proc, decoding_of(cfg.rollout, suppress), decoder=cfg.rollout.hf_decoder,  # lengths forced
                      extra_processors=lambda: [ForcedLengths(draw_lengths(k := next(calls), P * G, k == steps + 1), eos)])
    largest = []
    real_plan = S.step_plan

    def plan(*args):  # the step's plan, and its largest micro-batch in positions
        p = real_plan(*args)
        lengths, prompts = p.lengths_B.tolist(), p.prompt_index_B.tolist()
        largest.append(max(batching.micro_batch_cost(mb.tolist(), lengths, prompts, p.prompt_lengths_P.tolist(), p.share)
                           for mb in p.rows))
        return p

    S.step_plan = plan
    saved = SavedBytes(model.parameters())
    rows = []
    for k in range(steps + 2):
        ctx = T.StepContext(model, teacher, proc, opt, sched, suppress, torch.device("cpu"), engine)
        if k == steps + 1:
            with saved:
                T.vision_opd_step(cfg, ctx, records[k * P:(k + 1) * P])
            continue
        t0 = time.perf_counter()
        m = T.vision_opd_step(cfg, ctx, records[k * P:(k + 1) * P]).metrics
        m["wall"] = time.perf_counter() - t0
        rows.append(m)
    timed = rows[1:]
    return {"setting": setting, "case": case, "step_s": statistics.median(m["wall"] for m in timed),
            "rollout_s": statistics.median(m["sec_rollout"] for m in timed),
            "padding": statistics.mean(m["padding_share"] for m in timed),
            "response_padding": statistics.mean(m["response_padding_share"] for m in timed),
            "micro_batches": statistics.mean(m["micro_batches"] for m in timed),
            "max_mb_positions": largest[-1], "saved_mb": saved.peak / 2**20,
            "tokens": statistics.mean(m["tokens"] for m in timed), "peak_rss_mb": _rss_mb()}


def run_trl(setting: str, steps: int) -> dict:
    warnings.filterwarnings("ignore")
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    from vision_opd.data.views import student_view
    from vision_opd.models.tiny import build_tiny

    s = SETTINGS[setting]
    P, G = s["prompts"], s["samples"]
    _, records = records_for(P * (steps + 2))
    torch.manual_seed(0)
    model, proc = build_tiny("qwen2_5_vl", seed=0, image_size=s["image"])
    teacher, _ = build_tiny("qwen2_5_vl", seed=0, image_size=s["image"])
    rows = []
    for r in records:  # prompt-major: each prompt G times, in order (shuffle_dataset=False)
        v = student_view(r)
        rows += [{"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": v.text}]}],
                  "image": v.images[0]}] * G
    calls = iter(range(steps + 2))
    force_lengths(model, lambda: draw_lengths(k := next(calls), P * G, k == steps + 1), end_ids(model, proc))
    saved = SavedBytes(model.parameters())
    times, counts = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            counts.append({"pos": 0, "real": 0, "resp_pos": 0, "resp_real": 0, "mb": 0, "max": 0})
            if state.global_step == steps + 1:
                saved.__enter__()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)
            if state.global_step == steps + 2:
                saved.__exit__(None, None, None)

    args = DistillationConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=G, gradient_accumulation_steps=P,
                              max_steps=steps + 2, learning_rate=1e-5, max_completion_length=CAP, beta=0.5, temperature=1.0,
                              use_cpu=True, report_to=[], logging_steps=10_000, save_strategy="no", shuffle_dataset=False,
                              dataloader_num_workers=0, bf16=False, disable_dropout=True, max_grad_norm=1.0,
                              disable_tqdm=True, gradient_checkpointing=False)
    trainer = DistillationTrainer(model=model, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(rows),
                                  processing_class=proc, callbacks=[Clock()])
    real_loss = trainer._compute_loss

    def compute_loss(student, inputs, n):  # count the micro-batch's positions as TRL pads them
        c = counts[-1]
        pos = inputs["prompt_ids"].numel() + inputs["completion_ids"].numel()
        c["pos"] += pos
        c["real"] += int(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
        c["resp_pos"] += inputs["completion_ids"].numel()
        c["resp_real"] += int(inputs["completion_mask"].sum())
        c["mb"] += 1
        c["max"] = max(c["max"], pos)
        return real_loss(student, inputs, n)

    trainer._compute_loss = compute_loss
    real_generate = trainer._generate

    def generate(prompts):  # TRL's rollout: tokenize, generate (timed as vision-opd's sec_rollout is)
        t0 = time.perf_counter()
        try:
            return real_generate(prompts)
        finally:
            counts[-1]["rollout"] = time.perf_counter() - t0

    trainer._generate = generate
    trainer.train()
    timed, tc = times[1:steps + 1], counts[1:steps + 1]
    return {"setting": setting, "case": "trl", "step_s": statistics.median(timed),
            "rollout_s": statistics.median(c["rollout"] for c in tc),
            "padding": statistics.mean(1 - c["real"] / c["pos"] for c in tc),
            "response_padding": statistics.mean(1 - c["resp_real"] / c["resp_pos"] for c in tc),
            "micro_batches": statistics.mean(c["mb"] for c in tc), "max_mb_positions": counts[-1]["max"],
            "saved_mb": saved.peak / 2**20, "tokens": statistics.mean(c["resp_real"] for c in tc), "peak_rss_mb": _rss_mb()}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=sorted(SETTINGS), choices=sorted(SETTINGS))
    ap.add_argument("--steps", type=int, default=3, help="timed steps per case (after one warm-up step)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of all cases (alternating)")
    ap.add_argument("--budget", type=int, default=2048, help="train.micro_batch_tokens of the budget case")
    ap.add_argument("--trl-python", default=None, help="a python with trl installed (default: this one)")
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--json", default=None, help="also write every case's result here")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case, JSON out
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.case:
        setting, case = args.case.split(",")
        out = run_trl(setting, args.steps) if case == "trl" else run_vision_opd(setting, case, args.steps, args.budget)
        print("CASE " + json.dumps(out))
        return
    cases = ["rows", "budget", "budget-generate"] + ([] if args.no_trl else ["trl"])
    results, loads = [], []
    for setting in args.settings:
        for r in range(args.rounds):
            for case in cases if r % 2 == 0 else cases[::-1]:
                python = args.trl_python if case == "trl" and args.trl_python else sys.executable
                cmd = [python, __file__, "--case", f"{setting},{case}", "--steps", str(args.steps), "--budget", str(args.budget)]
                env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", TRL_EXPERIMENTAL_SILENCE="1")
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    sys.exit(f"case {setting},{case} failed:\n{done.stderr[-3000:]}")
                results.append(json.loads(next(x for x in done.stdout.splitlines() if x.startswith("CASE "))[5:]))
                loads.append(os.getloadavg()[0])
                print(f"done {setting} {case} (load average {loads[-1]:.1f})", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"tiny Qwen2.5-VL, fp32, 1 torch thread; lengths log-normal (median 48) in 8..{CAP}; budget {args.budget} "
          f"positions; medians of {args.steps} steps x {args.rounds} round(s); load average {min(loads):.1f}-{max(loads):.1f}")
    print("| setting | case | step s | vs TRL | rollout s | step - rollout s | vs TRL | padding (responses) | micro-batches "
          "| max mb positions | saved MB (memory step) | peak RSS MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for setting in args.settings:
        by_case: dict[str, list[dict]] = {}
        for x in results:
            if x["setting"] == setting:
                by_case.setdefault(x["case"], []).append(x)
        trl = statistics.median(x["step_s"] for x in by_case["trl"]) if "trl" in by_case else None
        trl_rest = statistics.median(x["step_s"] - x["rollout_s"] for x in by_case["trl"]) if "trl" in by_case else None
        for case, xs in by_case.items():
            med = lambda key: statistics.median(x[key] for x in xs)  # noqa: E731
            s = SETTINGS[setting]
            ratio = f"{med('step_s') / trl:.2f}x" if trl else "-"
            rest = statistics.median(x["step_s"] - x["rollout_s"] for x in xs)
            rest_ratio = f"{rest / trl_rest:.2f}x" if trl_rest else "-"
            print(f"| {setting} ({s['image']} px, P={s['prompts']} x G={s['samples']}) | {case} | {med('step_s'):.2f} | "
                  f"{ratio} | {med('rollout_s'):.2f} | {rest:.2f} | {rest_ratio} | {med('padding'):.1%} ({med('response_padding'):.1%}) | {med('micro_batches'):.1f} | "
                  f"{med('max_mb_positions'):.0f} | {med('saved_mb'):.1f} | {med('peak_rss_mb'):.0f} |")


if __name__ == "__main__":
    main()
