"""Benchmark evaluation: batched greedy generation, per-sample JSONL (resumable), results JSON.

    vision-opd eval --model Qwen/Qwen2.5-VL-7B-Instruct --benchmark vstar --data /data/vstar --out runs/eval/vstar
    vision-opd eval --model tiny:qwen2_5_vl --benchmark synthetic --data data/synth/records.jsonl --out runs/eval/tiny

A generator is any callable `generate(views: list[View]) -> list[Generation]`: `HFGenerator` (the model
in-process: left padding, greedy, vision tokens suppressed) or `openai_backend.OpenAIGenerator` (a
server the user runs). `generate_samples` feeds it batches of (record, view), scores each response with
the benchmark's `score` and appends one line per sample to samples.jsonl, flushed per batch; a rerun
skips the (id, view) pairs already there (a truncated last line is dropped). `summarise` turns the
samples of one view into accuracy (the benchmark's official aggregate), 95% bootstrap intervals and
response-length statistics. `evaluate_records` is the file-free version the training loop calls.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.records import Record
from ..data.views import View, ViewConfig, student_view, teacher_view
from ..data.crops import draw_red_box
from .benchmarks import get_benchmark
from .benchmarks.common import MC_SUFFIX, SHORT_SUFFIX, format_prompt, micro_summary, score_record
from .extraction import EXTRACTION_RULE
from .statistics import bootstrap_ci

VIEWS = ("full", "crop", "redbox", "full+crop", "proposed")
SAMPLES = "samples.jsonl"
RESULTS = "results.json"
SETTINGS = "settings.json"


class EvalError(ValueError):
    """An evaluation that cannot go on; the message says what to change."""


@dataclass
class Generation:
    text: str  # the raw response (special tokens other than EOS kept, so `<think>` survives)
    tokens: int | None  # response tokens up to and including EOS (None: the server did not say)
    truncated: bool  # no EOS within max_new_tokens
    seconds: float  # this item's share of its batch's wall time


# ----------------------------------------------------------------------------- views


def view_available(record: Record, view: str) -> bool:
    """Whether `view` can be built for `record` (without opening its image)."""
    if view not in VIEWS:
        raise EvalError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
    has_crop = record.box is not None or bool(record.teacher_image)
    return {"full": True, "crop": has_crop, "redbox": record.box is not None, "full+crop": has_crop,
            "proposed": "proposed_box" in record.meta}[view]


def view_of(record: Record, view: str, cfg: ViewConfig = ViewConfig()) -> View:
    """The `view` of a record with the benchmark prompt (`format_prompt`): the same text in every view.

    crop = `teacher_view` of the evidence box, or the record's teacher_image when it has no box;
    redbox = the full image with the expanded box drawn in red; full+crop = both images, full first;
    proposed = the crop of a label-free proposer's box (record.meta["proposed_box"], `eval.gap --proposer`).
    """
    text = format_prompt(record)
    full = student_view(record, cfg).images
    if view == "full":
        return View(full, text)
    if view == "redbox":
        return View([draw_red_box(full[0], record.box, expand_ratio=cfg.expand_ratio)], text)
    source = "proposer" if view == "proposed" else "box" if record.box is not None else "given"
    crop = teacher_view(record, ViewConfig(**{**asdict(cfg), "teacher_source": source, "teacher_text": None})).images
    return View(full + crop if view == "full+crop" else crop, text)


# ----------------------------------------------------------------------------- the HF generator


def chat_texts(processor, views: Sequence[View], enable_thinking: bool | None = None) -> list[str]:
    kw = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    out = []
    for v in views:
        content = [{"type": "image"} for _ in v.images] + [{"type": "text", "text": v.text}]
        out.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                 tokenize=False, **kw))
    return out


class HFGenerator:
    """Batched greedy decoding with a Hugging Face model: left padding, vision tokens suppressed.

    `min_pixels` / `max_pixels` override the image processor's pixel budget for every image.
    """

    def __init__(self, model, processor, *, max_new_tokens: int = 32, min_pixels: int | None = None,
                 max_pixels: int | None = None, enable_thinking: bool | None = None, name: str = ""):
        from ..models.parts import unwrap
        from ..models.loading import vision_token_ids

        self.model, self.processor, self.name = model, processor, name
        self.max_new_tokens, self.enable_thinking = max_new_tokens, enable_thinking
        self.suppress = vision_token_ids(unwrap(model), processor)
        size = getattr(processor.image_processor, "size", None) or {}
        self.min_pixels = min_pixels or size.get("shortest_edge") or getattr(processor.image_processor, "min_pixels", None)
        self.max_pixels = max_pixels or size.get("longest_edge") or getattr(processor.image_processor, "max_pixels", None)
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise EvalError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}; set both")
        self.images_kwargs = {"size": {"shortest_edge": int(self.min_pixels), "longest_edge": int(self.max_pixels)}} \
            if (min_pixels or max_pixels) else {}

    def encode(self, views: Sequence[View]):
        texts = chat_texts(self.processor, views, self.enable_thinking)
        images = [img for v in views for img in v.images]
        self.processor.tokenizer.padding_side = "left"  # generation appends on the right: pad on the left
        kw = {"images_kwargs": self.images_kwargs} if self.images_kwargs and images else {}
        return self.processor(text=texts, images=images or None, return_tensors="pt", padding=True, **kw)

    @torch.no_grad()
    def __call__(self, views: Sequence[View]) -> list[Generation]:
        from ..rollout import eos_ids_of, sample

        t0 = time.perf_counter()
        inputs = self.encode(views).to(next(self.model.parameters()).device)
        ro = sample(self.model, self.processor, inputs, samples_per_prompt=1, max_new_tokens=self.max_new_tokens,
                    suppress_ids=self.suppress, do_sample=False)
        eos = set(eos_ids_of(self.model, self.processor))
        texts = []
        for ids_T, mask_T in zip(ro.response_ids_B_T.tolist(), ro.response_mask_B_T.tolist(), strict=True):
            keep = [i for i, m in zip(ids_T, mask_T, strict=True) if m and i not in eos]
            texts.append(self.processor.tokenizer.decode(keep, skip_special_tokens=False))
        per_item = (time.perf_counter() - t0) / len(views)
        return [Generation(t, int(n), bool(tr), per_item)
                for t, n, tr in zip(texts, ro.lengths_B.tolist(), ro.truncated_B.tolist(), strict=True)]

    def settings(self) -> dict[str, Any]:
        m = self.model
        template = getattr(self.processor, "chat_template", None) or getattr(self.processor.tokenizer, "chat_template", "")
        return {
            "backend": "hf",
            "model": self.name or getattr(m, "name_or_path", type(m).__name__),
            "model_type": m.config.model_type,
            "dtype": str(next(m.parameters()).dtype).replace("torch.", ""),
            "n_parameters": sum(p.numel() for p in m.parameters()),
            "pixel_budget": {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels},
            "decoding": {"greedy": True, "max_new_tokens": self.max_new_tokens, "suppressed_token_ids": self.suppress},
            "chat_template_sha256": hashlib.sha256(str(template).encode()).hexdigest(),
            "enable_thinking": self.enable_thinking,
        }


def load_hf_generator(model: str, *, dtype: str | None = None, device: str | None = None, max_new_tokens: int = 32,
                      min_pixels: int | None = None, max_pixels: int | None = None,
                      enable_thinking: bool | None = None) -> HFGenerator:
    """An HFGenerator for a hub id, a local directory, or `tiny:FAMILY` (a random tiny model, for trying it out)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    if model.startswith("tiny:"):
        from ..models.tiny import build_tiny

        from ..models.loading import resolve_dtype
        from ..models.tiny import FAMILIES

        family = model.split(":", 1)[1] or "qwen2_5_vl"
        if family not in FAMILIES:
            raise EvalError(f"--model {model}: unknown tiny family {family!r}; choose tiny:{', tiny:'.join(FAMILIES)}")
        m, proc = build_tiny(family)
        m = m.to(device=device, dtype=resolve_dtype(dtype))
    else:
        from ..models.loading import load_model_and_processor

        m, proc = load_model_and_processor(model, dtype=dtype, device=device, min_pixels=min_pixels, max_pixels=max_pixels)
    return HFGenerator(m.eval(), proc, max_new_tokens=max_new_tokens, min_pixels=min_pixels, max_pixels=max_pixels,
                       enable_thinking=enable_thinking, name=model)


# ----------------------------------------------------------------------------- samples.jsonl


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a samples.jsonl, first of each (id, view); a broken line is dropped.

    The file is rewritten with only those lines, so the next append never lands on a half line.
    """
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    kept, seen = [], set()
    for n, line in enumerate(lines):
        try:
            s = json.loads(line)
            key = (s["id"], s["view"])
        except (json.JSONDecodeError, KeyError, TypeError):
            if n == len(lines) - 1:  # an interrupted write: redo that item
                break
            raise EvalError(f"{path}: line {n + 1} is not a sample; delete the file to start over") from None
        if key not in seen:
            seen.add(key)
            kept.append(s)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in kept), encoding="utf-8")
    tmp.replace(path)
    return kept


def generate_samples(generate: Callable[[list[View]], list[Generation]], records: Sequence[Record],
                     views: Sequence[str] = ("full",), *, batch_size: int = 8, samples_path: Path | None = None,
                     view_cfg: ViewConfig = ViewConfig(), score: Callable[[Record, str], dict] = score_record,
                     progress: bool = False) -> dict[str, list[dict[str, Any]]]:
    """{view: samples in record order}; pairs already in `samples_path` are read back, not regenerated."""
    from tqdm.auto import tqdm

    done = {(s["id"], s["view"]): s for s in read_samples(samples_path)} if samples_path else {}
    out = open(samples_path, "a", encoding="utf-8") if samples_path else None
    try:
        for view in views:
            todo = [r for r in records if view_available(r, view) and (r.id, view) not in done]
            for start in tqdm(range(0, len(todo), batch_size), desc=view, disable=not progress, leave=False):
                batch = todo[start:start + batch_size]
                gens = generate([view_of(r, view, view_cfg) for r in batch])
                if len(gens) != len(batch):
                    raise EvalError(f"the generator returned {len(gens)} responses for {len(batch)} prompts")
                for r, g in zip(batch, gens, strict=True):
                    s = score(r, g.text)
                    done[(r.id, view)] = sample = {
                        "id": r.id, "view": view, "prompt": format_prompt(r), "response": g.text,
                        "extracted": s["extracted"], "gold": r.answer, "correct": bool(s["correct"]),
                        "category": r.category, "response_tokens": g.tokens, "truncated": g.truncated,
                        "seconds": round(g.seconds, 4)}
                    if out:
                        out.write(json.dumps(sample, ensure_ascii=False) + "\n")
                if out:
                    out.flush()
    finally:
        if out:
            out.close()
    return {v: [done[(r.id, v)] for r in records if (r.id, v) in done] for v in views}


# ----------------------------------------------------------------------------- summaries


def length_stats(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Response tokens: mean, p95, max, and the share truncated at max_new_tokens."""
    n_T = np.array([s["response_tokens"] for s in samples if s["response_tokens"] is not None], dtype=float)
    if n_T.size == 0:
        return {"mean": None, "p95": None, "max": None, "truncation_rate": float(np.mean([s["truncated"] for s in samples]))}
    return {"mean": float(n_T.mean()), "p95": float(np.percentile(n_T, 95)), "max": int(n_T.max()),
            "truncation_rate": float(np.mean([s["truncated"] for s in samples]))}


def summarise(samples: Sequence[dict[str, Any]], records: Sequence[Record], benchmark: str | None = None) -> dict[str, Any]:
    """Accuracy of one view's samples: the official aggregate of `benchmark` (micro when None), 95% CIs, lengths."""
    if not samples:
        raise EvalError("no samples to summarise (every item was skipped?)")
    meta = {r.id: r.meta for r in records}
    results = [{**s, "meta": meta.get(s["id"], {})} for s in samples]
    official = get_benchmark(benchmark).aggregate(results) if benchmark else micro_summary("records", results)
    correct = [float(s["correct"]) for s in samples]
    by_cat: dict[str, list[float]] = defaultdict(list)
    for s, c in zip(samples, correct, strict=True):
        if s.get("category") is not None:
            by_cat[str(s["category"])].append(c)
    accuracy = official.get("overall", official.get("accuracy", float(np.mean(correct))))
    return {
        "n": len(samples),
        "accuracy": float(accuracy),
        "accuracy_ci95": list(bootstrap_ci(correct)),
        "micro_accuracy": float(np.mean(correct)),
        "per_category": {str(k): v for k, v in official.get("per_category", {}).items()},
        "per_category_ci95": {k: list(bootstrap_ci(v)) for k, v in sorted(by_cat.items())},
        "per_category_n": {k: len(v) for k, v in sorted(by_cat.items())},
        "unextracted_rate": float(np.mean([s["extracted"] is None for s in samples])),
        "response_tokens": length_stats(samples),
        "seconds_per_item": float(np.mean([s["seconds"] for s in samples])),
        "official": official,
    }


def dataset_sha256(path: str | Path) -> dict[str, Any]:
    """sha256 of the data file; for a folder, of its annotation files (jsonl/json/tsv/csv/parquet) by name."""
    p = Path(path)
    if p.is_file():
        return {"path": str(p.resolve()), "sha256": _sha256(p)}
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in {".jsonl", ".json", ".tsv", ".csv", ".parquet"})
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(p)}\0{_sha256(f)}\n".encode())
        return {"path": str(p.resolve()), "sha256": h.hexdigest(), "files": [str(f.relative_to(p)) for f in files]}
    return {"path": str(path), "sha256": None, "note": "not a local path (hub id?): no hash"}


def _sha256(f: Path) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prompt_settings() -> dict[str, Any]:
    return {"builder": "vision_opd.eval.benchmarks.common.format_prompt", "mc_suffix": MC_SUFFIX, "short_suffix": SHORT_SUFFIX}


def start_run(out: Path, settings: dict[str, Any]) -> Path:
    """Create `out`, refuse to resume samples made with other settings, write settings.json; the samples path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / SETTINGS
    if path.exists() and (out / SAMPLES).exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(old) | set(settings) if k not in ("run",) and old.get(k) != settings.get(k))
        if diff:
            raise EvalError(f"{out} holds samples made with different settings ({', '.join(diff)}); "
                            f"use another --out, or delete {out / SAMPLES} to start over")
    path.write_text(json.dumps(settings, indent=2, default=str), encoding="utf-8")
    return out / SAMPLES


def run_settings(generator, benchmark: str, data: str | Path, n_records: int, *, limit: int | None,
                 batch_size: int, views: Sequence[str], view_cfg: ViewConfig | None = None) -> dict[str, Any]:
    """Every setting that changes the number (`run` holds the ones that do not)."""
    return {
        "model": generator.settings(),
        "prompt_template": prompt_settings(),
        "extraction_rule": EXTRACTION_RULE,
        "benchmark": get_benchmark(benchmark).name,
        "dataset": {**dataset_sha256(data), "limit": limit, "n_records": n_records},
        "views": list(views),
        **({"view_config": asdict(view_cfg)} if view_cfg is not None else {}),
        "run": {"batch_size": batch_size},
    }


def evaluate(generator, benchmark: str, data: str | Path, out: str | Path, *, limit: int | None = None,
             batch_size: int = 8, progress: bool = True) -> dict[str, Any]:
    """Evaluate on the full image: samples.jsonl (resumable) and results.json in `out`; returns the results."""
    records = get_benchmark(benchmark).load(data, limit=limit)
    scorable = [r for r in records if r.answer is not None]
    out = Path(out)
    settings = run_settings(generator, benchmark, data, len(records), limit=limit, batch_size=batch_size, views=["full"])
    samples_path = start_run(out, settings)
    t0 = time.perf_counter()
    samples = generate_samples(generator, scorable, ["full"], batch_size=batch_size, samples_path=samples_path,
                               score=get_benchmark(benchmark).score, progress=progress)["full"]
    results = {**summarise(samples, scorable, benchmark), "skipped_no_answer": len(records) - len(scorable),
               "wall_seconds_this_run": round(time.perf_counter() - t0, 3), "settings": settings}
    (out / RESULTS).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return results


def evaluate_records(model, processor, records: Sequence[Record], views: Sequence[str] = ("full", "crop"),
                     batch_size: int = 16, max_new_tokens: int = 16, view_cfg: ViewConfig = ViewConfig()) -> dict[str, Any]:
    """Greedy accuracy per view, no files: for the training loop every N steps.

    Returns {view: {"accuracy", "n", "per_category", "unextracted_rate", "mean_response_tokens",
    "truncation_rate"}, "gap": {"crop-full": ...} for each non-full view, "skipped": {view: count},
    "seconds"}. Records without an answer or without the view's evidence are skipped and counted.
    """
    t0 = time.perf_counter()
    gen = HFGenerator(model, processor, max_new_tokens=max_new_tokens)
    scorable = [r for r in records if r.answer is not None]
    by_view = generate_samples(gen, scorable, list(views), batch_size=batch_size, view_cfg=view_cfg)
    summary: dict[str, Any] = {"skipped": {v: len(records) - len(by_view[v]) for v in views}}
    for v, samples in by_view.items():
        if not samples:
            continue
        s = summarise(samples, scorable)
        summary[v] = {"accuracy": s["accuracy"], "n": s["n"], "per_category": s["per_category"],
                      "unextracted_rate": s["unextracted_rate"], "mean_response_tokens": s["response_tokens"]["mean"],
                      "truncation_rate": s["response_tokens"]["truncation_rate"]}
    if "full" in summary:
        summary["gap"] = {f"{v}-full": summary[v]["accuracy"] - summary["full"]["accuracy"]
                          for v in views if v != "full" and v in summary}
    summary["seconds"] = time.perf_counter() - t0
    return summary


__all__ = ["VIEWS", "EvalError", "Generation", "HFGenerator", "evaluate", "evaluate_records",
           "generate_samples", "load_hf_generator", "read_samples", "summarise", "view_of"]
