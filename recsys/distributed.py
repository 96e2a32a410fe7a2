"""Process-group set-up shared by every multi-process job: gloo on CPU, NCCL on GPU.

Run under ``torchrun`` (or TorchX, which calls it), the environment names the
rank and world size; run plainly, the job is one process and no group is made.

Example::

    >>> ctx = init_distributed()
    >>> ctx.world_size >= 1 and ctx.rank < ctx.world_size
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process runs."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(always: bool = False) -> DistContext:
    """Initialises the default process group when ``WORLD_SIZE`` > 1 (or always).

    Args:
        always (bool): also make a one-rank group when run plainly (an
            in-memory store, no port): ``DistributedModelParallel`` needs a
            process group even at world size 1.

    Process-wide allocator tuning (:mod:`recsys.allocator`) is the entry
    point's business, not this function's.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    elif always and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else world_size
    return DistContext(rank=rank, world_size=world_size, device=device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
