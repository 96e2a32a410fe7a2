"""Worker functions for the 2-rank gloo tests; imported by name in spawned processes."""

from __future__ import annotations

import torch
import torch.distributed as dist

from pretrain.queue import KeyQueue


def rank_keys(rank: int, step: int) -> torch.Tensor:
    """Keys rank ``rank`` enqueues at ``step``: (3 - rank, 2), values that name rank, step and row."""
    n = 3 - rank  # ranks enqueue different batch sizes
    rows = torch.arange(n, dtype=torch.float32)
    return torch.stack([torch.full((n,), 100.0 * rank + 10.0 * step), rows], dim=1)


def enqueue_worker(rank: int, world_size: int, init_method: str, out_dir: str) -> None:
    """Each rank enqueues its own keys for 3 steps into a K=8 bank; saves the bank's keys."""
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        bank = KeyQueue(capacity=8, dim=2)
        for step in range(3):
            keys = rank_keys(rank, step).requires_grad_(True) * 1.0  # has a grad_fn; must be detached
            bank.enqueue(keys)
        torch.save({"keys": bank.keys(), "filled": bank.filled, "ptr": int(bank.ptr)}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
