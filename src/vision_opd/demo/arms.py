"""The training arms of the demo and its study: Vision-OPD and the controls, one loop each, same budget.

    run_arm("opd", model_dir, data, seed=0, steps=150)      # label-free Vision-OPD (the demo)
    run_arm("continue", ...)     # (a) pre-training simply continued (labelled crops + easy full images)
    run_arm("offpolicy", ...)    # (b) the frozen model's greedy crop answers as SFT targets on full images
    run_arm("supervised", ...)   # (c) hard full images WITH labels (the upper bound)
    run_arm("opd+continue", ...) # (c2) one Vision-OPD step and one continued pre-training step per step
    run_arm("opd", ..., teacher="ema" | "live", loss="rkl" | "fkl" | "topk" | "sampled")  # (d), (e)

Every arm starts from the same pre-trained checkpoint, takes `steps` optimizer steps of the same number
of items (Vision-OPD: `prompts` prompts x `samples` rollouts; the supervised arms: prompts x samples
labelled items), and is evaluated on the held-out hard full images and their crops every `eval_every`
steps. Vision-OPD never reads `Record.answer` (it goes through `train.vision_opd_step`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import Config
from ..data.records import Record
from .world import WorldConfig
from ..data.views import ViewConfig, encode_views, student_view, teacher_view
from .pretrain import DEMO_VIEWS, PretrainConfig, evaluate_views, labelled_stream, load_demo_model, supervised_step
from ..rollout import sample

LOSSES = {  # name -> (loss.kind, loss.alpha)
    "jsd": ("jsd", 0.5),
    "rkl": ("jsd", 1.0),
    "fkl": ("jsd", 0.0),
    "topk": ("topk", 0.5),
    "sampled": ("sampled", 1.0),
}
ARMS = ("opd", "continue", "offpolicy", "supervised", "opd+continue")


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
    loss: str = "jsd"  # jsd | rkl | fkl | topk | sampled
    top_k: int = 8
    temperature: float = 1.0
    eval_every: int = 50
    seed: int = 0
    easy_share: float = PretrainConfig().easy_share  # the `continue` arms' labelled mix (the checkpoint's own)
    crop_source: str = "box"  # the teacher's crop: "box" (the true evidence box) or a proposer's name (no boxes used)
    world: WorldConfig = field(default_factory=WorldConfig)

    def opd_config(self) -> Config:
        cfg = Config()
        kind, alpha = LOSSES[self.loss]
        cfg.loss.kind, cfg.loss.alpha, cfg.loss.top_k, cfg.loss.chunk_size = kind, alpha, self.top_k, None
        cfg.rollout.samples_per_prompt, cfg.rollout.temperature, cfg.rollout.max_new_tokens = self.samples, self.temperature, 8
        cfg.teacher.mode, cfg.teacher.ema_rate = self.teacher, self.ema_rate
        cfg.optim.lr, cfg.optim.warmup_steps = self.lr, self.warmup_steps
        cfg.train.steps, cfg.train.prompts_per_step = self.steps, self.prompts
        cfg.train.micro_batch_size, cfg.train.seed, cfg.train.device = self.prompts * self.samples, self.seed, "cpu"
        return cfg.validate()

    def label(self) -> str:
        if self.arm in ("opd", "opd+continue"):
            src = "" if self.crop_source == "box" else f", {self.crop_source} crops"
            return f"{self.arm} ({self.loss}, {self.teacher} teacher{src})"
        return self.arm


def _greedy_answers(model, processor, records: list[Record], views_cfg: ViewConfig, suppress) -> list[str | None]:
    """The model's greedy answer on each record's crop, as the chosen option's text (None when unreadable)."""
    from ..eval.choice import extract_choice

    inputs = encode_views(processor, [teacher_view(r, views_cfg) for r in records])
    ro = sample(model, processor, inputs, samples_per_prompt=1, max_new_tokens=8, suppress_ids=suppress, do_sample=False)
    out = []
    for r, ids, m in zip(records, ro.response_ids_B_T, ro.response_mask_B_T, strict=True):
        text = processor.tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=True)
        letter = extract_choice(text, r.options)
        out.append(None if letter is None else r.options["ABCDEFGHIJKLMNOPQRSTUVWXYZ".index(letter)])
    return out


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
            proposal_cache: Path | None = None) -> dict:
    """Train one arm from the checkpoint in model_dir; returns {"curve": [...], "before", "after", "seconds"}.

    cfg.crop_source other than "box": the initial model proposes every Vision-OPD record's crop first (cached in
    `proposal_cache`), the teacher reads those crops, and records whose proposal fell back are left out. The
    held-out crop accuracy is always measured on the true boxes (the reference the gap is defined by)."""
    from ..models.parts import unwrap
    from ..models.loading import vision_token_ids
    from ..teacher import Teacher
    from ..stream import PromptStream
    from ..train import lr_lambda, seed_everything, vision_opd_step

    assert cfg.arm in ARMS, f"arm {cfg.arm!r}: choose one of {ARMS}"
    seed_everything(cfg.seed)
    model, processor = load_demo_model(model_dir)
    suppress = vision_token_ids(unwrap(model), processor)
    ocfg = cfg.opd_config()
    ocfg.views = views
    proposals = None
    if cfg.crop_source != "box" and cfg.arm in ("opd", "opd+continue"):
        from dataclasses import replace

        opd_records, proposals = proposed_records(model, processor, opd_records, cfg.crop_source, views, proposal_cache,
                                                  progress)
        if not opd_records:
            raise ValueError(f"every {cfg.crop_source} proposal fell back to the full image: nothing to distil")
        ocfg.views = replace(views, teacher_source="proposer")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(ocfg))
    teacher = Teacher(model, cfg.teacher if "opd" in cfg.arm else "frozen", cfg.ema_rate)
    stream = PromptStream(len(opd_records), cfg.seed)
    n_items = cfg.prompts * cfg.samples
    # labelled streams: a fresh seed per arm seed, disjoint from the pre-training run's own stream (seed 0)
    labelled = labelled_stream(1000 + cfg.seed, cfg.world, views, cfg.easy_share)
    hard_labelled = labelled_stream(2000 + cfg.seed, cfg.world, views, 0.0, hard_full=True)
    before = eval_first or evaluate_views(model, processor, eval_records, views)
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
            m = vision_opd_step(ocfg, model, teacher, processor, batch, optimizer, scheduler, suppress, torch.device("cpu")).metrics
        if cfg.arm in ("continue", "opd+continue"):
            items = [next(labelled) for _ in range(n_items)]
            m["sft_loss"] = supervised_step(model, processor, [v for v, _ in items], [a for _, a in items], optimizer,
                                            scheduler=scheduler if cfg.arm == "continue" else None)
        elif cfg.arm == "supervised":
            items = [next(hard_labelled) for _ in range(n_items)]
            m["sft_loss"] = supervised_step(model, processor, [v for v, _ in items], [a for _, a in items], optimizer, scheduler=scheduler)
        elif cfg.arm == "offpolicy":
            batch = [opd_records[i] for i in stream.take(n_items)]
            letters = _greedy_answers(teacher.module(), processor, batch, views, suppress)
            keep = [(student_view(r, views), a) for r, a in zip(batch, letters, strict=True) if a is not None]
            if keep:
                m["sft_loss"] = supervised_step(model, processor, [v for v, _ in keep], [a for _, a in keep], optimizer, scheduler=scheduler)
        train_s += time.perf_counter() - ts
        logs.append({"step": step, **{k: v for k, v in m.items() if isinstance(v, (int, float))}})
        if step % cfg.eval_every == 0 or step == cfg.steps:
            ev = evaluate_views(model, processor, eval_records, views)
            curve.append({"step": step, "full": ev["full"], "crop": ev["crop"], "seconds": round(train_s, 1)})
            bar.set_postfix(full=f"{ev['full']:.2f}", crop=f"{ev['crop']:.2f}")
    after = ev
    return {"arm": cfg.label(), "config": {k: v for k, v in cfg.__dict__.items() if k != "world"}, "seed": cfg.seed,
            "before": before, "after": after, "curve": curve, "proposals": proposals, "train_seconds": round(train_s, 1),
            "seconds": round(time.perf_counter() - t0, 1), "log": logs, "model": model, "processor": processor}
