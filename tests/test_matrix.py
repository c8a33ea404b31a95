"""The combination matrix on the tiny twins, HF rollouts (tests/matrix_runner.py holds the rows and the checks;
the vLLM rows are tests/test_matrix_vllm.py, run by `make test-vllm`)."""

from __future__ import annotations

import itertools

import pytest

from matrix_rows import FACTORS, PRESETS, REQUIRED, assign_presets, matrix_param, pairs_of, pairwise
from matrix_runner import run_and_check_row

ROWS = assign_presets(pairwise(FACTORS, REQUIRED))
HF_ROWS = [(p, r) for p, r in ROWS if r["engine"] == "hf"]


def test_pairwise_covers_every_pair_with_few_rows():
    rows = pairwise(FACTORS, REQUIRED)
    for (f1, v1s), (f2, v2s) in itertools.combinations(FACTORS.items(), 2):
        for v1, v2 in itertools.product(v1s, v2s):
            assert any(r[f1] == v1 and r[f2] == v2 for r in rows), (f1, v1, f2, v2)
    assert len(rows) <= 12  # the pairwise minimum here is 9 (3 processes x 3 teachers)
    for part in REQUIRED:
        assert any(part.items() <= r.items() for r in rows), part
    assert pairwise({"a": (1, 2), "b": (1, 2), "c": (1, 2)}) == [{"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 2, "c": 2},
                                                                {"a": 2, "b": 1, "c": 2}, {"a": 2, "b": 2, "c": 1}]
    assert len(pairs_of({"a": 1, "b": 2, "c": 3})) == 3


def test_every_shipped_preset_runs_in_some_row():
    assert {p for p, _ in ROWS} == set(PRESETS)


@pytest.mark.slow
@pytest.mark.parametrize("preset,row", [matrix_param(p, r) for p, r in HF_ROWS])
def test_matrix_row(preset, row, tmp_path, matrix_data, twin_dirs):
    run_and_check_row(preset, row, tmp_path, matrix_data, twin_dirs)
