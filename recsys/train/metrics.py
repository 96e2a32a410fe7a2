"""Offline ranking metrics of a scored day: AUC, GAUC, NE, calibration, by item bucket and for new items.

Notation: ``N``: scored impressions; ``I``: the item ID range.

Definitions (README, "CTR ranking"):

* **AUC**: ``torchrec.metrics.auc.compute_auc`` over all impressions (it
  sorts by prediction; tied predictions are ordered arbitrarily, not
  counted 1/2 — immaterial for continuous scores).
* **GAUC** (as at Alibaba since DIN): the mean of per-user AUCs weighted by
  each user's number of impressions, over users whose impressions hold both
  labels; users with one class are left out. Per-user AUC is Mann–Whitney's,
  ties counted 1/2 (as ``sklearn.metrics.roc_auc_score``). TorchRec's
  ``GAUCMetric`` is an unweighted mean over contiguous sessions, another
  definition, so :func:`gauc` computes this one, vectorised (one sort, segment sums).
* **NE**: normalised entropy, the mean log loss divided by the entropy of the
  observed click rate (``torchrec.metrics.ne.compute_ne``); **logloss** is
  ``compute_logloss``, in bits (torchrec takes ``log2``; divide by
  ``log2(e)`` for nats). Lower is better; NE < 1 beats predicting the base rate.
* **calibration**: mean prediction / observed click rate.
* **Item buckets** by training impressions (:func:`item_buckets`): items
  ranked by training impressions; ``head`` holds the most-shown items that
  together make the first 50% of training impressions, ``torso`` the next
  30%, ``tail`` the rest, including items never shown in training.
* **new items**: impressions of items created on the scored day.

Empty or one-class subsets give ``nan`` for AUC and GAUC (never an exception).

Example::

    >>> p = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.3])
    >>> y = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    >>> u = torch.tensor([7, 7, 3, 3, 3])
    >>> value, users = gauc(p, y, u)  # user 7: AUC 1 (2 impressions); user 3: AUC 0.5 (3)
    >>> round(value, 4), users
    (0.7, 2)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torchrec.metrics.auc import compute_auc
from torchrec.metrics.ne import compute_cross_entropy, compute_logloss, compute_ne

from recsys.data.schema import Manifest, table_files

BUCKETS: tuple[str, ...] = ("head", "torso", "tail")
ETA = 1e-12  # torchrec's clamp of predictions inside log


def _check(predictions: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> None:
    n = predictions.shape[0]
    for name, t in (("labels", labels), ("user_ids", groups)):
        if t.shape != (n,):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected ({n},) like predictions")
    if predictions.dim() != 1:
        raise ValueError(f"predictions must be 1-D, got shape {tuple(predictions.shape)}")
    if torch.isnan(predictions).any():
        raise ValueError(f"predictions hold {int(torch.isnan(predictions).sum())} NaN value(s)")
    if n and (predictions.min() < 0 or predictions.max() > 1):
        raise ValueError("predictions must be probabilities in [0, 1]")
    if n and not ((labels == 0) | (labels == 1)).all():
        raise ValueError("labels must be 0 or 1")


def gauc(predictions: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> tuple[float, int]:
    """Impression-weighted mean of per-group AUCs (module docstring), without a loop over groups.

    Args:
        predictions (torch.Tensor): scores, tensor of shape (N,).
        labels (torch.Tensor): 0/1, tensor of shape (N,).
        groups (torch.Tensor): int group (user) IDs, any values and order, shape (N,).

    Returns:
        tuple[float, int]: GAUC (``nan`` if no group has both labels) and the
        number of groups counted.
    """
    _check(predictions, labels, groups)
    p, y = predictions.double(), labels.double()
    # Sort by (group, prediction): two stable sorts.
    order = torch.argsort(p, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    g, p, y = groups[order], p[order], y[order]
    n = len(g)
    if n == 0:
        return float("nan"), 0
    new_group = torch.ones(n, dtype=torch.bool)
    new_group[1:] = g[1:] != g[:-1]
    gid = torch.cumsum(new_group.long(), 0) - 1  # dense group index 0..G-1
    G = int(gid[-1]) + 1
    # Ranks within each group, ties averaged: a tie run is a run of equal (group, prediction).
    new_run = new_group.clone()
    new_run[1:] |= p[1:] != p[:-1]
    run = torch.cumsum(new_run.long(), 0) - 1
    position = torch.arange(n, dtype=torch.float64)
    group_start = torch.zeros(G, dtype=torch.float64).scatter_reduce(0, gid, position, "amin", include_self=False)
    run_sum = torch.zeros(int(run[-1]) + 1, dtype=torch.float64).index_add_(0, run, position)
    run_len = torch.bincount(run).double()
    rank = run_sum[run] / run_len[run] - group_start[gid] + 1.0  # 1-based average rank in the group
    pos = torch.zeros(G, dtype=torch.float64).index_add_(0, gid, y)
    size = torch.bincount(gid, minlength=G).double()
    neg = size - pos
    rank_sum = torch.zeros(G, dtype=torch.float64).index_add_(0, gid, rank * y)
    valid = (pos > 0) & (neg > 0)
    if not valid.any():
        return float("nan"), 0
    auc = (rank_sum[valid] - pos[valid] * (pos[valid] + 1) / 2) / (pos[valid] * neg[valid])
    weight = size[valid]
    return float((auc * weight).sum() / weight.sum()), int(valid.sum())


def ranking_metrics(predictions: torch.Tensor, labels: torch.Tensor, user_ids: torch.Tensor) -> dict[str, float]:
    """AUC, GAUC, NE, logloss and calibration of one set of impressions.

    Args:
        predictions (torch.Tensor): click probabilities, tensor of shape (N,).
        labels (torch.Tensor): 0/1 clicks, tensor of shape (N,).
        user_ids (torch.Tensor): int user IDs, tensor of shape (N,).

    Returns:
        dict[str, float]: impressions, clicks, ctr, pred_ctr, calibration,
        auc, gauc, gauc_users, ne, logloss.

    Example::

        >>> m = ranking_metrics(torch.tensor([0.8, 0.1, 0.3]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1, 1, 2]))
        >>> m["auc"], m["gauc"], m["gauc_users"], m["impressions"]
        (1.0, 1.0, 1, 3.0)
    """
    _check(predictions, labels, user_ids)
    p, y = predictions.double(), labels.double()
    n = float(len(p))
    clicks = float(y.sum())
    out = {"impressions": n, "clicks": clicks}
    out["ctr"] = clicks / n if n else float("nan")
    out["pred_ctr"] = float(p.mean()) if n else float("nan")
    out["calibration"] = out["pred_ctr"] / out["ctr"] if n and clicks else float("nan")
    one_class = n == 0 or clicks in (0.0, n)
    w = torch.ones_like(p)
    out["auc"] = float("nan") if one_class else float(compute_auc(1, [p.view(1, -1)], [y.view(1, -1)], [w.view(1, -1)]))
    out["gauc"], out["gauc_users"] = gauc(p, y, user_ids)
    if n:
        ce = compute_cross_entropy(y, p, w, ETA).sum()
        out["ne"] = float(compute_ne(ce, w.sum(), y.sum(), (1 - y).sum(), ETA))
        out["logloss"] = float(compute_logloss(ce, y.sum(), (1 - y).sum(), ETA))
    else:
        out["ne"] = out["logloss"] = float("nan")
    return out


def train_item_counts(root: Path, days: range | list[int]) -> np.ndarray:
    """Training impressions per item ID: int64 array of shape (I,), I = the manifest's item range."""
    n = Manifest.read(root).id_ranges["item_id"]
    wanted = np.asarray(list(days), dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    for path in table_files(Path(root), "impressions"):
        t = pq.read_table(path, columns=["day", "item_id"])
        keep = np.isin(t.column("day").to_numpy(), wanted)
        counts += np.bincount(t.column("item_id").to_numpy()[keep], minlength=n)[:n]
    return counts


def item_buckets(counts: np.ndarray, head_share: float = 0.5, torso_share: float = 0.3) -> np.ndarray:
    """Bucket per item (0 head, 1 torso, 2 tail; ``BUCKETS``) by training impressions.

    Items are ranked by count (descending, ties by item ID); an item is head
    while the impressions of the items ranked before it are under
    ``head_share`` of all, torso while under ``head_share + torso_share``.

    Example::

        >>> item_buckets(np.array([1, 50, 0, 30, 19])).tolist()  # 50 | 30 | 19, 1, 0
        [2, 0, 2, 1, 2]
    """
    counts = np.asarray(counts, dtype=np.int64)
    order = np.lexsort((np.arange(len(counts)), -counts))
    before = np.concatenate([[0], np.cumsum(counts[order])[:-1]]) / max(int(counts.sum()), 1)
    ranked = np.where(before < head_share, 0, np.where(before < head_share + torso_share, 1, 2))
    ranked[counts[order] == 0] = 2
    out = np.empty(len(counts), dtype=np.int8)
    out[order] = ranked
    return out


def new_item_mask(root: Path, day: int) -> np.ndarray:
    """Bool per item ID, True where the item was created on ``day``: shape (I,)."""
    n = Manifest.read(root).id_ranges["item_id"]
    out = np.zeros(n, dtype=bool)
    for path in table_files(Path(root), "items"):
        t = pq.read_table(path, columns=["item_id", "created_day"])
        ids = t.column("item_id").to_numpy()
        out[ids[t.column("created_day").to_numpy() == day]] = True
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

    Args:
        predictions, labels, user_ids (torch.Tensor): as :func:`ranking_metrics`, shape (N,).
        item_ids (torch.Tensor): int item IDs, tensor of shape (N,).
        buckets (np.ndarray): bucket per item ID (:func:`item_buckets`), shape (I,).
        new_items (np.ndarray | None): bool per item ID (:func:`new_item_mask`).

    Returns:
        dict[str, dict[str, float]]: keys ``all``, ``head``, ``torso``,
        ``tail`` and, with ``new_items``, ``new_items``.
    """
    items = item_ids.numpy()
    report = {"all": ranking_metrics(predictions, labels, user_ids)}
    subsets = {name: buckets[items] == b for b, name in enumerate(BUCKETS)}
    if new_items is not None:
        subsets["new_items"] = new_items[items]
    for name, mask in subsets.items():
        keep = torch.from_numpy(mask)
        report[name] = ranking_metrics(predictions[keep], labels[keep], user_ids[keep])
    return report
