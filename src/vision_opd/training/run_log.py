"""Metrics and sample rollouts of a run: `metrics.jsonl` / `samples.jsonl` always, TensorBoard and
Weights & Biases when asked for (named run_log: the logs of one run).

    with MetricsLogger(run_dir, tensorboard="auto", config=to_dict(cfg), enabled=is_main) as log:
        log.log(step, {"loss": 0.12, "kl": 0.3, "collapse": None})
        log.log_samples(step, [{"id": "item1", "response": "B"}])

- metrics.jsonl: one JSON object a line, `{"step": step, **metrics}`, flushed after every call, so a crash
  or a `tail -f` sees every logged step. Every value goes here, numeric or not.
- TensorBoard (`run_dir/tensorboard`, `tensorboard --logdir runs/`): numeric values (bools as 0/1) as
  scalars, samples as text. tensorboard="auto" uses it when the `tensorboard` package is installed;
  True requires it; False never.
- Weights & Biases: only with wandb=True (then the `wandb` package is required); numeric values only.
- enabled=False (every rank but the main one): every method does nothing and no file is opened.
- A resumed run: `cut_logs(run_dir, step)` first drops the lines after the resumed step, and `purge_step` hides the
  earlier run's TensorBoard events from that step on.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
TOKENS = "tokens.jsonl"  # written by token_dump.py (train.dump_tokens_every)


class MetricsLogger:
    def __init__(self, run_dir: str | Path, *, tensorboard: bool | str = "auto", wandb: bool = False,
                 wandb_project: str | None = None, config: dict | None = None, enabled: bool = True,
                 purge_step: int | None = None):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._metrics_f = self._samples_f = self._tb = self._wandb_run = None
        if not enabled:
            return
        use_tb = _tensorboard_wanted(tensorboard)
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError:
                raise ImportError("train.wandb=true needs the 'wandb' package, which is not installed: "
                                  "pip install wandb (and `wandb login`), or set train.wandb=false") from None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics_f = open(self.run_dir / METRICS, "a", encoding="utf-8")
        if use_tb:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step (a resumed run): TensorBoard hides the events of the earlier run from that step on
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge_step)
            if config:
                self._tb.add_text("config", _code_block(json.dumps(config, indent=2, default=str)), 0)
        if wandb:
            self._wandb_run = wandb_lib.init(project=wandb_project, name=self.run_dir.name, dir=str(self.run_dir),
                                             config=config or {})

    @property
    def tensorboard(self) -> bool:
        """Whether scalars go to TensorBoard."""
        return self._tb is not None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append `{"step": step, **metrics}` to metrics.jsonl (flushed); numeric values to TensorBoard / W&B."""
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items() if k != "step"}}
        self._metrics_f.write(json.dumps(row, default=str) + "\n")
        self._metrics_f.flush()
        scalars = {k: float(v) for k, v in row.items() if k != "step" and _is_number(v)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(scalars, step=step)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Append one line per sample `{"step": step, **row}` to samples.jsonl; to TensorBoard as text."""
        if not self.enabled or not rows:
            return
        if self._samples_f is None:
            self._samples_f = open(self.run_dir / SAMPLES, "a", encoding="utf-8")
        lines = [json.dumps({"step": step, **row}, ensure_ascii=False, default=str) for row in rows]
        self._samples_f.write("".join(line + "\n" for line in lines))
        self._samples_f.flush()
        if self._tb is not None:
            self._tb.add_text("samples", _code_block("\n".join(lines)), step)
            self._tb.flush()

    def close(self) -> None:
        """Close the files and writers (safe to call twice)."""
        for f in (self._metrics_f, self._samples_f):
            if f is not None:
                f.close()
        self._metrics_f = self._samples_f = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cut_logs(run_dir: str | Path, step: int) -> int:
    """Keep only the lines of metrics.jsonl, samples.jsonl and tokens.jsonl up to `step` (a resumed run appends after
    them, so no step appears twice); an unreadable line (a write cut short by a kill) is dropped too. Returns the
    lines dropped."""
    dropped = 0
    for name in (METRICS, SAMPLES, TOKENS):
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                keep = int(json.loads(line)["step"]) <= step
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(path)
    return dropped


def _tensorboard_wanted(value: bool | str) -> bool:
    if isinstance(value, str):
        v = value.strip().lower()
        if v == "auto":
            try:
                import tensorboard  # noqa: F401  (SummaryWriter needs the package itself)
            except ImportError:
                return False
            return True
        if v not in ("true", "false", "on", "off", "yes", "no"):
            raise ValueError(f"tensorboard={value!r}: choose true, false or auto")
        value = v in ("true", "on", "yes")
    if value:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ImportError("train.tensorboard=true needs the 'tensorboard' package, which is not installed: "
                              "pip install tensorboard (or pip install 'vision-opd[logging]'), or set "
                              "train.tensorboard=auto / false") from None
    return bool(value)


def _plain(v: Any) -> Any:
    """0-dim tensors and numpy scalars as Python numbers (so json and TensorBoard see numbers)."""
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return v.item()
    return v


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real)  # bools included (as 0/1); NaN and inf are kept: they are signals


def _code_block(text: str) -> str:
    """TensorBoard renders text as Markdown: indent by four spaces to keep it verbatim."""
    return "\n".join("    " + line for line in text.splitlines())


def sample_rows(processor, records, rollout, token_values: dict[str, list], k: int = 4) -> list[dict[str, Any]]:
    """The first `k` responses of a step's rollout, decoded, with their per-token values (for samples.jsonl).

    `token_values` holds per-sample lists of per-token values by metric name: `reverse_kl` (written as
    `token_kl`, KL(S||T) over the vocabulary), `student_logprob` and `teacher_logprob` (the sampled token's
    log-prob under each view, at the rollout temperature). A response left out of the loss (rollout.drop_unanswered,
    rollout.drop_degenerate) was not scored: its values are null and `left_out` is true.
    """
    rows = []
    for b in range(min(k, rollout.response_ids_B_T.shape[0])):
        n = int(rollout.response_mask_B_T[b].sum().item())
        ids = rollout.response_ids_B_T[b, :n].tolist()
        left_out = len(token_values["reverse_kl"][b]) != n
        values = {out: None if left_out else [round(x, 5) for x in token_values[name][b]]
                  for out, name in (("token_kl", "reverse_kl"), ("student_logprob", "student_logprob"),
                                    ("teacher_logprob", "teacher_logprob"))}
        rows.append({
            "id": records[int(rollout.prompt_index_B[b])].id,
            "response": processor.tokenizer.decode(ids, skip_special_tokens=False),
            "tokens": [processor.tokenizer.decode([t]) for t in ids],
            **values, "left_out": left_out,
        })
    return rows

