"""Every user mistake on the real-model path gets one clear line and no traceback, before anything expensive.

Each case runs the `vision-opd` command in this process (`cli`, tests/conftest.py: `vision_opd.cli.main` with the
argv, the exit code and the output at the file descriptors) and asserts the message and the absence of "Traceback".
The hub is unreachable from the tests (HF_HUB_OFFLINE=1, set in conftest.py before anything imports the hub client).
One case runs the entry point in a subprocess: there the environment the hub client reads at import is the point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "vision-opd-test/no-such-model"  # never downloadable: HF_HUB_OFFLINE=1 and no such repository


def _train_args(synth_dir, out_dir, *extra):
    return ["train", f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={out_dir}", "train.steps=1",
            "train.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=3", "train.progress=false",
            "views.teacher_pixels=12544", "train.threads=1", *extra]


@pytest.fixture(scope="module")
def no_box(tmp_path_factory, synth_dir):
    """The synthetic records without boxes (and so without any teacher view), next to their images."""
    rows = [json.loads(x) for x in (synth_dir / "train.jsonl").read_text().splitlines()]
    p = synth_dir / "no_box_cli.jsonl"
    p.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "box"}) + "\n" for r in rows))
    return p


def test_unreachable_hub_id_says_what_was_tried_and_what_to_do(tmp_path, synth_dir, cli):
    out = cli(*_train_args(synth_dir, tmp_path / "run", f"model.name_or_path={HUB_ID}"), rc=2)
    assert f"model {HUB_ID}: not a local folder" in out and f"the hub id '{HUB_ID}' did not load" in out
    assert "HF_HUB_OFFLINE=1 is set" in out and f"hf download {HUB_ID}" in out
    out = cli("eval", "--model", HUB_ID, "--benchmark", "synthetic", "--data", synth_dir / "train.jsonl", "--out",
              tmp_path / "e", rc=2)
    assert f"the hub id '{HUB_ID}' did not load" in out


@pytest.fixture
def stub_hub():
    """A local stand-in for the hub (HF_ENDPOINT) that knows no repository: every request answers 404 RepoNotFound at
    once, and the paths asked for are recorded. Nothing leaves the machine."""
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self):
            seen.append(self.path)
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()


def test_hub_ids_go_to_the_hub_by_default(tmp_path, synth_dir, stub_hub):
    """Without HF_HUB_OFFLINE the CLI asks the hub for a hub id (it never turns the hub off by itself), and a repository
    the hub does not know gets the one line with the online advice. A subprocess: the hub client reads HF_HUB_OFFLINE
    and HF_ENDPOINT when it is imported, and the `vision-opd` entry point of `eval` runs here as a user runs it."""
    endpoint, seen = stub_hub
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "vision_opd.cli", "eval", "--model", HUB_ID, "--benchmark", "synthetic",
                        "--data", str(synth_dir / "train.jsonl"), "--out", str(tmp_path / "e")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 2 and "Traceback" not in out, out
    assert any(HUB_ID in path for path in seen), seen  # the hub was asked
    assert f"the hub id '{HUB_ID}' did not load" in out and "check the spelling of the id, log in" in out
    assert "HF_HUB_OFFLINE=1 is set" not in out


def test_mistyped_local_model_path(tmp_path, synth_dir, cli):
    for wrong in ("runs/my_run/checkpoints/step_20", "./my_model", str(tmp_path / "nope")):
        out = cli("eval", "--model", wrong, "--benchmark", "synthetic", "--data", synth_dir / "train.jsonl",
                  "--out", tmp_path / "e", rc=2, cwd=tmp_path)
        assert f"model {wrong}: no such folder" in out or "not a local folder" in out, out
        assert "check the path" in out or "check the spelling" in out
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)  # a run folder is not a model
    out = cli("eval", "--model", tmp_path / "run", "--benchmark", "synthetic", "--data", synth_dir / "train.jsonl",
              "--out", tmp_path / "e", rc=2)
    assert "has no config.json" in out and "checkpoints/step_NNNNNN" in out


def test_unknown_benchmark_is_reported_before_the_model_loads(tmp_path, synth_dir, cli):
    # the model is an unreachable hub id: the message is about the benchmark, so nothing tried to load the model
    out = cli("eval", "--model", HUB_ID, "--benchmark", "vstarr", "--data", synth_dir / "train.jsonl", "--out",
              tmp_path / "e", rc=2)
    assert "--benchmark: unknown benchmark 'vstarr'; known:" in out and "hub" not in out
    out = cli("gap", "--model", HUB_ID, "--benchmark", "synthetic", "--data", tmp_path / "missing.jsonl", "--out",
              tmp_path / "g", rc=2)
    assert "missing.jsonl: no such file or folder" in out


def test_gap_box_outside_the_image_and_skip_bad(tmp_path, synth_dir, cli):
    rows = [json.loads(x) for x in (synth_dir / "train.jsonl").read_text().splitlines()][:3]
    rows[1]["box"] = [500, 500, 520, 520]  # the images are 168 x 168
    data = synth_dir / "box_outside.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = cli("gap", "--model", HUB_ID, "--benchmark", "synthetic", "--data", data, "--out", tmp_path / "g", rc=2)
    assert f"{data}: item 2 (id '{rows[1]['id']}'): box [500.0, 500.0, 520.0, 520.0] lies outside the 168x168 image" in out
    assert "--skip-bad" in out and "hub" not in out  # reported before the model
    out = cli("gap", "--model", "tiny:qwen2_5_vl", "--benchmark", "synthetic", "--data", data, "--out", tmp_path / "g",
              "--views", "full,crop,redbox", "--max-new-tokens", "2", "--skip-bad", "--no-progress")
    assert "skipped 1 bad record(s)" in out and "redbox-full" in out
    assert json.loads((tmp_path / "g" / "results.json").read_text())["n_items"] == 2
    out = cli("eval", "--model", "tiny:qwen2_5_vl", "--benchmark", "synthetic", "--data", data, "--out", tmp_path / "e",
              "--max-new-tokens", "2", "--skip-bad", "--no-progress")  # eval never reads the box: all 3 items
    assert "n=3" in out


def test_preset_with_own_records_reports_unusable_records_before_the_model(tmp_path, no_box, cli):
    """configs/qwen2_5_vl_7b_lora.yaml + a Records file alone: read as Records (format auto), and records that cannot
    serve the teacher's view are each named before the (here unreachable) 7B model would load."""
    out = cli("train", "--config", ROOT / "configs" / "qwen2_5_vl_7b_lora.yaml", f"data.train_file={no_box}",
              f"train.out_dir={tmp_path / 'run'}", rc=2)
    assert "missing or empty 'problem'" not in out
    assert "12 bad record(s)" in out and f"{no_box}:1 (id " in out
    assert "the teacher's view needs a 'box' (cropped) or a 'teacher_image'" in out
    assert "Qwen" not in out and "hub" not in out  # the model was never tried


def test_run_folders_never_mix(tmp_path, synth_dir, cli):
    run = tmp_path / "run"
    cli(*_train_args(synth_dir, run))
    out = cli(*_train_args(synth_dir, run), rc=2)
    assert f"train.out_dir={run} already holds a run (config.yaml, metrics.jsonl" in out
    assert "pass --resume to continue it, --overwrite to delete it" in out
    out = cli(*_train_args(synth_dir, run, "model.name_or_path=tiny:qwen2_vl", "train.steps=2"), "--resume", rc=2)
    assert "these keys may not change on resume: model.name_or_path: 'tiny:qwen2_5_vl' -> 'tiny:qwen2_vl'" in out
    assert "changes that resume allows: train.steps: 1 -> 2" in out
    out = cli(*_train_args(synth_dir, tmp_path / "fresh"), "--resume", rc=2)
    assert f"--resume: train.out_dir={tmp_path / 'fresh'} does not exist, so there is nothing to resume" in out
    assert not (tmp_path / "fresh").exists()
    out = cli(*_train_args(synth_dir, run), "--resume", "--overwrite", rc=2)
    assert "choose one" in out
    assert (run / "report.html").is_file()
    out = cli(*_train_args(synth_dir, run, "train.report=false"), "--overwrite")
    assert "--overwrite: deleted the previous run" in out
    assert not (run / "report.html").exists()  # the previous run's page went with it
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_mistyped_train_file_never_generates_data(tmp_path, cli):
    typo = tmp_path / "data" / "trian.jsonl"
    out = cli("train", "--config", ROOT / "configs" / "tiny_cpu.yaml", f"data.train_file={typo}",
              f"train.out_dir={tmp_path / 'r'}", rc=2)
    assert f"{typo}: data file not found" in out
    assert not typo.exists() and not (tmp_path / "data").exists()
    # the tiny config's own synthetic data (data/synth/ under the working folder) is not made for a run that is refused
    out = cli("train", "--config", ROOT / "configs" / "tiny_cpu.yaml", "train.out_dir=runs/nothing", "--resume", rc=2,
              cwd=tmp_path)
    assert "--resume: train.out_dir=runs/nothing does not exist" in out and "generating" not in out
    assert not (tmp_path / "data").exists()


def test_records_that_cannot_serve_the_views(tmp_path, no_box, synth_dir, cli):
    out = cli(*_train_args(synth_dir, tmp_path / "r", f"data.train_file={no_box}", "views.teacher_source=box"), rc=2)
    assert "views.teacher_source=box crops the evidence box, and this record has no 'box'" in out
    out = cli(*_train_args(synth_dir, tmp_path / "r2", "views.teacher_source=given"), rc=2)
    assert "views.teacher_source=given reads the record's 'teacher_image', and this record has none" in out
    out = cli("data", "validate", no_box, "--config", ROOT / "configs" / "tiny_cpu.yaml", rc=1)  # the same check, before training
    assert "12 bad" in out and "the teacher's view needs a 'box'" in out


def test_export_of_something_that_is_no_checkpoint(tmp_path, cli):
    out = cli("export", tmp_path, "--out", tmp_path / "x", rc=2)
    assert "not a checkpoint (no config.json or adapter_config.json)" in out
