"""Where a number comes from: every setting that changes it (settings.json, checked on resume) and the provenance
of the run that wrote it (versions, git commit, command line), both copied into results.json.

`run_settings` holds what changes the number: the model and its backend (pixel budget, decoding, chat template
sha256, thinking mode, response budget), the prompt template, the extraction rule version, the benchmark, the
dataset's sha256, the views. A rerun into the same folder refuses to mix samples made with other settings.
`provenance` holds what identifies the software and the invocation: vision-opd, python, torch, transformers,
numpy, and vllm / peft / openai when they were used, the git commit (and whether the tree was dirty) when the
package runs from a checkout, and the command line. It is not compared on resume.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from ..data.views import ViewConfig
from ..data.writes import write_text_atomic, writing
from .benchmarks import get_benchmark
from .benchmarks.common import MC_SUFFIX, SHORT_SUFFIX
from .extraction import EXTRACTION_RULE
from .samples import SAMPLES
from .views import EvalError

SETTINGS = "settings.json"
NOT_COMPARED = ("run", "judge")  # settings that do not change the generated samples


def _sha256(f: Path) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def prompt_settings() -> dict[str, Any]:
    template = "{question}\n{A. option\n...}\n" + MC_SUFFIX + "  |  {question}\n" + SHORT_SUFFIX
    return {"builder": "vision_opd.eval.benchmarks.common.format_prompt", "template": template,
            "mc_suffix": MC_SUFFIX, "short_suffix": SHORT_SUFFIX}


def run_settings(generator, benchmark: str, data: str | Path, n_records: int, *, limit: int | None,
                 batch_size: int, views: Sequence[str], view_cfg: ViewConfig | None = None,
                 response_budget: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every setting that changes the number (`run` holds the ones that do not)."""
    return {
        "model": generator.settings(),
        "prompt_template": prompt_settings(),
        "extraction_rule": EXTRACTION_RULE,
        "benchmark": get_benchmark(benchmark).name,
        "dataset": {**dataset_sha256(data), "limit": limit, "n_records": n_records},
        "views": list(views),
        **({"view_config": asdict(view_cfg)} if view_cfg is not None else {}),
        **({"response_budget": response_budget} if response_budget is not None else {}),
        "run": {"batch_size": batch_size,
                **({"client": generator.client_settings()} if hasattr(generator, "client_settings") else {})},
    }


def start_run(out: Path, settings: dict[str, Any]) -> Path:
    """Create `out`, refuse to resume samples made with other settings, write settings.json; the samples path."""
    with writing("the output folder", out):
        out.mkdir(parents=True, exist_ok=True)
    path = out / SETTINGS
    if path.exists() and (out / SAMPLES).exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(old) | set(settings) if k not in NOT_COMPARED and old.get(k) != settings.get(k))
        if diff:
            raise EvalError(f"{out} holds samples made with different settings ({', '.join(diff)}); "
                            f"use another --out, or delete {out / SAMPLES} to start over")
    write_text_atomic(path, json.dumps(settings, indent=2, default=str))
    return out / SAMPLES


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit(where: Path | None = None) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the checkout the package runs from; None when it is not a git checkout."""
    where = where or Path(__file__).resolve().parent
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=where, capture_output=True, text=True, timeout=10)  # noqa: E731
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        status = run("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Versions, git commit and command line of this invocation (vllm / peft / openai only when imported)."""
    versions = {"vision-opd": _version("vision-opd"), "python": platform.python_version()}
    for dist in ("torch", "transformers", "numpy"):
        versions[dist] = _version(dist)
    for module, dist in (("vllm", "vllm"), ("peft", "peft"), ("openai", "openai")):
        if module in sys.modules:
            versions[dist] = _version(dist)
    return {"versions": versions, "git": git_commit(),
            "command_line": list(sys.argv if argv is None else argv), "platform": platform.platform()}
