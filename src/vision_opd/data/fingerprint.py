"""The training data's fingerprint: every record's id and content hash, in the order the run reads them.

    fp = fingerprint(records)              # {"count": n, "ids": [...], "hashes": [...]}; ~1 s for 100k records
    change = data_change(saved, fp)        # None, or "2 record(s) added (g13, g14), 1 edited (g4)"

A record's hash is blake2b (8 bytes) of its fields (id, image path, question, options, answer, box, teacher image,
category, meta) and the sizes of its image files: an edited question or box, a replaced image of another size or a
renamed image changes it. Image bytes are not read (that would cost a pass over the whole data set); an image
rewritten in place with exactly the same size goes unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from typing import Any, Sequence

from .records import Record

FINGERPRINT = "data_fingerprint.json"
SHOWN = 5  # ids named per kind of change


def _size(path: str | None) -> int:
    try:
        return os.stat(path).st_size if path else -1
    except OSError:
        return -1


def record_hash(r: Record) -> str:
    fields = asdict(r)
    fields["image_bytes"], fields["teacher_image_bytes"] = _size(r.image), _size(r.teacher_image)
    text = json.dumps(fields, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def fingerprint(records: Sequence[Record]) -> dict[str, Any]:
    return {"count": len(records), "ids": [r.id for r in records], "hashes": [record_hash(r) for r in records]}


def _named(ids: list[str]) -> str:
    more = f", ... {len(ids) - SHOWN} more" if len(ids) > SHOWN else ""
    return f"({', '.join(ids[:SHOWN])}{more})"


def data_change(saved: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What changed from `saved` to `new` in words (records added, removed, edited, or reordered); None if nothing."""
    if saved["ids"] == new["ids"] and saved["hashes"] == new["hashes"]:
        return None
    old = dict(zip(saved["ids"], saved["hashes"]))
    now = dict(zip(new["ids"], new["hashes"]))
    added = [i for i in new["ids"] if i not in old]
    removed = [i for i in saved["ids"] if i not in now]
    edited = [i for i in new["ids"] if i in old and old[i] != now[i]]
    parts = [f"{len(ids)} record(s) {kind} {_named(ids)}" for kind, ids in
             (("added", added), ("removed", removed), ("edited", edited)) if ids]
    if not parts:
        return f"the same {new['count']} records in another order"
    return f"{saved['count']} -> {new['count']} records: " + ", ".join(parts)
