"""Jagged history embeddings to a padded (B, L, D) tensor plus a mask.

Notation:

* ``B``: batch size.
* ``L``: longest history in the batch (at least 1, so shapes never hold a 0).
* ``D``: embedding width.
"""

from __future__ import annotations

import torch
from torchrec.sparse.jagged_tensor import JaggedTensor


def padded_history(history: JaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads per-impression embedding sequences (jagged rows, one per history item).

    ``L`` depends only on the lengths, so two lookups of the same feature
    (the ID table and the multimodal table) pad to the same ``L``.

    Args:
        history (JaggedTensor): values of shape (sum of lengths, D), B lengths.

    Returns:
        tuple[torch.Tensor, torch.Tensor]: values, tensor of shape (B, L, D)
        with zeros at padding; mask, bool tensor of shape (B, L), True = real item.

    Example::

        >>> jt = JaggedTensor(values=torch.ones(3, 2), lengths=torch.tensor([2, 0, 1]))
        >>> values, mask = padded_history(jt)
        >>> values.shape, mask.tolist()
        (torch.Size([3, 2, 2]), [[True, True], [False, False], [True, False]])
    """
    lengths = history.lengths()
    L = max(1, int(lengths.max())) if lengths.numel() else 1
    values = history.to_padded_dense(desired_length=L)  # (B, L, D)
    mask = torch.arange(L, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
    return values, mask
