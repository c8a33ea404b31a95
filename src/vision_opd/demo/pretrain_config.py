"""`PretrainConfig`: the settings of the demo's supervised pre-training (pretrain.py runs it).

Torch-free, so that `vision-opd pretrain --help` shows these defaults (and `vision-opd --help` answers) without
importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .world import WorldConfig


@dataclass
class PretrainConfig:
    world: WorldConfig = field(default_factory=WorldConfig)
    easy_share: float = 0.5  # share of easy full images in the labelled stream (the rest are crops); 0.3 did not
    # teach reading a lone object in a full image within 2,900 steps, 0.5 did at ~2,400 (docs/demo.md M21)
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 50
    max_steps: int = 3000
    time_budget_s: float = 3600.0
    eval_every: int = 200
    patience: int = 5  # evaluations in which none of full, crop, easy full improved, before stopping
    min_delta: float = 0.01
    n_val: int = 96  # validation items (hard full images and their crops)
    seed: int = 0  # model init and data order
    device: str = "cpu"  # where the tiny model trains (cpu; cuda works too, e.g. for world sweeps)
    init: str | None = None  # start from this demo checkpoint instead of random weights (e.g. the shipped one, to teach
    # it another answer style: the long-answer world, docs/demo.md); None = from scratch

    def to_dict(self) -> dict:
        return asdict(self)
