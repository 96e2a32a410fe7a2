"""Target attention: DIN's activation unit pooling a history against a target.

Notation:

* ``B``: batch size.
* ``L``: (padded) history length.
* ``D``: width of the target and history representations.
* ``X``: width of optional extra per-position inputs (0 if none).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recsys.models import fused as fused_kernels


def pool(scores: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, softmax: bool) -> torch.Tensor:
    """The history pooled by its positions' scores: ``sum_l w_l k_l`` over unmasked positions.

    Args:
        scores (torch.Tensor): per-position scores, tensor of shape (B, L).
        keys (torch.Tensor): history, tensor of shape (B, L, D).
        mask (torch.Tensor): bool tensor of shape (B, L), True = real item.
        softmax (bool): ``w`` a softmax of the scores over the unmasked positions; else the
            scores themselves (DIN's unnormalised weights).

    Returns:
        torch.Tensor: tensor of shape (B, D); zeros for an all-masked row.

    Example::

        >>> keys = torch.eye(2).expand(1, 2, 2)
        >>> pool(torch.tensor([[2.0, 5.0]]), keys, torch.tensor([[True, False]]), softmax=False).tolist()
        [[2.0, 0.0]]
    """
    if softmax:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1) * mask  # all-masked rows: uniform * 0 = 0
    else:
        weights = scores.masked_fill(~mask, 0.0)
    return torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # (B, D)


class TargetAttention(nn.Module):
    """Weighted sum of history items, weights from an MLP over (target, item) pairs.

    As DIN's activation unit (Zhou et al., 2018): for each position ``l`` the
    score is ``s_l = MLP([q, k_l, q - k_l, q * k_l, x_l])`` (``x_l`` the
    optional extra inputs, e.g. a similarity), and the output is
    ``sum_l w_l * k_l`` over unmasked positions. With ``softmax=False`` (DIN)
    ``w_l = s_l``, unnormalised, so the output also carries how much of the
    history matches; with ``softmax=True`` ``w`` is a softmax over the
    unmasked positions. Masked positions get weight 0 either way, so their
    contents never change the output; an all-masked row gives zeros.

    Built with ``fused=True``, when the unit has one hidden layer (of a width
    the kernels take) and no extra inputs, CPU float32 calls run
    ``recsys.models.fused``'s attention kernels: the same values and
    gradients (query, unit weights, and the keys where they need one: the ID
    model's trained embeddings; MAKE's frozen history needs none), one pass
    over each history's unmasked positions forward and one backward.

    Args:
        dim (int): D, width of the query and of each key.
        hidden_sizes (Sequence[int]): hidden widths of the activation unit
            (ReLU), followed by a linear layer to one score.
        extra_dim (int): X, width of the extra per-position inputs (0: none).
        softmax (bool): normalise the weights with a masked softmax.
        fused (bool): use the fused kernels where they apply (built here, in
            the constructor, if the unit's shape is one it takes).
        device (torch.device | None): where to create parameters (``meta`` works).

    Example::

        >>> att = TargetAttention(dim=4, hidden_sizes=[8])
        >>> q, k = torch.randn(2, 4), torch.randn(2, 3, 4)
        >>> mask = torch.tensor([[True, True, False], [False, False, False]])
        >>> out = att(q, k, mask)
        >>> out.shape, att.output_dim()
        (torch.Size([2, 4]), 4)
        >>> bool((out[1] == 0).all())  # empty history
        True
    """

    def __init__(
        self,
        dim: int,
        hidden_sizes: Sequence[int],
        *,
        extra_dim: int = 0,
        softmax: bool = False,
        fused: bool = False,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        if dim < 1 or extra_dim < 0 or not hidden_sizes:
            raise ValueError(
                f"TargetAttention needs dim >= 1, extra_dim >= 0 and hidden sizes; got "
                f"dim={dim}, extra_dim={extra_dim}, hidden_sizes={list(hidden_sizes)}"
            )
        self._dim = dim
        self._extra_dim = extra_dim
        self._softmax = softmax
        widths = [4 * dim + extra_dim, *hidden_sizes]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b, device=device), nn.ReLU()]
        self.unit = nn.Sequential(*layers, nn.Linear(widths[-1], 1, device=device))
        takes = len(hidden_sizes) == 1 and hidden_sizes[0] in fused_kernels.HIDDEN_WIDTHS and not extra_dim
        self._fused = fused and takes and fused_kernels.load()  # the kernel's shapes: one hidden layer, no extras

    def output_dim(self) -> int:
        return self._dim

    def _fusable(self, query: torch.Tensor, keys: torch.Tensor) -> bool:
        """Whether ``recsys.models.fused``'s attention kernels take this call: built with ``fused`` (one
        hidden layer of a width they take, no extra inputs), CPU float32, keys contiguous in D."""
        if not self._fused:
            return False
        return keys.stride(2) == 1 and fused_kernels.applies(query, keys, self.unit[0].weight)

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
        extra: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query (torch.Tensor): target, tensor of shape (B, D).
            keys (torch.Tensor): history, tensor of shape (B, L, D).
            mask (torch.Tensor): bool tensor of shape (B, L), True = real item.
            extra (torch.Tensor | None): extra per-position inputs, tensor of
                shape (B, L, X); required iff ``extra_dim > 0``.

        Returns:
            torch.Tensor: pooled history, tensor of shape (B, D).
        """
        B, L, D = keys.shape
        if query.shape != (B, D) or mask.shape != (B, L) or D != self._dim:
            raise ValueError(
                f"TargetAttention(dim={self._dim}) expects query (B, D), keys (B, L, D), mask (B, L); "
                f"got {tuple(query.shape)}, {tuple(keys.shape)}, {tuple(mask.shape)}"
            )
        if self._extra_dim:
            if extra is None or extra.shape != (B, L, self._extra_dim):
                got = None if extra is None else tuple(extra.shape)
                raise ValueError(f"TargetAttention expects extra of shape ({B}, {L}, {self._extra_dim}), got {got}")
        elif extra is not None:
            raise ValueError("TargetAttention was built with extra_dim=0 but got extra inputs")
        # The first layer on [q, k, q - k, q * k, x] is W_q q + W_k k + W_d (q - k) + W_p (q * k) + W_x x
        # = (W_q + W_d) q + M_b k + W_x x with M_b = (W_k - W_d) + W_p diag(q_b), one (H1, D) matrix
        # per row: one batched product per position instead of two, no (B, L, D) product tensor,
        # and the query term is computed once per row.
        first = self.unit[0]
        w_q, w_k, w_d, w_p, w_x = first.weight.split([D, D, D, D, self._extra_dim], dim=1)
        row_term = query @ (w_q + w_d).t() + first.bias  # (B, H1)
        if self._fusable(query, keys):  # one pass per impression, masked positions skipped
            last = self.unit[2]
            # the hidden layer is kept for a backward only where one can follow (not under no_grad)
            trains = torch.is_grad_enabled() and (
                query.requires_grad or keys.requires_grad or any(p.requires_grad for p in self.unit.parameters())
            )
            return _FusedDinAttention.apply(
                keys, mask, query, (w_k - w_d).t(), w_p.t(), row_term, last.weight.view(-1), last.bias.view(()),
                self._softmax, trains,
            )
        per_row = (w_k - w_d).t().unsqueeze(0) + query.unsqueeze(2) * w_p.t().unsqueeze(0)  # (B, D, H1)
        hidden = torch.baddbmm(row_term.unsqueeze(1), keys, per_row)  # (B, L, H1)
        if self._extra_dim:
            hidden = hidden + extra.to(keys.dtype) @ w_x.t()
        return pool(self.unit[1:](hidden).squeeze(-1), keys, mask, self._softmax)


class _FusedDinAttention(torch.autograd.Function):
    """:class:`TargetAttention` with one hidden layer in ``recsys.models.fused``'s kernels (CPU
    float32): the forward walks each impression's unmasked positions once, keeping the hidden
    layer's pre-activations (B, L, H) when a gradient is wanted; the backward walks them again,
    summing the shared weights' gradients per range of rows.
    Gradients: the keys where they need one (zeros at masked positions), query (through the per-row
    key matrix ``A + diag(q) Wp``; the row term's own path is autograd's), A, Wp, the row term, w2, b2.

    Args (forward):
        keys (torch.Tensor): (B, L, D); mask (torch.Tensor): bool (B, L).
        query (torch.Tensor): (B, D); key_weight, product_weight (torch.Tensor): A = (W_k - W_d)^T
            and Wp = W_p^T, (D, H); row_term (torch.Tensor): (B, H), the first layer's query term
            and bias; w2 (torch.Tensor): (H,), b2 (torch.Tensor): (), the score layer; softmax (bool);
            keep_hidden (bool): keep the hidden layer's pre-activations for the backward.

    Its backward is not itself differentiable: a backward with ``create_graph=True`` raises RuntimeError.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, keys: torch.Tensor, mask: torch.Tensor,
                query: torch.Tensor, key_weight: torch.Tensor, product_weight: torch.Tensor,
                row_term: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, softmax: bool,
                keep_hidden: bool) -> torch.Tensor:
        args = (keys, mask, query, key_weight.contiguous(), product_weight.contiguous(), row_term, w2, b2)
        ctx.softmax = softmax
        # in training the hidden layer's pre-activations (B, L, H) are kept for the backward, which
        # reads them; under no_grad (evaluation, a frozen MAKE) nothing is
        out, hidden = torch.ops.mmctr_fused.din_attention(*args, softmax, keep_hidden)
        ctx.save_for_backward(hidden, *args)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: the kernels' gradients would be constants, terms lost
            raise RuntimeError(
                "the fused attention kernel has no double backward (create_graph=True); "
                "build the model with fused_kernels: false (or MMCTR_FUSED=0) for higher-order gradients"
            )
        keys_grad = ctx.needs_input_grad[0]
        keys, query, row_term, key_weight, product_weight, w2, b2 = torch.ops.mmctr_fused.din_attention_backward(
            grad, *ctx.saved_tensors, ctx.softmax, keys_grad
        )
        return keys if keys_grad else None, None, query, key_weight, product_weight, row_term, w2, b2, None, None


class BilinearTargetAttention(nn.Module):
    """Weighted sum of history items, weights from a learned bilinear form of (target, item).

    For each position ``l`` the score is ``s_l = q^T W k_l + b`` (``W`` a
    (D, D) matrix initialised to the identity, so training starts from the
    dot product: the cosine for the unit vectors of a multimodal table), and
    the output is ``sum_l w_l * k_l`` over unmasked positions, ``w_l = s_l``
    (DIN's unnormalised weights, ``softmax=False``) or a softmax over the
    unmasked positions. Masked positions get weight 0; an all-masked row gives
    zeros. It is :class:`TargetAttention` without the activation unit's MLP:
    a full ``W`` generalises the diagonal bilinear term ``q^T diag(w) k`` that
    the unit's ``q * k`` input gives its first layer, and a step costs
    O(B L D) instead of O(B L D H) (MAKE's attention,
    ``ModelConfig.make_attention``: README, "MAKE's target attention").

    Built with ``fused=True``, CPU float32 calls whose keys take no gradient
    (MAKE's frozen history) run ``recsys.models.fused``'s kernels: one pass
    over each history's unmasked positions forward, one backward, the same
    values and gradients as the eager ops.

    Args:
        dim (int): D, width of the query and of each key.
        softmax (bool): normalise the weights with a masked softmax.
        fused (bool): use the fused kernels where they apply (built here, in the constructor).
        device (torch.device | None): where to create parameters (``meta`` works).

    Example::

        >>> att = BilinearTargetAttention(dim=4)
        >>> q, k = torch.eye(4)[:2], torch.eye(4).expand(2, 4, 4)
        >>> mask = torch.tensor([[True, True, False, False], [False, False, False, False]])
        >>> att(q, k, mask).tolist()  # identity W: row 0 matches its first key only
        [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """

    def __init__(
        self,
        dim: int,
        *,
        softmax: bool = False,
        fused: bool = False,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"BilinearTargetAttention needs dim >= 1, got {dim}")
        self._dim = dim
        self._softmax = softmax
        self.weight = nn.Parameter(torch.eye(dim, device=device))
        self.bias = nn.Parameter(torch.zeros((), device=device))
        self._fused = fused and fused_kernels.load()

    def output_dim(self) -> int:
        return self._dim

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query (torch.Tensor): target, tensor of shape (B, D).
            keys (torch.Tensor): history, tensor of shape (B, L, D).
            mask (torch.Tensor): bool tensor of shape (B, L), True = real item.

        Returns:
            torch.Tensor: pooled history, tensor of shape (B, D).

        Raises:
            ValueError: the shapes disagree with each other or with ``dim``.
        """
        B, L, D = keys.shape
        if query.shape != (B, D) or mask.shape != (B, L) or D != self._dim:
            raise ValueError(
                f"BilinearTargetAttention(dim={self._dim}) expects query (B, D), keys (B, L, D), mask (B, L); "
                f"got {tuple(query.shape)}, {tuple(keys.shape)}, {tuple(mask.shape)}"
            )
        projected = query @ self.weight  # (B, D): u_b = W^T q_b, so s_l = k_l . u_b = q_b^T W k_l
        if (
            self._fused
            and not keys.requires_grad
            and keys.stride(2) == 1
            and fused_kernels.applies(keys, projected, self.bias)
        ):
            return _FusedBilinearAttention.apply(keys, mask, projected, self.bias, self._softmax)
        return pool(torch.bmm(keys, projected.unsqueeze(2)).squeeze(2) + self.bias, keys, mask, self._softmax)


class _FusedBilinearAttention(torch.autograd.Function):
    """:class:`BilinearTargetAttention`'s pooling in ``recsys.models.fused``'s kernels (CPU float32,
    keys without gradient): forward and backward each walk every impression's unmasked positions once.
    Gradients: the projected query u (B, D) and the bias; autograd takes u's on to the query and W.

    Args (forward):
        keys (torch.Tensor): (B, L, D); mask (torch.Tensor): bool (B, L); projected (torch.Tensor):
            u = q W, (B, D); bias (torch.Tensor): (); softmax (bool).

    Its backward is not itself differentiable: a backward with ``create_graph=True`` raises RuntimeError.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, keys: torch.Tensor, mask: torch.Tensor,
                projected: torch.Tensor, bias: torch.Tensor, softmax: bool) -> torch.Tensor:
        ctx.softmax = softmax
        ctx.save_for_backward(keys, mask, projected, bias)
        return torch.ops.mmctr_fused.bilinear_attention(keys, mask, projected, bias, softmax)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "the fused attention kernel has no double backward (create_graph=True); "
                "build the model with fused_kernels: false (or MMCTR_FUSED=0) for higher-order gradients"
            )
        grad_projected, grad_bias = torch.ops.mmctr_fused.bilinear_attention_backward(
            grad.contiguous(), *ctx.saved_tensors, ctx.softmax
        )
        return None, None, grad_projected, grad_bias, None
