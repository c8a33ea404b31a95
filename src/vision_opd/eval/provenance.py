"""Where a number comes from: every setting that changes it (settings.json, checked on resume) and the provenance
of the run that wrote it (versions, git commit, command line), both copied into results.json.

`run_settings` holds what changes the number: the model and its backend (pixel budget, decoding, chat template
sha256, thinking mode, response budget), the weights' fingerprint (`weights_fingerprint`), the prompt template, the
extraction rule version, the benchmark, the dataset's sha256, the views. A rerun into the same folder refuses to mix
samples made with other settings: a checkpoint retrained at the same path is other weights, and a checkpoint moved
to another path is the same weights (with a fingerprint, the path itself is not compared).
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
from .benchmarks import get_benchmark
from .benchmarks.common import MC_SUFFIX, SHORT_SUFFIX
from .extraction import EXTRACTION_RULE
from .samples import SAMPLES
from .views import EvalError

SETTINGS = "settings.json"
NOT_COMPARED = ("run", "judge")  # settings that do not change the generated samples
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth")
CONFIG_FILES = ("config.json", "adapter_config.json")
SAMPLE_BYTES = 4096  # read at the start, middle and end of every tensor of a safetensors file
FINGERPRINT_METHOD = ("blake2b-128 over every safetensors file's header (names, dtypes, shapes, offsets) and 3 x 4 KiB "
                      "of each tensor (start, middle, end); config.json, adapter_config.json and other weight files "
                      "whole (sha256)")


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


def _sample_safetensors(f: Path, h) -> None:
    """The header and a few KiB of every tensor into `h`: a few MB for any model size (a 7B checkpoint in well under a
    second), and every tensor counts. Training moves every element of a tensor it trains, so retrained weights always
    change the sampled bytes; only a change confined to the unread bytes of every tensor would go unseen."""
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = fh.read(n)
        h.update(header)
        for name, info in sorted(json.loads(header).items()):
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            for at in sorted({a, (a + b) // 2, max(a, b - SAMPLE_BYTES)}):
                fh.seek(8 + n + at)
                h.update(fh.read(min(SAMPLE_BYTES, b - at)))


def weights_fingerprint(model: str) -> dict[str, Any]:
    """A content fingerprint of a local model folder's weights (`FINGERPRINT_METHOD`), not of its path, sizes or
    times (a checkpoint retrained in place, or copied with its times kept, has the same ones); None for a hub id or
    a model built in code (compared by name)."""
    p = Path(model)
    is_folder = bool(model) and p.is_dir()  # the folder's own files (a checkpoint's teacher/ subfolder is not the model)
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in WEIGHT_FILES) if is_folder else []
    if not files:
        return {"fingerprint": None, "note": "not a local folder with weight files: the model is compared by name"}
    h = hashlib.blake2b(digest_size=16)
    for f in [p / c for c in CONFIG_FILES if (p / c).is_file()] + files:
        h.update(f"{f.relative_to(p)}\0{f.stat().st_size}\0".encode())
        if f.suffix == ".safetensors":
            _sample_safetensors(f, h)
        else:
            h.update(_sha256(f).encode())
    return {"fingerprint": h.hexdigest(), "path": str(p.resolve()), "method": FINGERPRINT_METHOD}


def prompt_settings() -> dict[str, Any]:
    template = "{question}\n{A. option\n...}\n" + MC_SUFFIX + "  |  {question}\n" + SHORT_SUFFIX
    return {"builder": "vision_opd.eval.benchmarks.common.format_prompt", "template": template,
            "mc_suffix": MC_SUFFIX, "short_suffix": SHORT_SUFFIX}


def run_settings(generator, benchmark: str, data: str | Path, n_records: int, *, limit: int | None,
                 batch_size: int, views: Sequence[str], view_cfg: ViewConfig | None = None,
                 response_budget: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every setting that changes the number (`run` holds the ones that do not)."""
    model = generator.settings()
    return {
        "model": model,
        "weights": weights_fingerprint(str(model.get("model", ""))),
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
    out.mkdir(parents=True, exist_ok=True)
    path = out / SETTINGS
    if path.exists() and (out / SAMPLES).exists():
        old, new = _compared(json.loads(path.read_text(encoding="utf-8"))), _compared(settings)
        diff = sorted(k for k in set(old) | set(new) if k not in NOT_COMPARED and old.get(k) != new.get(k))
        if diff:
            what = " (other weights than those the samples were made with)" if "weights" in diff else ""
            raise EvalError(f"{out} holds samples made with different settings ({', '.join(diff)}){what}; "
                            f"use another --out, or delete {out / SAMPLES} to start over")
    path.write_text(json.dumps(settings, indent=2, default=str), encoding="utf-8")
    return out / SAMPLES


def _compared(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a resume compares: with a weights fingerprint, the weights' path is not one of them."""
    if not (settings.get("weights") or {}).get("fingerprint"):
        return settings
    return {**settings, "model": {k: v for k, v in settings["model"].items() if k != "model"},
            "weights": {k: v for k, v in settings["weights"].items() if k != "path"}}


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
