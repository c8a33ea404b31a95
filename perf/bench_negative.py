"""The extra cost of a negative teacher view: full Vision-OPD steps with and without it, side by side in one run.

    python perf/bench_negative.py [--family qwen2_5_vl] [--prompts 4] [--samples 4] [--new-tokens 16] [--repeats 7]

Arms, each `train.vision_opd_step` with shared prompts on (train.share_prompts=true), the same model, records and
seed (so the same sampled responses: the learning rate is 0, the weights never move), JSD 0.5:
  plain   Vision-OPD, no negative view
  mask    views.negative=mask, loss.weighting=none (the negative view scored, only measured)
  opdv    views.negative=mask, loss.weighting=opdv
  cvopd   views.negative=random_crop, loss.weighting=cvopd (one more student-side JSD for d-)
  vzero   views.negative=downsample, loss.weighting=vzero (a no-grad pre-pass over both teacher views)
The arms alternate inside every repeat (the order rotates), after one warm-up step each. Reported: the median step
time, the median teacher time (`sec_teacher`: the teacher's forwards in the main pass) and each step's ratio to
plain's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vision_opd.config import load_config  # noqa: E402
from vision_opd.data.sources import load_train_records  # noqa: E402
from vision_opd.demo.world import write_synthetic  # noqa: E402
from vision_opd.models.loading import load_model  # noqa: E402
from vision_opd.training import loop as T  # noqa: E402

ARMS = {
    "plain": [],
    "mask": ["views.negative=mask"],
    "opdv": ["views.negative=mask", "loss.weighting=opdv"],
    "cvopd": ["views.negative=random_crop", "loss.weighting=cvopd"],
    "vzero": ["views.negative=downsample", "loss.weighting=vzero"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="qwen2_5_vl")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared 2-core machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp())
    write_synthetic(tmp, args.prompts, seed=0, name="train.jsonl")
    base = [f"data.train_file={tmp / 'train.jsonl'}", f"model.name_or_path=tiny:{args.family}",
            f"train.prompts_per_step={args.prompts}", f"rollout.samples_per_prompt={args.samples}",
            f"rollout.max_new_tokens={args.new_tokens}", f"train.micro_batch_size={args.micro_batch}",
            "views.teacher_pixels=12544", "teacher.mode=ema", "train.progress=false", "train.share_prompts=true",
            "optim.lr=0", "optim.warmup_steps=0"]
    cfgs = {name: load_config(None, base + extra) for name, extra in ARMS.items()}
    device = torch.device("cpu")
    model, proc = load_model(cfgs["plain"].model, seed=0, device=device)
    records, _ = load_train_records(cfgs["plain"].data, cfgs["plain"].views)
    teacher = T.Teacher(model, "ema", 0.05)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    ctx = T.StepContext(model, teacher, proc, opt, sched, T.vision_token_ids(model, proc), device)

    def step(name: str) -> dict:
        torch.manual_seed(0)
        return T.vision_opd_step(cfgs[name], ctx, records).metrics

    names = list(ARMS)
    tokens = {name: step(name)["tokens"] for name in names}  # warm-up; the same responses in every arm
    assert len(set(tokens.values())) == 1, f"the arms sampled different responses: {tokens}"
    sec = {name: [] for name in names}
    sec_teacher = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            m = step(name)
            sec[name].append(m["sec_step"])
            sec_teacher[name].append(m["sec_teacher"])
    med = {n: statistics.median(v) for n, v in sec.items()}
    print(f"tiny {args.family}: P={args.prompts} G={args.samples} new_tokens={args.new_tokens} "
          f"micro_batch={args.micro_batch} ({tokens['plain']} response tokens); share_prompts=true; torch threads "
          f"{torch.get_num_threads()}; medians of {args.repeats}, arms alternating")
    print("| arm | step (s) | teacher forwards (s) | step / plain |\n|---|---:|---:|---:|")
    for n in names:
        print(f"| {n} | {med[n]:.4f} | {statistics.median(sec_teacher[n]):.4f} | {med[n] / med['plain']:.3f} |")


if __name__ == "__main__":
    main()
