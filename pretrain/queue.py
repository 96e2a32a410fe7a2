"""The MoCo memory bank: a ring buffer of the K most recent momentum-encoder keys.

Notation:
    B: keys enqueued by one process in one step.
    N: keys enqueued by all processes in one step (B times the world size
       when every rank enqueues B).
    K: capacity of the bank.
    D: key width.

Example::

    >>> import torch
    >>> bank = KeyQueue(capacity=4, dim=2)
    >>> bank.enqueue(torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))
    >>> bank.enqueue(torch.tensor([[4.0, 0.0], [5.0, 0.0]]))  # wraps: 1 is dropped
    >>> bank.filled, bank.keys()[:, 0].tolist()  # oldest first
    (4, [2.0, 3.0, 4.0, 5.0])
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class KeyQueue(nn.Module):
    """Ring buffer of K keys of width D, the negatives of InfoNCE.

    ``enqueue`` writes keys at the pointer and advances it modulo K,
    overwriting the oldest keys once the bank is full. With
    ``torch.distributed`` initialised and a world size above 1, ``enqueue``
    first gathers the keys of all ranks (concatenated in rank order, each
    rank's keys in their own order), so every rank holds the same bank.
    Keys never carry gradient: they are detached and written under
    ``no_grad``.

    The buffers (``bank`` (K, D), ``ptr`` and ``count``) are persistent, so the
    bank is saved and restored with ``state_dict``.

    Args:
        capacity (int): K, the number of keys kept.
        dim (int): D, the key width.
    """

    def __init__(self, capacity: int, dim: int) -> None:
        super().__init__()
        if capacity < 1 or dim < 1:
            raise ValueError(f"KeyQueue needs capacity >= 1 and dim >= 1, got capacity={capacity}, dim={dim}")
        self.capacity = capacity
        self.dim = dim
        self.register_buffer("bank", torch.zeros(capacity, dim))  # (K, D)
        self.register_buffer("bank_ids", torch.full((capacity,), -1, dtype=torch.long))  # (K,) what each key is of
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next row to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # keys ever enqueued

    @property
    def filled(self) -> int:
        """How many rows hold keys: ``min(keys ever enqueued, K)``."""
        return min(int(self.count), self.capacity)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Add keys, gathered from all ranks first when distributed.

        If more than K keys arrive at once, only the last K are kept.

        Args:
            keys (Tensor): float of shape (B, D), from the momentum encoder.
                B may differ between ranks (a short last batch).
            ids (Tensor | None): int of shape (B,), what each key is of (an
                item ID), kept beside it; -1 when not given.
        """
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must have shape (B, {self.dim}), got {tuple(keys.shape)}")
        if ids is None:
            ids = torch.full((keys.shape[0],), -1, dtype=torch.long, device=keys.device)
        if ids.shape != (keys.shape[0],):
            raise ValueError(f"ids must have shape ({keys.shape[0]},), got {tuple(ids.shape)}")
        keys = _gather_from_ranks(keys.detach().to(self.bank.dtype))  # (N, D)
        ids = _gather_from_ranks(ids.long()[:, None])[:, 0]  # (N,)
        n = keys.shape[0]
        if n == 0:
            return
        if n > self.capacity:
            # Only the newest K survive; advance the pointer as if all were written.
            start = (int(self.ptr) + n - self.capacity) % self.capacity
            keys, ids, n_written = keys[-self.capacity :], ids[-self.capacity :], n
            n = self.capacity
        else:
            start, n_written = int(self.ptr), n
        rows = (torch.arange(n, device=self.bank.device) + start) % self.capacity
        self.bank[rows] = keys
        self.bank_ids[rows] = ids
        self.ptr.fill_((start + n) % self.capacity)
        self.count.add_(n_written)

    def keys(self) -> torch.Tensor:
        """The stored keys, oldest first, as a new tensor (no gradient).

        Returns:
            Tensor: float of shape (``filled``, D); row -1 is the newest key.
            A copy: later ``enqueue`` calls do not change it, so it may be
            used in a loss whose backward runs after the next ``enqueue``.
        """
        if self.filled < self.capacity:
            return self.bank[: self.filled].clone()
        p = int(self.ptr)
        return torch.cat([self.bank[p:], self.bank[:p]], dim=0)

    def ids(self) -> torch.Tensor:
        """What each key of ``keys()`` is of, same order: int64 of shape (``filled``,)."""
        if self.filled < self.capacity:
            return self.bank_ids[: self.filled].clone()
        p = int(self.ptr)
        return torch.cat([self.bank_ids[p:], self.bank_ids[:p]], dim=0)

    def extra_repr(self) -> str:
        return f"capacity={self.capacity}, dim={self.dim}"


def _gather_from_ranks(keys: torch.Tensor) -> torch.Tensor:
    """All ranks' keys (B_r, D) concatenated in rank order, (sum_r B_r, D); no-op in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys
    world = dist.get_world_size()
    # Ranks may hold different batch sizes: share them, pad to the largest, trim after.
    size = torch.tensor([keys.shape[0]], dtype=torch.long, device=keys.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    longest = max(counts)
    padded = keys.new_zeros(longest, keys.shape[1])
    padded[: keys.shape[0]] = keys
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[:c] for g, c in zip(gathered, counts)], dim=0)
