"""The combination matrix's run and checks: one row end to end (tests/matrix_rows.py holds the rows).

Each row runs its preset on the twin: 3 steps with a checkpoint at step 2 (the uninterrupted run), then the step-3
checkpoint removed and `--resume` for the last step, export (merged for LoRA) and an evaluation of the export beside
one of the checkpoint.

Checked in every row (`check_row`): after each weight sync the engine's greedy tokens equal HF generate's on the
trainer's weights and its log-probs an independent forward's (1e-5, fp32), recorded by `SyncCheck`; every step's
sampled-token log-probs equal the trainer's (rollout_logprob_diff_max); the resumed step's metrics, weights and
trainer state equal the uninterrupted run's; the export answers as the checkpoint and has its logits; the logged lr
is the optimizer's.

Run as a script (under torchrun for the two-process rows): `python tests/matrix_runner.py CHECK_DIR train ARGS...`
installs the sync check, then runs `vision-opd train ARGS...` and its resumed last step in the same processes.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from matrix_rows import PRESETS, ROOT, row_overrides

TOL = 1e-5

# ----------------------------------------------------------------------------- after each sync: engine vs trainer


def forward_logprobs(model, inputs, ro, suppressed) -> torch.Tensor:
    """log softmax of a forward over [prompt + response] at the rollout's tokens (temperature 1, specials excluded)."""
    from vision_opd.models.parts import unwrap
    from vision_opd.scoring.forward import response_logits_forward, select_prompts

    prompts = select_prompts(inputs, ro.prompt_index_B, unwrap(model).config.vision_start_token_id)
    with torch.no_grad():  # the model's own forward (FSDP: the sharded weights are whole only inside it)
        z = response_logits_forward(model, prompts, ro.response_ids_B_T, ro.response_mask_B_T).float()
    z[..., list(suppressed)] = float("-inf")
    return torch.log_softmax(z, -1).gather(-1, ro.response_ids_B_T[..., None]).squeeze(-1)


class SyncCheck:
    """Wraps the run's engine: after every `sync`, the engine's greedy rollout of two fixed prompts against HF
    generate on the trainer's weights (tokens) and an independent forward (log-probs); one JSON line per sync."""

    def __init__(self, engine, cfg, processor, log_path: Path, fsdp: bool):
        from vision_opd.data.validate import read_records
        from vision_opd.data.views import encode_views, student_view

        self.engine, self.processor, self.log_path, self.fsdp = engine, processor, log_path, fsdp
        records = read_records(cfg.data.train_file)[:2]
        self.views = [student_view(r, cfg.views) for r in records]
        self.inputs = encode_views(processor, self.views)

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def sample(self, model, inputs, views=None):
        return self.engine.sample(model, inputs, views)

    def sync(self, model, **kw) -> float:
        seconds = self.engine.sync(model, **kw)
        self.check(model)
        return seconds

    def close(self) -> None:
        self.engine.close()

    def check(self, model) -> None:
        from vision_opd.models.parts import strip_wrappers
        from vision_opd.rollout import HFEngine

        greedy = replace(self.engine.decoding, do_sample=False, samples_per_prompt=1)
        trainer = model if self.fsdp else strip_wrappers(model)  # FSDP: every rank runs the same forwards
        saved, self.engine.decoding = self.engine.decoding, greedy
        try:
            ro = self.engine.sample(trainer, self.inputs, self.views)
        finally:
            self.engine.decoding = saved
        ref = HFEngine(self.processor, greedy, synced_gpus=self.fsdp).sample(trainer, self.inputs)
        mask = ro.response_mask_B_T.bool()
        lp = forward_logprobs(trainer, self.inputs, ro, greedy.suppressed_ids)
        line = {"tokens_equal": bool(torch.equal(ro.response_ids_B_T, ref.response_ids_B_T)
                                     and torch.equal(ro.response_mask_B_T, ref.response_mask_B_T)),
                "logprob_diff_max": float((ro.logprobs_B_T[mask] - lp[mask]).abs().max())}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(line) + "\n")


def install_sync_check(check_dir: Path, rank: int = 0):
    """Replace the run loop's `make_engine` by one whose engine is wrapped in a SyncCheck; returns the undo."""
    import vision_opd.training.loop as L

    real = L.make_engine

    def make_engine(cfg, model, processor, suppress_ids, **kw):
        engine = real(cfg, model, processor, suppress_ids, **kw)
        fsdp = kw.get("world", 1) > 1 and cfg.train.distributed == "fsdp"
        return SyncCheck(engine, cfg, processor, Path(check_dir) / f"sync{rank}.jsonl", fsdp)

    L.make_engine = make_engine

    def undo():
        L.make_engine = real

    return undo


# ----------------------------------------------------------------------------- one row, end to end


def train_twice(args: list[str], check_dir: Path, rank: int, phases: tuple[str, ...] = ("first", "resume")) -> int:
    """`vision-opd train ARGS` (3 steps, a checkpoint at step 2), then the step-3 checkpoint moved to
    CHECK_DIR/uninterrupted (with metrics.jsonl) and `--resume` for the last step. One process runs both phases;
    several processes run each phase as a launch of its own, as a user resumes (`phases`)."""
    import shutil

    from vision_opd.cli import main

    undo = install_sync_check(check_dir, rank)
    try:
        if "first" in phases:
            rc = main(args)
            if rc != 0:
                return rc
            run = Path(next(a.split("=", 1)[1] for a in args if a.startswith("train.out_dir=")))
            if rank == 0:
                keep = check_dir / "uninterrupted"
                shutil.copytree(run / "checkpoints" / "step_000003", keep / "step_000003")
                shutil.copy(run / "metrics.jsonl", keep / "metrics.jsonl")
                shutil.rmtree(run / "checkpoints" / "step_000003")  # as if the run had stopped after its step-2 checkpoint
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.barrier()
        return main([*args, "--resume"]) if "resume" in phases else 0
    finally:
        undo()


def launch(args: list[str], procs: str, check_dir: Path) -> tuple[int, str]:
    """`train_twice(ARGS)`: in this process (1 process) or over 2 CPU processes with torchrun."""
    import contextlib
    import io
    import shutil
    import signal
    import socket
    import subprocess

    if procs == "1":
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            rc = train_twice(args, check_dir, 0)
        return rc, buf.getvalue()
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    outs = []
    for phase in ("first", "resume"):  # the resume is a launch of its own, as a user resumes a multi-process run
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), __file__,
               str(check_dir), phase, *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        try:
            out, _ = proc.communicate(timeout=500)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return 124, "".join(outs) + out + "\n(no end in 500 s: a hang)"
        outs.append(out)
        if proc.returncode != 0:
            return proc.returncode, "".join(outs)
    return 0, "".join(outs)


def _weights(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    return {f"{p.relative_to(ckpt)}:{k}": v for p in sorted(ckpt.rglob("*.safetensors")) for k, v in load_file(str(p)).items()}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def run_row(preset: str, row: dict, tmp: Path, data: Path, twin_dirs: dict) -> dict:
    """The row end to end: the uninterrupted 3 steps, the resumed last step, export and the two evaluations.
    Returns what `check_row` reads; {"refused": output} where the run stopped with exit code 2."""
    from vision_opd.cli import main

    twin = PRESETS[preset]
    twin_dir = twin if twin.startswith("tiny:") else str(twin_dirs[twin])
    run, checks = tmp / "run", tmp / "checks"
    checks.mkdir(parents=True, exist_ok=True)
    args = ["train", "--config", str(ROOT / preset), *row_overrides(row, twin_dir, data, run)]
    if "seqkd" not in preset:  # seqkd samples one greedy answer per prompt, as shipped
        args.append("rollout.samples_per_prompt=2")
    rc, out = launch(args, row["procs"], checks)
    if rc == 2:
        return {"refused": out}
    assert rc == 0, out[-4000:]
    ckpt3, kept = run / "checkpoints" / "step_000003", checks / "uninterrupted"
    got = {"uninterrupted": _metrics(kept), "weights3": _weights(kept / "step_000003"), "run": run, "kept": kept,
           "ranks": 1 if row["procs"] == "1" else 2,
           "resumed": _metrics(run), "resumed_weights3": _weights(ckpt3), "output": out,
           "syncs": [json.loads(x) for p in sorted(checks.glob("sync*.jsonl")) for x in p.read_text().splitlines()]}
    lora = (ckpt3 / "adapter_model.safetensors").exists()
    export = tmp / "export"
    assert main(["export", str(ckpt3), "--out", str(export), *(["--merge"] if lora else [])]) == 0
    answers = {}
    for name, model in (("export", export), ("checkpoint", ckpt3)):
        assert main(["eval", "--model", str(model), "--benchmark", "synthetic", "--data", str(data), "--out",
                     str(tmp / f"eval_{name}"), "--no-progress", "--max-new-tokens", "4", "--limit", "4",
                     "--device", "cpu", "--dtype", "float32"]) == 0
        rows = [json.loads(x) for x in (tmp / f"eval_{name}" / "samples.jsonl").read_text().splitlines()]
        answers[name] = [(r.get("id"), r.get("view"), r.get("response")) for r in rows]
    got["answers"] = answers
    got["export_logit_diff"] = _logit_diff(export, ckpt3, data)
    return got


def _logit_diff(a: Path, b: Path, data: Path) -> float:
    """The largest difference of two models' logits on two student prompts (each loaded as `eval` loads it)."""
    from vision_opd.data.validate import read_records
    from vision_opd.data.views import encode_views, student_view
    from vision_opd.models.loading import load_model_and_processor

    (ma, proc), (mb, _) = load_model_and_processor(str(a)), load_model_and_processor(str(b))
    inputs = encode_views(proc, [student_view(r) for r in read_records(data)[:2]])
    with torch.no_grad():
        return float((ma(**inputs).logits - mb(**inputs).logits).abs().max())


def check_row(got: dict) -> None:
    """The invariants of a row that ran (see the module's docstring)."""
    import math

    import pytest

    from vision_opd.config import load_config
    from vision_opd.training.checkpoint import load_trainer_state
    from vision_opd.training.loop import lr_lambda

    run, before, after = got["run"], got["uninterrupted"], got["resumed"]
    # one sync after every step that updated the weights (a skipped step syncs nothing), on every rank; after each,
    # greedy tokens and log-probs as the trainer's
    updated = sum(not m["skipped"] for m in before) + (not after[2]["skipped"])
    assert len(got["syncs"]) == got["ranks"] * updated, (len(got["syncs"]), updated)
    assert all(s["tokens_equal"] for s in got["syncs"]), got["syncs"]
    assert max((s["logprob_diff_max"] for s in got["syncs"]), default=0.0) < TOL, got["syncs"]
    for m in before + after:  # the sampled tokens' log-probs, every step
        d = m.get("rollout_logprob_diff_max")
        assert d is None or (isinstance(d, float) and math.isnan(d)) or d < TOL, (m["step"], d)
    # the resumed step equals the uninterrupted one: metrics and weights
    assert [m["step"] for m in before] == [m["step"] for m in after] == [1, 2, 3]
    for key in ("loss", "kl", "grad_norm", "lr", "tokens", "response_len", "skipped",  # and a negative view's, if any
                "negative_logprob_gap", "negative_fallbacks", "weight_mean", "weight_zero_share", "gated_share",
                "margin_term"):
        a, b = before[2].get(key), after[2].get(key)
        assert (a is None and b is None) or b == pytest.approx(a, rel=1e-5, abs=1e-8), (key, a, b)
    assert got["weights3"].keys() == got["resumed_weights3"].keys()  # the student's and the teacher's
    for k, v in got["weights3"].items():
        torch.testing.assert_close(got["resumed_weights3"][k], v, atol=1e-8, rtol=1e-6, msg=k)
    a, b = (load_trainer_state(c) for c in (got["kept"] / "step_000003", run / "checkpoints" / "step_000003"))
    assert (a["step"], a["cursor"], a["scheduler"]) == (b["step"], b["cursor"], b["scheduler"])  # where step 4 would go on
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]
    # the logged lr is the optimizer's: the config's schedule at the number of updates so far (a skipped step does
    # not move it), and the step-2 checkpoint's optimizer holds the lr that step 3 logged
    cfg, updates = load_config(run / "config.yaml", []), 0
    if cfg.views.negative != "none":  # the row really scored the second teacher view, every step
        assert all(math.isfinite(m["negative_logprob_gap"]) for m in before + after), before
    f = lr_lambda(cfg)
    for m in after:
        assert m["lr"] == pytest.approx(cfg.optim.lr * f(updates), rel=1e-9), m["step"]
        updates += not m["skipped"]
    opt = load_trainer_state(run / "checkpoints" / "step_000002")["optimizer"]
    assert opt["param_groups"][0]["lr"] == pytest.approx(after[2]["lr"], rel=1e-9)
    # the export evaluates like the checkpoint: the same answers, the same logits (LoRA merged: to rounding)
    assert got["answers"]["export"] == got["answers"]["checkpoint"] and got["answers"]["export"]
    assert got["export_logit_diff"] < 1e-5, got["export_logit_diff"]


if __name__ == "__main__":  # under torchrun: python tests/matrix_runner.py CHECK_DIR first|resume train ARGS...
    sys.exit(train_twice(sys.argv[3:], Path(sys.argv[1]), int(os.environ.get("RANK", "0")), (sys.argv[2],)))


def run_and_check_row(preset: str, row: dict, tmp_path, data, twins) -> None:
    """One matrix row end to end: run it (never refused: every combination is meant to run) and check it."""
    import time

    from matrix_rows import row_id

    t = time.time()
    got = run_row(preset, row, tmp_path, data, twins)
    assert "refused" not in got, got.get("refused")
    check_row(got)
    print(f"\n[matrix] {row_id(preset, row)}: passed in {time.time() - t:.0f} s")
