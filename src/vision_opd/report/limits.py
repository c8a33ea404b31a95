"""How much of a folder a report shows: bounded, so a long run or a large benchmark still builds in seconds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_steps: int = 6  # training run: steps whose rollouts are shown, spread evenly over the run
    max_rollouts: int = 24  # training run: rollouts shown in all (split evenly over those steps)
    max_items: int = 48  # eval / gap: items per gallery (right and wrong in proportion, at least a few of each)

    def __post_init__(self):
        for name in ("max_steps", "max_rollouts", "max_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
