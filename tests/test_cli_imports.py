"""A command that loads no model answers without importing torch or transformers: --help, --version, `config`,
`data validate`, and every mistake found before a model loads (config, key, data file, benchmark, run folder).

Each case runs in a fresh interpreter (the subprocess is the point: in the test process torch is long imported),
calls `vision_opd.cli.main` with the argv, and prints its exit code and which of torch / transformers were imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"

PROBE = """
import json, sys
from vision_opd.cli import main
try:
    rc = main(json.loads(sys.argv[1]))
except SystemExit as e:
    rc = e.code
print(json.dumps({"rc": rc, "loaded": [m for m in ("torch", "transformers") if m in sys.modules]}))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory, synth_dir):
    d = tmp_path_factory.mktemp("cli_imports")
    (d / "malformed.yaml").write_text("train: [steps\n")
    rows = [json.loads(x) for x in (synth_dir / "train.jsonl").read_text().splitlines()]
    (d / "no_box.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "box"}) + "\n" for r in rows))
    (d / "no_image.jsonl").write_text(json.dumps({"id": "a", "image": "nope.png", "question": "What colour?",
                                                  "options": ["red", "blue"], "box": [1, 1, 5, 5]}) + "\n")
    (d / "run").mkdir()
    (d / "run" / "metrics.jsonl").write_text('{"step": 1}\n')  # a folder that holds a run
    return d


def _train(synth_dir, d, *extra):
    return ["train", f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={d / 'new'}", *extra]


CASES = {  # name: (argv from (synth_dir, files folder), the exit code, a piece of the output)
    "help": (lambda s, d: ["--help"], 0, "usage: vision-opd"),
    "version": (lambda s, d: ["--version"], 0, "vision-opd 0."),
    "train help": (lambda s, d: ["train", "--help"], 0, "key=value"),
    "config": (lambda s, d: ["config", "--config", str(TINY), "train.steps=7"], 0, "steps: 7"),
    "data validate": (lambda s, d: ["data", "validate", str(s / "train.jsonl")], 0, "12 good record(s)"),
    "data validate, views": (lambda s, d: ["data", "validate", str(d / "no_box.jsonl"), "--config", str(TINY)], 1,
                             "the teacher's view needs a 'box'"),
    "data validate, missing file": (lambda s, d: ["data", "validate", str(d / "missing.jsonl")], 2, "data file not found"),
    "missing config": (lambda s, d: ["train", "--config", str(d / "missing.yaml")], 2, "config file not found"),
    "malformed config": (lambda s, d: ["train", "--config", str(d / "malformed.yaml")], 2,
                         "malformed.yaml, line 2, column 1: not valid YAML ("),
    "malformed override": (lambda s, d: ["config", "train.steps=["], 2, "override 'train.steps=[': not valid YAML"),
    "unknown key": (lambda s, d: ["train", "train.stepz=1"], 2, "unknown config key 'train.stepz'"),
    "missing data file": (lambda s, d: _train(s, d, f"data.train_file={d / 'missing.jsonl'}"), 2, "data file not found"),
    "bad record": (lambda s, d: _train(s, d, f"data.train_file={d / 'no_image.jsonl'}"), 2, "image file not found"),
    "records without the view": (lambda s, d: _train(s, d, f"data.train_file={d / 'no_box.jsonl'}",
                                                     "views.teacher_source=box"), 2, "this record has no 'box'"),
    "refused run folder": (lambda s, d: _train(s, d, f"train.out_dir={d / 'run'}"), 2, "already holds a run"),
    "nothing to resume": (lambda s, d: [*_train(s, d), "--resume"], 2, "nothing to resume"),
    "unknown benchmark": (lambda s, d: ["eval", "--model", "tiny:qwen2_vl", "--benchmark", "vstarr", "--data",
                                        str(s / "train.jsonl"), "--out", str(d / "e")], 2, "unknown benchmark 'vstarr'"),
    "unknown model folder": (lambda s, d: ["eval", "--model", str(d / "nope"), "--benchmark", "synthetic", "--data",
                                           str(s / "train.jsonl"), "--out", str(d / "e")], 2, "no such folder"),
    "gap, missing data": (lambda s, d: ["gap", "--model", "tiny:qwen2_vl", "--benchmark", "synthetic", "--data",
                                        str(d / "missing.jsonl"), "--out", str(d / "g")], 2, "no such file or folder"),
    "export, no checkpoint": (lambda s, d: ["export", str(d), "--out", str(d / "x")], 2, "not a checkpoint"),
}


@pytest.mark.parametrize("name", CASES)
def test_commands_that_load_no_model_never_import_torch(name, synth_dir, files):
    argv_of, rc, text = CASES[name]
    p = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv_of(synth_dir, files))], capture_output=True,
                       text=True, timeout=120, cwd=files, env=dict(os.environ, OMP_NUM_THREADS="1"))
    out = p.stdout + p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result == {"rc": rc, "loaded": []}, out
    assert text in out and "Traceback" not in out, out
