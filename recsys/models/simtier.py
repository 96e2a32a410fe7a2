"""SimTier: a histogram of target-history similarities over equal-width tiers.

Notation:

* ``B``: batch size.
* ``L``: (padded) history length.
* ``D``: width of the multimodal item vectors.
* ``T``: number of tiers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SimTier(nn.Module):
    """Counts the history items whose cosine similarity to the target falls in each tier.

    [-1, 1] is cut into ``T`` equal-width tiers; tier ``t`` holds similarities
    in ``[-1 + t * w, -1 + (t + 1) * w)`` with ``w = 2 / T``, and 1.0 goes in
    the last tier. Masked positions (padding, items without a vector) are not
    counted. Counts are divided by the number of counted items, so each row
    sums to 1, or is all zeros when nothing is counted (empty history).

    The histogram is piecewise constant in the vectors, so no gradient flows
    through it; the multimodal vectors are frozen anyway. The module has no
    parameters.

    Args:
        n_tiers (int): T, number of tiers.

    Example::

        >>> simtier = SimTier(n_tiers=4)
        >>> target = torch.tensor([[1.0, 0.0]])
        >>> history = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8], [0.0, 0.0]]])
        >>> mask = torch.tensor([[True, True, True, False]])
        >>> simtier(target, history, mask)  # similarities 1.0, -1.0, 0.6
        tensor([[0.3333, 0.0000, 0.0000, 0.6667]])
        >>> simtier.output_dim()
        4
    """

    def __init__(self, n_tiers: int) -> None:
        super().__init__()
        if n_tiers < 1:
            raise ValueError(f"SimTier n_tiers must be >= 1, got {n_tiers}")
        self._n_tiers = n_tiers

    def output_dim(self) -> int:
        return self._n_tiers

    def forward(self, target: torch.Tensor, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            target (torch.Tensor): target item vectors, tensor of shape (B, D).
            history (torch.Tensor): history item vectors, tensor of shape (B, L, D).
            mask (torch.Tensor): bool tensor of shape (B, L), True = count this position.

        Returns:
            torch.Tensor: tier shares, tensor of shape (B, T).
        """
        B, L, D = history.shape
        if target.shape != (B, D) or mask.shape != (B, L):
            raise ValueError(
                f"SimTier expects target (B, D), history (B, L, D), mask (B, L); got "
                f"{tuple(target.shape)}, {tuple(history.shape)}, {tuple(mask.shape)}"
            )
        with torch.no_grad():
            sims = torch.einsum("bd,bld->bl", F.normalize(target, dim=-1), F.normalize(history, dim=-1))
            T = self._n_tiers
            tier = ((sims.clamp(-1.0, 1.0) + 1.0) * (T / 2)).floor().long().clamp(0, T - 1)  # (B, L)
            weight = mask.to(history.dtype)
            counts = torch.zeros(B, T, dtype=history.dtype, device=history.device)
            counts.scatter_add_(1, tier, weight)
            return counts / weight.sum(dim=1, keepdim=True).clamp(min=1.0)
