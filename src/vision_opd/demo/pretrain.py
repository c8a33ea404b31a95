"""Supervised pre-training of the demo's tiny VLM on the LABELLED part of the synthetic world.

    vision-opd pretrain --out runs/pretrain                 # until validation accuracy plateaus
    vision-opd pretrain --out /tmp/p --max-steps 20 --n-val 24   # a smoke run

The labelled data is what a model "has seen with labels" (demo/world.py explains the world):
evidence crops (the target alone, large) and a share `easy_share` of easy full images (the target is the
only object). Hard full images (the target among look-alike distractors) are never labelled here: that is
the regime Vision-OPD later learns without labels. Items are generated on the fly (a fresh stream, seed
split "pretrain"), so pre-training cannot overfit a fixed set; the loss is next-token cross-entropy on
the answer's text ("red", "4", "circle": a short answer, read back into an option letter by
`eval.choice.extract_choice`) and the end-of-turn token. Short answers rather than letters: a 2-layer
model from scratch learns "colour -> word" in a few hundred steps, while "colour -> which of the shuffled
options -> its letter" stayed at chance for 300 steps (docs/demo.md); they also give Vision-OPD several
response tokens per sample to distil instead of one.

Every `eval_every` steps the validation accuracy of both views (hard full image, crop) is logged (the
pre-training curve), with the accuracy on easy full images (the labelled full-image regime); training stops when
none of the three (hard full, crop, easy full) has improved by `min_delta` for `patience` evaluations (the
plateau), or at `max_steps` / `time_budget_s`. Easy full images are in the rule because reading a lone object
in a full image is learned late and suddenly (step ~2,400 of the shipped run, docs/demo.md M21). The model and
processor are saved with `save_pretrained` in `out/model`, the curve in `out/pretrain_curve.json`.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.crops import crop_image
from ..data.records import Record
from ..data.validate import read_records
from ..data.views import View, ViewConfig, encode_views, prompt_text, student_view, teacher_view
from ..scoring.forward import response_logits
from .accuracy import accuracy
from .pretrain_config import PretrainConfig
from .world import SPLIT_SEEDS, WorldConfig, draw_item, response_text, write_synthetic

# The views the demo model was pre-trained and is measured with: the teacher's crop at its own size (the processor's
# fixed 168 x 168 budget then resizes it), not the 2x enlargement of the real-model default (views.teacher_upscale).
DEMO_VIEWS = ViewConfig(teacher_upscale=1.0)

# The demo model: a Qwen2-VL shrunk to ~0.27M parameters (1.1 MB in float32); Qwen2-VL rather than 2.5-VL
# because its vision tower has no window attention: ~25% faster on this CPU at the same accuracy budget.
DEMO_MODEL = dict(family="qwen2_vl", image_size=168, hidden=64, layers=2, vision_hidden=48, vision_depth=2, head_dim=16)


def build_demo_model(seed: int = 0):
    from ..models.tiny import build_tiny

    kw = dict(DEMO_MODEL)
    return build_tiny(kw.pop("family"), seed=seed, **kw)


def answer_ids(processor, answer: str) -> list[int]:
    """Token ids of a supervised response: the answer's text (e.g. "red"), then end-of-turn."""
    tok = processor.tokenizer
    return tok.encode(answer, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]


def labelled_stream(seed: int, world: WorldConfig, views: ViewConfig, easy_share: float, *, hard_full: bool = False):
    """Infinite (View, response text) stream of labelled items: crops and easy full images.

    The response is the world's labelled answer (`world.answers`: the option's text, or a short sentence).
    hard_full=True yields hard full images instead (control c: the supervised upper bound).
    """
    rng = random.Random(seed * 1_000_003 + SPLIT_SEEDS["pretrain"])
    i = 0
    while True:
        qtype = world.question_types[i % len(world.question_types)]
        i += 1
        if hard_full:
            it = draw_item(rng, world, qtype)
            img = it.image
        elif rng.random() < easy_share:
            it = draw_item(rng, world.easy(), qtype)
            img = it.image
        else:
            it = draw_item(rng, world, qtype)
            img = crop_image(it.image, it.box, expand_ratio=views.expand_ratio, min_side=views.min_side,
                             target_pixels=views.teacher_pixels, upscale=views.teacher_upscale)
        yield View([img], prompt_text(Record("x", "", it.question, it.options))), response_text(it, world.answers)


def supervised_step(model, processor, views: list[View], answers: list[str], optimizer, *, grad_clip: float = 1.0,
                    scheduler=None) -> float:
    """One cross-entropy step on the answer texts (+ end-of-turn) of `views`, token-mean; returns the loss."""
    device = next(model.parameters()).device
    inputs = encode_views(processor, views).to(device)
    seqs = [answer_ids(processor, a) for a in answers]
    T = max(len(x) for x in seqs)
    pad = processor.tokenizer.pad_token_id
    resp = torch.tensor([x + [pad] * (T - len(x)) for x in seqs], device=device)
    mask = torch.tensor([[1.0] * len(x) + [0.0] * (T - len(x)) for x in seqs], device=device)
    model.train()
    logits = response_logits(model, inputs, resp, mask)
    target = resp.masked_fill(mask == 0, -100)  # padding after end-of-turn is not a target
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.item()


def eval_split(data_dir: str | Path, split: str, n: int, world: WorldConfig) -> list[Record]:
    """The hard full-image records of a split (written once to data_dir/split, read back as Records)."""
    path = Path(data_dir) / split / "records.jsonl"
    stamp = path.parent / "world.json"  # the world the cached items were drawn from: a changed world regenerates
    want = json.dumps(world.to_dict(), sort_keys=True)
    if path.exists() and stamp.exists() and stamp.read_text() == want:
        recs = read_records(path)
        if len(recs) == n:
            return recs
    write_synthetic(path.parent, n, SPLIT_SEEDS[split], world, prefix=f"{split}_")
    stamp.write_text(want)
    return read_records(path)


def evaluate_views(model, processor, records: list[Record], views: ViewConfig, *, progress: bool = False,
                   max_new_tokens: int = 8) -> dict:
    """Greedy accuracy on the hard full images and on their crops (`max_new_tokens`: the world's, `WorldConfig.max_new_tokens`)."""
    full = accuracy(model, processor, records, lambda r: student_view(r, views), progress=progress, desc="eval full",
                    max_new_tokens=max_new_tokens)
    crop = accuracy(model, processor, records, lambda r: teacher_view(r, views), progress=progress, desc="eval crop",
                    max_new_tokens=max_new_tokens)
    return {"full": full["accuracy"], "crop": crop["accuracy"], "full_per_category": full["per_category"],
            "crop_per_category": crop["per_category"]}


def pretrain(out_dir: str | Path, cfg: PretrainConfig = PretrainConfig(), *, views: ViewConfig = DEMO_VIEWS,
             progress: bool = True) -> dict:
    """Pre-train the demo model to its validation plateau; save it to out_dir/model; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model, processor = load_demo_model(cfg.init) if cfg.init else build_demo_model(cfg.seed)
    model.to(cfg.device)
    val = eval_split(out / "data", "val", cfg.n_val, cfg.world)
    val_easy = eval_split(out / "data_easy", "val", max(3, cfg.n_val // 2), cfg.world.easy())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    stream = labelled_stream(cfg.seed, cfg.world, views, cfg.easy_share)
    curve: list[dict] = []
    best = {"full": -1.0, "crop": -1.0, "easy": -1.0}
    stale, t0, losses = 0, time.perf_counter(), []
    bar = tqdm(range(1, cfg.max_steps + 1), desc="pretrain", disable=not progress)
    step = 0
    for step in bar:
        batch = [next(stream) for _ in range(cfg.batch_size)]
        losses.append(supervised_step(model, processor, [v for v, _ in batch], [a for _, a in batch], optimizer, scheduler=scheduler))
        done = step == cfg.max_steps or time.perf_counter() - t0 > cfg.time_budget_s
        if step % cfg.eval_every == 0 or done:
            ev = evaluate_views(model, processor, val, views, max_new_tokens=cfg.world.max_new_tokens)
            easy = accuracy(model, processor, val_easy, lambda r: student_view(r, views),
                            max_new_tokens=cfg.world.max_new_tokens)["accuracy"]
            point = {"step": step, "seconds": round(time.perf_counter() - t0, 1), "loss": sum(losses) / len(losses),
                     "val_full": ev["full"], "val_crop": ev["crop"], "val_easy_full": easy}
            losses = []
            curve.append(point)
            bar.set_postfix(full=f"{ev['full']:.2f}", crop=f"{ev['crop']:.2f}", easy=f"{easy:.2f}", loss=f"{point['loss']:.3f}")
            improved = False
            for k, v in (("full", ev["full"]), ("crop", ev["crop"]), ("easy", easy)):
                if v > best[k] + cfg.min_delta:
                    best[k], improved = v, True
            stale = 0 if improved else stale + 1
            if stale >= cfg.patience:
                done = True
        if done:
            break
    model_dir = out / "model"
    model.cpu().save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    summary = {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "curve": curve, "config": cfg.to_dict(),
               "model": DEMO_MODEL, "params": sum(p.numel() for p in model.parameters())}
    (out / "pretrain_curve.json").write_text(json.dumps(summary, indent=1))
    (model_dir / "pretrain_curve.json").write_text(json.dumps(summary, indent=1))
    return summary


def load_demo_model(model_dir: str | Path):
    """(model, processor) of a saved demo checkpoint (float32, eval mode)."""
    from ..models.loading import load_model_and_processor

    model, processor = load_model_and_processor(str(model_dir), dtype="float32", device=torch.device("cpu"))
    return model.eval(), processor
