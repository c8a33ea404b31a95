"""The run folder: one run per folder, resumed only from its own checkpoints under a compatible config.

    plan = check_run_folder(run_dir, cfg, resume=False, overwrite=False)   # every process; reads only
    start_run_folder(plan, cfg)                                            # the main process: writes

- A folder that holds a run (metrics.jsonl, samples.jsonl, checkpoints/, ...) is refused unless `resume`
  (continue it) or `overwrite` (delete that run's files first; nothing else in the folder is touched). A
  config.yaml alone (a run stopped by bad data before its first step) is simply replaced.
- `resume` with no complete checkpoint stops with a message (it never starts from scratch silently).
- Resuming compares the checkpoint's config with the new one and names every changed key: changes that make
  the saved state mean something else (the model, the data, the views, the teacher's kind, the seed) are
  refused; the others (steps, logging, evaluation, guards, learning rate, ...) are allowed and printed.
- metrics.jsonl and samples.jsonl are cut back to the resumed step, so no step appears twice.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import Config, ConfigError, save_config, to_dict
from .checkpoint import checkpoint_step, complete_checkpoints, latest_checkpoint
from .run_log import METRICS, SAMPLES, cut_logs

RUN_FILES = ("config.yaml", METRICS, SAMPLES, "report.html")
RUN_DIRS = ("checkpoints", "tensorboard", "wandb")
RUN_GLOBS = ("proposals_*.jsonl",)  # caches computed by the run's initial model

# a resumed run may not change these (prefixes end with "."): its weights, optimizer state and data cursor would
# belong to another run
REFUSED = ("model.", "data.", "views.", "teacher.mode", "teacher.proposer", "teacher.keep_fallback", "train.seed",
           "train.prompts_per_step")
# ... except these data keys, which only check, cache or evaluate
ALLOWED_DATA = ("data.eval_file", "data.validate_images", "data.cache_dir", "data.synth_if_missing", "data.synth_n",
                "data.synth_seed")


@dataclass
class RunPlan:
    run_dir: Path
    resume_from: Path | None = None  # the checkpoint to continue from
    overwrite: list[Path] = field(default_factory=list)  # the previous run's files to delete first
    changed: dict[str, tuple] = field(default_factory=dict)  # key -> (saved, new), allowed changes only


def run_files(run_dir: Path) -> list[Path]:
    """The files and folders of a run inside `run_dir` (empty: the folder holds no run)."""
    found = [run_dir / n for n in RUN_FILES + RUN_DIRS if (run_dir / n).exists()]
    for pattern in RUN_GLOBS:
        found += sorted(run_dir.glob(pattern))
    return found


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        else:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def config_changes(saved: dict, new: dict) -> dict[str, tuple]:
    """{dotted key: (saved value, new value)} for every key whose value differs (absent keys count as changed)."""
    a, b = flat(saved), flat(new)
    missing = "<absent>"
    return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)}


def refused(key: str) -> bool:
    if key in ALLOWED_DATA:
        return False
    return any(key.startswith(p) if p.endswith(".") else key == p for p in REFUSED)


def _show(changes: dict[str, tuple]) -> str:
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())


def check_run_folder(run_dir: str | Path, cfg: Config, *, resume: bool, overwrite: bool) -> RunPlan:
    """What to do with `run_dir` (read-only, the same answer on every process); ConfigError naming the fix."""
    run_dir = Path(run_dir)
    where = f"train.out_dir={run_dir}"
    if resume and overwrite:
        raise ConfigError("--resume continues the run in train.out_dir and --overwrite deletes it: choose one")
    existing = run_files(run_dir) if run_dir.is_dir() else []
    trained = [p for p in existing if p.name != "config.yaml"]  # a config.yaml alone: a run that stopped before step 1
    if not resume:
        if trained and not overwrite:
            names = ", ".join(p.name for p in existing)
            n = len(complete_checkpoints(run_dir))
            raise ConfigError(f"{where} already holds a run ({names}; {n} complete checkpoint(s)): pass --resume to "
                              "continue it, --overwrite to delete it and start again, or choose another train.out_dir")
        return RunPlan(run_dir, overwrite=existing)
    last = latest_checkpoint(run_dir)
    if last is None:
        state = "does not exist" if not run_dir.exists() else "holds no complete checkpoint (checkpoints/step_*/COMPLETE)"
        raise ConfigError(f"--resume: {where} {state}, so there is nothing to resume; drop --resume to start a new run"
                          + (" (add --overwrite to replace what is there)" if existing else ""))
    saved_path = last / "config.yaml"
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) if saved_path.is_file() else {}
    changes = config_changes(saved or {}, to_dict(cfg))
    bad = {k: v for k, v in changes.items() if refused(k)}
    if bad:
        ok = {k: v for k, v in changes.items() if k not in bad}
        raise ConfigError(f"--resume: {last} was trained with another config; these keys may not change on resume: "
                          f"{_show(bad)}. Restore them (the run's config: {saved_path}), or start a new run in another "
                          "train.out_dir" + (f" (changes that resume allows: {_show(ok)})" if ok else ""))
    return RunPlan(run_dir, resume_from=last, changed=changes)


def start_run_folder(plan: RunPlan, cfg: Config) -> None:
    """The main process: delete an overwritten run's files, cut the logs back to the resumed step, write config.yaml."""
    for p in plan.overwrite:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if plan.overwrite:
        print(f"[vision-opd] --overwrite: deleted the previous run in {plan.run_dir} ({', '.join(p.name for p in plan.overwrite)})")
    if plan.resume_from is not None:
        step = checkpoint_step(plan.resume_from)
        dropped = cut_logs(plan.run_dir, step)
        if plan.changed:
            print(f"[vision-opd] resuming with changed config keys: {_show(plan.changed)}")
        if dropped:
            print(f"[vision-opd] dropped {dropped} log line(s) after step {step} (metrics.jsonl, samples.jsonl)")
    save_config(cfg, plan.run_dir / "config.yaml")
