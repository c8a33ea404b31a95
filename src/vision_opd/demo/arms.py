"""The training arms of the demo and its study: Vision-OPD and the controls, one loop each, same budget.

    run_arm(ArmConfig("opd"), model_dir, data, ...)   # label-free Vision-OPD (the demo)
    ArmConfig("continue")        # (a) pre-training simply continued (labelled crops + easy full images)
    ArmConfig("supervised")      # (c) hard full images WITH labels (the upper bound)
    ArmConfig("opd+continue")    # (c2) one Vision-OPD step and one continued pre-training step per step
    ArmConfig("opd", teacher="ema" | "live", loss="rkl" | "fkl" | "topk" | "sampled")          # (d), (e)
    ArmConfig("opd", source="teacher", loss="ce", teacher_greedy=True, prompts=32, samples=1)  # (b) sequence KD
    ArmConfig("opd", source="teacher" | "mix", ...)  # off-policy soft targets, GKD's mix (rollout.source)
    ArmConfig("opd", teacher_source="none" | "blur" | "mask", teacher_images=("crop", "full"))  # controls
    ArmConfig("opd", negative="mask", weighting="opdv" | "cvopd" | "vzero")  # a negative teacher view (method.md 8)

Every label-free arm ("opd", "opd+continue") is one `train.vision_opd_step` per step with the arm's config: where the
tokens come from (student, teacher, mix), which loss, which teacher view: the same loop `vision-opd train` runs.
Every arm starts from the same pre-trained checkpoint, takes `steps` optimizer steps of the same number
of trajectories (`prompts` prompts x `samples` responses; the supervised arms: prompts x samples labelled
items), and is evaluated on the held-out hard full images and their crops every `eval_every` steps (the crop
view is always the true evidence crop, whatever the teacher read). Vision-OPD never reads `Record.answer`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import Config
from ..data.records import Record
from ..data.views import ViewConfig
from .pretrain import DEMO_VIEWS, evaluate_views, labelled_stream, load_demo_model, supervised_step
from .pretrain_config import PretrainConfig
from .world import WorldConfig

LOSSES = {  # name -> (loss.kind, loss.alpha)
    "jsd": ("jsd", 0.5),
    "rkl": ("jsd", 1.0),
    "fkl": ("jsd", 0.0),
    "topk": ("topk", 0.5),
    "sampled": ("sampled", 1.0),
    "ce": ("ce", 0.5),
}
ARMS = ("opd", "continue", "supervised", "opd+continue")


@dataclass
class ArmConfig:
    arm: str = "opd"
    steps: int = 150
    prompts: int = 8  # P prompts per step
    samples: int = 4  # G rollouts per prompt (supervised arms: P x G items per step)
    lr: float = 3e-4  # chosen on the val split (docs/demo.md M7): 1e-3 lowered the crop view 0.90 -> 0.79
    warmup_steps: int = 5
    teacher: str = "frozen"  # frozen | ema | live
    ema_rate: float = 0.05
    loss: str = "jsd"  # jsd | rkl | fkl | topk | sampled | ce (cross-entropy on the teacher's tokens: source=teacher)
    top_k: int = 8
    temperature: float = 1.0
    eval_every: int = 50
    seed: int = 0
    easy_share: float = PretrainConfig().easy_share  # the `continue` arms' labelled mix (the checkpoint's own)
    crop_source: str = "box"  # the teacher's crop: "box" (the true evidence box) or a proposer's name (no boxes used)
    source: str = "student"  # rollout.source: student (on-policy) | teacher (off-policy) | mix (per prompt)
    student_fraction: float = 0.5  # rollout.student_fraction (source=mix)
    teacher_greedy: bool = False  # teacher responses greedy (sequence KD) instead of sampled
    drop_unanswered: bool = False  # rollout.drop_unanswered: leave teacher responses with no readable answer out
    teacher_source: str = "box"  # views.teacher_source of the teacher's prompt: box | full | none | blur | mask
    teacher_images: tuple[str, ...] = ()  # views.teacher_images: a multi-view teacher, e.g. ("crop", "full")
    teacher_text: str | None = None  # views.teacher_text (e.g. a teacher-only suffix)
    blur_radius: float = 0.02  # views.blur_radius (share of the shorter side: 3.4 px on the 168 px canvas)
    mask_ratio: float = 0.5  # views.mask_ratio: half of ...
    mask_grid: int = 6  # ... the world's 6 x 6 object cells hidden (each object is either hidden or intact)
    negative: str = "none"  # views.negative: a second, negative teacher view (none: plain Vision-OPD)
    weighting: str = "none"  # loss.weighting: opdv | cvopd | vzero (with a negative view)
    world: WorldConfig = field(default_factory=WorldConfig)

    def opd_config(self, views: ViewConfig = DEMO_VIEWS) -> Config:
        """The `train` config of this arm's Vision-OPD steps; `views` = the study's views, the teacher's part replaced."""
        from dataclasses import replace

        cfg = Config()
        kind, alpha = LOSSES[self.loss]
        cfg.loss.kind, cfg.loss.alpha, cfg.loss.top_k, cfg.loss.chunk_size = kind, alpha, self.top_k, None
        r = cfg.rollout
        r.samples_per_prompt, r.temperature, r.max_new_tokens = self.samples, self.temperature, self.world.max_new_tokens
        r.source, r.student_fraction, r.teacher_do_sample = self.source, self.student_fraction, not self.teacher_greedy
        r.drop_unanswered = self.drop_unanswered
        assert self.crop_source == "box" or self.teacher_source == "box", "crop_source and teacher_source: choose one"
        source = "proposer" if self.crop_source != "box" else self.teacher_source
        cfg.views = replace(views, teacher_source=source, teacher_images=tuple(self.teacher_images),
                            teacher_text=self.teacher_text, blur_radius=self.blur_radius, mask_ratio=self.mask_ratio,
                            mask_grid=self.mask_grid, negative=self.negative)
        cfg.loss.weighting = self.weighting
        cfg.teacher.mode, cfg.teacher.ema_rate = self.teacher, self.ema_rate
        cfg.optim.lr, cfg.optim.warmup_steps = self.lr, self.warmup_steps
        cfg.train.steps, cfg.train.prompts_per_step = self.steps, self.prompts
        cfg.train.micro_batch_size, cfg.train.seed, cfg.train.device = self.prompts * self.samples, self.seed, "cpu"
        return cfg.validate()

    def label(self) -> str:
        if self.arm in ("opd", "opd+continue"):
            src = "" if self.crop_source == "box" else f", {self.crop_source} crops"
            view = "" if self.teacher_source == "box" and not self.teacher_images else \
                f", teacher sees {'+'.join(self.teacher_images) or self.teacher_source}"
            tokens = "" if self.source == "student" else \
                f", {self.source} tokens{' (greedy)' if self.teacher_greedy else ''}"
            neg = "" if self.negative == "none" else f", {self.weighting} vs a {self.negative} negative"
            return f"{self.arm} ({self.loss}, {self.teacher} teacher{src}{view}{tokens}{neg})"
        return self.arm


def proposed_records(model, processor, records: list[Record], name: str, views: ViewConfig, cache_path: Path | None,
                     progress: bool = True) -> tuple[list[Record], dict]:
    """Copies of `records` whose teacher crop is the proposer's box (meta["proposed_box"]), fallbacks dropped,
    and the proposals' scores against the true boxes (which the proposer never reads)."""
    from ..proposers import apply_proposals, evaluate_proposals, propose_with

    props = propose_with(model, processor, records, name, views, cache_path, progress=progress)
    kept = apply_proposals(records, props, copy=True)  # the same records serve the study's other arms
    return kept, {"proposer": name, **evaluate_proposals(records, props), "kept": len(kept)}


def run_arm(cfg: ArmConfig, model_dir: str | Path, opd_records: list[Record], eval_records: list[Record], *,
            views: ViewConfig = DEMO_VIEWS, progress: bool = True, eval_first: dict | None = None,
            proposal_cache: Path | None = None, tokens_dir: Path | None = None, dump_every: int = 0) -> dict:
    """Train one arm from the checkpoint in model_dir; returns {"curve": [...], "before", "after", "seconds"}.

    cfg.crop_source other than "box": the initial model proposes every Vision-OPD record's crop first (cached in
    `proposal_cache`), the teacher reads those crops, and records whose proposal fell back are left out. The
    held-out crop accuracy is always measured on the true boxes (the reference the gap is defined by).
    dump_every > 0: every dump_every Vision-OPD steps, the step's tokens go to tokens_dir/tokens.jsonl (token_dump.py;
    `vision-opd inspect tokens_dir` reads them)."""
    from ..models.loading import vision_token_ids
    from ..models.parts import unwrap
    from ..training.context import StepContext
    from ..training.loop import lr_lambda, seed_everything
    from ..training.step import vision_opd_step
    from ..training.stream import PromptStream
    from ..training.teacher import Teacher

    assert cfg.arm in ARMS, f"arm {cfg.arm!r}: choose one of {ARMS}"
    seed_everything(cfg.seed)
    model, processor = load_demo_model(model_dir)
    suppress = vision_token_ids(unwrap(model), processor)
    ocfg = cfg.opd_config(views)
    proposals = None
    if cfg.crop_source != "box" and cfg.arm in ("opd", "opd+continue"):
        opd_records, proposals = proposed_records(model, processor, opd_records, cfg.crop_source, views, proposal_cache,
                                                  progress)
        if not opd_records:
            raise ValueError(f"every {cfg.crop_source} proposal fell back to the full image: nothing to distil")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(ocfg))
    teacher = Teacher(model, cfg.teacher if "opd" in cfg.arm else "frozen", cfg.ema_rate)
    stream = PromptStream(len(opd_records), cfg.seed)
    n_items = cfg.prompts * cfg.samples
    # labelled streams: a fresh seed per arm seed, disjoint from the pre-training run's own stream (seed 0)
    labelled = labelled_stream(1000 + cfg.seed, cfg.world, views, cfg.easy_share)
    hard_labelled = labelled_stream(2000 + cfg.seed, cfg.world, views, 0.0, hard_full=True)
    n_tokens = cfg.world.max_new_tokens
    before = eval_first or evaluate_views(model, processor, eval_records, views, max_new_tokens=n_tokens)
    curve = [{"step": 0, "full": before["full"], "crop": before["crop"], "seconds": 0.0}]
    t0 = time.perf_counter()
    train_s = 0.0
    logs: list[dict] = []
    bar = tqdm(range(1, cfg.steps + 1), desc=cfg.label(), disable=not progress)
    for step in bar:
        ts = time.perf_counter()
        m: dict = {}
        if cfg.arm in ("opd", "opd+continue"):
            batch = [opd_records[i] for i in stream.take(cfg.prompts)]
            res = vision_opd_step(ocfg, StepContext(model, teacher, processor, optimizer, scheduler, suppress, torch.device("cpu")), batch)
            m = res.metrics
            if dump_every and step % dump_every == 0:
                from ..training.token_dump import token_rows, write_token_rows

                Path(tokens_dir).mkdir(parents=True, exist_ok=True)
                write_token_rows(Path(tokens_dir) / "tokens.jsonl", step, token_rows(
                    processor, batch, res.rollout, res.token_values, res.responses.from_teacher_B))
        if cfg.arm in ("continue", "opd+continue"):
            items = [next(labelled) for _ in range(n_items)]
            m["sft_loss"] = supervised_step(model, processor, [v for v, _ in items], [a for _, a in items], optimizer,
                                            scheduler=scheduler if cfg.arm == "continue" else None)
        elif cfg.arm == "supervised":
            items = [next(hard_labelled) for _ in range(n_items)]
            m["sft_loss"] = supervised_step(model, processor, [v for v, _ in items], [a for _, a in items], optimizer, scheduler=scheduler)
        train_s += time.perf_counter() - ts
        logs.append({"step": step, **{k: v for k, v in m.items() if isinstance(v, (int, float))}})
        if step % cfg.eval_every == 0 or step == cfg.steps:
            ev = evaluate_views(model, processor, eval_records, views, max_new_tokens=n_tokens)
            curve.append({"step": step, "full": ev["full"], "crop": ev["crop"], "seconds": round(train_s, 1)})
            bar.set_postfix(full=f"{ev['full']:.2f}", crop=f"{ev['crop']:.2f}")
    after = ev
    return {"arm": cfg.label(), "config": {k: v for k, v in cfg.__dict__.items() if k != "world"}, "seed": cfg.seed,
            "before": before, "after": after, "curve": curve, "proposals": proposals, "train_seconds": round(train_s, 1),
            "seconds": round(time.perf_counter() - t0, 1), "log": logs, "model": model, "processor": processor}
