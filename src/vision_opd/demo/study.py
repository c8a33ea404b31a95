"""`vision-opd demo --study`: Vision-OPD against the controls that rule out the easy explanations, over seeds.

    vision-opd demo --study                                  # every arm, 3 seeds (prints its expected time)
    vision-opd demo --study --arms opd,continue --seeds 3    # a subset
    vision-opd demo --study --split val                      # design choices are made on val, never test

Arms (all from the same pre-trained checkpoint, same steps and items per step, demo/arms.py):
  opd            label-free Vision-OPD (JSD 0.5, frozen crop teacher, the student's own samples): the demo
  continue       (a)  pre-training simply continued (labelled crops + easy full images)
  seqkd          (b)  sequence-level KD: the frozen teacher's greedy crop answers, cross-entropy on their tokens
                      (rollout.source=teacher, loss.kind=ce; 32 prompts x 1 answer per step, unreadable ones left out)
  offpolicy-jsd, offpolicy-fkl    (b2) off-policy soft targets: JSD 0.5 / forward KL along the teacher's sampled answers
  gkd-mix        (b3) GKD: per prompt the student's samples or the teacher's, half and half (JSD 0.5)
  supervised     (c)  hard full images WITH labels: the upper bound
  opd+continue   (c2) Vision-OPD and continued pre-training, one step of each per step
  opd-ema, opd-live               (d) teacher weights (frozen is `opd`)
  opd-rkl, opd-fkl, opd-topk, opd-sampled   (e) divergences (JSD 0.5 is `opd`)
  opd-text, opd-blur, opd-mask, opd-full    (f) is it the crop? the teacher reads no image, the full image blurred
                                  or half masked, or the full image itself (views.teacher_source)
  opd-multiview                   (g) the teacher reads the crop and the full image in one prompt
  opd-opdv-mask, opd-opdv-crop    (h) negative teacher views (docs/method.md section 8): OPD-V token weights against
                                  a masked crop / a same-size crop elsewhere; opd-cvopd: CV-OPD's gated margin against
  opd-cvopd, opd-vzero            a crop elsewhere; opd-vzero: V-Zero's sequence weights against the crop downsampled
  opd-vzero-jsd                   2x on the sampled-token loss (V-Zero's pairing; compare opd-sampled), opd-vzero-jsd on
                                  JSD 0.5 (the others: JSD 0.5 and the frozen teacher of `opd`: only the weighting differs)
  opd-confidence, opd-attention, opd-rarity   no boxes at all: the teacher's crop is the model's own proposal
                                  (proposers/, computed once by the initial model and cached in --out)
Every label-free arm is `train.vision_opd_step` with the arm's config (demo/arms.py).
Writes study.json (every run, with per-question-type accuracies) and study.md (mean +- std over seeds) into --out;
with --dump-tokens-every N also --out/tokens/ARM_sSEED/tokens.jsonl (`vision-opd inspect` reads them).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from .run import ASSET_MODEL, DemoData, easy_share_of, prepare_data, world_of
from .arms import ArmConfig, run_arm
from .pretrain import DEMO_VIEWS, evaluate_views, load_demo_model

STUDY_ARMS = {
    "opd": dict(arm="opd"),
    "continue": dict(arm="continue"),
    "seqkd": dict(arm="opd", source="teacher", loss="ce", teacher_greedy=True, drop_unanswered=True, prompts=32, samples=1),
    "offpolicy-jsd": dict(arm="opd", source="teacher"),
    "offpolicy-fkl": dict(arm="opd", source="teacher", loss="fkl"),
    "gkd-mix": dict(arm="opd", source="mix", student_fraction=0.5),
    "supervised": dict(arm="supervised"),
    "opd+continue": dict(arm="opd+continue"),
    "opd-ema": dict(arm="opd", teacher="ema"),
    "opd-live": dict(arm="opd", teacher="live"),
    "opd-rkl": dict(arm="opd", loss="rkl"),
    "opd-fkl": dict(arm="opd", loss="fkl"),
    "opd-topk": dict(arm="opd", loss="topk"),
    "opd-sampled": dict(arm="opd", loss="sampled"),
    "opd-text": dict(arm="opd", teacher_source="none"),
    "opd-blur": dict(arm="opd", teacher_source="blur"),
    "opd-mask": dict(arm="opd", teacher_source="mask"),
    "opd-full": dict(arm="opd", teacher_source="full"),
    "opd-multiview": dict(arm="opd", teacher_images=("crop", "full")),
    "opd-opdv-mask": dict(arm="opd", negative="mask", weighting="opdv"),
    "opd-opdv-crop": dict(arm="opd", negative="random_crop", weighting="opdv"),
    "opd-cvopd": dict(arm="opd", negative="random_crop", weighting="cvopd"),
    "opd-vzero": dict(arm="opd", negative="downsample", weighting="vzero", loss="sampled"),
    "opd-vzero-jsd": dict(arm="opd", negative="downsample", weighting="vzero"),
    "opd-confidence": dict(arm="opd", crop_source="confidence"),
    "opd-attention": dict(arm="opd", crop_source="attention"),
    "opd-rarity": dict(arm="opd", crop_source="rarity"),
}
DEFAULT_ARMS = list(STUDY_ARMS)
# seconds per training step on 2 busy shared cores (docs/demo.md M7, M8; unloaded about half), for the estimate
SECONDS_PER_STEP = {"opd": 1.0, "continue": 0.7, "supervised": 0.7, "opd+continue": 1.7}
SECONDS_PER_EVAL = 15.0  # per 300 held-out items (both views)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def study(out: str | Path = "runs/demo_study", *, seeds: int = 3, steps: int = 150, eval_every: int = 50,
          model_dir: str | Path | None = None, sizes: DemoData = DemoData(), arms: str | None = None,
          split: str = "test", progress: bool = True, dump_tokens_every: int = 0) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = arms.split(",") if arms else list(DEFAULT_ARMS)
    bad = [n for n in names if n not in STUDY_ARMS]
    assert not bad, f"unknown study arms {bad}; choose from {list(STUDY_ARMS)}"
    model_dir = Path(model_dir or ASSET_MODEL)
    n_evals = steps // eval_every + 1
    est = sum(seeds * (steps * SECONDS_PER_STEP[STUDY_ARMS[n]["arm"]] + n_evals * SECONDS_PER_EVAL * sizes.n_eval / 300) for n in names)
    print(f"[study] {len(names)} arms x {seeds} seeds x {steps} steps: expected about {est / 60:.0f} min on 2 CPU cores")
    world = world_of(model_dir)
    opd, held = prepare_data(out, world, sizes.n_opd, sizes.n_eval, eval_split_name=split)
    model, processor = load_demo_model(model_dir)
    before = evaluate_views(model, processor, held, DEMO_VIEWS, max_new_tokens=world.max_new_tokens)
    print(f"[study] before ({split}): full {before['full']:.3f} crop {before['crop']:.3f}")
    results_path = out / "study.json"
    runs = json.loads(results_path.read_text())["runs"] if results_path.exists() else []
    done = {(r["name"], r["seed"], r["steps"], r["split"], r.get("n_eval")) for r in runs}
    t0 = time.perf_counter()
    for name in names:
        for seed in range(seeds):
            if (name, seed, steps, split, len(held)) in done:
                continue
            cfg = ArmConfig(seed=seed, steps=steps, eval_every=eval_every, world=world, easy_share=easy_share_of(model_dir),
                            **STUDY_ARMS[name])
            r = run_arm(cfg, model_dir, opd, held, views=DEMO_VIEWS, progress=progress, eval_first=before,
                        proposal_cache=out / f"proposals_{cfg.crop_source}.jsonl",
                        tokens_dir=out / "tokens" / f"{name}_s{seed}", dump_every=dump_tokens_every)
            row = {"name": name, "seed": seed, "steps": steps, "split": split, "full_before": before["full"],
                   "crop_before": before["crop"], "full_after": r["after"]["full"], "crop_after": r["after"]["crop"],
                   "per_type_before": {"full": before["full_per_category"], "crop": before["crop_per_category"]},
                   "per_type_after": {"full": r["after"]["full_per_category"], "crop": r["after"]["crop_per_category"]},
                   "proposals": r["proposals"], "n_eval": len(held),
                   "curve": r["curve"], "train_seconds": r["train_seconds"], "seconds": r["seconds"]}
            runs.append(row)
            print(f"[study] {name} seed {seed}: full {row['full_before']:.3f} -> {row['full_after']:.3f}, "
                  f"crop {row['crop_before']:.3f} -> {row['crop_after']:.3f} ({r['seconds']:.0f} s)")
            results_path.write_text(json.dumps({"runs": runs}, indent=1))
    table = study_table([r for r in runs if r["steps"] == steps and r["split"] == split and r.get("n_eval") == len(held)], names)
    print(table)
    (out / "study.md").write_text(f"# Vision-OPD demo study ({split} split, {len(held)} items, {steps} steps, {seeds} seeds)\n\n"
                                  f"before: full {before['full']:.3f}, crop {before['crop']:.3f}\n\n{table}\n")
    print(f"[study] {time.perf_counter() - t0:.0f} s; wrote {results_path} and {out / 'study.md'}")
    return {"runs": runs, "table": table}


def study_table(runs: list[dict], names: list[str]) -> str:
    lines = ["| arm | seeds | full after | crop after | full gain | crop change | share of gap closed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        rs = [r for r in runs if r["name"] == name]
        if not rs:
            continue
        full, crop = _mean_std([r["full_after"] for r in rs]), _mean_std([r["crop_after"] for r in rs])
        gain = _mean_std([r["full_after"] - r["full_before"] for r in rs])
        dcrop = _mean_std([r["crop_after"] - r["crop_before"] for r in rs])
        closed = _mean_std([(r["full_after"] - r["full_before"]) / max(1e-9, r["crop_before"] - r["full_before"]) for r in rs])
        lines.append(f"| {name} | {len(rs)} | {full[0]:.3f} +- {full[1]:.3f} | {crop[0]:.3f} +- {crop[1]:.3f} | "
                     f"{gain[0]:+.3f} +- {gain[1]:.3f} | {dcrop[0]:+.3f} +- {dcrop[1]:.3f} | {closed[0]:.2f} +- {closed[1]:.2f} |")
    return "\n".join(lines)

