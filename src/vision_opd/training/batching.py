"""The step's micro-batches: which response rows are scored together, by row count or by a budget of positions.

    plan = step_plan(cfg.train, model, loss_mask_B_T, prompt_index_B, prompt_mask_P_L)
    for rows in plan.rows: ...          # LongTensor row indices; together every row exactly once
    plan.counts                          # positions scored and real ones (the padding metrics)

A micro-batch's cost is the number of language-model positions the student's scoring forward runs for it:

    cost = sum over its distinct prompts p of Lp[p]  +  rows x T      (train.share_prompts: each prompt once)
    cost = sum over its rows b of Lp[prompt of b]    +  rows x T      (per row: every row with its own prompt)

where Lp[p] is the prompt's width as it runs (the processor batch's padded width) and T the micro-batch's longest
response (every row is padded to it; at least 1, as the step trims). The teacher runs the same micro-batches on
its own view (a crop: usually fewer image tokens).

- `train.micro_batch_tokens = 0`: consecutive rows, `train.micro_batch_size` of them (prompt-major order).
- `train.micro_batch_tokens = N > 0` (`plan_micro_batches`): the row count is not used; every micro-batch costs at
  most N (a single row whose own cost exceeds N runs alone: the budget bounds every micro-batch but those). Rows
  are put in one of two orders and split into consecutive micro-batches by dynamic programming, minimising the
  positions run plus one prompt width per micro-batch (the fixed cost of a forward and backward pass):
  1. grouped: each prompt's rows as one unit (longest first), units ordered by their longest row (a group that
     alone exceeds N goes row by row): a prompt's rows stay together, its prompt runs once per view;
  2. by length: all rows ordered by length (longest first): little padding, but a prompt may run in several
     micro-batches.
  The cheaper plan wins (ties: grouped). With long prompts and close lengths grouping wins; with short prompts and
  long-tailed lengths (a few responses of hundreds of tokens among dozens of short ones) the by-length order does.
- Several processes: every rank runs as many micro-batches (DDP and FSDP2 forwards are collective), so a rank
  with fewer halves its largest ones (`StepPlan.split_to`).
The loss is unchanged by any plan: every micro-batch's token sum is divided by the step's total token count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..scoring.shared import sharing_blocker


def micro_batch_cost(rows: list[int], lengths: list[int], prompt_of: list[int], prompt_len: list[int],
                     share: bool) -> int:
    """Positions one micro-batch of `rows` runs (see the module's doc)."""
    T = max(max(1, lengths[b]) for b in rows)
    prompts = {prompt_of[b] for b in rows} if share else [prompt_of[b] for b in rows]
    return sum(prompt_len[p] for p in prompts) + len(rows) * T


def _partition(units: list[list[int]], lengths: list[int], prompt_of: list[int], prompt_len: list[int], budget: int,
               share: bool) -> tuple[list[list[int]], int]:
    """The cheapest split of `units` (in this order) into consecutive micro-batches of cost <= budget (a single-row
    unit over it alone): minimises the positions run plus `overhead` per micro-batch (dynamic programming; a
    micro-batch's cost only grows as it takes more units). Returns (micro-batches, that total)."""
    overhead = max(prompt_len)
    n, inf = len(units), float("inf")
    best, cut = [0] + [inf] * n, [0] * (n + 1)
    for i in range(n):
        T, prompts, n_rows, prompt_cost = 1, set(), 0, 0
        for j in range(i, n):
            for b in units[j]:
                T, n_rows = max(T, lengths[b]), n_rows + 1
                if not share or prompt_of[b] not in prompts:
                    prompts.add(prompt_of[b])
                    prompt_cost += prompt_len[prompt_of[b]]
            cost = prompt_cost + n_rows * T
            if cost > budget and j > i:
                break  # taking more units only costs more
            if best[i] + cost + overhead < best[j + 1]:
                best[j + 1], cut[j + 1] = best[i] + cost + overhead, i
    out, j = [], n
    while j > 0:
        out.append([b for u in units[cut[j]:j] for b in u])
        j = cut[j]
    return out[::-1], best[n]


def plan_micro_batches(lengths_B: torch.Tensor, prompt_index_B: torch.Tensor, prompt_lengths_P: torch.Tensor,
                       budget: int, share: bool) -> list[torch.Tensor]:
    """Micro-batches (LongTensor row indices, ascending within each) whose cost is <= `budget` positions (a row
    over the budget on its own runs alone): the cheaper of the grouped and the by-length plan (module doc)."""
    lengths, prompt_of, prompt_len = lengths_B.long().tolist(), prompt_index_B.long().tolist(), prompt_lengths_P.long().tolist()
    by_length = sorted(range(len(lengths)), key=lambda b: (-lengths[b], prompt_of[b], b))
    groups: dict[int, list[int]] = {}
    for b in by_length:
        groups.setdefault(prompt_of[b], []).append(b)  # each group's rows longest first
    units: list[list[int]] = []
    for rows in sorted(groups.values(), key=lambda rs: (-lengths[rs[0]], prompt_of[rs[0]])):
        fits = micro_batch_cost(rows, lengths, prompt_of, prompt_len, share) <= budget
        units.extend([rows] if fits else [[b] for b in rows])  # a group over the budget: its rows one by one
    grouped = _partition(units, lengths, prompt_of, prompt_len, budget, share)
    by_row = _partition([[b] for b in by_length], lengths, prompt_of, prompt_len, budget, share)
    best = grouped if grouped[1] <= by_row[1] else by_row
    return [torch.tensor(sorted(mb), dtype=torch.long) for mb in best[0]]


def consecutive_micro_batches(B: int, rows_per_batch: int) -> list[torch.Tensor]:
    """The row-count plan: rows 0..B-1 in order, `rows_per_batch` a micro-batch."""
    return [torch.arange(s, min(B, s + rows_per_batch)) for s in range(0, B, rows_per_batch)]


PLAN_COUNTS = ("positions_scored", "positions_real", "response_positions", "response_tokens", "micro_batches")


def plan_counts(plan: list[torch.Tensor], lengths_B: torch.Tensor, prompt_index_B: torch.Tensor,
                prompt_lengths_P: torch.Tensor, prompt_real_P: torch.Tensor, share: bool) -> dict[str, int]:
    """Positions the plan's student forwards run (prompts at their run width, responses padded to each micro-batch's
    longest) and the real (non-padding) tokens among them: prompts' own tokens, responses' loss tokens."""
    lengths, prompt_of = lengths_B.long().tolist(), prompt_index_B.long().tolist()
    width, real = prompt_lengths_P.long().tolist(), prompt_real_P.long().tolist()
    out = dict.fromkeys(PLAN_COUNTS, 0)
    for mb in plan:
        rows = mb.tolist()
        prompts = {prompt_of[b] for b in rows} if share else [prompt_of[b] for b in rows]
        T = max(max(1, lengths[b]) for b in rows)
        out["response_positions"] += len(rows) * T
        out["response_tokens"] += sum(lengths[b] for b in rows)
        out["positions_scored"] += sum(width[p] for p in prompts) + len(rows) * T
        out["positions_real"] += sum(real[p] for p in prompts) + sum(lengths[b] for b in rows)
        out["micro_batches"] += 1
    return out


def padding_metrics(counts: dict[str, float]) -> dict[str, float]:
    """metrics.jsonl's padding entries from (globally summed) PLAN_COUNTS: `padding_share` = the share of the
    student's scored positions that are padding (prompts' and responses'), `response_padding_share` = the share of
    the scored response positions that are padding."""
    return {"positions_scored": int(counts["positions_scored"]), "positions_real": int(counts["positions_real"]),
            "padding_share": 1.0 - counts["positions_real"] / max(1.0, counts["positions_scored"]),
            "response_padding_share": 1.0 - counts["response_tokens"] / max(1.0, counts["response_positions"]),
            "micro_batches": int(counts["micro_batches"])}


@dataclass
class StepPlan:
    """The step's micro-batches (`rows`, in the order they run) and what the counts need."""
    rows: list[torch.Tensor]
    lengths_B: torch.Tensor  # each row's loss tokens
    prompt_index_B: torch.Tensor
    prompt_lengths_P: torch.Tensor  # positions each prompt's forward runs (its padded width)
    prompt_real_P: torch.Tensor  # its real tokens
    share: bool

    @property
    def counts(self) -> dict[str, int]:
        """PLAN_COUNTS of the student's scoring under this plan (this process's share)."""
        return plan_counts(self.rows, self.lengths_B, self.prompt_index_B, self.prompt_lengths_P, self.prompt_real_P,
                           self.share)

    def split_to(self, n: int) -> StepPlan:
        """At least `n` micro-batches (several processes run as many forwards each: DDP and FSDP2 collectives): the
        micro-batch with the most rows is halved (by length) until there are n; each half costs no more than it."""
        rows = list(self.rows)
        while len(rows) < n:
            i = max(range(len(rows)), key=lambda j: len(rows[j]))
            assert len(rows[i]) > 1, f"{len(rows)} micro-batches of single rows cannot become {n}"
            mb = rows[i][torch.argsort(-self.lengths_B[rows[i]], stable=True)]
            half = (len(mb) + 1) // 2
            rows[i:i + 1] = [mb[:half].sort().values, mb[half:].sort().values]
        return StepPlan(rows, self.lengths_B, self.prompt_index_B, self.prompt_lengths_P, self.prompt_real_P, self.share)


def step_plan(train_cfg, model, loss_mask_B_T: torch.Tensor, prompt_index_B: torch.Tensor,
              prompt_mask_P_L: torch.Tensor) -> StepPlan:
    """The step's micro-batches from `train.micro_batch_tokens` / `train.micro_batch_size` (module doc);
    `prompt_mask_P_L` is the student's prompt attention mask (its width is what each prompt's forward runs)."""
    lengths_B = loss_mask_B_T.sum(-1).long().cpu()
    prompts_B = prompt_index_B.long().cpu()
    P, L = prompt_mask_P_L.shape
    width_P = torch.full((P,), L, dtype=torch.long)
    share = train_cfg.share_prompts and sharing_blocker(model) is None  # as scoring.score_responses decides
    if train_cfg.micro_batch_tokens > 0:
        rows = plan_micro_batches(lengths_B, prompts_B, width_P, train_cfg.micro_batch_tokens, share)
    else:
        rows = consecutive_micro_batches(len(lengths_B), train_cfg.micro_batch_size)
    return StepPlan(rows, lengths_B, prompts_B, width_P, prompt_mask_P_L.sum(-1).long().cpu(), share)
