"""The planted bugs of scripts/mutants.py still apply to the code: each one's text occurs exactly once in its file,
and every test named to catch it exists (so the table in docs/testing.md can be reproduced on this code)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mutants", ROOT / "scripts" / "mutants.py")
mutants = importlib.util.module_from_spec(_spec)
sys.modules["mutants"] = mutants  # dataclasses look their module up there
_spec.loader.exec_module(mutants)


@pytest.mark.parametrize("m", mutants.MUTANTS, ids=lambda m: m.id)
def test_each_planted_bug_still_applies_to_the_code(m):
    text = (ROOT / m.path).read_text(encoding="utf-8")
    assert text.count(m.old) == 1, f"{m.id}: {m.old!r} occurs {text.count(m.old)} times in {m.path}; update the mutant"
    assert m.new != m.old
    for test in m.tests:
        path, _, name = test.partition("::")
        name = name.split("[")[0]
        assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(encoding="utf-8"), re.M), \
            f"{m.id}: no test {test}"
