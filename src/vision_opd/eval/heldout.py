"""Held-out accuracy during training, shared out over the ranks: every rank evaluates its share, all gather.

    r = evaluate_heldout(model, processor, records, ranks=Ranks.of(accelerator), synced_gpus=fsdp)
    r["full"]["accuracy"], r["crop"]["accuracy"]          # the same numbers on every rank, and as one process gets

The views are the benchmark's (`views.view_of`: the bare full image, the evidence crop), whatever red box or hint
the training views add. For each view the records that have it are split with `Ranks.shard` (every rank gets the
same number, so under FSDP every rank runs the same generate calls, with synced decoding steps; the padding
repeats are generated and dropped), the samples are gathered in record order, and `summarise_views` reads them
exactly as `evaluate_records` does in one process. No rank waits while another evaluates alone.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from ..data.records import Record
from ..data.views import ViewConfig
from .hf_backend import HFGenerator
from .run import summarise_views
from .samples import generate_samples
from .views import view_available


def evaluate_heldout(model, processor, records: Sequence[Record], views: Sequence[str] = ("full", "crop"), *,
                     batch_size: int = 16, max_new_tokens: int = 16, view_cfg: ViewConfig = ViewConfig(), ranks=None,
                     synced_gpus: bool = False) -> dict[str, Any]:
    """`evaluate_records` over `ranks` (`distributed.Ranks`; None = one process): the same result on every rank."""
    t0 = time.perf_counter()
    gen = HFGenerator(model, processor, max_new_tokens=max_new_tokens, synced_gpus=synced_gpus)
    scorable = [r for r in records if r.answer is not None]
    by_view: dict[str, list[dict[str, Any]]] = {}
    for view in views:
        todo = [r for r in scorable if view_available(r, view)]  # the same list on every rank
        if ranks is None or ranks.world == 1:
            by_view[view] = generate_samples(gen, todo, [view], batch_size=batch_size, view_cfg=view_cfg)[view]
            continue
        share, n_real = ranks.shard(todo)
        mine = generate_samples(gen, share, [view], batch_size=batch_size, view_cfg=view_cfg)[view][:n_real] if todo else []
        got = {s["id"]: s for part in ranks.gather(mine) for s in part}
        by_view[view] = [got[r.id] for r in todo]
    return {**summarise_views(by_view, records), "seconds": time.perf_counter() - t0}
