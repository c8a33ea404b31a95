"""The teacher's weights: one explicit choice (docs/method.md).

frozen: the initial weights, never updated.
ema:    initialised from the initial weights; after every optimizer step
        theta_T <- (1 - r) * theta_T + r * theta_S  (torch.lerp with weight r), buffers copied.
live:   the student's current weights, used under no_grad (no copy).

Full fine-tuning keeps a copy of the model for frozen/ema. With LoRA (peft) there is no second copy of the
base weights: a frozen teacher is the base with the adapter disabled, and an EMA teacher is an EMA over
the adapter weights only, swapped into the adapter for the teacher's forward passes. The EMA adapter is kept whole
(plain tensors, the same on every rank, as checkpoints hold it): under FSDP2 the update gathers the trained adapter's
shards, and the swap writes each rank its own shard of the EMA weights.
Always score the teacher inside `with teacher.scoring() as model:` (it sets no_grad and eval mode, and gives a
shared student its train mode back afterwards).
"""

from __future__ import annotations

import contextlib
import copy

import torch

from ..models.parts import strip_wrappers, unwrap
from .distributed import full_tensor


def is_peft(model) -> bool:
    return hasattr(strip_wrappers(model), "disable_adapter") and hasattr(strip_wrappers(model), "peft_config")


@contextlib.contextmanager
def eval_mode(model):
    """`model` in eval mode inside the block; every module's own train/eval mode restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def adapter_params(model) -> dict[str, torch.nn.Parameter]:
    """The trainable LoRA parameters of a peft model, by name."""
    return {n: p for n, p in strip_wrappers(model).named_parameters() if "lora_" in n}


def write_whole(p: torch.Tensor, whole: torch.Tensor) -> None:
    """`whole` (a plain tensor of p's full shape) written into parameter `p`: under FSDP2, into this rank's shard
    (cut locally, no communication: every rank holds the same `whole`)."""
    if hasattr(p, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        whole = distribute_tensor(whole.to(p.dtype), p.device_mesh, p.placements, src_data_rank=None)
    p.copy_(whole)


class Teacher:
    def __init__(self, student, mode: str, ema_rate: float = 0.05, device: str | torch.device | None = None):
        if mode not in ("frozen", "ema", "live"):
            raise ValueError(f"teacher mode {mode!r}: choose frozen, ema or live")
        self.mode = mode
        self.rate = float(ema_rate)
        self._student = strip_wrappers(student)
        self.lora = is_peft(student)
        self.model = None  # full-model copy (full fine-tuning, frozen/ema)
        self.ema_adapter: dict[str, torch.Tensor] | None = None  # LoRA + ema
        if self.lora:
            if mode == "ema":
                self.ema_adapter = {n: full_tensor(p.detach()).clone() for n, p in adapter_params(student).items()}
        elif mode in ("frozen", "ema"):
            self.model = copy.deepcopy(unwrap(student)).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
            if device is not None:
                self.model.to(device)
        if device is not None and self.model is None:
            raise ValueError("teacher.device needs a full-model teacher (frozen or ema without LoRA)")
        self.device = torch.device(device) if device is not None else None

    def module(self):
        """The model that holds the teacher's weights (full fine-tuning or live); LoRA needs `scoring()`."""
        if self.lora and self.mode != "live":
            raise RuntimeError("a LoRA teacher shares the student's modules: score it inside `with teacher.scoring()`")
        return self._student if self.model is None else self.model

    def lm_head_weight(self) -> torch.Tensor:
        """The teacher's output projection (LoRA never adapts the lm_head, so it is the student's there)."""
        from ..models.parts import backbone_and_head

        owner = self._student if self.lora else self.module()
        return backbone_and_head(owner)[1].weight.detach()

    @contextlib.contextmanager
    def scoring(self):
        """Context in which the returned model computes the teacher's distributions: no grad, eval mode (no dropout),
        whichever model holds the weights; a live or LoRA teacher is the student's own modules, whose train/eval
        mode is given back on exit, module by module."""
        with torch.no_grad():
            if not self.lora or self.mode == "live":
                with eval_mode(self.module()) as model:
                    yield model
            elif self.mode == "frozen":
                with self._student.disable_adapter(), eval_mode(self._student) as model:
                    yield model
            else:  # LoRA + EMA: swap the EMA adapter weights in, and the student's back out afterwards
                params = adapter_params(self._student)
                saved = {n: p.detach().clone() for n, p in params.items()}
                for n, p in params.items():
                    write_whole(p, self.ema_adapter[n])
                try:
                    with eval_mode(self._student) as model:
                        yield model
                finally:
                    for n, p in params.items():
                        p.copy_(saved[n])

    @torch.no_grad()
    def update(self) -> None:
        """EMA step after an optimizer step (no-op for frozen and live)."""
        if self.mode != "ema":
            return
        if self.lora:
            for n, p in adapter_params(self._student).items():  # FSDP: gather the shards (every rank alike)
                self.ema_adapter[n].lerp_(full_tensor(p.detach()).to(self.ema_adapter[n].dtype), self.rate)
            return
        student = unwrap(self._student)
        for (name_t, p_t), (name_s, p_s) in zip(self.model.named_parameters(), student.named_parameters(), strict=True):
            assert name_t == name_s, f"teacher/student parameter mismatch: {name_t} vs {name_s}"
            p_s = full_tensor(p_s.detach())  # FSDP: gather the shards (every rank takes the same EMA step)
            p_t.lerp_(p_s.to(device=p_t.device, dtype=p_t.dtype), self.rate)
        for b_t, b_s in zip(self.model.buffers(), student.buffers(), strict=True):
            b_t.copy_(full_tensor(b_s).to(b_t.device))

    def state_dict(self) -> dict | None:
        """Weights to checkpoint: only an EMA teacher has state of its own (frozen = the base, live = the student)."""
        if self.mode != "ema":
            return None
        if self.lora:
            return dict(self.ema_adapter)
        return dict(self.model.state_dict())

    def load_state_dict(self, state: dict | None) -> None:
        if self.mode != "ema":
            return
        if state is None:
            raise RuntimeError("resuming an EMA-teacher run, but the checkpoint holds no teacher weights")
        if self.lora:
            if set(state) != set(self.ema_adapter):
                raise RuntimeError("teacher checkpoint mismatch: the EMA adapter's parameter names differ")
            for n, t in state.items():
                self.ema_adapter[n].copy_(t)
            return
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.endswith("inv_freq")]
        if bad or unexpected:
            raise RuntimeError(f"teacher checkpoint mismatch: missing {bad[:5]}, unexpected {unexpected[:5]}")
