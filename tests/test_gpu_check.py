"""perf/gpu_check.py runs its whole path on the CPU (`--dry-run`: a shrunk Qwen2.5-VL, HF rollouts cut at drawn
lengths, the cases of perf/gpu_check.sh); perf/gpu_check.sh parses. The GPU run itself needs a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "perf" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_measures_every_case_on_the_same_lengths(tmp_path, capsys):
    gpu_check = _gpu_check()
    out = gpu_check.main(["--dry-run", "--cases", "on:0", "off:0", "on:120", "--vary-lengths", "--json",
                          str(tmp_path / "hf.json")])
    assert out["size"] == "dry" and out["device"] == "cpu" and out["vary_lengths"]
    rows, per_row, budget = out["cases"]
    assert (rows["share_prompts"], per_row["share_prompts"], budget["micro_batch_tokens"]) == (True, False, 120)
    assert rows["response_padding_share"] > 0  # the drawn lengths differ: rows padded to their micro-batch's longest
    assert budget["micro_batches"] > rows["micro_batches"] and budget["response_padding_share"] < rows["response_padding_share"]
    assert gpu_check.main(["--table", str(tmp_path / "hf.json")]) is None
    table = capsys.readouterr().out.split("| engine |", 1)[-1]
    assert "| hf | on | rows |" in table and "| hf | off | rows |" in table and "| hf | on | <= 120 positions |" in table
    assert json.loads((tmp_path / "hf.json").read_text())["cases"][2]["micro_batch_tokens"] == 120


def test_a_bad_case_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        _gpu_check().parse(["--cases", "maybe:10"])
    assert e.value.code == 2 and "case 'maybe:10': expected SHARE:TOKENS" in capsys.readouterr().err


def test_gpu_check_sh_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "perf" / "gpu_check.sh")]).returncode == 0
