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

from recsys.models import fused as fused_kernels


class SimTier(nn.Module):
    """Counts the history items whose cosine similarity to the target falls in each tier.

    [-1, 1] is cut into ``T`` equal-width tiers; tier ``t`` holds similarities
    in ``[-1 + t * w, -1 + (t + 1) * w)`` with ``w = 2 / T``, and 1.0 goes in
    the last tier. Masked positions (padding, items without a vector) are not
    counted. Counts are divided by the number of counted items, so each row
    sums to 1, or is all zeros when nothing is counted (empty history).

    With ``soft=True`` each similarity is shared between the two tiers whose
    centres ``-1 + (t + 0.5) * w`` bracket it, linearly by distance (a
    triangular kernel; similarities beyond the outer centres go wholly to the
    outer tier): the histogram then changes smoothly with the similarity, and
    its mean recovers the mean similarity exactly inside the outer centres.

    With ``metric_dim=D`` (needs ``soft``) the similarity is the
    bilinear form ``h^T W t`` with a learned ``W`` (D, D) initialised to the
    identity, i.e. the cosine of the unit vectors at the start: the soft
    histogram is piecewise linear in the similarities, so the CTR loss trains
    ``W`` through it and SimTier can weight the directions of the vector space
    that matter for clicks. It costs one (B, D) x (D, D) product forward and
    one pass over the history backward (the vectors are frozen: no gradient
    for them). Without it the module has no parameters and no gradient flows
    through it (the histogram is piecewise constant or linear in the frozen
    vectors).

    Args:
        n_tiers (int): T, number of tiers.
        soft (bool): triangular (linear) assignment to the two nearest tiers.
        unit_vectors (bool): the inputs are unit-norm or all-zero rows (the
            frozen table's vectors), so cosine is the dot product and the
            normalisation pass is skipped.
        metric_dim (int): D, to learn the similarity's bilinear form ``W`` (D, D)
            over D-wide vectors; 0 keeps the fixed cosine.
        fused (bool): run CPU float32 calls through ``recsys.models.fused``'s
            kernels, soft or hard tiers (built here, in the constructor; the
            eager ops where they do not apply or cannot be built).
        device (torch.device | None): where to create ``W`` (``meta`` works).

    Example::

        >>> simtier = SimTier(n_tiers=4)
        >>> target = torch.tensor([[1.0, 0.0]])
        >>> history = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8], [0.0, 0.0]]])
        >>> mask = torch.tensor([[True, True, True, False]])
        >>> simtier(target, history, mask)  # similarities 1.0, -1.0, 0.6
        tensor([[0.3333, 0.0000, 0.0000, 0.6667]])
        >>> simtier.output_dim()
        4
        >>> SimTier(n_tiers=4, soft=True)(target, history, mask)  # centres -0.75, -0.25, 0.25, 0.75
        tensor([[0.3333, 0.0000, 0.1000, 0.5667]])
        >>> learned = SimTier(n_tiers=4, soft=True, metric_dim=2)
        >>> learned(target, history, mask).sum().backward()  # W = I at the start: same histogram
        >>> learned.metric.grad.shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        n_tiers: int,
        *,
        soft: bool = False,
        unit_vectors: bool = False,
        metric_dim: int = 0,
        fused: bool = False,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        if n_tiers < 1 or metric_dim < 0:
            raise ValueError(f"SimTier needs n_tiers >= 1 and metric_dim >= 0, got {n_tiers}, {metric_dim}")
        if metric_dim and not soft:
            raise ValueError("SimTier with a learned metric (metric_dim > 0) needs soft=True: hard tiers pass no gradient")
        self._n_tiers = n_tiers
        self._soft = soft
        self._unit = unit_vectors
        self._fused = fused and fused_kernels.load()
        self.metric = nn.Parameter(torch.eye(metric_dim, device=device)) if metric_dim else None  # W (D, D)

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
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.metric is not None):
            if not self._unit:
                target, history = F.normalize(target, dim=-1), F.normalize(history, dim=-1)
            query = target if self.metric is None else target @ self.metric.t()  # (B, D): W t
            weight = mask.to(history.dtype)
            if self._soft:
                return _SoftTiers.apply(history, query, weight, self._n_tiers, self._fused)
            if self._fused and _kernel_takes(history, query, weight):  # no gradient: the hard tiers have none
                return torch.ops.mmctr_fused.hard_tiers(history, query, weight, self._n_tiers)
            sims = torch.bmm(history, query.unsqueeze(2)).squeeze(2)  # (B, L): h^T W t
            T = self._n_tiers
            tier = ((sims.clamp(-1.0, 1.0) + 1.0) * (T / 2)).floor().long().clamp_(0, T - 1)  # (B, L)
            counts = torch.zeros(B, T, dtype=history.dtype, device=history.device).scatter_add_(1, tier, weight)
            return counts / weight.sum(dim=1, keepdim=True).clamp(min=1.0)


def _kernel_takes(history: torch.Tensor, query: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the tier kernels take these tensors (``fused.TIER_WIDTHS``, contiguous vectors, CPU float32)."""
    return history.shape[2] in fused_kernels.TIER_WIDTHS and history.stride(2) == 1 and fused_kernels.applies(history, query, weight)


class _SoftTiers(torch.autograd.Function):
    """Soft tier shares of the similarities ``h_l . q`` of a (frozen) history to a query: (B, T).

    The backward runs two gathers and one pass over the history, for the
    query alone (the history never needs a gradient here).

    Position ``x = (s + 1) T / 2 - 1/2`` (tier centres at integers); an item
    adds ``(1 - frac) / n`` to tier ``floor(x)`` and ``frac / n`` to the next,
    both clamped to [0, T - 1], n the row's counted items. Inside the outer
    centres d(share)/dx is ``-1/n`` for the lower tier and ``+1/n`` for the
    upper, so ``dL/ds = (g[upper] - g[lower]) * T / (2 n)``; beyond them (and
    beyond [-1, 1]) both tiers are the same one and the gradient is 0.

    With ``use_kernels`` (a ``SimTier`` built with ``fused=True``), on CPU
    float32 (``recsys.models.fused``) a fused kernel does the forward in one
    pass per impression, and the backward recomputes the tiers in another
    instead of saving them.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        history: torch.Tensor,
        query: torch.Tensor,
        weight: torch.Tensor,
        T: int,
        use_kernels: bool,
    ) -> torch.Tensor:
        ctx.half_tiers, ctx.T = T / 2, T
        ctx.fused = use_kernels and _kernel_takes(history, query, weight)
        if ctx.fused:  # one pass per impression (recsys.models.fused); the backward recomputes the tiers
            ctx.save_for_backward(history, query, weight)
            return torch.ops.mmctr_fused.soft_tiers(history, query, weight, T)
        sims = torch.bmm(history, query.unsqueeze(2)).squeeze(2)  # (B, L)
        x = (sims.clamp(-1.0, 1.0) + 1.0) * (T / 2) - 0.5
        low = x.floor()
        per_item = weight / weight.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, L): 1/n where counted
        upper_share = (x - low) * per_item
        low = low.long()
        lower_tier, upper_tier = low.clamp(0, T - 1), (low + 1).clamp(0, T - 1)
        counts = torch.zeros(sims.shape[0], T, dtype=sims.dtype, device=sims.device)
        counts.scatter_add_(1, lower_tier, per_item - upper_share)
        counts.scatter_add_(1, upper_tier, upper_share)
        ctx.save_for_backward(history, lower_tier, upper_tier, per_item)
        return counts

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[None, torch.Tensor | None, None, None, None]:
        if not ctx.needs_input_grad[1]:
            return None, None, None, None, None
        if ctx.fused:
            history, query, weight = ctx.saved_tensors
            return None, torch.ops.mmctr_fused.soft_tiers_backward(grad, history, query, weight, ctx.T), None, None, None
        history, lower_tier, upper_tier, per_item = ctx.saved_tensors
        grad_sims = (grad.gather(1, upper_tier) - grad.gather(1, lower_tier)) * per_item * ctx.half_tiers  # (B, L)
        return None, torch.bmm(grad_sims.unsqueeze(1), history).squeeze(1), None, None, None
