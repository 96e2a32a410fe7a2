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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


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


class MainRankError(RuntimeError):
    """Raised on every other rank when :func:`on_main`'s work failed on rank 0 (its message names the failure)."""


def on_main(ctx: DistContext, work: Callable[[], T]) -> T | None:
    """Runs ``work`` on rank 0 while the other ranks wait for it; a failure there is raised on every rank.

    A plain ``if ctx.is_main: work()`` then :func:`barrier` leaves the other
    ranks waiting at the barrier until the process group's timeout when
    ``work`` raises on rank 0 (a full disk, a bad file). Here rank 0 then
    broadcasts the outcome (``torch.distributed.broadcast_object_list``;
    the other ranks wait in it for rank 0's work), every rank meets at a
    barrier after it (as before), and on a failure rank 0 re-raises its
    exception and every other rank raises :class:`MainRankError` naming it.

    Args:
        ctx (DistContext): this rank.
        work (Callable[[], T]): what rank 0 does (writes files, fits a basis).

    Returns:
        T | None: ``work``'s result on rank 0; None on the others.

    Raises:
        Exception: on rank 0, whatever ``work`` raised; MainRankError on the others.

    Example::

        >>> on_main(DistContext(rank=0, world_size=1, device=torch.device("cpu")), lambda: 7)
        7
    """
    result, error = None, None
    if ctx.is_main:
        try:
            result = work()
        except Exception as e:  # told to the other ranks below, then re-raised
            error = e
    if dist.is_initialized() and dist.get_world_size() > 1:
        told = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(told, src=0)
        dist.barrier()  # rank 0 too waits for every rank, as the barrier this replaces (NCCL's broadcast is async)
        if told[0] is not None and not ctx.is_main:
            raise MainRankError(f"rank 0 failed, so rank {ctx.rank} stops too: {told[0]}")
    if error is not None:
        raise error
    return result
