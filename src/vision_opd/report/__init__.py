"""`vision-opd report PATH`: one self-contained HTML page for an output folder of the tool.

    from vision_opd.report import build_report
    build_report("runs/tiny_cpu")                    # -> runs/tiny_cpu/report.html
    build_report("runs/gap", "gap.html", Limits(max_items=100))

The folder's kind is read from its files: a training run (config.yaml + metrics.jsonl), an evaluation or a
gap probe (results.json; a gap probe's has paired `differences`), or the demo (summary.json + examples.json).
The page is built from those files alone (and the images of the records they name, found again from the
saved config or settings): it never loads a model, embeds its plots and thumbnails, and needs no network.
Modules: document.py (the HTML page), plots.py, thumbnails.py, tokens.py, records.py, one per page kind.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.writes import write_text_atomic, writing
from .limits import Limits

REPORT = "report.html"
KINDS = ("training", "eval", "gap", "demo")


class ReportError(ValueError):
    """A folder the report cannot read; the message names it and what was expected."""


def folder_kind(path: Path) -> str:
    """training | eval | gap | demo, from the files in `path`."""
    if not path.is_dir():
        raise ReportError(f"{path}: not a folder; give a run folder (train.out_dir) or an eval / gap --out folder")
    if (path / "summary.json").is_file() and (path / "examples.json").is_file():
        return "demo"
    if (path / "config.yaml").is_file() and (path / "metrics.jsonl").is_file():
        return "training"
    if (path / "results.json").is_file():
        try:
            results = json.loads((path / "results.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ReportError(f"{path / 'results.json'}: not valid JSON ({e}); rerun the evaluation to rewrite it") from None
        return "gap" if isinstance(results, dict) and "differences" in results else "eval"
    raise ReportError(f"{path}: no output of vision-opd here (expected config.yaml + metrics.jsonl of a training run, "
                      "results.json of eval / gap, or summary.json + examples.json of the demo)")


def build_html(path: str | Path, limits: Limits = Limits()) -> str:
    """The page of folder `path`, as a string."""
    path = Path(path)
    kind = folder_kind(path)
    if kind == "training":
        from .training import training_page

        return training_page(path, limits)
    if kind == "demo":
        from .demo import demo_page

        return demo_page(path, limits)
    if kind == "gap":
        from .gap import gap_page

        return gap_page(path, limits)
    from .evaluation import eval_page

    return eval_page(path, limits)


def build_report(path: str | Path, out: str | Path | None = None, limits: Limits = Limits()) -> Path:
    """Write the page of folder `path` to `out` (default: PATH/report.html); returns the file written."""
    html = build_html(path, limits)
    out = Path(out) if out is not None else Path(path) / REPORT
    with writing(out.name, out):
        out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, html)
    return out


def report_after_run(run_dir: str | Path) -> Path | None:
    """`build_report` at the end of a training run: prints where the page is; a failure prints one line (the run
    itself is done and saved) and the page can be rebuilt with `vision-opd report RUN_DIR`."""
    try:
        out = build_report(run_dir)
    except Exception as e:  # noqa: BLE001 - a report problem must not turn a finished run into a failed one
        print(f"[vision-opd] report.html not written ({type(e).__name__}: {e}); rebuild it with `vision-opd report {run_dir}`")
        return None
    print(f"[vision-opd] report: {out}")
    return out


__all__ = ["KINDS", "REPORT", "Limits", "ReportError", "build_html", "build_report", "folder_kind", "report_after_run"]
