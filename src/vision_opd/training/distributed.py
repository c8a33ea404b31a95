"""Several processes, no home-made machinery: accelerate starts them and gives DDP; FSDP is PyTorch's own.

    accelerate launch --num_processes 8 -m vision_opd.cli train --config C       (one node, 8 GPUs)
    torchrun --nproc_per_node 2 -m vision_opd.cli train --config C train.device=cpu   (2 CPU processes, gloo)

train.distributed = ddp (default): accelerate's DDP; every rank holds the whole model.
train.distributed = fsdp: `torch.distributed.fsdp.fully_shard` (FSDP2) on every decoder layer, the vision
tower and the root, so parameters, gradients and optimizer state are sharded; works over gloo on CPUs and
NCCL on GPUs. Under FSDP both views are scored through the model's own forward (logits of the response
positions), since sharded weights cannot be used outside it, and generation runs with synced_gpus.

Every rank runs the same collectives: `Ranks.shard` gives every rank the same number of items (padding a short
share with repeats of its last item, which the caller leaves out of the results), so every rank runs the same
number of forwards (FSDP all-gathers in each one); work that one rank used to do alone (proposals, held-out
evaluation) is sharded and gathered with `Ranks.gather`; `train.dist_timeout_s` bounds any wait.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from ..models.parts import is_fsdp, unwrap


def make_accelerator(cpu: bool, timeout_s: int = 1800):
    """An accelerate Accelerator when launched over several processes (accelerate launch / torchrun), else None.

    `timeout_s` is the process group's timeout: how long a rank may wait in a collective before the job aborts."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator, InitProcessGroupKwargs

    return Accelerator(cpu=cpu or not torch.cuda.is_available(),
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))])


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks, with the two things sharded work needs: an even share, a gather."""

    rank: int = 0
    world: int = 1

    @classmethod
    def of(cls, accelerator) -> "Ranks":
        return cls(accelerator.process_index, accelerator.num_processes) if accelerator is not None else cls()

    def shard(self, items: list) -> tuple[list, int]:
        """(this rank's share, how many of it are real): items rank, rank + world, ..., padded to
        ceil(len / world) with repeats of the share's last item (of the first item when the share is empty), so
        that every rank gets the same number; the padding is for the caller to leave out of every result."""
        mine = list(items[self.rank::self.world])
        size = -(-len(items) // self.world)
        fill = mine[-1:] or list(items[:1])
        return mine + fill * (size - len(mine)), len(mine)

    def gather(self, obj: Any) -> list[Any]:
        """`obj` of every rank, in rank order, on every rank (a collective: every rank must call it)."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def shard_fsdp(model, mixed_precision: bool = False):
    """FSDP2 over the decoder layers, the vision tower and the root (in place; returns the model)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {}
    if mixed_precision:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    inner = unwrap(model).model
    lm = getattr(inner, "language_model", inner)
    for layer in lm.layers:
        fully_shard(layer, **kw)
    if getattr(inner, "visual", None) is not None:
        fully_shard(inner.visual, **kw)  # generate calls the vision tower outside the root forward
    # embeddings, final norm and lm_head as units of their own: parameters left to the root unit stay gathered
    # after its forward and then miss the optimizer's updates (seen with torch 2.13 + transformers 5.23). Tied
    # embeddings (tie_word_embeddings: one parameter in both modules) are one unit of the two modules, since FSDP2
    # refuses a parameter shared by two units at the first forward.
    head = unwrap(model).get_output_embeddings()
    tied = head.weight is lm.embed_tokens.weight
    for sub in ([lm.embed_tokens, head],) if tied else (lm.embed_tokens, head):
        fully_shard(sub, **kw)
    fully_shard(lm.norm, **kw)
    fully_shard(model, **kw)
    return model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded DTensor gathered to a plain tensor (a collective: every rank must call it); others unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _reshard(model) -> None:
    """Put every FSDP2 unit back to its sharded parameters (the root keeps them gathered after a forward)."""
    for m in model.modules():
        if hasattr(m, "reshard") and type(m).__name__.startswith("FSDP"):
            m.reshard()


def full_model_state(model) -> dict:
    """The whole model's state dict on the CPU (a collective under FSDP; rank 0 gets it, the others an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    _reshard(model)
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    _reshard(model)
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))


def grad_sync(model, accelerator, enabled: bool):
    """Gradient synchronisation across ranks on (last micro-batch) or off (the others): DDP's no_sync, FSDP2's switch."""
    if enabled or accelerator is None:
        return contextlib.nullcontext()
    if is_fsdp(model):
        @contextlib.contextmanager
        def off():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

        return off()
    return accelerator.no_sync(model)

