"""Plant one small bug at a time in a copy of src/ and run the tests that must catch it: caught or missed.

Each mutant is one textual change (`old` -> `new`, which must occur exactly once in its file) that breaks what a
step, a view, an interval or a rank does while leaving every import working. The copy of src/ is put first on
PYTHONPATH, so the tests (and the processes they start: the CLI, torchrun workers) import the mutant; the
worktree is never changed. A mutant is caught when its tests fail; before the mutants, the same tests are run
once on the code as it is and must pass, so a failure is the mutant's.

    python scripts/mutants.py                 # every mutant against its named tests (about 25 minutes on 1 core)
    python scripts/mutants.py M1 M4           # some of them
    python scripts/mutants.py --suite M1      # against the whole suite instead (stops at the first failure)
    python scripts/mutants.py --list

The table it prints is in docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP, DATA, DIST = "tests/test_step.py", "tests/test_data.py", "tests/test_distributed.py"
DECODING, SYNC, ENGINE = "tests/test_decoding.py", "tests/test_weight_sync.py", "tests/test_vllm_engine_logic.py"


@dataclass(frozen=True)
class Mutant:
    id: str
    what: str  # the bug, in words
    path: str  # the file under the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # the tests that must catch it


MUTANTS = (
    # the planted bugs that the suite used to miss
    Mutant("M1", "the step ascends the divergence (loss sign flipped)", "src/vision_opd/training/step.py",
           "(loss * world).backward()", "(-loss * world).backward()",
           (f"{STEP}::test_a_few_steps_on_the_demo_model_lower_the_divergence",)),
    Mutant("M2", "each micro-batch divided by its own token count, not the step's", "src/vision_opd/training/step.py",
           "loss = masked_token_mean(per_tok if is_w is None else per_tok * is_w, counted_N, num_tokens)",
           "loss = masked_token_mean(per_tok if is_w is None else per_tok * is_w, counted_N, counted_N.sum())",
           (f"{STEP}::test_step_loss_kl_and_update_equal_an_independent_recomputation",)),
    Mutant("M3", "the rollout temperature does not reach the divergence", "src/vision_opd/training/step.py",
           'temperature = 1.0 if cfg.loss.kind == "ce" else cfg.rollout.temperature', "temperature = 1.0",
           (f"{STEP}::test_step_loss_kl_and_update_equal_an_independent_recomputation",)),
    Mutant("M4", "the teacher crop not expanded by views.expand_ratio", "src/vision_opd/data/crops.py",
           "b = clamp_box(expand_box(box, expand_ratio), width, height)", "b = clamp_box(box, width, height)",
           (f"{DATA}::test_teacher_crop_pixels_are_the_expanded_box",
            f"{DATA}::test_teacher_view_crop_is_the_expanded_box_of_the_record")),
    Mutant("M5", "the gap probe reports full-crop as crop-full (sign flipped)", "src/vision_opd/eval/gap.py",
           "differences[f\"{v}-{base}\"] = d = paired_difference(by_view[v], by_view[base], usable, benchmark)",
           "differences[f\"{v}-{base}\"] = d = paired_difference(by_view[base], by_view[v], usable, benchmark)",
           ("tests/test_gap_stats.py::test_the_gap_cli_results_recomputed_from_samples_jsonl",)),
    Mutant("M6", "a 99.95% interval reported as the 95% CI", "src/vision_opd/eval/statistics.py",
           "    tail = (1 - level) / 2 * 100\n    lo, hi = np.percentile(out,",
           "    tail = (1 - level) / 2\n    lo, hi = np.percentile(out,",
           ("tests/test_gap_stats.py::test_the_paired_interval_is_a_95_percent_interval",
            "tests/test_gap_stats.py::test_the_gap_cli_results_recomputed_from_samples_jsonl")),
    Mutant("M7", "the LoRA EMA with r and 1 - r swapped", "src/vision_opd/training/teacher.py",
           "self.ema_adapter[n].lerp_(p.detach().to(self.ema_adapter[n].dtype), self.rate)",
           "self.ema_adapter[n].lerp_(p.detach().to(self.ema_adapter[n].dtype), 1 - self.rate)",
           ("tests/test_lora.py::test_lora_teacher_shares_the_base",)),
    Mutant("M8", "optim.grad_clip ignored", "src/vision_opd/training/step.py",
           'cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")', 'float("inf")',
           (f"{STEP}::test_grad_clip_bounds_the_update",)),
    Mutant("M9", "the first warm-up step at lr 0", "src/vision_opd/training/loop.py",
           "return (step + 1) / warm", "return step / warm",
           (f"{STEP}::test_first_warmup_step_uses_lr_over_warmup_steps",)),
    # each correctness fix undone
    Mutant("M10", "proposers and teacher crops read the image with the answer's box drawn", "src/vision_opd/data/views.py",
           'return record.meta.get("clean_image") or record.image', "return record.image",
           ("tests/test_sources.py::test_proposers_never_see_the_drawn_answer_box",)),
    Mutant("M11", "a proposer on drawn boxes without clean images is not refused", "src/vision_opd/data/views.py",
           'if record.meta.get("red_box_drawn") and not record.meta.get("clean_image"):', "if False:",
           ("tests/test_sources.py::test_train_with_a_proposer_on_drawn_boxes_refuses_before_the_model_loads",)),
    Mutant("M12", "held-out evaluation on the training views (red box, hint)", "src/vision_opd/eval/views.py",
           "full = student_view(record, replace(cfg, red_box=False, hint=False)).images",
           "full = student_view(record, cfg).images",
           ("tests/test_train.py::test_held_out_evaluation_uses_the_benchmark_views",)),
    Mutant("M13", "the red box drawn inward, over the evidence", "src/vision_opd/data/crops.py",
           "rectangle([x1 - w, y1 - w, x2 - 1 + w, y2 - 1 + w]", "rectangle([x1, y1, x2 - 1, y2 - 1]",
           (f"{DATA}::test_red_box_of_the_recipe_leaves_the_expanded_box_untouched",)),
    Mutant("M14", "the teacher scores in train mode (dropout on)", "src/vision_opd/training/teacher.py",
           "    model.eval()\n    try:\n        yield model", "    try:\n        yield model",
           ("tests/test_teacher.py::test_teacher_scores_in_eval_mode",)),
    Mutant("M15", "the teacher crop not enlarged by default", "src/vision_opd/data/views.py",
           "teacher_upscale: float = 2.0", "teacher_upscale: float = 1.0",
           (f"{DATA}::test_teacher_view_crop_is_the_expanded_box_of_the_record",)),
    Mutant("M16", "prompts not divisible by the ranks: shares not padded", "src/vision_opd/training/distributed.py",
           "return mine + fill * (size - len(mine)), len(mine)", "return mine, len(mine)",
           (f"{DIST}::test_ranks_run_alike_sample_their_own_noise_and_skip_a_nonfinite_step_together",)),
    Mutant("M17", "rank 0 proposes every record while the others wait", "src/vision_opd/proposers/cache.py",
           "mine = [by_id[i] for i in ids[ranks.rank::ranks.world]]\n        rounds = -(-len(ids) // (ranks.world * ROUND))",
           "mine = [by_id[i] for i in ids] if ranks.rank == 0 else []\n        rounds = -(-len(ids) // ROUND)",
           (f"{DIST}::test_proposals_and_evaluation_shared_out_and_every_rank_rng_saved_and_restored",)),
    Mutant("M18", "rank 0 evaluates the held-out prompts while the others wait", "src/vision_opd/eval/heldout.py",
           "share, n_real = ranks.shard(todo)",
           "share, n_real = (todo, len(todo)) if ranks.rank == 0 else ([], 0)",
           (f"{DIST}::test_proposals_and_evaluation_shared_out_and_every_rank_rng_saved_and_restored",)),
    Mutant("M19", "the process-group timeout is not train.dist_timeout_s", "src/vision_opd/training/distributed.py",
           "kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))]", "kwargs_handlers=[]",
           (f"{DIST}::test_process_group_timeout_is_the_config_key",)),
    Mutant("M20", "every rank samples with the same seed", "src/vision_opd/training/distributed.py",
           "return seed + 1_000_003 * rank", "return seed",
           (f"{DIST}::test_ranks_run_alike_sample_their_own_noise_and_skip_a_nonfinite_step_together",)),
    Mutant("M21", "only rank 0's RNG state is saved", "src/vision_opd/training/loop.py",
           "rng = ranks.gather(ckpt.rng_state())", "rng = [ckpt.rng_state()]",
           (f"{DIST}::test_proposals_and_evaluation_shared_out_and_every_rank_rng_saved_and_restored",)),
    Mutant("M22", "skipping a non-finite step decided per rank", "src/vision_opd/training/step.py",
           "    finite = global_sum(torch.tensor(0.0 if finite else 1.0, device=device)).item() == 0",
           "    pass",
           (f"{DIST}::test_ranks_run_alike_sample_their_own_noise_and_skip_a_nonfinite_step_together",)),
    # every decoding setting of the HF engine, and what a weight sync pushes (each caught without vLLM)
    Mutant("M23", "the HF engine ignores rollout.top_p (no nucleus)", "src/vision_opd/rollout/hf.py",
           "warpers += [TopPLogitsWarper(top_p)] if do_sample and top_p < 1.0 else []", "warpers += []",
           (f"{DECODING}::test_sampled_tokens_lie_in_the_nucleus_and_record_its_renormalised_logprobs",)),
    Mutant("M24", "the HF engine samples at temperature 1 whatever rollout.temperature", "src/vision_opd/rollout/hf.py",
           "warpers = [TemperatureLogitsWarper(temperature)] if do_sample and temperature != 1.0 else []",
           "warpers = []",
           (f"{DECODING}::test_first_token_frequencies_follow_the_temperature_and_nucleus_distribution",)),
    Mutant("M25", "the HF engine can sample vision tokens (suppression dropped)", "src/vision_opd/rollout/hf.py",
           "suppress_tokens=list(suppress_ids) if suppress_ids else None,", "suppress_tokens=None,",
           (f"{DECODING}::test_suppressed_vision_tokens_are_never_drawn_and_left_out_of_the_renormalisation",)),
    Mutant("M26", "the weight sync pushes the frozen tensors instead of the trained ones", "src/vision_opd/rollout/weights.py",
           "        if p.requires_grad:\n", "        if not p.requires_grad:\n",
           (f"{SYNC}::test_full_fine_tuning_pushes_every_tensor_in_its_trained_value",
            f"{SYNC}::test_a_frozen_vision_tower_is_left_out_of_each_sync_but_in_the_engines_first_weights")),
    Mutant("M27", "the LoRA scaling (alpha / r) dropped from the weights merged for the engine", "src/vision_opd/models/lora.py",
           ".to(w.dtype) * module.scaling[adapter]", ".to(w.dtype)",
           (f"{SYNC}::test_merged_lora_weights_equal_peffts_own_merge_at_every_name",)),
    Mutant("M28", "a tied model's sync never pushes lm_head.weight", "src/vision_opd/rollout/weights.py",
           "m.named_parameters(remove_duplicate=False)", "m.named_parameters()",
           (f"{SYNC}::test_a_tied_model_pushes_the_output_head_under_its_own_name_with_the_trained_embedding",)),
    # one in each module added since M1-M22 were written
    Mutant("M29", "shared-prompt scoring reads the responses one position late", "src/vision_opd/scoring/shared.py",
           "[:, None] + steps_B_n).expand(3, -1, -1)", "[:, None] + steps_B_n + 1).expand(3, -1, -1)",
           ("tests/test_scoring_shared.py::test_shared_prompts_equal_per_row_scoring[qwen2_5_vl-groups]",)),
    Mutant("M30", "each response row continues another prompt's cached keys and values", "src/vision_opd/scoring/prefix_cache.py",
           "rows = prompt_of_row_B.to(layer.keys.device)", "rows = prompt_of_row_B.flip(0).to(layer.keys.device)",
           ("tests/test_scoring_shared.py::test_shared_prompts_equal_per_row_scoring[qwen2_5_vl-groups]",)),
    Mutant("M31", "rollout.source=mix never rounds P f up (the student's share below f)", "src/vision_opd/training/responses.py",
           "k = base + int(torch.rand(()).item() < P * fraction - base)", "k = base",
           ("tests/test_responses.py::test_mix_fraction_in_expectation",)),
    Mutant("M32", "a response of exactly rollout.runaway_tokens is not runaway", "src/vision_opd/rollout/degenerate.py",
           "runaway |= lengths >= runaway_tokens", "runaway |= lengths > runaway_tokens",
           ("tests/test_controls.py::test_degenerate_flags_on_constructed_responses",)),
    Mutant("M33", "the token dump marks the first mention of the answer, not the final one", "src/vision_opd/training/token_dump.py",
           "return max(hits) if hits else None", "return min(hits) if hits else None",
           ("tests/test_token_dump.py::test_answer_span_on_constructed_responses",)),
    Mutant("M34", "the importance weight not truncated at rollout.is_threshold", "src/vision_opd/rollout/mismatch.py",
           "return ratio.clamp(max=threshold)", "return ratio",
           ("tests/test_rollout.py::test_truncated_is_weights_by_hand",)),
    Mutant("M35", "the judge's letter beyond the item's options counted as an answer", "src/vision_opd/eval/judge.py",
           "if letter in LETTERS[:n_options] else", "if letter in LETTERS else",
           ("tests/test_eval_server.py::test_parse_verdict",)),
    Mutant("M36", "a run folder that holds a run is silently reused", "src/vision_opd/training/run_folder.py",
           "if trained and not overwrite:", "if False:",
           ("tests/test_cli_errors.py::test_run_folders_never_mix",)),
    Mutant("M40", "the mask control leaves each masked cell's last row and column", "src/vision_opd/data/degrade.py",
           "draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)", "draw.rectangle([x1, y1, x2 - 2, y2 - 2], fill=fill)",
           ("tests/test_controls.py::test_mask_view_fills_exactly_the_chosen_cells_with_the_mean_colour",)),
    Mutant("M41", "inspect's share of the divergence divided by the token count", "src/vision_opd/training/token_analysis.py",
           '"value_share": sum(v) / total_v if total_v else 0.0', '"value_share": sum(v) / total_n if total_v else 0.0',
           ("tests/test_token_dump.py::test_inspect_prints_tables_and_writes_a_plot",)),
    # the vLLM engine's logic that runs without vLLM (reached before only by tests/test_vllm.py)
    Mutant("M37", "the step never syncs the rollout engine", "src/vision_opd/training/step.py",
           "sec_sync = engine.sync(model) if finite else 0.0", "sec_sync = 0.0",
           (f"{ENGINE}::test_the_step_syncs_the_engine_once_after_the_update_with_the_updated_weights",)),
    Mutant("M38", "vLLM's first listed log-prob recorded, not the sampled token's", "src/vision_opd/rollout/vllm_engine.py",
           "next(iter(step.values())).logprob if len(step) == 1 else", "next(iter(step.values())).logprob if step else",
           (f"{ENGINE}::test_sampled_outputs_become_a_prompt_major_rollout_with_the_sampled_tokens_logprobs",)),
    Mutant("M39", "a head_dim vLLM's CPU attention lacks is not refused", "src/vision_opd/rollout/vllm_engine.py",
           'if device_type == "cpu" and head_dim not in CPU_HEAD_DIMS:', "if False:",
           (f"{ENGINE}::test_models_vllm_cannot_run_are_refused_before_an_engine_is_built",)),
)


def pytest_run(tests: list[str], src: Path | None) -> tuple[int, str, float]:
    """(pytest's exit code, its first assertion line or last line, seconds) with `src` first on the path."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])])
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    why = next((line[1:].strip() for line in lines if line.startswith("E ")), lines[-1] if lines else res.stderr[-200:])
    return res.returncode, why[:140], time.perf_counter() - t0


def plant(m: Mutant, into: Path) -> Path:
    """A copy of src/ under `into` with `m` planted; its src folder."""
    src = into / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    f = into / m.path
    text = f.read_text(encoding="utf-8")
    if text.count(m.old) != 1:
        raise SystemExit(f"{m.id}: the text to change occurs {text.count(m.old)} times in {m.path} (expected once); "
                         "update the mutant to the code")
    f.write_text(text.replace(m.old, m.new), encoding="utf-8")
    return src


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ids", nargs="*", help="mutant ids (default: all)")
    ap.add_argument("--suite", action="store_true", help="run the whole suite against each mutant, not its named tests")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.ids or m.id in args.ids]
    if unknown := set(args.ids) - {m.id for m in MUTANTS}:
        ap.error(f"unknown mutant(s) {', '.join(sorted(unknown))}; see --list")
    if args.list:
        for m in chosen:
            print(f"{m.id:4} {m.what}  [{m.path}]")
        return 0
    named = sorted({t for m in chosen for t in m.tests})
    rc, why, sec = pytest_run(["tests"] if args.suite else named, None)
    print(f"baseline (the code as it is): {'pass' if rc == 0 else 'FAIL'} in {sec:.0f} s", flush=True)
    if rc != 0:
        print(f"  {why}\nthe tests must pass before a mutant can be judged")
        return 1
    print("| id | planted bug | file | caught by | result | first failure | s |\n|---|---|---|---|---|---|---|")
    missed = 0
    for m in chosen:
        with tempfile.TemporaryDirectory(prefix=f"mutant-{m.id}-") as tmp:
            src = plant(m, Path(tmp))
            rc, why, sec = pytest_run(["tests"] if args.suite else list(m.tests), src)
        caught = rc == 1  # tests failed (2+ = pytest could not run them: not a catch)
        missed += not caught
        by = "the suite" if args.suite else ", ".join(f"`{t.split('::')[-1]}`" for t in m.tests)
        why = why.replace("|", "/")
        print(f"| {m.id} | {m.what} | `{m.path}` | {by} | {'caught' if caught else f'MISSED (rc {rc})'} | {why} | {sec:.0f} |",
              flush=True)
    print(f"{len(chosen) - missed} of {len(chosen)} caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
