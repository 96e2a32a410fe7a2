"""Offline ranking metrics of a scored day: AUC, GAUC, NE, calibration, by item bucket and for new items.

Pure functions of tensors and arrays: this module reads no files and imports
nothing of ``recsys`` (the counts and masks it takes come from
``recsys.data.stats``), so training may score with it too.

Notation: ``N``: scored impressions; ``I``: the item ID range (``manifest.id_ranges["item_id"]``).

Definitions (README, "CTR ranking"):

* **AUC**: Mann–Whitney's, over all impressions: the share of (click,
  no-click) pairs in which the click scores higher, a tie counting 1/2, so
  it does not depend on row order (a constant predictor scores 0.5 however
  the clicks are placed). Computed by :func:`auc` with torchmetrics'
  ``binary_auroc`` (exact ROC over all distinct scores, trapezoids between
  them, which is the same number), equal to ``sklearn.metrics.roc_auc_score``
  (tested to 1e-6; torchmetrics counts in float32, ~5e-8 off at 2M rows).
  TorchRec's ``compute_auc``, used before, integrates one impression at a
  time in sort order, so tied pairs counted 0 or 1 by row order: 0.7038
  instead of 0.5 for a constant predictor over 20,000 impressions with the
  2,000 clicks last.
* **GAUC** (as at Alibaba since DIN): the mean of per-user AUCs weighted by
  each user's number of impressions, over the users whose impressions hold
  both labels; users with one class are left out. Per-user AUC is
  Mann–Whitney's, ties counted 1/2, as for AUC (``sklearn.metrics.roc_auc_score``).
  TorchRec's ``GAUCMetric`` is an unweighted mean over contiguous sessions,
  another definition, so :func:`gauc` computes this one, vectorised (two
  sorts and segment sums, no loop over users).
* **logloss**: ``torchrec.metrics.ne.compute_logloss``, the mean cross
  entropy in bits (torchrec takes ``log2``; multiply by ``ln 2`` for nats),
  predictions clamped to ``[eta, 1 - eta]``, ``eta = 1e-12`` (torchrec's default).
* **NE**: normalised entropy, ``compute_ne``: the logloss divided by the
  entropy of the observed click rate, i.e. the logloss of always predicting
  the base rate. Lower is better; NE < 1 beats the base rate.
* **ctr** is clicks / impressions, **pred_ctr** the mean prediction,
  **calibration** pred_ctr / ctr (1 is calibrated).
* **Item buckets** by training impressions (:func:`item_buckets`, the
  counts from ``recsys.data.stats.train_item_counts``): items
  ranked by training impressions (descending, ties by item ID); ``head``
  holds the most-shown items that together make the first 50% of training
  impressions, ``torso`` the next 30%, ``tail`` the rest, including items
  never shown in training.
* **new items**: impressions of items created on the scored day
  (a mask over item IDs, ``recsys.data.stats.new_item_mask``).

Degenerate subsets give ``nan``, never an exception: AUC, GAUC and NE are
``nan`` on empty or one-class input (GAUC also when no user has both labels;
NE's denominator is 0 there); ctr, pred_ctr and logloss are ``nan`` when
empty; calibration is ``nan`` without clicks.

Example::

    >>> p = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.3])
    >>> y = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    >>> u = torch.tensor([7, 7, 3, 3, 3])
    >>> value, users = gauc(p, y, u)  # user 7: AUC 1 (2 impressions); user 3: AUC 0.5 (3)
    >>> round(value, 4), users
    (0.7, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc
from torchrec.metrics.ne import compute_cross_entropy, compute_logloss, compute_ne

BUCKETS: tuple[str, ...] = ("head", "torso", "tail")  # item_buckets value b is BUCKETS[b]
ETA = 1e-12  # torchrec's clamp of predictions (and of the base rate) inside log2


def _check(
    predictions: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None, groups_name: str = "groups"
) -> None:
    """Raises ValueError naming the argument that is not (N,) / finite in [0, 1] / 0-1 / integer."""
    if predictions.dim() != 1:
        raise ValueError(f"predictions must be a tensor of shape (N,), got shape {tuple(predictions.shape)}")
    n = predictions.shape[0]
    named = (("labels", labels),) if groups is None else (("labels", labels), (groups_name, groups))
    for name, t in named:
        if t.shape != (n,):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({n},) like predictions")
    if groups is not None and (groups.is_floating_point() or groups.is_complex()):
        raise ValueError(f"{groups_name} must be integer IDs, got dtype {groups.dtype}")
    if n == 0:
        return
    nan = int(torch.isnan(predictions).sum())
    if nan:
        raise ValueError(f"predictions hold {nan} NaN value(s); expected probabilities in [0, 1]")
    low, high = float(predictions.min()), float(predictions.max())
    if low < 0 or high > 1:
        raise ValueError(f"predictions must be probabilities in [0, 1], got values in [{low}, {high}]")
    if not ((labels == 0) | (labels == 1)).all():
        raise ValueError(f"labels must be 0 or 1, got values {torch.unique(labels)[:5].tolist()}...")


def _auc(p: torch.Tensor, y: torch.Tensor) -> float:
    """:func:`auc` on checked inputs of shape (N,)."""
    clicks = int(y.sum())
    if clicks in (0, y.shape[0]):  # empty or one class: no (click, no-click) pair
        return float("nan")
    # Inputs are checked, so torchmetrics' own checks (and its sigmoid of scores outside [0, 1]) never apply.
    return float(binary_auroc(p, y.long(), thresholds=None, validate_args=False))


def auc(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Mann–Whitney AUC, ties counted 1/2, independent of row order (module docstring).

    The share of (click, no-click) pairs whose click scores higher, a tied
    pair counting 1/2: torchmetrics' exact ``binary_auroc`` (no bins),
    equal to ``sklearn.metrics.roc_auc_score``. Computed on the inputs' device.

    Args:
        predictions (torch.Tensor): scores in [0, 1], tensor of shape (N,).
        labels (torch.Tensor): 0/1, tensor of shape (N,).

    Returns:
        float: the AUC, ``nan`` on empty or one-class input.

    Example::

        >>> auc(torch.tensor([0.8, 0.4, 0.4, 0.1]), torch.tensor([1.0, 1.0, 0.0, 0.0]))  # (4 - 1/2) / 4
        0.875
        >>> auc(torch.full((4,), 0.3), torch.tensor([0.0, 0.0, 1.0, 1.0]))  # constant scores: 0.5 in any order
        0.5
        >>> auc(torch.tensor([0.3, 0.6]), torch.tensor([1.0, 1.0]))
        nan
    """
    _check(predictions, labels)
    return _auc(predictions.double(), labels)


@dataclass(frozen=True)
class GroupAucs:
    """Per-group AUCs of the groups whose impressions hold both labels (``G`` groups, ascending IDs)."""

    groups: torch.Tensor  # (G,) group IDs
    auc: torch.Tensor  # (G,) float64 Mann–Whitney AUC, ties 1/2
    size: torch.Tensor  # (G,) float64 impressions of the group


def _group_aucs(p: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> GroupAucs:
    """:func:`group_aucs` on checked float64 inputs of shape (N,)."""
    N = p.shape[0]
    if N == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=p.device)
        return GroupAucs(groups=groups[:0], auc=empty, size=empty)
    # Sort by (group, prediction): a stable sort by prediction, then a stable sort by group.
    order = torch.argsort(p, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    g, p, y = groups[order], p[order], y[order]
    new_group = torch.ones(N, dtype=torch.bool, device=p.device)
    new_group[1:] = g[1:] != g[:-1]
    gid = torch.cumsum(new_group, 0) - 1  # (N,) dense group index 0..G-1
    G = int(gid[-1]) + 1
    # A tie run is a run of equal (group, prediction); its members share their mean rank.
    new_run = new_group.clone()
    new_run[1:] |= p[1:] != p[:-1]
    run = torch.cumsum(new_run, 0) - 1  # (N,) dense run index 0..R-1
    position = torch.arange(N, dtype=torch.float64, device=p.device)
    run_mid = position[new_run] + (torch.bincount(run).double() - 1) / 2  # (R,) mean position in each run
    rank = run_mid[run] - position[new_group][gid] + 1  # (N,) 1-based mean rank within the group
    size = torch.bincount(gid, minlength=G).double()  # (G,)
    pos = torch.zeros(G, dtype=torch.float64, device=p.device).index_add_(0, gid, y)
    rank_sum = torch.zeros(G, dtype=torch.float64, device=p.device).index_add_(0, gid, rank * y)
    neg = size - pos
    valid = (pos > 0) & (neg > 0)
    pos, neg, rank_sum, size = pos[valid], neg[valid], rank_sum[valid], size[valid]
    auc = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)  # Mann–Whitney U / (pos * neg)
    return GroupAucs(groups=g[new_group][valid], auc=auc, size=size)


def _gauc(p: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> tuple[float, int]:
    """:func:`gauc` on checked float64 inputs of shape (N,)."""
    per_group = _group_aucs(p, y, groups)
    if per_group.auc.numel() == 0:
        return float("nan"), 0
    return float((per_group.auc * per_group.size).sum() / per_group.size.sum()), int(per_group.auc.numel())


def group_aucs(predictions: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> GroupAucs:
    """The per-group AUCs and impression counts that :func:`gauc` averages (no loop over groups).

    Args:
        predictions (torch.Tensor): scores in [0, 1], tensor of shape (N,).
        labels (torch.Tensor): 0/1, tensor of shape (N,).
        groups (torch.Tensor): integer group (user) IDs, shape (N,).

    Returns:
        GroupAucs: the ``G`` groups with both labels, ascending by ID, their
        AUCs and sizes; ``gauc == (auc * size).sum() / size.sum()``.

    Example::

        >>> g = group_aucs(torch.tensor([0.9, 0.2, 0.6, 0.4, 0.3, 0.5]), torch.tensor([1.0, 0, 1, 0, 1, 0]),
        ...     torch.tensor([7, 7, 3, 3, 3, 9]))
        >>> g.groups.tolist(), g.auc.tolist(), g.size.tolist()  # user 9: one class, left out
        ([3, 7], [0.5, 1.0], [3.0, 2.0])
    """
    _check(predictions, labels, groups, "groups")
    return _group_aucs(predictions.double(), labels.double(), groups)


def gauc(predictions: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> tuple[float, int]:
    """Impression-weighted mean of per-group AUCs (ties 1/2), without a loop over groups.

    Groups (users) whose impressions hold one label only are left out.
    Computed in float64 on the inputs' device.

    Args:
        predictions (torch.Tensor): scores in [0, 1], tensor of shape (N,).
        labels (torch.Tensor): 0/1, tensor of shape (N,).
        groups (torch.Tensor): integer group (user) IDs, any values and order, shape (N,).

    Returns:
        tuple[float, int]: GAUC (``nan`` if no group has both labels) and the
        number of groups counted.

    Example::

        >>> p = torch.tensor([0.5, 0.5, 0.1, 0.9, 0.3])
        >>> y = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
        >>> gauc(p, y, torch.tensor([10**12, 10**12, 5, 5, 8]))  # a tie counts 1/2; 5 and 8: one class
        (0.5, 1)
    """
    _check(predictions, labels, groups, "groups")
    return _gauc(predictions.double(), labels.double(), groups)


def ranking_metrics(predictions: torch.Tensor, labels: torch.Tensor, user_ids: torch.Tensor) -> dict[str, float]:
    """AUC (:func:`auc`), GAUC, NE, logloss and calibration of one set of impressions (module docstring).

    Args:
        predictions (torch.Tensor): click probabilities in [0, 1], tensor of shape (N,).
        labels (torch.Tensor): 0/1 clicks, tensor of shape (N,).
        user_ids (torch.Tensor): integer user IDs, tensor of shape (N,).

    Returns:
        dict[str, float]: impressions, clicks, ctr, pred_ctr, calibration,
        auc, gauc, gauc_users, ne, logloss (``nan`` where undefined, see
        the module docstring).

    Example::

        >>> m = ranking_metrics(torch.tensor([0.8, 0.1, 0.3]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1, 1, 2]))
        >>> m["auc"], m["gauc"], m["gauc_users"], m["impressions"], m["clicks"]
        (1.0, 1.0, 1, 3.0, 1.0)
        >>> round(m["ctr"], 4), round(m["pred_ctr"], 4), round(m["calibration"], 4)
        (0.3333, 0.4, 1.2)
        >>> ranking_metrics(torch.tensor([0.3]), torch.tensor([0.0]), torch.tensor([1]))["auc"]
        nan
    """
    _check(predictions, labels, user_ids, "user_ids")
    nan = float("nan")
    p, y = predictions.double(), labels.double()
    w = torch.ones_like(p)
    n, clicks = float(p.shape[0]), float(y.sum())
    one_class = clicks in (0.0, n)  # empty input included
    out = {
        "impressions": n,
        "clicks": clicks,
        "ctr": clicks / n if n else nan,
        "pred_ctr": float(p.mean()) if n else nan,
    }
    out["calibration"] = out["pred_ctr"] / out["ctr"] if clicks else nan
    out["auc"] = _auc(p, y)
    out["gauc"], out["gauc_users"] = _gauc(p, y, user_ids)
    ce_sum = compute_cross_entropy(y, p, w, ETA).sum()
    out["ne"] = nan if one_class else float(compute_ne(ce_sum, w.sum(), y.sum(), (1 - y).sum(), ETA))
    out["logloss"] = float(compute_logloss(ce_sum, y.sum(), (1 - y).sum(), ETA)) if n else nan
    return out


def item_buckets(counts: np.ndarray, head_share: float = 0.5, torso_share: float = 0.3) -> np.ndarray:
    """Bucket per item ID (0 head, 1 torso, 2 tail; ``BUCKETS``) by training impressions.

    Items are ranked by count (descending, ties by item ID). An item is head
    while the impressions of the items ranked before it make less than
    ``head_share`` of all training impressions, torso while less than
    ``head_share + torso_share``, tail otherwise; items never shown are tail.
    The item that crosses a boundary stays in the bucket it starts in.

    Args:
        counts (np.ndarray): training impressions per item ID, integer array of shape (I,).
        head_share (float): share of training impressions covered by the head.
        torso_share (float): share covered by the torso after the head.

    Returns:
        np.ndarray: int8 bucket per item ID, array of shape (I,).

    Example::

        >>> item_buckets(np.array([1, 50, 0, 30, 19])).tolist()  # shares before: 50 -> 0, 30 -> .5, 19 -> .8
        [2, 0, 2, 1, 2]
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise ValueError(f"counts must be a 1-D array of non-negative integers, got {counts.dtype} {counts.shape}")
    if head_share < 0 or torso_share < 0 or head_share + torso_share > 1:
        raise ValueError(f"head_share {head_share} and torso_share {torso_share} must be >= 0 with sum <= 1")
    counts = counts.astype(np.int64)
    order = np.lexsort((np.arange(len(counts)), -counts))  # rank -> item ID
    ranked = counts[order]
    before = (np.cumsum(ranked) - ranked) / max(int(counts.sum()), 1)  # share of impressions ranked before
    bucket = np.where(before < head_share, 0, np.where(before < head_share + torso_share, 1, 2))
    bucket[ranked == 0] = 2
    out = np.empty(len(counts), dtype=np.int8)
    out[order] = bucket
    return out


def evaluation_report(
    predictions: torch.Tensor,
    labels: torch.Tensor,
    user_ids: torch.Tensor,
    item_ids: torch.Tensor,
    buckets: np.ndarray,
    new_items: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`ranking_metrics` of all impressions, of each item bucket and of new items.

    Each subset is scored on its own (GAUC per user within the subset).

    Args:
        predictions (torch.Tensor): click probabilities, tensor of shape (N,).
        labels (torch.Tensor): 0/1 clicks, tensor of shape (N,).
        user_ids (torch.Tensor): integer user IDs, tensor of shape (N,).
        item_ids (torch.Tensor): integer item IDs, tensor of shape (N,).
        buckets (np.ndarray): bucket per item ID (:func:`item_buckets`), shape (I,).
        new_items (np.ndarray | None): bool per item ID (``recsys.data.stats.new_item_mask``), shape (I,).

    Returns:
        dict[str, dict[str, float]]: ``all``, ``head``, ``torso``, ``tail``
        and, when ``new_items`` is given, ``new_items``.

    Example::

        >>> p, y = torch.tensor([0.9, 0.1, 0.7, 0.2]), torch.tensor([1.0, 0.0, 0.0, 1.0])
        >>> users, items = torch.tensor([1, 1, 2, 2]), torch.tensor([0, 0, 1, 2])
        >>> buckets, new = np.array([0, 2, 2], dtype=np.int8), np.array([False, False, True])
        >>> report = evaluation_report(p, y, users, items, buckets, new)
        >>> {name: (m["impressions"], m["auc"]) for name, m in report.items()}
        {'all': (4.0, 0.75), 'head': (2.0, 1.0), 'torso': (0.0, nan), 'tail': (2.0, 0.0), 'new_items': (1.0, nan)}
    """
    if item_ids.shape != predictions.shape:
        raise ValueError(
            f"item_ids has shape {tuple(item_ids.shape)}, expected {tuple(predictions.shape)} like predictions"
        )
    items = item_ids.cpu().numpy()
    tables = {"buckets": buckets} if new_items is None else {"buckets": buckets, "new_items": new_items}
    for name, table in tables.items():
        if table.ndim != 1 or (items.size and (items.min() < 0 or items.max() >= len(table))):
            raise ValueError(f"{name} must be a 1-D array over item IDs covering item_ids, got shape {table.shape}")
    report = {"all": ranking_metrics(predictions, labels, user_ids)}
    subsets = {name: buckets[items] == b for b, name in enumerate(BUCKETS)}
    if new_items is not None:
        subsets["new_items"] = new_items[items].astype(bool)
    for name, mask in subsets.items():
        keep = torch.from_numpy(mask).to(predictions.device)
        report[name] = ranking_metrics(predictions[keep], labels[keep], user_ids[keep])
    return report
