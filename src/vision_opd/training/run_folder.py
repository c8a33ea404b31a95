"""The run folder: one run per folder, resumed only from its own checkpoints under a compatible config.

    plan = check_run_folder(run_dir, cfg, resume=False, overwrite=False)   # every process; reads only
    start_run_folder(plan)                                                 # the main process: deletes, cuts logs
    write_run_config(plan.run_dir, cfg)                                    # once the model and engine are loaded

- A folder that holds a run (metrics.jsonl, samples.jsonl, checkpoints/, ...) is refused unless `resume`
  (continue it) or `overwrite` (delete that run's files first; nothing else in the folder is touched). config.yaml
  is written only when everything is loaded, just before step 1, so a start that fails (bad data, a model that does
  not load) leaves nothing a later run must overwrite; a config.yaml alone (from such a start) is simply replaced.
- `resume` with no complete checkpoint stops with a message (it never starts from scratch silently), and so does
  `resume` with train.steps not above the checkpoint's step (the run is finished, or would go backwards).
- `resume` picks the newest checkpoint whose files match the checksums of its COMPLETE marker (checksums.py): a
  damaged newer one is named in one line and set aside (step_N.damaged); none intact stops naming the damaged file.
- `resume` compares the training data with the fingerprint saved in the checkpoint (data/fingerprint.py, before the
  model loads): records added, removed or edited are named and refused, unless accept_data_change
  (--accept-data-change), which continues on the new data with the prompt stream's epoch restarted on it.
- Resuming compares the checkpoint's config with the new one and names every changed key: changes that make
  the saved state mean something else (the model, the data, the views, the teacher's kind, the seed) are
  refused; the others (steps, logging, evaluation, guards, learning rate, ...) are allowed and printed.
- metrics.jsonl, samples.jsonl and tokens.jsonl are cut back to the resumed step, so no step appears twice.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import Config, ConfigError, save_config, to_dict
from ..data.fingerprint import FINGERPRINT, data_change
from ..data.writes import writing
from .checkpoint import checkpoint_step, complete_checkpoints
from .checksums import newest_intact
from .run_log import METRICS, SAMPLES, TOKENS, cut_logs

RUN_FILES = ("config.yaml", METRICS, SAMPLES, TOKENS, "report.html")
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
    damaged: list[tuple[Path, str]] = field(default_factory=list)  # newer complete checkpoints that failed their checksums


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
    complete = complete_checkpoints(run_dir)
    last, damaged = newest_intact(complete)
    if complete and last is None:
        raise ConfigError(f"--resume: no intact checkpoint in {where}: " + "; ".join(p for _, p in damaged) +
                          ". Nothing to resume from: restore the files, or start a new run (--overwrite)")
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
    done = checkpoint_step(last)
    if cfg.train.steps <= done:
        state = "is finished" if cfg.train.steps == done else f"is past train.steps={cfg.train.steps}"
        raise ConfigError(f"--resume: {where} already has step {done} ({last.name}) and {state}; set train.steps above "
                          f"{done} to train on, or start a new run in another train.out_dir")
    return RunPlan(run_dir, resume_from=last, changed=changes, damaged=damaged)


def start_run_folder(plan: RunPlan) -> None:
    """The main process: delete an overwritten run's files, cut the logs back to the resumed step."""
    for p in plan.overwrite:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if any(p.name != "config.yaml" for p in plan.overwrite):  # a config.yaml alone is no run: nothing to announce
        print(f"[vision-opd] --overwrite: deleted the previous run in {plan.run_dir} ({', '.join(p.name for p in plan.overwrite)})")
    for ckpt, problem in plan.damaged:
        aside = ckpt.with_name(ckpt.name + ".damaged")
        shutil.rmtree(aside, ignore_errors=True)
        ckpt.rename(aside)
        print(f"[vision-opd] {ckpt.name} is damaged ({problem}): set aside as {aside.name}; resuming from "
              f"{plan.resume_from.name}")
    if plan.resume_from is not None:
        step = checkpoint_step(plan.resume_from)
        dropped = cut_logs(plan.run_dir, step)
        if plan.changed:
            print(f"[vision-opd] resuming with changed config keys: {_show(plan.changed)}")
        if dropped:
            print(f"[vision-opd] dropped {dropped} log line(s) after step {step} (metrics.jsonl, samples.jsonl, tokens.jsonl)")


def write_run_config(run_dir: Path, cfg: Config) -> None:
    """The run's config.yaml, written when the run is about to take its first step."""
    with writing("config.yaml", run_dir):
        save_config(cfg, Path(run_dir) / "config.yaml")


@dataclass
class DataChange:
    """The training data changed since the resumed checkpoint, and the user accepted it (--accept-data-change)."""
    text: str  # what changed, in words
    saved_count: int  # records when the checkpoint was written

    def restart(self, cursor: int, n: int) -> int:
        """The prompt stream's cursor on the new data: the epoch it was in, restarted from its first prompt."""
        return (cursor // max(1, self.saved_count)) * n


def compare_data(resume_from: Path | None, fp: dict, *, train_file: str, accept: bool) -> DataChange | None:
    """Compare the data's fingerprint `fp` with the one saved in the checkpoint (absent: nothing to compare);
    ConfigError naming what changed unless `accept`."""
    path = Path(resume_from) / FINGERPRINT if resume_from is not None else None
    if path is None or not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    text = data_change(saved, fp)
    if text is None:
        return None
    if not accept:
        raise ConfigError(f"--resume: data.train_file={train_file} changed since {resume_from} ({text}); the run's place "
                          "in the data would point at other records. Restore the data, start a new run, or pass "
                          "--accept-data-change to continue on the new data (its epoch restarts on the new records)")
    return DataChange(text, int(saved["count"]))


def fingerprint_text(fp: dict, train_file: str, resume_from: Path | None, change: DataChange | None, step: int) -> str:
    """data_fingerprint.json of the run's checkpoints: the fingerprint, the file, and every data change accepted in
    the run (the resumed checkpoint's, then this one at `step`)."""
    saved = Path(resume_from) / FINGERPRINT if resume_from is not None else None
    history = json.loads(saved.read_text(encoding="utf-8")).get("accepted_changes", []) if saved and saved.is_file() else []
    if change is not None:
        history.append({"step": step, "change": change.text})
    return json.dumps({"train_file": str(train_file), **fp, "accepted_changes": history})


def what_survived(run_dir: str | Path) -> str:
    """After a failed write: the newest intact checkpoint (checksums verified), for the one-line error."""
    last, _ = newest_intact(complete_checkpoints(run_dir))
    if last is None:
        return "no checkpoint of this run is complete yet"
    return f"the last complete checkpoint, {last}, is intact (checksums verified): free space and rerun with --resume"
