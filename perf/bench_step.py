"""A full Vision-OPD training step against the sum of its primitives, measured side by side in one run.

    python perf/bench_step.py [--family qwen2_5_vl] [--prompts 4] [--samples 4] [--new-tokens 16] [--repeats 7] [--per-row]

Primitives, each timed alone on the same inputs (same seed, so the same sampled responses):
  views     encode both views of the P prompts (image decode, crop, processor)
  generate  the student's rollout: G samples per prompt with HF generate
  teacher   the teacher's forward on [crop prompt + responses], every micro-batch, no grad
  student   the student's forward + divergence + backward, every micro-batch
            (both as the step scores: each prompt once for its rows, train.share_prompts=true by default)
  optimizer clip + AdamW step + EMA update
The step is `train.vision_opd_step` (which also times its phases itself). Reported: medians over --repeats
(after one warm-up), the sum of primitives, and step / sum (target <= 1.15).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vision_opd.config import load_config  # noqa: E402
from vision_opd.data.sources import load_train_records  # noqa: E402
from vision_opd.demo.world import write_synthetic  # noqa: E402
from vision_opd.losses.divergence import token_divergence_from_hidden  # noqa: E402
from vision_opd.losses.pure import DivergenceSpec, masked_token_mean  # noqa: E402
from vision_opd.models.loading import load_model  # noqa: E402
from vision_opd.models.parts import backbone_and_head  # noqa: E402
from vision_opd.rollout import sample  # noqa: E402
from vision_opd.scoring.forward import score_responses  # noqa: E402
from vision_opd.training import loop as T  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="qwen2_5_vl")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--per-row", action="store_true", help="train.share_prompts=false: every row with its own prompt")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared 2-core machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp())
    write_synthetic(tmp, args.prompts, seed=0, name="train.jsonl")
    cfg = load_config(None, [f"data.train_file={tmp / 'train.jsonl'}", f"model.name_or_path=tiny:{args.family}",
                             f"train.prompts_per_step={args.prompts}", f"rollout.samples_per_prompt={args.samples}",
                             f"rollout.max_new_tokens={args.new_tokens}", f"train.micro_batch_size={args.micro_batch}",
                             "views.teacher_pixels=12544", "teacher.mode=ema", "train.progress=false",
                             f"train.share_prompts={str(not args.per_row).lower()}"])
    device = torch.device("cpu")
    model, proc = load_model(cfg.model, seed=cfg.train.seed, device=device)
    records, _ = load_train_records(cfg.data, cfg.views)
    teacher = T.Teacher(model, "ema", 0.05)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.lr_lambda(cfg))
    suppress = T.vision_token_ids(model, proc)
    spec = DivergenceSpec(kind=cfg.loss.kind, alpha=cfg.loss.alpha, chunk_size=cfg.loss.chunk_size)
    score = partial(score_responses, vision_start_id=model.config.vision_start_token_id, shared=cfg.train.share_prompts)
    mb = cfg.train.micro_batch_size

    def views():
        s = T.encode_views(proc, [T.student_view(r, cfg.views) for r in records])
        t = T.encode_views(proc, [T.teacher_view(r, cfg.views) for r in records])
        return s, t

    s_in, t_in = views()
    torch.manual_seed(0)
    ro = sample(model, proc, s_in, samples_per_prompt=args.samples, max_new_tokens=args.new_tokens, suppress_ids=suppress)
    B = ro.response_ids_B_T.shape[0]
    chunks = []
    for start in range(0, B, mb):
        rows = torch.arange(start, min(B, start + mb))
        mask = ro.response_mask_B_T[rows]
        T_ = max(1, int(mask.sum(-1).max()))
        chunks.append((rows, ro.response_ids_B_T[rows, :T_], mask[:, :T_], ro.prompt_index_B[rows]))
    n_tok = ro.response_mask_B_T.sum()

    def generate():
        torch.manual_seed(0)
        sample(model, proc, s_in, samples_per_prompt=args.samples, max_new_tokens=args.new_tokens, suppress_ids=suppress)

    def teacher_fwd():
        with teacher.scoring() as tm:
            return [score(tm, t_in, p, ids, m) for _, ids, m, p in chunks]

    t_hidden = teacher_fwd()

    def student():
        model.train()
        head = backbone_and_head(model)[1]
        for (_, ids, m, p), th in zip(chunks, t_hidden, strict=True):
            h = score(model, s_in, p, ids, m)
            sel = m.bool()
            per_tok, _ = token_divergence_from_hidden(h[sel], th[sel], head.weight, ids[sel], spec,
                                                      teacher_lm_head_weight=teacher.lm_head_weight())
            masked_token_mean(per_tok, torch.ones_like(per_tok), n_tok).backward()

    def optimizer():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        teacher.update()
        opt.zero_grad(set_to_none=True)

    def step():
        torch.manual_seed(0)
        T.vision_opd_step(cfg, T.StepContext(model, teacher, proc, opt, sched, suppress, device), records)

    def timed(fn):
        fn()  # warm-up
        out = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    def student_and_opt():  # the optimizer needs gradients: time it after a student pass
        student()
        t0 = time.perf_counter()
        optimizer()
        return time.perf_counter() - t0

    prim = {"views": timed(views), "generate": timed(generate), "teacher": timed(teacher_fwd), "student": timed(student)}
    opt.zero_grad(set_to_none=True)
    prim["optimizer"] = statistics.median([student_and_opt() for _ in range(args.repeats)])
    full = timed(step)
    total = sum(prim.values())
    print(f"tiny {args.family}: P={args.prompts} G={args.samples} new_tokens={args.new_tokens} micro_batch={mb} "
          f"({B} trajectories, {int(n_tok)} response tokens); share_prompts={cfg.train.share_prompts}; torch threads {torch.get_num_threads()}; medians of {args.repeats}")
    print("| part | seconds |\n|---|---:|")
    for k, v in prim.items():
        print(f"| {k} | {v:.4f} |")
    print(f"| **sum of primitives** | **{total:.4f}** |")
    print(f"| **full step** | **{full:.4f}** |")
    print(f"\nstep / sum of primitives = {full / total:.3f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
