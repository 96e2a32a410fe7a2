"""Losses of SCL pre-training and of the CLIP-style baseline.

Notation:
    B: batch size (sessions for SCL, items for CLIP).
    D: embedding width.
    K: negatives from the memory bank (``KeyQueue.keys()``).
    Hn: hard negatives per session, padded (``SclConfig.max_hard_negatives``).

- :func:`info_nce_loss`: MoCo InfoNCE, one positive key per query and a shared
  set of negatives (the bank).
- :func:`triplet_loss`: cosine-distance triplet loss on the hard negatives
  (clicked, not bought), masked where a session has fewer than Hn.
- :func:`clip_loss`: symmetric CLIP loss with in-batch negatives, the baseline
  (``open_clip.loss.ClipLoss``).

Example::

    >>> import torch, torch.nn.functional as F
    >>> _ = torch.manual_seed(0)
    >>> q, k = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    >>> bank = F.normalize(torch.randn(16, 8), dim=-1)
    >>> hard = F.normalize(torch.randn(4, 3, 8), dim=-1)
    >>> mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    >>> loss = info_nce_loss(q, k, bank, temperature=0.07) + 0.5 * triplet_loss(q, k, hard, mask, margin=0.2)
    >>> loss.shape, bool(loss.isfinite())
    (torch.Size([]), True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss


def info_nce_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
    ignore: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE with shared negatives: cross entropy of ``[q.k+, q.n_1..q.n_K] / tau`` with target 0.

    Inputs are used as given (pass unit vectors for cosine logits). With no
    negatives (K = 0, an empty bank) the loss is 0. ``ignore`` drops false
    negatives: keys of the query's own positive item, which a memory bank
    holds many times over when popular items are bought again and again.

    Args:
        query (Tensor): float of shape (B, D), from the query encoder.
        positive (Tensor): float of shape (B, D), row i the positive key of query i.
        negatives (Tensor): float of shape (K, D), shared by all queries.
        temperature (float): tau > 0.
        ignore (Tensor | None): bool of shape (B, K), true where negative j
            is not a negative of query i (left out of its softmax).

    Returns:
        Tensor: scalar, the mean over the B queries.
    """
    if query.dim() != 2 or positive.shape != query.shape:
        raise ValueError(
            f"query and positive must both have shape (B, D), got {tuple(query.shape)} and {tuple(positive.shape)}"
        )
    if negatives.dim() != 2 or negatives.shape[1] != query.shape[1]:
        raise ValueError(f"negatives must have shape (K, {query.shape[1]}), got {tuple(negatives.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    l_pos = (query * positive).sum(dim=-1, keepdim=True)  # (B, 1)
    l_neg = query @ negatives.T  # (B, K)
    if ignore is not None:
        if ignore.shape != l_neg.shape:
            raise ValueError(f"ignore must have shape {tuple(l_neg.shape)}, got {tuple(ignore.shape)}")
        l_neg = l_neg.masked_fill(ignore, float("-inf"))
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (B, 1 + K)
    target = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, target)


def triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    mask: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """Cosine-distance triplet loss over every valid (anchor, positive, hard negative).

    With ``d(a, b) = 1 - cos(a, b)``, each valid triplet costs
    ``max(0, d(a_i, p_i) - d(a_i, n_ij) + margin)``; the loss is the mean over
    the valid triplets (``mask[i, j]`` true), 0 when there are none. Inputs
    need not be unit vectors.

    Args:
        anchor (Tensor): float of shape (B, D), the query vectors.
        positive (Tensor): float of shape (B, D), the purchased items.
        negatives (Tensor): float of shape (B, Hn, D), hard negatives, padded.
        mask (Tensor): bool of shape (B, Hn), true where ``negatives[i, j]`` is real.
        margin (float): alpha >= 0.

    Returns:
        Tensor: scalar.
    """
    if anchor.dim() != 2:
        raise ValueError(f"anchor must have shape (B, D), got {tuple(anchor.shape)}")
    B, D = anchor.shape
    if positive.shape != (B, D) or negatives.dim() != 3 or negatives.shape[0] != B or negatives.shape[2] != D:
        raise ValueError(
            f"anchor and positive must have shape (B, D) and negatives shape (B, Hn, D), got {tuple(anchor.shape)}, "
            f"{tuple(positive.shape)}, {tuple(negatives.shape)}"
        )
    Hn = negatives.shape[1]
    if mask.shape != (B, Hn) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool of shape ({B}, {Hn}), got {mask.dtype} {tuple(mask.shape)}")
    per_triplet = F.triplet_margin_with_distance_loss(
        anchor.unsqueeze(1).expand(B, Hn, D).reshape(B * Hn, D),
        positive.unsqueeze(1).expand(B, Hn, D).reshape(B * Hn, D),
        negatives.reshape(B * Hn, D),
        distance_function=_cosine_distance,
        margin=margin,
        reduction="none",
    )  # (B * Hn,)
    valid = mask.reshape(-1).to(per_triplet.dtype)
    return (per_triplet * valid).sum() / valid.sum().clamp(min=1.0)


def clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """Symmetric CLIP loss with in-batch negatives (``open_clip.loss.ClipLoss``).

    Mean of the image->text and text->image cross entropies of
    ``logit_scale * image @ text.T``, targets on the diagonal. With
    ``world_size > 1`` (``torch.distributed`` initialised) each rank's rows are
    scored against the gathered columns of all ranks, with gradient.

    Args:
        image (Tensor): float of shape (B, D), unit image vectors.
        text (Tensor): float of shape (B, D), unit text vectors, row i pairs with image i.
        logit_scale (Tensor): scalar multiplier, ``1 / tau`` (``clip.logit_scale.exp()``).
        rank (int): this process's rank.
        world_size (int): number of processes.

    Returns:
        Tensor: scalar.
    """
    if image.dim() != 2 or image.shape != text.shape:
        raise ValueError(
            f"image and text must both have shape (B, D), got {tuple(image.shape)} and {tuple(text.shape)}"
        )
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)
    return loss_fn(image, text, logit_scale)


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise ``1 - cos(a, b)`` of shape (N,) for a, b of shape (N, D)."""
    return 1.0 - F.cosine_similarity(a, b, dim=-1)
