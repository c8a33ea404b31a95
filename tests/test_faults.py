"""Faults of the machine, not of the data: a full disk, a second writer, changed data, a damaged checkpoint.

Each test runs the command as a user would (in-process `main`) and checks the one line it prints, that no traceback
is printed, and that nothing complete was lost.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vision_opd.cli import main
from vision_opd.training.checkpoint import complete_checkpoints, load_trainer_state
from vision_opd.training.checksums import damage


def _train(run, data, *extra):
    return ["train", f"data.train_file={data}", f"train.out_dir={run}", "train.prompts_per_step=2",
            "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4", "train.micro_batch_size=2", "train.progress=false",
            "views.teacher_pixels=12544", "train.report=false", "train.tensorboard=false", "train.threads=1",
            "train.sample_every=0", *extra]


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def _names(run) -> list[str]:
    return [c.name for c in complete_checkpoints(run)]


def _no_model(monkeypatch):
    """Any model load fails the test: the refusals must come before it."""
    from vision_opd.training import loop

    monkeypatch.setattr(loop, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the refusal"))


# ------------------------------------------------------------------------------------------------- a full disk


FULL = ("No space left on device", "the writer stopped part-way (torch: unexpected pos), as on a full disk",
        "the writer stopped part-way (torch: file write failed), as on a full disk")


def _assert_disk_full_line(err: str, what: str, run: Path, intact: str) -> None:
    assert "Traceback" not in err
    line = _last_line(err)
    assert line.startswith(f"vision-opd: error: cannot write {what} to {run}"), line
    assert any(f": {reason}; " in line for reason in FULL), line
    assert " free of " in line and " on that file system; " in line, line
    assert line.endswith(f"; the last complete checkpoint, {run / 'checkpoints' / intact}, is intact (checksums "
                         "verified): free space and rerun with --resume"), line


@pytest.fixture()
def small_disk(tmp_path):
    """A 5 MB tmpfs: room for one checkpoint of the tiny model (3.4 MB) and not for a second."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); test_checkpoint_write_fails_injected covers it")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_full_disk_during_a_checkpoint_on_a_small_file_system(small_disk, synth_dir, capsys):
    run = small_disk / "run"
    assert main(_train(run, synth_dir / "train.jsonl", "train.steps=2", "train.save_every=1")) == 4
    _assert_disk_full_line(capsys.readouterr().err, "checkpoint step_000002", run, "step_000001")
    assert _names(run) == ["step_000001"] and damage(run / "checkpoints" / "step_000001") is None
    assert not (run / "checkpoints" / "step_000002.tmp").exists()  # the half checkpoint is gone, its space freed
    # more room: --resume continues from the intact checkpoint
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    assert main(_train(run, synth_dir / "train.jsonl", "train.steps=2", "train.save_every=1") + ["--resume"]) == 0
    assert _names(run) == ["step_000001", "step_000002"]


def _safetensors_full():
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("writer, error", [
    ("torch.save", lambda: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1689856 vs 1689744")),
    ("torch.save", lambda: RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing "
                                        "file data/3: file write failed")),
    ("torch.save", lambda: OSError(errno.ENOSPC, "No space left on device")),
    ("safetensors.torch.save_file", _safetensors_full),
], ids=["torch-unexpected-pos", "torch-file-write-failed", "enospc", "safetensors"])
def test_checkpoint_write_fails_injected(tmp_path, synth_dir, capsys, monkeypatch, writer, error):
    """Step 2's trainer state (torch.save) or EMA teacher (safetensors) fails as on a full disk (the issue's
    traceback): one line, step 1 intact, no half checkpoint left."""
    import importlib

    module, name = writer.rsplit(".", 1)
    module = importlib.import_module(module)
    real = getattr(module, name)

    def full(obj, path, *a, **k):
        if "step_000002" in str(path):
            Path(path).write_bytes(b"\0" * 1000)  # part of the file made it
            raise error()
        return real(obj, path, *a, **k)

    monkeypatch.setattr(module, name, full)
    run = tmp_path / "run"
    assert main(_train(run, synth_dir / "train.jsonl", "train.steps=2", "train.save_every=1")) == 4
    _assert_disk_full_line(capsys.readouterr().err, "checkpoint step_000002", run, "step_000001")
    assert _names(run) == ["step_000001"] and not (run / "checkpoints" / "step_000002.tmp").exists()


class _FillingFile:
    """A file on a disk that fills up: the write after `room` writes gets half its text out, then ENOSPC."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, text):
        if self.room == 0:
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= 1
        return self.f.write(text)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _filling_open(name: str, room: int):
    def fake(path, mode="r", *a, **k):
        f = open(path, mode, *a, **k)
        return _FillingFile(f, room) if Path(path).name == name and "a" in mode else f

    return fake


def test_metrics_write_fails_then_resume_drops_the_torn_line(tmp_path, synth_dir, capsys, monkeypatch):
    from vision_opd.training import run_log

    monkeypatch.setattr(run_log, "open", _filling_open("metrics.jsonl", room=1), raising=False)
    run = tmp_path / "run"
    args = _train(run, synth_dir / "train.jsonl", "train.steps=3", "train.save_every=1")
    assert main(args) == 4
    _assert_disk_full_line(capsys.readouterr().err, "metrics.jsonl", run, "step_000001")
    assert (run / "metrics.jsonl").read_text().count("\n") == 1  # step 1, then half of step 2's line
    monkeypatch.undo()
    assert main(args + ["--resume"]) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # the torn line was dropped, every line reads


def test_eval_samples_write_fails_then_rerun_completes(tmp_path, synth_dir, capsys, monkeypatch):
    from vision_opd.demo.run import ASSET_MODEL
    from vision_opd.eval import samples

    out = tmp_path / "eval"
    args = ["eval", "--model", str(ASSET_MODEL), "--benchmark", "synthetic", "--data", str(synth_dir / "train.jsonl"),
            "--out", str(out), "--no-progress", "--max-new-tokens", "4", "--batch-size", "4"]
    monkeypatch.setattr(samples, "open", _filling_open("samples.jsonl", room=1), raising=False)
    assert main(args) == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = _last_line(err)
    assert line.startswith(f"vision-opd: error: cannot write samples.jsonl to {out / 'samples.jsonl'}: No space left"), line
    assert f"every sample written before it is kept in {out}/samples.jsonl" in line and "free of" in line
    assert not (out / "results.json").exists()
    monkeypatch.undo()
    assert main(args) == 0
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == 12


def test_write_failures_are_named_and_other_errors_pass(tmp_path):
    from vision_opd.data.writes import WriteFailed, write_text_atomic, writing

    with pytest.raises(WriteFailed, match=r"cannot write results.json to .*: Permission denied; .* free of "):
        with writing("results.json", tmp_path / "results.json"):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "results.json"))
    with pytest.raises(PermissionError):  # a permission error on a file outside the folder written: a read, not ours
        with writing("results.json", tmp_path / "out"):
            raise PermissionError(errno.EACCES, "Permission denied", "/somewhere/else/model.safetensors")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with writing("checkpoint", tmp_path):
            raise RuntimeError("shape mismatch")
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(WriteFailed):
        with writing("x", tmp_path):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and not (tmp_path / "results.json.tmp").exists()


# ------------------------------------------------------------------------------------ two processes, one folder

HOLDER = """
import sys, time
from vision_opd.data.folder_lock import folder_lock
with folder_lock(sys.argv[1], "train"):
    print("locked", flush=True)
    time.sleep(120)
"""


def _hold(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, synth_dir, capsys):
    run = tmp_path / "run"
    data = synth_dir / "train.jsonl"
    assert main(_train(run, data, "train.steps=1")) == 0
    capsys.readouterr()
    holder = _hold(run)
    try:
        for flag in ("--resume", "--overwrite"):
            assert main(_train(run, data, "train.steps=2") + [flag]) == 2
            err = capsys.readouterr().err
            assert "Traceback" not in err
            line = _last_line(err)
            assert line.startswith(f"vision-opd: error: {run} is being written by another vision-opd process: pid "
                                   f"{holder.pid} on {socket.gethostname()} (`vision-opd train`, since "), line
            assert "--overwrite does not apply to a folder in use" in line
        assert _names(run) == ["step_000001"] and damage(run / "checkpoints" / "step_000001") is None  # --overwrite deleted nothing
    finally:
        holder.kill()
        holder.wait()
    assert (run / ".vision-opd.lock").is_file()  # SIGKILL: the lock stays behind
    assert main(_train(run, data, "train.steps=2") + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert f"[vision-opd] took over the lock of {run}: pid {holder.pid} on {socket.gethostname()}" in out
    assert "is no longer running" in out
    assert _names(run) == ["step_000001", "step_000002"] and not (run / ".vision-opd.lock").exists()


def test_eval_and_export_respect_the_lock(tmp_path, synth_dir, capsys):
    from vision_opd.demo.run import ASSET_MODEL

    out = tmp_path / "eval"
    holder = _hold(out)
    try:
        assert main(["eval", "--model", str(ASSET_MODEL), "--benchmark", "synthetic", "--data",
                     str(synth_dir / "train.jsonl"), "--out", str(out), "--no-progress"]) == 2
        assert f"{out} is being written by another vision-opd process: pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    export = tmp_path / "export"
    lock = tmp_path / ".export.vision-opd.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now", "command": "export"}))
    assert main(["export", str(ASSET_MODEL), "--out", str(export)]) == 2  # this very process holds it: alive
    assert f"pid {os.getpid()}" in capsys.readouterr().err and not export.exists()


def test_a_lock_of_another_host(tmp_path):
    from vision_opd.data.folder_lock import LOCK, REMOTE_STALE_S, FolderBusy, FolderLock

    folder = tmp_path / "run"
    folder.mkdir()
    lock = folder / LOCK
    lock.write_text(json.dumps({"pid": 1, "host": "node-17", "since": "2026-01-01T00:00:00", "command": "train"}))
    with pytest.raises(FolderBusy, match="on another host: pid 1 on node-17 .* --break-lock"):
        FolderLock(folder, "train").acquire()
    assert "--break-lock" in FolderLock(folder, "train", break_lock=True).acquire()
    lock.write_text(json.dumps({"pid": 1, "host": "node-17", "since": "2026-01-01T00:00:00", "command": "train"}))
    old = time.time() - REMOTE_STALE_S - 60
    os.utime(lock, (old, old))
    note = FolderLock(folder, "train").acquire()
    assert "has not refreshed it for 11 minutes" in note and json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_reused_pid_is_not_the_owner(tmp_path):
    """A lock naming this process's pid with another start time: the pid was reused after the owner died."""
    from vision_opd.data.folder_lock import LOCK, FolderLock

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "x",
                                           "proc_start": "1", "command": "train"}))
    if not Path(f"/proc/{os.getpid()}/stat").exists():
        pytest.skip("no /proc: a reused pid cannot be told")
    assert "is no longer running" in FolderLock(folder, "train").acquire()


# ------------------------------------------------------------------------------------- data changed under a run


def test_data_edited_between_run_and_resume(tmp_path, synth_dir, capsys, monkeypatch):
    from vision_opd.data.fingerprint import FINGERPRINT, fingerprint
    from vision_opd.data.validate import read_records

    data_dir = tmp_path / "data"
    shutil.copytree(synth_dir, data_dir)
    data = data_dir / "train.jsonl"
    run = tmp_path / "run"
    assert main(_train(run, data, "train.steps=2")) == 0  # 2 steps x 2 prompts: the cursor at record 4 of 12
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    edited, removed = rows[3]["id"], rows[5]["id"]
    rows[3]["question"] += " (reworded)"
    rows = rows[:5] + rows[6:] + [dict(rows[0], id="new1")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    capsys.readouterr()

    _no_model(monkeypatch)
    assert main(_train(run, data, "train.steps=3") + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = _last_line(err)
    assert line.startswith(f"vision-opd: error: --resume: data.train_file={data} changed since "
                           f"{run / 'checkpoints' / 'step_000002'} (12 -> 12 records: 1 record(s) added (new1), "
                           f"1 record(s) removed ({removed}), 1 record(s) edited ({edited}))"), line
    assert "--accept-data-change" in line
    assert _names(run) == ["step_000002"]
    monkeypatch.undo()

    assert main(_train(run, data, "train.steps=3") + ["--resume", "--accept-data-change"]) == 0
    out = capsys.readouterr().out
    assert "continuing on the new data (--accept-data-change): the prompt stream restarts epoch 0 on its 12 records" in out
    last = run / "checkpoints" / "step_000003"
    assert int(load_trainer_state(last)["cursor"]) == 2  # epoch 0 again from its first prompt, not record 6
    saved = json.loads((last / FINGERPRINT).read_text())
    assert saved["hashes"] == fingerprint(read_records(data))["hashes"]
    assert [c["step"] for c in saved["accepted_changes"]] == [2]


def test_fingerprint_names_a_reorder():
    from vision_opd.data.fingerprint import data_change

    a = {"count": 2, "ids": ["x", "y"], "hashes": ["1", "2"]}
    assert data_change(a, dict(a)) is None
    assert data_change(a, {"count": 2, "ids": ["y", "x"], "hashes": ["2", "1"]}) == "the same 2 records in another order"


# ------------------------------------------------------------------------------------------ a damaged checkpoint


def test_truncated_weights_fall_back_to_the_previous_checkpoint_then_refuse(tmp_path, synth_dir, capsys, monkeypatch):
    run = tmp_path / "run"
    args = _train(run, synth_dir / "train.jsonl", "train.save_every=1")
    assert main(args + ["train.steps=2"]) == 0
    weights = run / "checkpoints" / "step_000002" / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    (run / "checkpoints" / "step_000003.tmp").mkdir()  # a save that never finished
    capsys.readouterr()

    assert main(["check", str(run)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{run / 'checkpoints' / 'step_000001'}: intact (11 files, ")
    assert lines[1] == (f"{run / 'checkpoints' / 'step_000002'}: DAMAGED: {weights} has {size // 2} bytes where "
                        f"COMPLETE says {size}: truncated or overwritten")
    assert lines[2] == f"{run / 'checkpoints' / 'step_000003.tmp'}: incomplete (no COMPLETE: a save that did not finish; --resume ignores it)"

    assert main(args + ["train.steps=3", "--resume"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert (f"[vision-opd] step_000002 is damaged ({weights} has {size // 2} bytes where COMPLETE says {size}: truncated "
            "or overwritten): set aside as step_000002.damaged; resuming from step_000001") in captured.out
    assert _names(run) == ["step_000001", "step_000002", "step_000003"]
    assert all(damage(c) is None for c in complete_checkpoints(run))
    assert (run / "checkpoints" / "step_000002.damaged").is_dir()  # kept for a look, never resumed from

    # a changed byte (same size) is found by its checksum
    first = run / "checkpoints" / "step_000001" / "trainer_state.pt"
    raw = bytearray(first.read_bytes())
    raw[-100] ^= 0xFF
    first.write_bytes(bytes(raw))
    for c in complete_checkpoints(run)[1:]:
        (c / "model.safetensors").write_bytes(b"")
    _no_model(monkeypatch)
    assert main(args + ["train.steps=4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = _last_line(err)
    assert line.startswith(f"vision-opd: error: --resume: no intact checkpoint in train.out_dir={run}: "), line
    assert f"{first} does not match the sha256 in COMPLETE: the file is damaged" in line
    assert "Nothing to resume from" in line
    assert main(["check", str(run)]) == 1
