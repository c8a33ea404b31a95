"""The teacher's weights: one explicit choice (METHOD.md section 3).

frozen: a copy of the initial weights, never updated.
ema:    a copy initialised from the initial weights; after every optimizer step
        theta_T <- (1 - r) * theta_T + r * theta_S  (torch.lerp with weight r), buffers copied.
live:   the student's current weights, used under no_grad (no copy).
The teacher always runs in eval mode under torch.no_grad(); its parameters never require grad.
"""

from __future__ import annotations

import copy

import torch

from .forward import unwrap


class Teacher:
    def __init__(self, student, mode: str, ema_rate: float = 0.05):
        if mode not in ("frozen", "ema", "live"):
            raise ValueError(f"teacher mode {mode!r}: choose frozen, ema or live")
        self.mode = mode
        self.rate = float(ema_rate)
        self._student = student
        self.model = None
        if mode in ("frozen", "ema"):
            self.model = copy.deepcopy(unwrap(student)).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)

    def module(self):
        """The model to score the teacher view with."""
        return self._student if self.model is None else self.model

    @torch.no_grad()
    def update(self) -> None:
        """EMA step after an optimizer step (no-op for frozen and live)."""
        if self.mode != "ema":
            return
        student = unwrap(self._student)
        for (name_t, p_t), (name_s, p_s) in zip(self.model.named_parameters(), student.named_parameters(), strict=True):
            assert name_t == name_s, f"teacher/student parameter mismatch: {name_t} vs {name_s}"
            p_t.lerp_(p_s.detach().to(p_t.dtype), self.rate)
        for b_t, b_s in zip(self.model.buffers(), student.buffers(), strict=True):
            b_t.copy_(b_s)

    def state_dict(self) -> dict | None:
        """Weights to checkpoint: only the EMA teacher has state of its own (frozen = the base, live = the student)."""
        return {k: v for k, v in self.model.state_dict().items()} if self.mode == "ema" else None

    def load_state_dict(self, state: dict | None) -> None:
        if self.mode == "ema":
            if state is None:
                raise RuntimeError("resuming an EMA-teacher run, but the checkpoint holds no teacher weights")
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            bad = [k for k in missing if not k.endswith("inv_freq")]
            if bad or unexpected:
                raise RuntimeError(f"teacher checkpoint mismatch: missing {bad[:5]}, unexpected {unexpected[:5]}")
