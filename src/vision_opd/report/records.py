"""The records behind a folder's samples, found again from the folder's own files (no model, no download).

    found = training_records(config_dict, run_dir)   # config.yaml's data.train_file (+ the proposals cache)
    found = benchmark_records(settings_dict)         # settings.json's benchmark and dataset path
    found.records["item0_00009"], found.view_cfg, found.note

Whatever cannot be found (a moved data file, a hub dataset, a broken row) leaves `records` empty or partial
and says so in `note`; the page is built without the images, never aborted.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.records import Record
from ..data.views import ViewConfig


@dataclass
class Found:
    records: dict[str, Record] = field(default_factory=dict)
    view_cfg: ViewConfig = field(default_factory=ViewConfig)
    note: str = ""  # why records (or some views) are missing; empty when all were found
    source: str = ""  # where they were read from


def view_config(section: dict[str, Any] | None) -> ViewConfig:
    """A ViewConfig from a saved `views` / `view_config` mapping (unknown keys of other versions ignored)."""
    known = {f.name for f in dataclasses.fields(ViewConfig)}
    return ViewConfig(**{k: v for k, v in (section or {}).items() if k in known})


def training_records(cfg: dict[str, Any], run_dir: Path) -> Found:
    """The training records of a run's config.yaml (`data.train_file`, read as training reads it, without
    decoding images), with the cached proposals of a run whose teacher crops came from a proposer."""
    from ..data.sources import detect_format, load_source

    data = cfg.get("data") or {}
    views = view_config(cfg.get("views"))
    path = data.get("train_file")
    found = Found(view_cfg=views, source=str(path))
    if not path:
        found.note = "config.yaml has no data.train_file: records not found"
        return found
    fmt = data.get("format", "auto")
    try:
        if not Path(path).exists():
            found.note = (f"records not found: data.train_file {path} does not exist from {Path.cwd()} (relative paths "
                          "are read from the working directory); the images are left out")
            return found
        if (detect_format(path) if fmt == "auto" else fmt) == "hub":
            found.note = f"records not loaded: {path} is a hub dataset and the report never downloads"
            return found
        if data.get("box_format", "auto") != "auto":  # Records JSONL whose boxes were converted on read
            from ..data.sources import _jsonl_file
            from ..data.validate import read_records

            records = read_records(_jsonl_file(path), skip_bad=True, box_format=data["box_format"])
        else:
            records = load_source(path, fmt, split=data.get("split", "train"), cache_dir=data.get("cache_dir"),
                                  student_image=data.get("student_image", "images"), skip_bad=True, check_images=False,
                                  allow_outside_root=True)
    except Exception as e:  # noqa: BLE001 - any failure to read the data leaves the rest of the page intact
        found.note = f"records not found: {path}: {type(e).__name__}: {e}"
        return found
    found.records = {r.id: r for r in records}
    if views.teacher_source == "proposer":
        name = (cfg.get("teacher") or {}).get("proposer", "attention")
        found.note = _attach_proposals(found.records, run_dir / f"proposals_{name}.jsonl")
    return found


def _attach_proposals(records: dict[str, Record], cache: Path) -> str:
    """meta["proposed_box"] from a proposals cache (the last non-fallback entry per id); a note if absent."""
    if not cache.exists():
        return f"teacher crops came from a proposer but {cache.name} is missing: teacher views left out"
    for line in cache.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
            rid, prop = obj["id"], obj["proposal"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a torn last line
        if rid in records and not prop.get("fallback"):
            records[rid].meta["proposed_box"] = list(prop["box"])
    return ""


def benchmark_records(settings: dict[str, Any], folder: Path) -> Found:
    """The records of an eval / gap folder: its settings.json names the benchmark and the dataset path (and, for a
    probe run with --proposer, the proposals cached in the folder)."""
    from ..eval.benchmarks import get_benchmark

    dataset = settings.get("dataset") or {}
    path, bench = dataset.get("path"), settings.get("benchmark")
    found = Found(view_cfg=view_config(settings.get("view_config")), source=str(path))
    if not path or not bench:
        found.note = "settings.json names no benchmark or dataset: records not found"
        return found
    if not Path(path).exists():
        found.note = f"records not found: {path} does not exist here (a hub id or a moved folder); images left out"
        return found
    try:
        records = get_benchmark(bench).load(path, limit=dataset.get("limit"))
    except Exception as e:  # noqa: BLE001
        found.note = f"records not found: {bench} at {path}: {type(e).__name__}: {e}"
        return found
    found.records = {r.id: r for r in records}
    if settings.get("proposer"):
        found.note = _attach_proposals(found.records, folder / f"proposals_{settings['proposer']}.jsonl")
    return found
