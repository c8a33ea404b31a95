"""What one training step needs, built once by the run loop and passed down as one object.

    ctx = StepContext(model, teacher, processor, optimizer, scheduler, suppress_ids, device, engine, accelerator)
    result = vision_opd_step(cfg, ctx, records)

`StepViews` is the step's prompts after preprocessing: the records, the student's views and both views' inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.parts import is_fsdp, unwrap
from ..rollout import HFEngine, decoding_of


@dataclass
class StepContext:
    model: torch.nn.Module  # the student (possibly wrapped by DDP / FSDP2 / peft)
    teacher: object  # training.teacher.Teacher: frozen, EMA or live weights
    processor: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    suppress_ids: list[int]  # vision special tokens, never sampled
    device: torch.device
    engine: object = None  # the rollout engine (HF or vLLM); None: HF generate on the model itself
    accelerator: object = None  # accelerate's Accelerator over several processes; None: one process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    @property
    def synced_gpus(self) -> bool:
        """FSDP over several processes: every rank must run the same number of generate forwards."""
        return is_fsdp(self.model) and self.world > 1

    @property
    def vision_start_id(self) -> int:
        return unwrap(self.model).config.vision_start_token_id

    def rollout_engine(self, rollout_cfg):
        """The engine that samples the responses (callers that keep none get HF generate on the model itself, under
        rollout.engine=auto too: the run loop resolves auto with `rollout.make_engine`)."""
        if self.engine is None:
            assert rollout_cfg.engine != "vllm", "rollout.engine=vllm: pass the engine built by make_engine"
            self.engine = HFEngine(self.processor, decoding_of(rollout_cfg, self.suppress_ids), synced_gpus=self.synced_gpus,
                                   decoder=rollout_cfg.hf_decoder)
        return self.engine


@dataclass
class StepViews:
    records: list  # this rank's prompts (data.records.Record)
    student_views: list  # data.views.View of each record on the student's side
    student_inputs: dict = field(repr=False)  # processor outputs of the student's views (full image)
    teacher_inputs: dict = field(repr=False)  # processor outputs of the teacher's views (crop)
