"""The teacher scores in eval mode whatever the student's mode (dropout off), and gives the student's mode back."""

from __future__ import annotations

import pytest
import torch

from vision_opd.data.views import encode_views, student_view
from vision_opd.models.tiny import build_tiny
from vision_opd.training.teacher import Teacher


def _with_dropout(model, p: float = 0.5):
    """Attention dropout on every text-attention module (the tiny configs have none)."""
    n = 0
    for m in model.modules():
        if hasattr(m, "attention_dropout") and hasattr(m, "q_proj"):
            m.attention_dropout = p
            n += 1
    assert n > 0
    return model


def _teachers():
    yield "live", lambda model: (model, Teacher(model, "live"))
    yield "ema", lambda model: (model, Teacher(model, "ema", 0.2))
    for mode in ("frozen", "ema"):
        def lora(model, mode=mode):
            pytest.importorskip("peft")
            from vision_opd.models.lora import apply_lora

            model = apply_lora(model, 4, 8)
            return model, Teacher(model, mode, 0.2)

        yield f"lora-{mode}", lora


@pytest.mark.parametrize("name, make", list(_teachers()), ids=[n for n, _ in _teachers()])
def test_teacher_scores_in_eval_mode(name, make, synth_records):
    model, proc = build_tiny("qwen2_5_vl")
    model, teacher = make(_with_dropout(model))
    model.train()
    inputs = encode_views(proc, [student_view(synth_records[0])])
    with torch.no_grad():
        noisy = [model(**inputs).logits for _ in range(2)]
    assert not torch.equal(*noisy), "dropout is active in train mode (the test's premise)"
    outs = []
    for _ in range(2):
        with teacher.scoring() as t_model:
            assert not any(m.training for m in t_model.modules()), f"{name}: the teacher scores in eval mode"
            outs.append(t_model(**inputs).logits)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)  # no dropout noise in the teacher
    assert all(m.training for m in model.modules()), "the student's train mode is given back"
    model.eval()
    with teacher.scoring():
        pass
    assert not any(m.training for m in model.modules()), "and an eval-mode student stays in eval mode"
