"""`train(cfg)`: the Vision-OPD run loop, top to bottom: load, resume, loop {step, log, evaluate, save}, report.

    vision-opd train --config configs/tiny_cpu.yaml train.steps=20

The step itself (`vision_opd_step`, numbered 1-6) is step.py; what it needs travels as one `StepContext`, built
here once. What may stop the loop is in guards.py; the run folder's rules in run_folder.py.
No labels are read: `Record.answer` is never touched here. docs/architecture.md maps the modules.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from ..config import Config, ConfigError, to_dict
from ..data.fingerprint import FINGERPRINT, fingerprint
from ..data.sources import load_train_records
from ..data.validate import read_records
from ..data.views import encode_views, student_view
from ..models.loading import load_model, set_trainable, vision_token_ids
from ..models.parts import strip_wrappers, unwrap
from ..report import report_after_run
from ..rollout import check_engine_available, make_engine, rank_seed
from . import checkpoint as ckpt
from .context import StepContext
from .distributed import (
    Ranks,
    full_model_state,
    full_optimizer_state,
    load_full_optimizer_state,
    make_accelerator,
    shard_fsdp,
)
from .guards import (CollapseWatch, SkipGuard, StopFlag, TeacherSignalGuard, TrainingInterrupted, TrainingStopped,
                     wait_for_signal_test_hook)
from .run_folder import check_run_folder, compare_data, fingerprint_text, start_run_folder, write_run_config
from .run_log import MetricsLogger, sample_rows
from .step import vision_opd_step
from .stream import PromptStream
from .teacher import Teacher
from .token_dump import token_rows, write_token_rows


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(cfg: Config):
    """Linear warm-up over optim.warmup_steps (the first step at lr / warmup), then constant or cosine."""
    warm, total, sched = cfg.optim.warmup_steps, max(1, cfg.train.steps), cfg.optim.schedule

    def f(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        if sched == "cosine":
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return f


def apply_optim_config(optimizer, scheduler, cfg: Config) -> None:
    """The config's optimizer settings over a resumed optimizer's and schedule's: a checkpoint's state holds the lr,
    betas and weight decay it was built with, and `--resume optim.lr=...` (allowed, and printed) must then train
    with the new value. The next step's lr is recomputed from the new lr and schedule at the resumed position."""
    factor = lr_lambda(cfg)(scheduler.last_epoch)
    for group in optimizer.param_groups:
        group.update(initial_lr=cfg.optim.lr, lr=cfg.optim.lr * factor, betas=tuple(cfg.optim.betas),
                     weight_decay=cfg.optim.weight_decay)
    scheduler.base_lrs = [cfg.optim.lr] * len(optimizer.param_groups)


def startup_summary(cfg: Config, model, trainable: list, n_records: int, n_bad: int, start_step: int) -> str:
    """What is about to run, in one line: model, dtype, trainable parameters, records, steps, where the run writes."""
    total = sum(p.numel() for p in unwrap(model).parameters())
    n_train = sum(p.numel() for p in trainable)
    dtype = str(next(unwrap(model).parameters()).dtype).replace("torch.", "")
    if cfg.train.mixed_precision == "bf16":
        dtype += " weights, bf16 compute"
    lora = f", LoRA r={cfg.model.lora_r}" if cfg.model.lora_r > 0 else ""
    skipped = f" ({n_bad} bad skipped)" if n_bad else ""
    steps = f"steps {start_step + 1}-{cfg.train.steps} of {cfg.train.steps}" if start_step else f"{cfg.train.steps} steps"
    return (f"[vision-opd] training {cfg.model.name_or_path} ({dtype}{lora}; {n_train:,} of {total:,} parameters "
            f"trainable) on {n_records} records of {cfg.data.train_file}{skipped}: {steps} x "
            f"{cfg.train.prompts_per_step} prompts x {cfg.rollout.samples_per_prompt} samples; writes {cfg.train.out_dir}")


def train(cfg: Config, *, resume: bool = False, overwrite: bool = False, accept_data_change: bool = False,
          data: tuple[list, int] | None = None) -> Path:
    """Run Vision-OPD as configured; returns the run directory.

    The run folder holds one run: `resume` continues it from its latest intact checkpoint, `overwrite` deletes it
    first; anything else there is refused (run_folder.py). Data and every record are checked before the model loads,
    and on resume compared with the checkpoint's (changed data: refused unless `accept_data_change`).
    A SIGINT/SIGTERM saves the state, then raises `TrainingInterrupted` (the command exits 130 / 143).
    `data` = (records, number skipped) of `load_train_records` when the caller checked them already (`vision-opd
    train` does, before torch is imported).
    """
    accelerator = make_accelerator(cpu=cfg.train.device == "cpu", timeout_s=cfg.train.dist_timeout_s)  # None: 1 process
    ranks = Ranks.of(accelerator)
    rank, world = ranks.rank, ranks.world
    is_main = rank == 0
    if cfg.train.prompts_per_step < world:
        raise ConfigError(f"train.prompts_per_step={cfg.train.prompts_per_step} is smaller than the {world} processes")
    run_dir = Path(cfg.train.out_dir)
    config_yaml = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    plan = check_run_folder(run_dir, cfg, resume=resume, overwrite=overwrite)  # every rank reads, before anyone writes
    if accelerator:
        accelerator.wait_for_everyone()
    if is_main:
        start_run_folder(plan)
    seed_everything(cfg.train.seed)
    check_engine_available(cfg)  # rollout.engine=vllm without vLLM: one line naming the extra, before any loading
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = accelerator.device if accelerator else resolve_device(cfg.train.device)

    # load: data first (every record checked, views included: nothing expensive has happened yet), then the model
    records, n_bad = data or load_train_records(cfg.data, cfg.views, progress=cfg.train.progress and is_main,
                                                answers_for=cfg.label_option())
    data_fp = fingerprint(records)
    data_change = compare_data(plan.resume_from, data_fp, train_file=cfg.data.train_file, accept=accept_data_change)
    eval_records = (read_records(cfg.data.eval_file, box_format=cfg.data.box_format)
                    if cfg.data.eval_file and cfg.train.eval_every else None)
    model, processor = load_model(cfg.model, seed=cfg.train.seed, device=device)
    suppress_ids = vision_token_ids(unwrap(model), processor)
    if cfg.model.lora_r > 0:
        from ..models.lora import apply_lora

        model = apply_lora(model, cfg.model.lora_r, cfg.model.lora_alpha, cfg.model.lora_dropout, cfg.model.lora_target)
    if cfg.views.teacher_source == "proposer":  # every rank proposes a share, all gather; the main process caches
        from ..proposers import attach_proposals

        records = attach_proposals(unwrap(model), processor, records, cfg.teacher.proposer, cfg.views,
                                   run_dir / f"proposals_{cfg.teacher.proposer}.jsonl", keep_fallback=cfg.teacher.keep_fallback,
                                   verbose=is_main, progress=cfg.train.progress and is_main, ranks=ranks)
    teacher = Teacher(model, cfg.teacher.mode, cfg.teacher.ema_rate, device=cfg.teacher.device)  # the *initial* weights
    set_trainable(model, freeze_vision=cfg.model.freeze_vision, gradient_checkpointing=cfg.model.gradient_checkpointing)
    fsdp = accelerator is not None and cfg.train.distributed == "fsdp"
    if last := plan.resume_from:
        ckpt.load_student_weights(model, last)  # before sharding: the checkpoint holds whole tensors
    if fsdp:
        model = shard_fsdp(model, mixed_precision=cfg.train.mixed_precision == "bf16")  # params become shards
        with torch.no_grad():  # FSDP2 initialises from a root forward before generate may call the vision tower alone
            model(**encode_views(processor, [student_view(records[0], cfg.views)]).to(device))
    elif accelerator:
        model = accelerator.prepare_model(model)  # DDP: gradients averaged over ranks
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    stream = PromptStream(len(records), cfg.train.seed, cfg.data.shuffle)
    stop, watch, skips = StopFlag(), CollapseWatch(cfg.train), SkipGuard(cfg.train.max_consecutive_skips)
    signal = TeacherSignalGuard(unwrap(model).get_output_embeddings().weight.shape[0],
                                enabled=cfg.train.guard_uniform_teacher and not cfg.model.name_or_path.startswith("tiny:"))
    start_step = 0
    seed_everything(rank_seed(cfg.train.seed, rank))  # the weights are alike on every rank; the sampling noise is not
    if last is not None:
        state = ckpt.load_trainer_state(last)
        if fsdp:
            load_full_optimizer_state(model, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        apply_optim_config(optimizer, scheduler, cfg)  # a changed optim.lr / betas / weight_decay takes effect
        teacher.load_state_dict(ckpt.load_teacher_state(last))
        stream.cursor = int(state["cursor"])
        start_step = int(state["step"])
        if data_change is not None:  # --accept-data-change: the epoch it was in starts again on the new records
            stream.cursor = data_change.restart(stream.cursor, len(records))
            if is_main:
                print(f"[vision-opd] the training data changed ({data_change.text}); continuing on the new data "
                      f"(--accept-data-change): the prompt stream restarts epoch {stream.cursor // len(records)} on "
                      f"its {len(records)} records")
        if rank < len(state["rng"]):  # each rank its own (a rank the checkpoint has none for keeps its fresh seed)
            ckpt.set_rng_state(state["rng"][rank])
        watch.load_state_dict(state["guards"]["collapse"])  # the streaks go on where they stopped
        skips.load_state_dict(state["guards"]["skips"])
        if is_main:
            print(f"[vision-opd] resumed from {last} at step {start_step}")
    texts = {"config.yaml": config_yaml,
             FINGERPRINT: fingerprint_text(data_fp, cfg.data.train_file, last, data_change, start_step)}
    # the rollout engine, from the student's current weights (initial or resumed); rank r samples its shard; building
    # it leaves the RNG restored above as it is
    engine = make_engine(cfg, model, processor, suppress_ids, device=device, rank=rank, world=world,
                         synced_gpus=fsdp and world > 1)
    ctx = StepContext(model, teacher, processor, optimizer, scheduler, suppress_ids, device, engine, accelerator)

    def save(step: int) -> Path:
        """Written once, by the main process (FSDP: the shards are gathered to it first)."""
        opt_state = full_optimizer_state(model, optimizer) if fsdp else optimizer.state_dict()
        weights = full_model_state(model) if fsdp else None
        state = {"optimizer": opt_state, "scheduler": scheduler.state_dict(), "step": step, "cursor": stream.cursor,
                 "guards": {"collapse": watch.state_dict(), "skips": skips.state_dict()}}
        path = ckpt.step_dir(run_dir, step)
        rng = ranks.gather(ckpt.rng_state())  # every rank's RNG, written by the main process
        if is_main:
            path = ckpt.save_checkpoint(run_dir, step, model=strip_wrappers(model), processor=processor, trainer_state=state,
                                        teacher_state=teacher.state_dict(), texts=texts,
                                        keep_last=cfg.train.keep_last, state_dict=weights, rng_states=rng)
        if accelerator:
            accelerator.wait_for_everyone()
        return path

    def evaluate(step: int) -> dict:
        """Held-out greedy accuracy on the benchmark's full and crop views, every rank on a share (eval/heldout.py)."""
        from ..eval.heldout import evaluate_heldout

        r = evaluate_heldout(unwrap(model), processor, eval_records, views=("full", "crop"),
                             batch_size=cfg.train.eval_batch_size, max_new_tokens=cfg.train.eval_max_new_tokens,
                             view_cfg=cfg.views, ranks=ranks, synced_gpus=fsdp)
        out = {"eval_full_acc": r.get("full", {}).get("accuracy"), "eval_crop_acc": r.get("crop", {}).get("accuracy"),
               "eval_seconds": r["seconds"]}
        if is_main:
            print(f"[vision-opd] step {step}: held-out accuracy full {out['eval_full_acc']}, crop {out['eval_crop_acc']}")
        return out

    # loop: rollout, score, loss, step, log, save (a SIGINT/SIGTERM saves a checkpoint, then the run exits)
    if is_main:  # only now: a start that failed above left nothing a later run must overwrite
        write_run_config(run_dir, cfg)
        print(startup_summary(cfg, model, params, len(records), n_bad, start_step))
    log = MetricsLogger(run_dir, tensorboard=cfg.train.tensorboard, wandb=cfg.train.wandb, wandb_project=cfg.train.wandb_project,
                        config=to_dict(cfg), enabled=is_main, purge_step=start_step + 1 if last is not None else None)
    bar = tqdm(range(start_step, cfg.train.steps), desc="vision-opd", disable=not (cfg.train.progress and is_main),
               initial=start_step, total=cfg.train.steps)
    try:
        for step in bar:
            # this rank's prompts, padded to the same count on every rank (the padding counts for nothing)
            batch, n_real = ranks.shard([records[i] for i in stream.take(cfg.train.prompts_per_step)])
            result = vision_opd_step(cfg, ctx, batch, n_real=n_real)
            m = {"step": step + 1, **result.metrics, "bad_records": n_bad}
            m["collapse"] = watch.update(m)
            if eval_records and ((step + 1) % cfg.train.eval_every == 0 or step + 1 == cfg.train.steps):
                m.update(evaluate(step + 1))
            if cfg.train.log_every and (step + 1) % cfg.train.log_every == 0 or m["skipped"] or m["collapse"]:
                log.log(step + 1, m)
            bar.set_postfix(loss=f"{m['loss']:.4f}", kl=f"{m['kl']:.4f}", len=f"{m['response_len']:.1f}")
            if is_main and cfg.train.sample_every and (step + 1) % cfg.train.sample_every == 0:
                log.log_samples(step + 1, sample_rows(processor, batch, result.rollout, result.token_values))
            if is_main and cfg.train.dump_tokens_every and (step + 1) % cfg.train.dump_tokens_every == 0:
                write_token_rows(run_dir / "tokens.jsonl", step + 1, token_rows(processor, batch, result.rollout,
                                                                                result.token_values,
                                                                                result.responses.from_teacher_B))
            skips.update(m["skipped"], step + 1, m["skip_reason"])
            watch.check(m["collapse"], step + 1)
            signal.check(m, step + 1)
            wait_for_signal_test_hook(step + 1, stop)
            if stop.requested(accelerator):
                raise TrainingInterrupted(stop.signal, save(step + 1))  # the command exits 130 / 143
            if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 and step + 1 < cfg.train.steps:
                save(step + 1)
        # the final checkpoint before the engine closes: over several processes closing a vLLM engine can take the
        # process group down, and the FSDP gather of the final state needs it
        final = save(cfg.train.steps)
    except TrainingStopped as e:
        path = save(step + 1)
        print(f"[vision-opd] stopped: {e}; state saved in {path}")
        raise
    finally:
        log.close()
        stop.restore()
        engine.close()
    if is_main:
        print(f"[vision-opd] done: {cfg.train.steps} steps; checkpoint {final}" + (f"; {n_bad} bad record(s) skipped" if n_bad else ""))
        if cfg.train.report:
            report_after_run(run_dir)
    return run_dir
