"""Gap screening: the items of a `gap` folder where the crop view and the full view part ways, as a Records file.

    vision-opd data screen runs/gap --out data/screened.jsonl                # crop right, full wrong (reads labels)
    vision-opd data screen runs/gap --out data/differ.jsonl --label-free     # greedy answers differ (no labels)

The gap probe (`eval/gap.py`) wrote one samples.jsonl line per (item, view) with the greedy answer it extracted
(`extracted`) and whether it was right (`correct`). Two filters over the items that have both a `crop` and a
`full` line:

- `crop_right_full_wrong` (default): the crop view answered right and the full view wrong: the items whose
  regional-to-global gap the model shows. It reads the labels (`correct` is graded against the answer), so data
  screened this way is no longer label-free.
- `answers_differ` (`--label-free`): the extracted greedy answers of the two views differ (no answer extracted counts
  as an answer of its own); never reads a label.

The records are the benchmark's own (settings.json names the benchmark and the dataset path, as the report finds
them), written as Records JSONL (image paths relative to the output file's folder where the images lie inside it,
else absolute), usable as `data.train_file`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.records import Record
from .views import EvalError

FILTERS = ("crop_right_full_wrong", "answers_differ")


@dataclass
class Screened:
    records: list[Record]
    both: int  # items with a crop and a full answer
    kept: int
    missing: int  # kept ids the benchmark's records no longer hold
    outside: bool  # some image path lies outside the output file's folder (training needs data.allow_outside_root)


def keep_ids(samples: list[dict], label_free: bool) -> tuple[list[str], int]:
    """The ids the filter keeps, in the order of their first line, and the number of items with both views."""
    by_view: dict[str, dict[str, dict]] = {"crop": {}, "full": {}}
    order: list[str] = []
    for s in samples:
        if s.get("view") in by_view:
            if s["id"] not in by_view["crop"] and s["id"] not in by_view["full"]:
                order.append(s["id"])
            by_view[s["view"]][s["id"]] = s
    both = [i for i in order if i in by_view["crop"] and i in by_view["full"]]
    if label_free:
        kept = [i for i in both if by_view["crop"][i].get("extracted") != by_view["full"][i].get("extracted")]
    else:
        kept = [i for i in both if by_view["crop"][i].get("correct") and not by_view["full"][i].get("correct")]
    return kept, len(both)


def screen_gap(folder: str | Path, label_free: bool = False) -> Screened:
    """The records of `folder`'s items that the filter keeps (see the module's docstring)."""
    folder = Path(folder)
    samples_path, settings_path = folder / "samples.jsonl", folder / "settings.json"
    if not samples_path.is_file() or not settings_path.is_file():
        raise EvalError(f"{folder}: not a gap folder (samples.jsonl and settings.json are written by `vision-opd gap`)")
    samples = [json.loads(line) for line in samples_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not any(s.get("view") == "crop" for s in samples) or not any(s.get("view") == "full" for s in samples):
        raise EvalError(f"{folder}: the gap probe has no crop and full views to compare; run it with --views full,crop")
    kept, both = keep_ids(samples, label_free)
    settings = json.loads(settings_path.read_text(encoding="utf-8"))
    dataset, bench = settings.get("dataset") or {}, settings.get("benchmark")
    if not dataset.get("path") or not bench or not Path(dataset["path"]).exists():
        raise EvalError(f"{folder}: the probe's data ({dataset.get('path')!r}, benchmark {bench!r}) is not found here: "
                        "screen the folder where its data is")
    from .benchmarks import get_benchmark

    records = {r.id: r for r in get_benchmark(bench).load(dataset["path"], limit=dataset.get("limit"))}
    out = [records[i] for i in kept if i in records]
    return Screened(out, both, len(kept), len(kept) - len(out), outside=False)


def write_screened(screened: Screened, path: str | Path) -> Path:
    """Records JSONL at `path`: image paths relative to its folder when inside it, else absolute (then training needs
    data.allow_outside_root=true: `screened.outside` says so)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    lines = []
    for r in screened.records:
        paths = {k: str(Path(v).resolve()) for k, v in (("image", r.image), ("teacher_image", r.teacher_image)) if v}
        inside = all(Path(v).is_relative_to(root) for v in paths.values())
        screened.outside |= not inside
        row = r.to_json(relative_to=root) if inside else {**r.to_json(), **paths}
        lines.append(json.dumps(row, ensure_ascii=False))
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
