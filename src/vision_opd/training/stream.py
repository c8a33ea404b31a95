"""The prompt stream: which records each optimizer step reads, epoch-shuffled, with a resumable cursor.

    stream = PromptStream(len(records), seed=0)
    batch = [records[i] for i in stream.take(prompts_per_step)]
    state = stream.cursor   # saved in the trainer state; PromptStream(n, seed, cursor=state) continues exactly

The order of epoch e is a shuffle seeded by (seed, e), so a resumed run reads the same prompts in the same
order as an uninterrupted one.
"""

from __future__ import annotations

import random


class PromptStream:
    """Epoch-shuffled record indices with a resumable cursor (seed, position)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, cursor: int = 0):
        self.n, self.seed, self.shuffle, self.cursor = n, seed, shuffle, cursor

    def _order(self, epoch: int) -> list[int]:
        idx = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 100_003 + epoch).shuffle(idx)
        return idx

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            epoch, pos = divmod(self.cursor, self.n)
            out.append(self._order(epoch)[pos])
            self.cursor += 1
        return out
