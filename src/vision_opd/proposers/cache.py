"""Run a proposer over Records once, cache the proposals as JSONL, and score them against known boxes.

    from vision_opd.proposers import AttentionProposer, ProposalCache, propose_records, evaluate_proposals
    cache = ProposalCache("runs/proposals/qwen2_5_vl_7b.jsonl")
    props = propose_records(model, processor, records, AttentionProposer(), cache)
    evaluate_proposals(records, props)  # {"mean_iou", "recall@0.5", "mean_forward_passes", "fallback_rate", ...}

Cache key: record id + proposer name + a hash of the proposer's settings and of the model's identity
(config name_or_path + model_type), so changing any setting computes fresh proposals while a rerun
reuses them. The model's *weights* are not hashed: proposals of a model that is being trained go
stale; keep one cache file per checkpoint. One JSON object a line, flushed after every record, so a
crash loses at most the record in flight; a torn last line is skipped on reading.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..data.images import DEFAULT_MAX_IMAGE_PIXELS, open_image
from ..data.records import Record
from ..data.views import prompt_text, proposal_image
from .window import Proposal, iou

log = logging.getLogger(__name__)


def proposer_name(proposer: Callable) -> str:
    if hasattr(proposer, "name"):
        return str(proposer.name)
    if isinstance(proposer, functools.partial):
        return proposer_name(proposer.func)
    return getattr(proposer, "__qualname__", type(proposer).__name__)


def proposer_settings(proposer: Callable) -> dict[str, Any]:
    """The settings that define a proposer's output: dataclass fields, or a partial's arguments."""
    if dataclasses.is_dataclass(proposer):
        return dataclasses.asdict(proposer)
    if isinstance(proposer, functools.partial):
        return {"func": proposer_name(proposer.func), "args": list(proposer.args), "kwargs": proposer.keywords}
    return {"func": proposer_name(proposer)}


def settings_hash(proposer: Callable, model=None) -> str:
    settings = proposer_settings(proposer)
    if model is not None:
        from ..models.parts import unwrap

        cfg = unwrap(model).config
        settings = {"proposer": settings, "model": [getattr(cfg, "_name_or_path", ""), cfg.model_type]}
    blob = json.dumps(settings, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def proposal_to_json(p: Proposal, *, with_relevance: bool = False) -> dict[str, Any]:
    d = {"box": [float(v) for v in p.box], "confidence": float(p.confidence), "forward_passes": int(p.forward_passes),
         "fallback": bool(p.fallback), "note": p.note, "extra": p.extra}
    if with_relevance and p.relevance is not None:
        d["relevance"] = np.asarray(p.relevance).tolist()
    return d


def proposal_from_json(d: dict[str, Any]) -> Proposal:
    rel = d.get("relevance")
    return Proposal(tuple(d["box"]), d["confidence"], d["forward_passes"],
                    None if rel is None else np.asarray(rel, dtype=np.float64),
                    fallback=d.get("fallback", False), note=d.get("note", ""), extra=d.get("extra", {}))


class ProposalCache:
    """Proposals keyed by (record id, proposer name, settings hash), in a JSONL file (appended to)."""

    def __init__(self, path: str | Path, *, with_relevance: bool = False):
        self.path = Path(path)
        self.with_relevance = with_relevance  # also store the relevance maps (bigger files)
        self._entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                        self._entries[obj["key"]] = obj
                    except (json.JSONDecodeError, KeyError):
                        log.warning("%s line %d: unreadable cache entry skipped (a torn write?)", self.path, n)

    @staticmethod
    def key(record_id: str, name: str, settings: str) -> str:
        return f"{record_id}|{name}|{settings}"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Proposal | None:
        obj = self._entries.get(key)
        return None if obj is None else proposal_from_json(obj["proposal"])

    def put(self, key: str, record_id: str, name: str, settings: str, proposal: Proposal) -> None:
        obj = {"key": key, "id": record_id, "proposer": name, "settings": settings,
               "proposal": proposal_to_json(proposal, with_relevance=self.with_relevance)}
        self._entries[key] = obj
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj) + "\n")


ROUND = 8  # several processes: records each rank proposes between two gathers (a crash loses at most one round)


def propose_records(model, processor, records: Sequence[Record], proposer: Callable,
                    cache: ProposalCache | None = None, *, progress: bool = True,
                    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, ranks=None) -> dict[str, Proposal]:
    """{record id: Proposal} for every record, computing only those not in `cache`.

    The proposer sees the full image (as decoded for the student view, but never with a drawn red box:
    `proposal_image`) and the bare question (no options: the options do not say where to look, and the
    grounding prompt wraps the question in its own text), or, for a proposer with `needs_prompt` (confidence
    search), the full prompt with options and instruction.

    `ranks` (`distributed.Ranks`: rank, world, gather) over several processes: the records missing from the cache
    are shared out among the ranks, and every `ROUND` records per rank the new proposals are gathered, so every rank
    ends with all of them in about 1/world of the time; only rank 0 writes the cache.
    """
    from tqdm.auto import tqdm

    images = {r.id: proposal_image(r) for r in records}  # every record checked before any work
    name, settings = proposer_name(proposer), settings_hash(proposer, model)
    key = {r.id: ProposalCache.key(r.id, name, settings) for r in records}
    out: dict[str, Proposal] = {}
    for r in records:
        if cache is not None and (p := cache.get(key[r.id])) is not None:
            out[r.id] = p
    todo = [r for r in records if r.id not in out]

    def compute(r: Record) -> Proposal:
        text = prompt_text(r) if getattr(proposer, "needs_prompt", False) else r.question
        return proposer(model, processor, open_image(images[r.id], max_pixels=max_image_pixels), text)

    def store(rid: str, p: Proposal) -> None:
        out[rid] = p
        if cache is not None and (ranks is None or ranks.rank == 0):
            cache.put(key[rid], rid, name, settings, p)

    if ranks is None or ranks.world == 1:
        for r in tqdm(todo, desc=f"propose ({name})", disable=not progress, leave=False):
            store(r.id, compute(r))
    else:
        by_id = {r.id: r for r in records}
        ids = ranks.gather([r.id for r in todo])[0]  # rank 0's list: every rank has read the cache before it is written
        mine = [by_id[i] for i in ids[ranks.rank::ranks.world]]
        rounds = -(-len(ids) // (ranks.world * ROUND))  # the same on every rank
        for k in tqdm(range(rounds), desc=f"propose ({name}, {ranks.world} ranks)", disable=not progress, leave=False):
            done = [(r.id, proposal_to_json(compute(r))) for r in mine[k * ROUND:(k + 1) * ROUND]]
            for rid, p in (x for part in ranks.gather(done) for x in part):
                store(rid, proposal_from_json(p))
    log.info("proposals: %d computed, %d from the cache", len(todo), len(records) - len(todo))
    return {r.id: out[r.id] for r in records}


def propose_with(model, processor, records: Sequence[Record], name: str, views=None, cache_path: str | Path | None = None,
                 *, progress: bool = True, ranks=None) -> dict[str, Proposal]:
    """`propose_records` with the proposer called `name` (`make_proposer`: its crops follow `views`), the image
    decoding of `views` and, when given, a cache file: the one way training, the gap probe and the demo propose."""
    from . import make_proposer

    kw = {} if views is None else {"max_image_pixels": views.max_image_pixels}
    cache = ProposalCache(cache_path) if cache_path else None
    return propose_records(model, processor, records, make_proposer(name, views), cache, progress=progress, ranks=ranks, **kw)


def apply_proposals(records: Sequence[Record], proposals: dict[str, Proposal], *, keep_fallback: bool = False,
                    copy: bool = False) -> list[Record]:
    """The records that keep a crop signal, each with meta["proposed_box"] (what `teacher_source=proposer` and the
    gap probe's `proposed` view crop), "proposal_confidence" and "proposal_fallback". A proposal that fell back to
    the full image carries no crop signal: its record is left out (and untouched) unless keep_fallback.
    copy=True annotates shallow copies and leaves `records` as they were."""
    import copy as _copy

    kept = []
    for r in records:
        p = proposals[r.id]
        if p.fallback and not keep_fallback:
            continue
        if copy:
            r = _copy.copy(r)
            r.meta = dict(r.meta)
        r.meta.update(proposed_box=list(p.box), proposal_confidence=p.confidence, proposal_fallback=p.fallback)
        kept.append(r)
    return kept


def evaluate_proposals(records: Sequence[Record], proposals: dict[str, Proposal]) -> dict[str, float]:
    """IoU / recall@0.5 against the records' known boxes, plus the cost and the fallback rate.

    mean_iou and recall@0.5 are over the records that have a box (a fallback counts with the IoU of
    the full image); mean_forward_passes and fallback_rate are over every record with a proposal.
    """
    missing = [r.id for r in records if r.id not in proposals]
    assert not missing, f"{len(missing)} records have no proposal (first: {missing[:3]}); run propose_records first"
    ious = [iou(proposals[r.id].box, r.box) for r in records if r.box is not None]
    ps = [proposals[r.id] for r in records]
    n = len(ps)
    return {
        "n": n,
        "n_with_box": len(ious),
        "mean_iou": float(np.mean(ious)) if ious else float("nan"),
        "recall@0.5": float(np.mean([v >= 0.5 for v in ious])) if ious else float("nan"),
        "mean_forward_passes": float(np.mean([p.forward_passes for p in ps])) if n else float("nan"),
        "fallback_rate": float(np.mean([p.fallback for p in ps])) if n else float("nan"),
        "mean_confidence": float(np.mean([p.confidence for p in ps])) if n else float("nan"),
    }


def attach_proposals(model, processor, records: Sequence[Record], name: str, views, cache_path: str | Path, *,
                     keep_fallback: bool = False, verbose: bool = True, progress: bool = True, ranks=None) -> list[Record]:
    """Label-free evidence boxes from `model` for `views.teacher_source=proposer` (cached in `cache_path`; with
    `ranks`, computed by every rank on a share and gathered, see `propose_records`).

    Each kept record gets meta["proposed_box"]; its true box (if any) is left alone for evaluation. Records whose
    proposal fell back to the full image carry no crop signal and are dropped unless keep_fallback.
    """
    proposals = propose_with(model, processor, records, name, views, cache_path, progress=progress, ranks=ranks)
    kept = apply_proposals(records, proposals, keep_fallback=keep_fallback)
    if verbose:
        n_fallback = sum(proposals[r.id].fallback for r in records)
        print(f"[vision-opd] proposer {name}: {n_fallback} of {len(records)} proposals fell back to the full image"
              f"{' (kept)' if keep_fallback else ' (dropped)'}")
    if not kept:
        raise ValueError("every proposal fell back to the full image: nothing to distil (teacher.keep_fallback=true keeps them)")
    return kept

