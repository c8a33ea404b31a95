"""Typed configuration: dataclass sections, a YAML file, dotted `key=value` overrides, saved in every run.

    cfg = load_config("configs/tiny_cpu.yaml", ["train.steps=5", "loss.alpha=1.0"])
    save_config(cfg, run_dir / "config.yaml")

Unknown keys are errors (with the list of valid ones), and override values are parsed as YAML scalars
and checked against the field's type, so `train.steps=abc` fails before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config_yaml import ConfigError, apply_overrides, build_section
from .data.views import FALLBACKS, NEGATIVES, TEACHER_IMAGES, TEACHER_SOURCES, ViewConfig


@dataclass
class ModelConfig:
    name_or_path: str = "tiny:qwen2_5_vl"  # hub id, local directory, or tiny:FAMILY (random weights built in code)
    dtype: str = "float32"  # float32 | bfloat16 | float16 (bf16 compute keeps fp32 master weights when train.mixed_precision is set)
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2; None = transformers' default
    min_pixels: int | None = None  # processor pixel budget (None: the checkpoint's own)
    max_pixels: int | None = None
    trust_remote_code: bool = False  # never on unless asked for
    gradient_checkpointing: bool = False
    freeze_vision: bool = False  # train only the language model (and merger)
    tiny_image_size: int = 112  # for tiny:FAMILY only: the processor's pixel budget side
    lora_r: int = 0  # > 0: train a LoRA adapter (peft) of this rank on the language model; 0 = full fine-tuning
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target: str | None = None  # peft target_modules regex; None = the language model's projections


@dataclass
class DataConfig:
    train_file: str = "data/synth/train.jsonl"  # Records JSONL; relative paths are relative to the working directory
    eval_file: str | None = None  # optional held-out Records JSONL evaluated every train.eval_every steps
    synth_if_missing: bool = False  # `vision-opd train` writes synth_n synthetic records at train_file when it is missing (the tiny config)
    synth_n: int = 256
    synth_seed: int = 0
    shuffle: bool = True
    skip_bad: bool = False  # skip (and count) bad records instead of stopping at load
    validate_images: bool = True  # decode every image at load (catches corrupt files before training starts)
    allow_outside_root: bool = False  # image paths may point outside the data file's folder
    format: str = "auto"  # auto | records | vision_opd_6k | parquet | hub (docs/data.md); train_file may be a folder or owner/name
    student_image: str = "images"  # Vision-OPD-6K: images (red box already drawn) | original (clean image)
    split: str = "train"  # parquet folder / hub dataset split
    cache_dir: str | None = None  # where images embedded in parquet / hub rows are written once (None: next to the data)
    # how Records JSONL writes its boxes: auto (pixels [x1, y1, x2, y2]; a file of normalised or [x, y, w, h] boxes is
    # refused, naming the fix) | xyxy (pixels, no guessing) | xywh (pixels [x, y, width, height], COCO) | normalized
    # ([x1, y1, x2, y2] as fractions of the width and height); converted to pixels on read (data/doctor.py)
    box_format: str = "auto"


@dataclass
class RolloutConfig:
    samples_per_prompt: int = 4  # G
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 16
    do_sample: bool = True  # false = greedy rollouts (deterministic; for tests and debugging, not for training)
    # where the response tokens come from (responses.py): student = on-policy (Vision-OPD) | teacher = the teacher
    # answers on its own view (off-policy; with loss.kind=ce: sequence-level KD) | mix = per prompt, the student with
    # probability student_fraction, else the teacher (GKD's lambda)
    source: str = "student"
    student_fraction: float = 0.5  # source=mix: the expected share of prompts answered by the student
    teacher_do_sample: bool = True  # teacher responses sampled at temperature / top_p (true) or greedy (false)
    drop_unanswered: bool = False  # leave teacher responses with no extractable answer out of the loss (counted)
    # degenerate responses (degenerate.py): their rates are always logged; drop_degenerate leaves them out of the loss
    repeat_ngram: int = 4  # a response that repeats one n-gram of this many tokens ...
    repeat_count: int = 4  # ... at least this many times is repetitive (0 = no repetition check)
    runaway_tokens: int = 0  # a response with no EOS in max_new_tokens, or at least this many tokens (0: no length cap), is runaway
    drop_degenerate: bool = False
    # LABELS: leave a prompt out of the loss unless one of its G responses is right by record.answer (CV-OPD's prompt
    # filter, "at least 1 of 8 correct"); every training record then needs an answer. Off: training reads no label.
    keep_solved_prompts: bool = False
    # the HF engine's loop: compact (one prefill per prompt, finished rows leave the batch; rollout/compact.py; where it
    # applies, else generate) | generate (transformers' generate). The same tokens either way
    hf_decoder: str = "compact"
    engine: str = "auto"  # auto (vllm where it is installed and runs this model on this device, else hf; printed at
    # start) | hf (transformers generate on the training model) | vllm (a colocated vLLM engine in this process, built
    # once from the student's weights and synced after every optimizer step; section `vllm`)
    is_correction: bool = False  # weight each token's loss by min(p_trainer / p_rollout, is_threshold) (truncated IS)
    is_threshold: float = 2.0  # the truncation C of rollout.is_correction


@dataclass
class VLLMConfig:
    """rollout.engine=vllm: one engine per process, in the process (`pip install 'vision-opd[vllm]'`)."""
    dtype: str = "auto"  # auto (bfloat16 when train.mixed_precision=bf16 or the model is bf16, else float32) | float32 | bfloat16 | float16
    max_model_len: int = 4096  # prompt + response tokens of one sequence
    gpu_memory_utilization: float = 0.3  # GPU: share of its memory vLLM takes (weights + KV cache); training keeps the rest
    cpu_kv_cache_gb: float = 1.0  # CPU: KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE)
    max_num_seqs: int = 256  # sequences decoded at once
    seed: int | None = None  # the engine's seed (None: train.seed); each request's seed is drawn from torch's RNG
    enforce_eager: bool = True  # true: no CUDA graphs (faster start); false: graphs, faster decoding on a GPU


@dataclass
class LossConfig:
    kind: str = "jsd"  # jsd (generalized JSD over the full vocabulary) | topk (student top-k + tail) | sampled (sampled-token
    # estimator) | ce (cross-entropy on the response tokens at temperature 1; needs rollout.source=teacher: sequence KD)
    alpha: float = 0.5  # JSD weight: 0 = forward KL(T||S), 1 = reverse KL(S||T), 0.5 = symmetric JSD
    top_k: int = 100
    chunk_size: int | None = 256  # tokens per chunk for the fused lm_head + divergence; None = plain
    # weights from a negative teacher view (views.negative; losses/contrastive.py, docs/method.md section 8):
    # none | opdv (token weights) | cvopd (margin + gate) | vzero (sequence weights)
    weighting: str = "none"
    margin_lambda: float = 0.1  # cvopd: weight of the gated margin term
    margin_mu: float = 0.1  # cvopd: the margin mu of [mu + d+ - d-]_+
    vzero_scale: float = 0.5  # vzero: w_i = clip(1 + vzero_scale * z_i, 0, vzero_max)
    vzero_max: float = 2.0
    # sampled: clamp the per-token advantage log S(y) - log T(y) to [-sampled_clip, sampled_clip] (V-Zero: 10); None = none
    sampled_clip: float | None = None


@dataclass
class TeacherConfig:
    mode: str = "ema"  # frozen (initial weights) | ema (EMA of the student, rate ema_rate) | live (current weights, no grad)
    ema_rate: float = 0.05  # theta_T <- (1 - r) * theta_T + r * theta_S after every optimizer step
    proposer: str = "attention"  # views.teacher_source=proposer: attention (ViCrop-style, 2 forwards) | grounding (the
    # model's own box) | confidence (the window whose crop the model answers most confidently; one forward per window)
    # | rarity (the region least like any other in the model's image features; one vision-tower forward)
    keep_fallback: bool = False  # proposer: keep records whose proposal fell back to the full image (no crop signal)
    device: str | None = None  # "cpu": keep a full frozen/EMA teacher on the CPU and run its forward there
                               # (saves accelerator memory, costs time); None = the student's device


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 2
    schedule: str = "constant"  # constant | cosine (after the linear warm-up)
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 20
    prompts_per_step: int = 4  # P; one optimizer step per batch of P x G trajectories (fully on-policy)
    micro_batch_size: int = 8  # trajectories per forward/backward (gradient accumulation within a step)
    micro_batch_tokens: int = 0  # > 0: micro-batches by this budget of scored positions (prompts + padded responses,
    # training/batching.py) instead of micro_batch_size rows; 0 = by row count
    share_prompts: bool = True  # score each prompt once for all its responses in a micro-batch (scoring_shared.py); false: per row
    seed: int = 0
    out_dir: str = "runs/tiny_cpu"
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads (0 = torch's default); 1 is far faster for tiny models on a busy small machine
    log_every: int = 1
    save_every: int = 0  # 0 = only at the end
    sample_every: int = 10  # write a few decoded responses to samples.jsonl every N steps (0 = never)
    dump_tokens_every: int = 0  # every N steps write every response token with both views' log-probs, entropies and its
    # divergence to tokens.jsonl (token_dump.py; read by `vision-opd inspect RUN`); 0 = never
    eval_every: int = 0  # evaluate data.eval_file (full and crop views, greedy) every N steps and at the end (0 = never)
    eval_max_new_tokens: int = 16
    eval_batch_size: int = 16
    progress: bool = True
    distributed: str = "ddp"  # ddp | fsdp (only when launched over several processes; see distributed.py)
    dist_timeout_s: int = 1800  # several processes: the longest a rank may wait in a collective (a checkpoint write,
                                # a share of the proposals or of the evaluation) before the job aborts
    mixed_precision: str = "fp32"  # fp32 (no autocast) | bf16: bf16 autocast over the model's (fp32 master) weights
    keep_last: int = 3  # checkpoints kept
    max_consecutive_skips: int = 5  # stop after this many consecutive skipped steps (non-finite, or no loss token)
    # collapse signals (docs/method.md): logged as `collapse` in metrics.jsonl; stop_on_collapse ends the run
    collapse_truncation_rate: float = 0.5  # truncation rate above this ...
    collapse_kl: float = 10.0  # ... or mean KL above this ...
    collapse_length_ratio: float = 4.0  # ... or mean response length above this times the first steps' mean ...
    collapse_patience: int = 3  # ... for this many consecutive steps
    stop_on_collapse: bool = False
    guard_uniform_teacher: bool = True  # stop when the teacher's mean entropy is within 1% of log V (guards.py; never for tiny:)
    tensorboard: bool | str = "auto"  # scalars + samples to out_dir/tensorboard: auto (when installed) | true | false
    wandb: bool = False  # also log to Weights & Biases (needs `pip install wandb`)
    wandb_project: str | None = None
    report: bool = True  # write out_dir/report.html (the page of `vision-opd report`) at the end of the run


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def label_option(self) -> str | None:
        """The option that makes training read `record.answer` when it is on (None: training reads no label)."""
        return "rollout.keep_solved_prompts" if self.rollout.keep_solved_prompts else None

    def validate(self) -> "Config":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.loss.kind in ("jsd", "topk", "sampled", "ce"), f"loss.kind={self.loss.kind!r}: choose jsd, topk, sampled or ce")
        r = self.rollout
        need(r.hf_decoder in ("compact", "generate"), f"rollout.hf_decoder={r.hf_decoder!r}: choose compact or generate")
        need(r.source in ("student", "teacher", "mix"), f"rollout.source={r.source!r}: choose student, teacher or mix")
        need(0.0 <= r.student_fraction <= 1.0, f"rollout.student_fraction={r.student_fraction}: must be in [0, 1]")
        need(self.loss.kind != "ce" or r.source == "teacher",
             f"loss.kind=ce trains on the teacher's tokens: set rollout.source=teacher (got {r.source!r})")
        need(self.loss.kind != "sampled" or r.source == "student",
             "loss.kind=sampled estimates reverse KL from the student's own samples: it needs rollout.source=student "
             f"(got {r.source!r}); use jsd, topk or ce on teacher tokens")
        need(r.source != "mix" or self.train.distributed != "fsdp",
             "rollout.source=mix with train.distributed=fsdp: the sharded student generates in lockstep on every rank, "
             "and a mix gives the ranks different prompts to answer; use train.distributed=ddp")
        need(r.repeat_ngram >= 1 and r.repeat_count >= 0 and r.runaway_tokens >= 0,
             "rollout.repeat_ngram must be >= 1, rollout.repeat_count and rollout.runaway_tokens >= 0")
        need(self.train.dump_tokens_every >= 0, "train.dump_tokens_every must be >= 0 (0 = never)")
        need(0.0 <= self.loss.alpha <= 1.0, f"loss.alpha={self.loss.alpha}: must be in [0, 1]")
        need(self.loss.top_k >= 1, "loss.top_k must be >= 1")
        need(self.teacher.mode in ("frozen", "ema", "live"), f"teacher.mode={self.teacher.mode!r}: choose frozen, ema or live")
        need(0.0 < self.teacher.ema_rate <= 1.0, "teacher.ema_rate must be in (0, 1]")
        need(self.optim.schedule in ("constant", "cosine"), f"optim.schedule={self.optim.schedule!r}: choose constant or cosine")
        need(self.rollout.samples_per_prompt >= 1 and self.train.prompts_per_step >= 1, "samples_per_prompt and prompts_per_step must be >= 1")
        need(self.rollout.temperature > 0, "rollout.temperature must be > 0")
        need(self.rollout.engine in ("auto", "hf", "vllm"), f"rollout.engine={self.rollout.engine!r}: choose auto, hf or vllm")
        need(not r.is_correction or r.source == "student",
             f"rollout.is_correction weights the student's own samples by p_trainer / p_rollout: it needs "
             f"rollout.source=student (got {r.source!r})")
        need(self.rollout.is_threshold > 0, f"rollout.is_threshold={self.rollout.is_threshold}: must be > 0")
        need(self.vllm.dtype in ("auto", "float32", "bfloat16", "float16"),
             f"vllm.dtype={self.vllm.dtype!r}: choose auto, float32, bfloat16 or float16")
        need(0 < self.vllm.gpu_memory_utilization <= 1, f"vllm.gpu_memory_utilization={self.vllm.gpu_memory_utilization}: must be in (0, 1]")
        need(self.vllm.max_model_len >= 1 and self.vllm.max_num_seqs >= 1 and self.vllm.cpu_kv_cache_gb > 0,
             "vllm.max_model_len and vllm.max_num_seqs must be >= 1, vllm.cpu_kv_cache_gb > 0")
        need(self.train.micro_batch_size >= 1 and self.train.steps >= 0, "train.micro_batch_size must be >= 1, train.steps >= 0")
        need(self.train.micro_batch_tokens >= 0,
             f"train.micro_batch_tokens={self.train.micro_batch_tokens}: must be >= 0 (0 = micro-batches by train.micro_batch_size rows)")
        need(self.data.format in ("auto", "records", "vision_opd_6k", "parquet", "hub"),
             f"data.format={self.data.format!r}: choose auto, records, vision_opd_6k, parquet or hub")
        need(self.data.box_format in ("auto", "xyxy", "xywh", "normalized"),
             f"data.box_format={self.data.box_format!r}: choose auto, xyxy, xywh or normalized")
        need(self.data.student_image in ("images", "original"), f"data.student_image={self.data.student_image!r}: choose images or original")
        need(self.train.dist_timeout_s > 0, f"train.dist_timeout_s={self.train.dist_timeout_s}: must be > 0 (seconds)")
        need(self.train.distributed in ("ddp", "fsdp"), f"train.distributed={self.train.distributed!r}: choose ddp or fsdp")
        need(self.train.mixed_precision in ("fp32", "bf16"), f"train.mixed_precision={self.train.mixed_precision!r}: choose fp32 or bf16")
        need(self.teacher.device is None or self.teacher.mode != "live",
             "teacher.device applies to a frozen or EMA teacher (a live teacher is the student)")
        v = self.views
        need(v.teacher_source in TEACHER_SOURCES,
             f"views.teacher_source={v.teacher_source!r}: choose {', '.join(TEACHER_SOURCES)}")
        need(v.teacher_upscale > 0, f"views.teacher_upscale={v.teacher_upscale}: must be > 0 (1 = the crop's own size)")
        need(v.teacher_pixels is None or v.teacher_pixels > 0,
             f"views.teacher_pixels={v.teacher_pixels}: must be > 0, or null for views.teacher_upscale")
        bad = [n for n in v.teacher_images if n not in TEACHER_IMAGES]
        need(not bad, f"views.teacher_images: unknown {bad}; choose from {', '.join(TEACHER_IMAGES)}")
        need("crop" not in v.teacher_images or v.teacher_source in ("auto", "box", "given", "proposer"),
             f"views.teacher_images names crop, which needs views.teacher_source auto, box, given or proposer (got {v.teacher_source!r})")
        need(v.blur_radius >= 0 and 0.0 <= v.mask_ratio <= 1.0 and v.mask_grid >= 1,
             "views.blur_radius must be >= 0, views.mask_ratio in [0, 1], views.mask_grid >= 1")
        need(self.teacher.proposer in ("attention", "grounding", "confidence", "rarity"),
             f"teacher.proposer={self.teacher.proposer!r}: choose attention, grounding, confidence or rarity")
        _validate_negative(self, need)
        return self


# ---------------------------------------------------------------------------------------------- the negative view


def _validate_negative(cfg: Config, need) -> None:
    """views.negative and loss.weighting (docs/method.md section 8): one line per mistake, before any model loads."""
    v, loss = cfg.views, cfg.loss
    need(v.negative in NEGATIVES, f"views.negative={v.negative!r}: choose {', '.join(NEGATIVES)}")
    need(v.negative_fallback in FALLBACKS, f"views.negative_fallback={v.negative_fallback!r}: choose {', '.join(FALLBACKS)}")
    need(v.negative_radius >= 0 and v.negative_boxes >= 1 and 0 < v.negative_area <= 1 and v.negative_patch >= 1
         and 0 <= v.negative_patch_p <= 1 and 0 <= v.negative_max_iou < 1 and v.negative_tries >= 1
         and v.negative_factor >= 1,
         "views.negative_*: radius >= 0, boxes >= 1, area in (0, 1], patch >= 1, patch_p in [0, 1], max_iou in [0, 1), "
         "tries >= 1, factor >= 1")
    need(v.negative == "none" or (v.teacher_source in ("auto", "box", "given", "proposer") and not v.teacher_images),
         f"views.negative={v.negative} degrades the teacher's one crop: it needs views.teacher_source auto, box, given or "
         f"proposer and no views.teacher_images (got {v.teacher_source!r}, {list(v.teacher_images)})")
    need(loss.weighting in ("none", "opdv", "cvopd", "vzero"),
         f"loss.weighting={loss.weighting!r}: choose none, opdv, cvopd or vzero")
    need(loss.weighting == "none" or v.negative != "none",
         f"loss.weighting={loss.weighting} compares the teacher on two views: set views.negative (e.g. mask, random_crop)")
    need(v.negative == "none" or loss.kind != "ce",
         "views.negative with loss.kind=ce: cross-entropy reads no teacher distribution to weigh; use jsd, topk or sampled")
    need(loss.margin_lambda >= 0 and loss.margin_mu >= 0 and loss.vzero_scale >= 0 and loss.vzero_max >= 1,
         "loss.margin_lambda, loss.margin_mu and loss.vzero_scale must be >= 0, loss.vzero_max >= 1")
    need(loss.sampled_clip is None or loss.sampled_clip > 0,
         f"loss.sampled_clip={loss.sampled_clip}: must be > 0 (the advantage's bound), or null for no clamp")
    need(loss.sampled_clip is None or loss.kind == "sampled",
         f"loss.sampled_clip clamps the sampled-token advantage: it needs loss.kind=sampled (got {loss.kind!r})")
    need(loss.weighting != "vzero" or cfg.rollout.samples_per_prompt >= 2,
         "loss.weighting=vzero compares the G responses of a prompt: set rollout.samples_per_prompt >= 2")


def to_dict(cfg) -> dict:
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:  # name the file, line and column (yaml says "<unicode string>")
            mark = getattr(e, "problem_mark", None)
            where = f"{p}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(p)
            what = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
            raise ConfigError(f"{where}: not valid YAML ({what})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: a config is a YAML mapping of sections (train:, model:, ...), got "
                              f"{type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    return build_section(Config, data, "").validate()


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
