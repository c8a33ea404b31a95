"""`train(cfg)`: the Vision-OPD loop, top to bottom.

    vision-opd train --config configs/tiny_cpu.yaml train.steps=20

One step (`vision_opd_step`, numbered 1-6 below): take P prompts; the student samples G responses each on the
full image (on-policy; or the teacher on its crop, or a mix per prompt: `rollout.source`, responses.py); the teacher (frozen / ema / live weights) reads the same responses on the crop under
no_grad; the student reads them on the full image with grad; the loss is a token-level divergence at the
response tokens, summed per micro-batch and divided by the step's total response-token count (so
micro-batching gives the same gradient as one big batch); backward, clip, AdamW, schedule, EMA update.
`train` loads everything, then loops {step, log, evaluate, save}; what may stop the loop is in guards.py.
No labels are read: `Record.answer` is never touched here. docs/architecture.md maps the modules.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import Config, ConfigError, to_dict
from .data.records import Record
from .data.sources import load_train_records
from .data.validate import read_records
from .data.views import encode_views, student_view, teacher_view
from .distributed import (Ranks, full_model_state, full_optimizer_state, grad_sync, is_fsdp, load_full_optimizer_state,
                          make_accelerator, rank_seed, shard_fsdp)
from .divergence import token_divergence, token_divergence_from_hidden
from .guards import CollapseWatch, SkipGuard, StopFlag, TrainingStopped, wait_for_signal_test_hook
from .losses import DivergenceSpec, masked_token_mean
from .mismatch import MismatchStats, sampled_token_logprobs, sampled_token_logprobs_from_hidden, truncated_is_weights
from .models.loading import load_model, set_trainable, vision_token_ids
from .models.parts import backbone_and_head, strip_wrappers, unwrap
from .responses import COUNTS, collect_responses, response_metrics
from .rollout import HFEngine, check_engine_available, decoding_of, make_engine
from .run_folder import check_run_folder, start_run_folder
from .run_log import MetricsLogger, sample_rows
from .scoring import score_responses
from .report import report_after_run
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


def autocast(cfg: Config, device: torch.device):
    """bf16 compute over fp32 master weights when train.mixed_precision=bf16 (the divergence itself is float32)."""
    if cfg.train.mixed_precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@dataclass
class StepResult:
    metrics: dict
    rollout: object
    token_values: dict  # {metric: per-sample lists of per-token values} for the sample log (TOKEN_METRICS)
    responses: object = None  # responses.Responses: who wrote each response, the loss mask


# per-token values kept for samples.jsonl and tokens.jsonl ("divergence" = the loss value of each token)
TOKEN_METRICS = ("reverse_kl", "student_logprob", "teacher_logprob", "student_entropy", "teacher_entropy", "divergence")


def vision_opd_step(cfg: Config, model, teacher: Teacher, processor, records: list[Record], optimizer, scheduler,
                    suppress_ids: list[int], device: torch.device, accelerator=None, n_real: int | None = None,
                    engine=None) -> StepResult:
    """One optimizer step of Vision-OPD on `records` (this rank's share of the step's prompts).

    With an accelerate `accelerator` over N processes, the loss of each rank is its token sum divided by the
    *global* response-token count, times N (DDP averages gradients over ranks), so N ranks give the same
    gradient as one process over all prompts; gradients sync once, on the last micro-batch. Only the first
    `n_real` records (default: all) count: the rest pad this rank's share to the others' size (`Ranks.shard`), so
    every rank runs the same forwards, and their tokens are left out of the loss, the token count and the metrics.
    Whether the step is skipped (a non-finite loss or gradient) is decided from all ranks' values together.
    `engine` samples the rollouts and receives the new weights after the optimizer step (default: the HF engine).
    """
    world = accelerator.num_processes if accelerator is not None else 1
    if engine is None:  # callers that keep no engine (tests): transformers generate on the model itself
        assert cfg.rollout.engine == "hf", "rollout.engine=vllm: pass the engine built by make_engine"
        engine = HFEngine(processor, decoding_of(cfg.rollout, suppress_ids), synced_gpus=is_fsdp(model) and world > 1)

    def global_sum(x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return accelerator.reduce(x.detach().clone().to(device), reduction=reduction) if world > 1 else x

    G, mb = cfg.rollout.samples_per_prompt, cfg.train.micro_batch_size
    temperature = 1.0 if cfg.loss.kind == "ce" else cfg.rollout.temperature  # ce is an SFT loss: logits as they are
    spec = DivergenceSpec(kind=cfg.loss.kind, alpha=cfg.loss.alpha, temperature=temperature,
                          top_k=cfg.loss.top_k, chunk_size=cfg.loss.chunk_size)
    # each view's forward at the response positions: each prompt once for its rows (train.share_prompts) or per row
    vstart = unwrap(model).config.vision_start_token_id
    score = partial(score_responses, vision_start_id=vstart, shared=cfg.train.share_prompts)
    t0 = time.perf_counter()
    # 1. the two views, through one preprocessing path
    s_views = [student_view(r, cfg.views) for r in records]
    s_inputs = encode_views(processor, s_views).to(device)
    t_inputs = encode_views(processor, [teacher_view(r, cfg.views) for r in records]).to(device)
    t1 = time.perf_counter()
    # 2. responses: on-policy, the student samples G per prompt on its own (full-image) view; or the teacher on its
    #    view, or a mix per prompt (rollout.source); left-out responses (unanswered, degenerate) get a zero loss mask
    with autocast(cfg, device):
        resp = collect_responses(cfg.rollout, engine, model, teacher, processor, records, s_inputs, s_views, t_inputs,
                                 suppress_ids, vstart, synced_gpus=is_fsdp(model) and world > 1)
    ro = resp.rollout
    t2 = time.perf_counter()
    real_B = ro.prompt_index_B < (len(records) if n_real is None else n_real)  # padding prompts: no loss, no metrics
    loss_mask_B_T = resp.loss_mask_B_T * real_B[:, None]  # left-out responses and padding prompts: not counted
    num_tokens = global_sum(loss_mask_B_T.sum())  # the step's token count (all ranks): every micro-batch divides by it
    fsdp = is_fsdp(model)
    t_device = teacher.device or device
    if not fsdp:
        _, s_head = backbone_and_head(model)
        t_weight = teacher.lm_head_weight().to(device)  # once per step (a copy only when the teacher lives elsewhere)
    optimizer.zero_grad(set_to_none=True)
    model.train()
    sums = {"loss": 0.0, "reverse_kl": 0.0, "top1_agree": 0.0}
    token_values: dict = {name: [] for name in TOKEN_METRICS}
    mismatch, temp = MismatchStats(), cfg.rollout.temperature if cfg.rollout.do_sample else 1.0  # as the engines record
    t_teacher = t_student = 0.0
    B = ro.response_ids_B_T.shape[0]
    for start in range(0, B, mb):
        rows = torch.arange(start, min(B, start + mb), device=device)
        mask = resp.loss_mask_B_T[rows]
        T = max(1, int(mask.sum(-1).max().item()))  # trim trailing padding of this micro-batch
        ids, mask, counted = ro.response_ids_B_T[rows, :T], mask[:, :T], loss_mask_B_T[rows, :T]
        prompts = ro.prompt_index_B[rows]
        # 3. teacher: crop view, no grad, read at the same response tokens
        ta = time.perf_counter()
        with teacher.scoring() as t_model, autocast(cfg, t_device):  # FSDP: logits through the forward
            t_out = score(t_model, t_inputs, prompts, ids, mask, logits=fsdp, device=t_device).to(device)
        tb = time.perf_counter()
        # 4. student: full view, with grad; 5. divergence at response tokens only
        last = start + mb >= B
        with grad_sync(model, accelerator, enabled=last or world == 1):
            sel = mask.bool()
            if fsdp:
                with autocast(cfg, device):
                    s_logits = score(model, s_inputs, prompts, ids, mask, logits=True)
                per_tok, tok_metrics = token_divergence(s_logits[sel], t_out[sel].detach(), ids[sel], spec)
                lp_train = sampled_token_logprobs(s_logits[sel], ids[sel], temp, suppress_ids)
            else:
                with autocast(cfg, device):
                    s_hidden = score(model, s_inputs, prompts, ids, mask)
                per_tok, tok_metrics = token_divergence_from_hidden(
                    s_hidden[sel], t_out[sel].detach(), s_head.weight, ids[sel], spec, teacher_lm_head_weight=t_weight)
                lp_train = sampled_token_logprobs_from_hidden(s_hidden[sel], s_head.weight, ids[sel], temp, suppress_ids)
            counted_N = counted[sel].bool()  # False on the tokens of padding prompts
            # the rollout-vs-trainer mismatch (mismatch.py); optional truncated importance weights on the loss
            lp_roll = ro.logprobs_B_T[rows, :T][sel]
            is_w = truncated_is_weights(lp_train, lp_roll, cfg.rollout.is_threshold) if cfg.rollout.is_correction else None
            own_N = counted_N & ~resp.from_teacher_B.to(device)[rows][:, None].expand_as(mask)[sel]  # student-written
            mismatch.add(lp_train[own_N], lp_roll[own_N], None if is_w is None else is_w[own_N], cfg.rollout.is_threshold)
            loss = masked_token_mean(per_tok if is_w is None else per_tok * is_w, counted_N, num_tokens)
            (loss * world).backward()
        tok_metrics["divergence"] = per_tok
        t_teacher += tb - ta
        t_student += time.perf_counter() - tb
        sums["loss"] += loss.item()
        sums["reverse_kl"] += tok_metrics["reverse_kl"][counted_N].sum().item()
        sums["top1_agree"] += tok_metrics["top1_agree"][counted_N].sum().item()
        lengths = mask.sum(-1).long().tolist()
        for name in TOKEN_METRICS:
            token_values[name].extend(v.tolist() for v in torch.split(tok_metrics[name].detach().cpu(), lengths))
    # 6. clip, step, schedule, EMA, weight sync to the rollout engine
    tc = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
    finite = bool(torch.isfinite(grad_norm)) and math.isfinite(sums["loss"])
    finite = global_sum(torch.tensor(0.0 if finite else 1.0, device=device)).item() == 0  # every rank decides alike
    lr = optimizer.param_groups[0]["lr"]  # the lr this step uses (the schedule then moves on to the next)
    if finite:  # a non-finite loss or gradient on any rank skips the whole step (no optimizer, schedule or EMA update)
        optimizer.step()
        scheduler.step()
        teacher.update()
    optimizer.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    sec_sync = engine.sync(model) if finite else 0.0
    n = max(1.0, num_tokens.item())
    lengths = ro.lengths_B.float()[real_B]
    tot = global_sum(torch.tensor([sums["loss"], sums["reverse_kl"], sums["top1_agree"], lengths.sum().item(),
                                   float(lengths.numel()), ro.truncated_B[real_B].float().sum().item()], device=device))
    len_max = lengths.max() if lengths.numel() else torch.zeros((), device=device)
    counts = global_sum(torch.tensor([float(resp.counts[k]) for k in COUNTS], device=device))
    if world > 1:
        len_max = accelerator.reduce(len_max.clone(), reduction="max")
    metrics = {
        "loss": tot[0].item(),
        "kl": tot[1].item() / n,  # mean per-token KL(student || teacher) on the sampled responses
        "top1_agree": tot[2].item() / n,
        "response_len": tot[3].item() / tot[4].item(),
        "response_len_max": len_max.item(),
        "truncation_rate": tot[5].item() / tot[4].item(),
        "tokens": int(num_tokens.item()),  # tokens the loss read (left-out responses excluded)
        "grad_norm": grad_norm.item(),
        "lr": lr,
        "skipped": 0 if finite else 1,
        "sec_views": t1 - t0,
        "sec_rollout": t2 - t1,
        "sec_teacher": t_teacher,
        "sec_student": t_student,
        "sec_optim": t3 - tc,
        "sec_sync": sec_sync,
        "sec_step": time.perf_counter() - t0,
        **response_metrics(dict(zip(COUNTS, counts.tolist(), strict=True))),
        **mismatch.metrics(global_sum, lambda x: global_sum(x, "max"), cfg.rollout.is_correction),
    }
    return StepResult(metrics, ro, token_values, resp)


def train(cfg: Config, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Run Vision-OPD as configured; returns the run directory.

    The run folder holds one run: `resume` continues it from its latest complete checkpoint, `overwrite` deletes it
    first; anything else there is refused (run_folder.py). Data and every record are checked before the model loads.
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
        start_run_folder(plan, cfg)
    seed_everything(cfg.train.seed)
    check_engine_available(cfg)  # rollout.engine=vllm without vLLM: one line naming the extra, before any loading
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = accelerator.device if accelerator else resolve_device(cfg.train.device)

    # load: data first (every record checked, views included: nothing expensive has happened yet), then the model
    records, n_bad = load_train_records(cfg.data, cfg.views, progress=cfg.train.progress and is_main)
    eval_records = read_records(cfg.data.eval_file) if cfg.data.eval_file and cfg.train.eval_every else None
    model, processor = load_model(cfg.model, seed=cfg.train.seed, device=device)
    suppress_ids = vision_token_ids(unwrap(model), processor)
    if cfg.model.lora_r > 0:
        from .models.lora import apply_lora

        model = apply_lora(model, cfg.model.lora_r, cfg.model.lora_alpha, cfg.model.lora_dropout, cfg.model.lora_target)
    if cfg.views.teacher_source == "proposer":  # every rank proposes a share, all gather; the main process caches
        from .proposers import attach_proposals

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
    start_step = 0
    seed_everything(rank_seed(cfg.train.seed, rank))  # the weights are alike on every rank; the sampling noise is not
    if last is not None:
        state = ckpt.load_trainer_state(last)
        if fsdp:
            load_full_optimizer_state(model, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        teacher.load_state_dict(ckpt.load_teacher_state(last))
        stream.cursor = int(state["cursor"])
        start_step = int(state["step"])
        if rank < len(state["rng"]):  # each rank its own (a rank the checkpoint has none for keeps its fresh seed)
            ckpt.set_rng_state(state["rng"][rank])
        watch.load_state_dict(state["guards"]["collapse"])  # the streaks go on where they stopped
        skips.load_state_dict(state["guards"]["skips"])
        if is_main:
            print(f"[vision-opd] resumed from {last} at step {start_step}")
    # the rollout engine, from the student's current weights (initial or resumed); rank r samples its shard
    engine = make_engine(cfg, model, processor, suppress_ids, device=device, rank=rank, world=world,
                         synced_gpus=fsdp and world > 1)

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
                                        teacher_state=teacher.state_dict(), config_yaml=config_yaml,
                                        keep_last=cfg.train.keep_last, state_dict=weights, rng_states=rng)
        if accelerator:
            accelerator.wait_for_everyone()
        return path

    def evaluate(step: int) -> dict:
        """Held-out greedy accuracy on the benchmark's full and crop views, every rank on a share (eval/heldout.py)."""
        from .eval.heldout import evaluate_heldout

        r = evaluate_heldout(unwrap(model), processor, eval_records, views=("full", "crop"),
                             batch_size=cfg.train.eval_batch_size, max_new_tokens=cfg.train.eval_max_new_tokens,
                             view_cfg=cfg.views, ranks=ranks, synced_gpus=fsdp)
        out = {"eval_full_acc": r.get("full", {}).get("accuracy"), "eval_crop_acc": r.get("crop", {}).get("accuracy"),
               "eval_seconds": r["seconds"]}
        if is_main:
            print(f"[vision-opd] step {step}: held-out accuracy full {out['eval_full_acc']}, crop {out['eval_crop_acc']}")
        return out

    # loop: rollout, score, loss, step, log, save (a SIGINT/SIGTERM saves a checkpoint, then the run exits)
    log = MetricsLogger(run_dir, tensorboard=cfg.train.tensorboard, wandb=cfg.train.wandb, wandb_project=cfg.train.wandb_project,
                        config=to_dict(cfg), enabled=is_main, purge_step=start_step + 1 if last is not None else None)
    bar = tqdm(range(start_step, cfg.train.steps), desc="vision-opd", disable=not (cfg.train.progress and is_main),
               initial=start_step, total=cfg.train.steps)
    try:
        for step in bar:
            # this rank's prompts, padded to the same count on every rank (the padding counts for nothing)
            batch, n_real = ranks.shard([records[i] for i in stream.take(cfg.train.prompts_per_step)])
            result = vision_opd_step(cfg, model, teacher, processor, batch, optimizer, scheduler, suppress_ids, device,
                                     accelerator, n_real=n_real, engine=engine)
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
            skips.update(m["skipped"], step + 1)
            watch.check(m["collapse"], step + 1)
            wait_for_signal_test_hook(step + 1, stop)
            if stop.requested(accelerator):
                path = save(step + 1)
                print(f"[vision-opd] received {stop.signal}: saved {path}; resume with --resume")
                return run_dir
            if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 and step + 1 < cfg.train.steps:
                save(step + 1)
    except TrainingStopped as e:
        path = save(step + 1)
        print(f"[vision-opd] stopped: {e}; state saved in {path}")
        raise
    finally:
        log.close()
        stop.restore()
        engine.close()
    final = save(cfg.train.steps)
    if is_main:
        print(f"[vision-opd] done: {cfg.train.steps} steps; checkpoint {final}" + (f"; {n_bad} bad record(s) skipped" if n_bad else ""))
        if cfg.train.report:
            report_after_run(run_dir)
    return run_dir
