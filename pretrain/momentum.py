"""The MoCo key encoder: a frozen copy of the query encoder that trails it.

After each optimiser step of the query encoder, every key parameter moves
towards its query twin, ``key = m * key + (1 - m) * query``, and buffers are
copied. The key encoder gets no gradient; its outputs fill the memory bank.

Example::

    >>> import torch
    >>> query = torch.nn.Linear(2, 1, bias=False)
    >>> key = make_key_encoder(query)
    >>> with torch.no_grad():
    ...     _ = query.weight.fill_(1.0)
    ...     _ = key.weight.fill_(0.0)
    >>> momentum_update(key, query, m=0.9)
    >>> [round(w, 6) for w in key.weight[0].tolist()], key.weight.requires_grad
    ([0.1, 0.1], False)
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_key_encoder(query: nn.Module) -> nn.Module:
    """A deep copy of ``query`` whose parameters do not require gradient.

    Pass the plain module, not its ``DistributedDataParallel`` wrapper: the
    key encoder takes no gradient, so it needs no gradient synchronisation.

    Args:
        query (nn.Module): the query encoder.

    Returns:
        nn.Module: the key encoder, same structure and values, same train/eval mode.
    """
    key = copy.deepcopy(query)
    key.requires_grad_(False)
    return key


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, m: float) -> None:
    """In place: ``p_k = m * p_k + (1 - m) * p_q`` for every parameter; buffers copied.

    Args:
        key (nn.Module): the key encoder, updated in place.
        query (nn.Module): the query encoder, same structure (parameter and
            buffer names and shapes).
        m (float): momentum in [0, 1]; 1 freezes the key encoder, 0 copies the query.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum m must be in [0, 1], got {m}")
    key_params, query_params = _matched(dict(key.named_parameters()), dict(query.named_parameters()), "parameter")
    if key_params:
        # lerp(k, q, w) = k + w * (q - k) = (1 - w) * k + w * q, with w = 1 - m.
        torch._foreach_lerp_(key_params, query_params, 1.0 - m)
    key_buffers, query_buffers = _matched(dict(key.named_buffers()), dict(query.named_buffers()), "buffer")
    for kb, qb in zip(key_buffers, query_buffers):
        kb.copy_(qb)


def _matched(
    key: dict[str, torch.Tensor], query: dict[str, torch.Tensor], kind: str
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The tensors of both modules paired by name; raise if names or shapes differ."""
    if key.keys() != query.keys():
        only_key = sorted(set(key) - set(query))
        only_query = sorted(set(query) - set(key))
        raise ValueError(
            f"key and query encoders differ in {kind}s: only in key {only_key[:5]}, only in query {only_query[:5]}"
        )
    for name, tensor in key.items():
        if tensor.shape != query[name].shape:
            raise ValueError(
                f"{kind} {name!r}: key shape {tuple(tensor.shape)} != query shape {tuple(query[name].shape)}"
            )
    names = list(key)
    return [key[n] for n in names], [query[n] for n in names]
