"""The page of a training run folder: config.yaml, metrics.jsonl, samples.jsonl (and the records they name).

    html = training_page(Path("runs/tiny_cpu"), Limits())

Top to bottom: the run at a glance (status, the latest values against the first steps', alerts), the config
in brief, the curves (loss, KL, response length, truncation, top-1 agreement, grad norm, lr, held-out
accuracy, time per step, then any other numeric metric), the rollouts of a few steps spread over the run
(the two views side by side, each response's tokens coloured by the teacher's disagreement, the extracted
answer), and the whole config. Only samples of the chosen steps are parsed, so a long run's page is quick.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..data.records import LETTERS, Record
from .document import badge, card, cards, esc, fmt, page, plot_grid, table
from .plots import Marks, Series, curve
from .records import Found, training_records
from .thumbnails import figure, record_thumbnails
from .tokens import TokenScale, colour_css, coloured_tokens, legend
from .limits import Limits

CURVES = [  # (title, [(metric key, label, style)], ylim, log scale)
    ("loss", [("loss", "loss", "-")], None, False),
    ("KL(student ‖ teacher) per token", [("kl", "mean KL", "-")], None, False),
    ("response length (tokens)", [("response_len", "mean", "-"), ("response_len_max", "max", "--")], None, False),
    ("truncation rate", [("truncation_rate", "hit max_new_tokens", "-")], (-0.02, 1.02), False),
    ("top-1 agreement (teacher vs student)", [("top1_agree", "argmax equal", "-")], (-0.02, 1.02), False),
    ("grad norm (before clipping)", [("grad_norm", "grad norm", "-")], None, False),
    ("learning rate", [("lr", "lr", "-")], None, False),
    ("held-out accuracy (greedy)", [("eval_full_acc", "full image", "o-"), ("eval_crop_acc", "crop", "o--")],
     (-0.02, 1.02), False),
    ("responses (share of the step's)", [("student_share", "prompts answered by the student", "-"),
                                         ("repetitive_rate", "repetitive", "-"), ("runaway_rate", "runaway", "--"),
                                         ("degenerate_rate", "degenerate", "-"),
                                         ("unanswered_rate", "teacher answers unreadable", "--"),
                                         ("unsolved_prompt_rate", "prompts with no right answer (labels)", ":")],
     (-0.02, 1.02), False),
    ("seconds per step", [("sec_step", "step", "-"), ("sec_rollout", "rollout", "-"), ("sec_teacher", "teacher", "-"),
                          ("sec_student", "student", "-"), ("sec_sync", "weight sync", "--")], None, False),
    ("padding (share of the student's scored positions)", [("padding_share", "prompts + responses", "-"),
                                                           ("response_padding_share", "responses", "--")],
     (-0.02, 1.02), False),
    ("rollout vs trainer |log-prob difference|", [("rollout_logprob_diff_mean", "mean", "-"),
                                                  ("rollout_logprob_diff_max", "max", "--")], None, False),
]
NOT_CURVES = {"step", "skipped", "tokens", "bad_records", "sec_views", "sec_optim", "eval_seconds", "collapse",
              "left_out", "positions_scored", "positions_real", "micro_batches"}
GLANCE = [("loss", "loss"), ("kl", "KL per token"), ("response_len", "response length"),
          ("truncation_rate", "truncation rate"), ("top1_agree", "top-1 agreement"), ("grad_norm", "grad norm")]
_SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>")
SHORT_RESPONSES = 24  # rollouts of at most this many tokens are laid out two a row


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a JSONL file and the number of unreadable lines (a torn last line, say)."""
    rows, bad = [], 0
    if not path.exists():
        return rows, bad
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows, bad


def chosen_samples(path: Path, max_steps: int) -> tuple[dict[int, list[dict]], int]:
    """{step: rows} of at most `max_steps` steps spread evenly over samples.jsonl (first and last included), and
    the number of steps with samples. One pass reads each line's step from its start (rows are written as
    `{"step": N, ...}`) and keeps only offsets; only the lines of the chosen steps are parsed."""
    if not path.exists():
        return {}, 0
    where: dict[int, list[tuple[int, int]]] = {}
    head = re.compile(rb'^\{"step":\s*(\d+)')
    with open(path, "rb") as f:
        pos = 0
        for line in f:
            m = head.match(line)
            if m:
                where.setdefault(int(m.group(1)), []).append((pos, len(line)))
            pos += len(line)
        steps = sorted(where)
        if not steps:
            return {}, 0
        idx = sorted({round(i) for i in np.linspace(0, len(steps) - 1, min(max_steps, len(steps)))})
        out = {}
        for i in idx:
            rows = []
            for start, size in where[steps[i]]:
                f.seek(start)
                try:
                    rows.append(json.loads(f.read(size)))
                except json.JSONDecodeError:  # a torn last line
                    continue
            out[steps[i]] = rows
    return out, len(steps)


def series_of(metrics: list[dict], key: str) -> tuple[list[float], list[float | None]]:
    xs, ys = [], []
    for m in metrics:
        v = m.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(m["step"])
            ys.append(float(v))
    return xs, ys


def marks_of(metrics: list[dict]) -> Marks:
    """Skipped steps, and the runs of consecutive logged steps that carried a collapse signal."""
    skipped = [m["step"] for m in metrics if m.get("skipped")]
    spans: list[tuple[float, float]] = []
    for m in metrics:
        if m.get("collapse"):
            if spans and m["step"] - spans[-1][1] <= 1:
                spans[-1] = (spans[-1][0], m["step"])
            else:
                spans.append((m["step"], m["step"]))
    return Marks(skipped=skipped, collapse=spans)


def _window_mean(values: list[float], last: bool) -> float | None:
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return None
    k = max(1, min(50, len(v) // 10))
    return float(np.mean(v[-k:] if last else v[:k]))


def _when(path: Path) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)) if path.exists() else "—"


def glance(run_dir: Path, metrics: list[dict], cfg: dict, n_samples_steps: int) -> str:
    """Cards: progress and the latest checkpoint, then each headline metric as its recent mean against the first
    steps' mean, held-out accuracy, skipped steps and collapse signals."""
    train = cfg.get("train") or {}
    last = metrics[-1]["step"] if metrics else 0
    planned = train.get("steps")
    secs = sum(float(m.get("sec_step") or 0) for m in metrics)
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*") if (p / "COMPLETE").exists())
    items = [card("steps logged", f"{last} / {planned}", f"{len(metrics)} lines · {secs / 60:.1f} min of steps"),
             card("metrics.jsonl written", _when(run_dir / "metrics.jsonl"), f"page built {time.strftime('%Y-%m-%d %H:%M')}"),
             card("latest checkpoint", checkpoints[-1].removeprefix("step_").lstrip("0") or "0" if checkpoints else "none",
                  f"{len(checkpoints)} complete kept")]
    k = max(1, min(50, len(metrics) // 10))
    for key, label in GLANCE:
        _, ys = series_of(metrics, key)
        if ys:
            items.append(card(f"{label} (last {k})", fmt(_window_mean(ys, True)), f"first {k}: {fmt(_window_mean(ys, False))}"))
    for key, label in (("eval_full_acc", "held-out full"), ("eval_crop_acc", "held-out crop")):
        _, ys = series_of(metrics, key)
        if ys:
            items.append(card(label, fmt(ys[-1]), f"first eval: {fmt(ys[0])}"))
    skipped = sum(1 for m in metrics if m.get("skipped"))
    collapsed = sum(1 for m in metrics if m.get("collapse"))
    items.append(card("skipped steps", str(skipped), "non-finite loss / gradient", alert=skipped > 0))
    items.append(card("collapse signals", str(collapsed), "logged steps with a signal", alert=collapsed > 0))
    items.append(card("steps with rollouts", str(n_samples_steps), f"every {train.get('sample_every')} steps"))
    return cards(items)


def config_brief(cfg: dict) -> str:
    g = lambda sec, key: (cfg.get(sec) or {}).get(key)  # noqa: E731
    rows = [
        ("model", f"{g('model', 'name_or_path')} ({g('model', 'dtype')}" + (f", LoRA r={g('model', 'lora_r')}" if g('model', 'lora_r') else "") + ")"),
        ("data", f"{g('data', 'train_file')} (format {g('data', 'format')})"),
        ("views", f"teacher: {g('views', 'teacher_source')}" + (f" ({g('teacher', 'proposer')})" if g('views', 'teacher_source') == "proposer" else "")
         + f", expand {g('views', 'expand_ratio')}, teacher pixels {g('views', 'teacher_pixels')}; student red box {g('views', 'red_box')}, hint {g('views', 'hint')}"),
        ("loss", f"{g('loss', 'kind')}, alpha {g('loss', 'alpha')}" + (f", top-k {g('loss', 'top_k')}" if g('loss', 'kind') == "topk" else "")),
        ("teacher", f"{g('teacher', 'mode')}" + (f", EMA rate {g('teacher', 'ema_rate')}" if g('teacher', 'mode') == "ema" else "")),
        ("rollout", f"G={g('rollout', 'samples_per_prompt')} samples x P={g('train', 'prompts_per_step')} prompts per step, "
         f"temperature {g('rollout', 'temperature')}, top-p {g('rollout', 'top_p')}, max_new_tokens {g('rollout', 'max_new_tokens')}"),
        ("optimiser", f"lr {g('optim', 'lr')} ({g('optim', 'schedule')}, warm-up {g('optim', 'warmup_steps')}), "
         f"weight decay {g('optim', 'weight_decay')}, clip {g('optim', 'grad_clip')}"),
        ("steps", f"{g('train', 'steps')}, micro-batch " + (f"of at most {g('train', 'micro_batch_tokens')} positions"
                                                          if g('train', 'micro_batch_tokens') else
                                                          f"{g('train', 'micro_batch_size')}") + f", {g('train', 'distributed')}, "
         f"{g('train', 'mixed_precision')}, seed {g('train', 'seed')}"),
    ]
    return table(["", ""], [(esc(k), esc(v)) for k, v in rows], numeric_from=99)


def one_line(cfg: dict) -> str:
    """The run in one line, for the page header."""
    g = lambda sec, key: (cfg.get(sec) or {}).get(key)  # noqa: E731
    return (f"{g('model', 'name_or_path')} · {g('loss', 'kind')} α={g('loss', 'alpha')} · {g('teacher', 'mode')} teacher · "
            f"G={g('rollout', 'samples_per_prompt')} × P={g('train', 'prompts_per_step')} · lr {g('optim', 'lr')} · "
            f"{g('train', 'steps')} steps")


def curve_svgs(metrics: list[dict]) -> list[str]:
    """The standard curves that have values, then up to 12 other numeric metrics (e.g. a new loss term)."""
    marks = marks_of(metrics)
    shown = set()
    svgs = []
    for title, keys, ylim, log in CURVES:
        series = [Series(label, *series_of(metrics, key), style=style) for key, label, style in keys]
        shown.update(k for k, _, _ in keys)
        if any(s.x for s in series):
            svgs.append(curve(title, series, marks=marks, ylim=ylim, log_y=log))
    extra = sorted({k for m in metrics for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                   - shown - NOT_CURVES)
    for key in extra[:12]:
        svgs.append(curve(key, [Series(key, *series_of(metrics, key))], marks=marks))
    return svgs


CURVES_KEY = ('<p class="note">Red ticks under the x axis: skipped steps (non-finite loss or gradient); orange bands: '
              'logged steps with a collapse signal (truncation, KL or length above the thresholds of train.collapse_*). '
              'Long series: the raw values (light) under a centred rolling mean.</p>')


def extracted(response: str, record: Record | None) -> str | None:
    """The chosen option of a response, read with the evaluation's rule (special tokens removed first)."""
    if record is None or not record.options:
        return None
    from ..eval.choice import extract_choice

    return extract_choice(_SPECIAL.sub("", response), record.options)


def prompt_block(record: Record | None, rid: str, found: Found) -> str:
    """The two views' thumbnails and the question with its options (the label, if any, marked as unused)."""
    if record is None:
        return f'<div><div class="note">record {esc(rid)}: {esc(found.note or "not in the data file")}</div></div>'
    full, crop, note = record_thumbnails(record, found.view_cfg)
    teacher = "teacher: " + {"box": "evidence crop", "proposer": "proposed crop", "given": "teacher image",
                             "full": "full image"}.get(found.view_cfg.teacher_source, found.view_cfg.teacher_source)
    views = ('<div class="views">' + figure(full, "student: full image (cyan: the teacher's crop)") + figure(crop, teacher)
             + "</div>")
    opts = "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(record.options or []))
    label = f'<div class="meta">label {esc(record.answer)} (never read by training)</div>' if record.answer else ""
    cat = f" · {esc(record.category)}" if record.category else ""
    return (f"<div>{views}<div class='question'>{esc(record.question)}{esc(opts)}</div>"
            f'<div class="meta">{esc(record.id)}{cat}</div>{label}'
            + (f'<div class="note">{esc(note)}</div>' if note else "") + "</div>")


def response_block(same: list[int], row: dict, record: Record | None, scale: TokenScale, max_new_tokens: int | None) -> str:
    """One response (or several identical ones, `same` = their indices in the step's rows), its tokens coloured."""
    tokens, kl = row.get("tokens") or [], row.get("token_kl") or []
    lps, lpt = row.get("student_logprob"), row.get("teacher_logprob")
    got = extracted(row.get("response", ""), record)
    right = None if (record is None or record.answer is None) else got == record.answer
    answer = badge(right, got) if record is not None and record.options else ""
    hit_limit = bool(max_new_tokens) and len(tokens) >= max_new_tokens and not (tokens and _SPECIAL.fullmatch(tokens[-1]))
    bits = [f"{len(tokens)} tokens" + (" (hit max_new_tokens)" if hit_limit else ""),
            f"mean KL {fmt(float(np.mean(kl)) if kl else None, 4)}"]
    if lps is not None and lpt is not None and tokens:
        bits.append(f"Σ log p_T − log p_S {sum(t - s for s, t in zip(lps, lpt, strict=True)):+.3f}")
    name = f"#{same[0] + 1}" + (f" ×{len(same)} identical" if len(same) > 1 else "")
    return (f'<div class="resp" data-samples="{",".join(map(str, same))}"><div class="toolbar"><b>{name}</b> {answer}'
            f'<span class="meta">{esc(" · ".join(bits))}</span></div>'
            + coloured_tokens(tokens, kl, lps, lpt, scale, row.get("weight")) + "</div>")


def rollouts(chosen: dict[int, list[dict]], n_steps: int, found: Found, cfg: dict, limits: Limits) -> str:
    if not chosen:
        return '<p class="note">No samples.jsonl rows yet (train.sample_every writes a few rollouts every N steps).</p>'
    per_step = max(1, limits.max_rollouts // len(chosen))
    kept = {s: rows[:per_step] for s, rows in chosen.items()}
    scale = TokenScale.of(r for rows in kept.values() for r in rows)
    has_lp = any(r.get("student_logprob") is not None for rows in kept.values() for r in rows)
    max_new = (cfg.get("rollout") or {}).get("max_new_tokens")
    parts = [f'<p class="note">{sum(map(len, kept.values()))} rollouts of {len(kept)} of the {n_steps} steps with samples '
             f'(at most {per_step} per step; `vision-opd report --max-rollouts N --max-steps N` shows more).</p>',
             legend(scale, has_lp, any(r.get("weight") for rows in kept.values() for r in rows)),
             '<div class="stepnav">steps: '
             + "".join(f'<a href="#step-{s}">{s}</a>' for s in kept) + "</div>"]
    if found.note and not found.records:
        parts.append(f'<div class="warn">{esc(found.note)}</div>')
    items = []
    for step, rows in kept.items():
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(str(r.get("id")), []).append(i)
        for k, (rid, idx) in enumerate(groups.items()):
            record = found.records.get(rid)
            answers = Counter(extracted(rows[i].get("response", ""), record) for i in idx)
            summary = ", ".join(f"{a if a is not None else 'unreadable'} ×{n}" for a, n in answers.most_common()) \
                if record is not None and record.options else ""
            identical: dict[tuple, list[int]] = {}  # G samples often repeat a response: show it once, counted
            for i in idx:
                key = tuple(rows[i].get("tokens") or ()), tuple(rows[i].get("token_kl") or ())
                identical.setdefault(key, []).append(i)
            resp = "".join(response_block(same, rows[same[0]], record, scale, max_new) for same in identical.values())
            anchor = f' id="step-{step}"' if k == 0 else ""
            items.append(f'<div class="item rollout"{anchor} data-step="{step}" data-id="{esc(rid)}">'
                         f"{prompt_block(record, rid, found)}<div><div class='stephead'>step {step}</div>"
                         + (f'<div class="meta">answers of the {len(idx)} samples: {esc(summary)}</div>' if summary else "")
                         + f"{resp}</div></div>")
    longest = max((len(r.get("tokens") or ()) for rows in kept.values() for r in rows), default=0)
    wide = "gallery wide" if longest <= SHORT_RESPONSES else "rollouts"  # short answers: two rollouts a row
    return "".join(parts) + f'<div class="{wide}">' + "".join(items) + "</div>"


def training_page(run_dir: Path, limits: Limits) -> str:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    metrics, bad = read_jsonl(run_dir / "metrics.jsonl")
    metrics = [m for m in metrics if isinstance(m.get("step"), (int, float))]
    chosen, n_steps = chosen_samples(run_dir / "samples.jsonl", limits.max_steps)
    found = training_records(cfg, run_dir) if chosen else Found()
    alerts = []
    if bad:
        alerts.append(f"{bad} unreadable line(s) in metrics.jsonl (skipped)")
    if any(m.get("bad_records") for m in metrics[-1:]):
        alerts.append(f"{metrics[-1]['bad_records']} bad record(s) were skipped at load (data.skip_bad)")
    if found.note and found.records:
        alerts.append(found.note)
    summary = glance(run_dir, metrics, cfg, n_steps) + "".join(f'<div class="warn">{esc(a)}</div>' for a in alerts)
    full_cfg = (config_brief(cfg) + f'<details><summary>config.yaml</summary><pre class="config">'
                f'{esc(yaml.safe_dump(cfg, sort_keys=False))}</pre></details>')
    sections = [("summary", "At a glance", summary), ("curves", "Curves", CURVES_KEY + plot_grid(curve_svgs(metrics))),
                ("rollouts", "Rollouts", rollouts(chosen, n_steps, found, cfg, limits)), ("config", "Config", full_cfg)]
    return page(f"{run_dir.name}", "training run", sections, meta=f"{run_dir.resolve()} · {one_line(cfg)}",
                css=colour_css())
