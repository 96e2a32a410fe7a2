"""Bootstrap confidence intervals on GAUC differences between models, resampling users.

Notation: ``M`` models scored on the same ``N`` impressions; ``U`` users
whose impressions hold both a click and a non-click (the users GAUC counts,
the same for every model since the labels are); ``R`` resamples.

GAUC is ``sum_u n_u a_mu / sum_u n_u`` (``recsys.eval.metrics.gauc``):
``a_mu`` the AUC of model ``m`` on user ``u``'s impressions, ``n_u`` their
number. One bootstrap resample draws ``U`` users with replacement; user
``u`` drawn ``w_ru`` times (the ``(R, U)`` multinomial count matrix of
:func:`resample_counts`) counts with weight ``w_ru``::

    GAUC_rm = sum_u w_ru n_u a_mu / sum_u w_ru n_u        (R, M): one matrix product

Per-user AUCs are computed once per model; a resample never re-sorts
impressions, so ``R = 1000`` costs a few ``(R, U) @ (U, M)`` products.
Resampling users (not impressions) keeps each user's impressions together,
as GAUC's unit is the user. The difference of model ``m`` to the baseline
``b`` in a resample is ``GAUC_rm - GAUC_rb`` (the relative lift
``GAUC_rm / GAUC_rb - 1``); the interval is the percentile interval of the
``R`` values (2.5th and 97.5th percentiles for 95%).

Example::

    >>> y = np.array([1, 0, 0, 1, 0, 1, 1, 0.0])
    >>> users = np.array([1, 1, 1, 2, 2, 2, 3, 3])
    >>> base = np.array([0.9, 0.1, 0.5, 0.2, 0.6, 0.7, 0.3, 0.4])
    >>> better = np.array([0.9, 0.1, 0.5, 0.8, 0.6, 0.7, 0.6, 0.4])
    >>> table = user_auc_table([base, better], y, users)
    >>> table.users.tolist(), table.size.tolist(), table.auc.tolist()
    ([1, 2, 3], [3.0, 3.0, 2.0], [[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]])
    >>> c = compare_gauc(table, baseline=0, resamples=200, seed=0)
    >>> c.gauc.round(4).tolist(), c.diff.round(4).tolist()
    ([0.5625, 1.0], [0.0, 0.4375])
    >>> bool(c.diff_ci[1, 0] <= 0.4375 <= c.diff_ci[1, 1]), c.diff_ci[0].tolist()
    (True, [0.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recsys.eval import RESAMPLES
from recsys.eval.metrics import group_aucs

CHUNK_CELLS = 1 << 22  # resample-count cells (rows x users) drawn at once: ~32 MB of int64


@dataclass(frozen=True)
class UserAucs:
    """Per-user AUCs of ``M`` models on the same impressions (fields documented inline)."""

    users: np.ndarray  # (U,) user IDs with both labels, ascending
    auc: np.ndarray  # (M, U) float64 AUC of each model on each user's impressions
    size: np.ndarray  # (U,) float64 impressions per user

    def gauc(self) -> np.ndarray:
        """GAUC of each model, array of shape (M,) (``nan`` without users)."""
        if self.size.size == 0:
            return np.full(self.auc.shape[0], np.nan)
        return self.auc @ self.size / self.size.sum()


def user_auc_table(predictions: Sequence[np.ndarray], labels: np.ndarray, user_ids: np.ndarray) -> UserAucs:
    """Per-user AUCs of each model (``recsys.eval.metrics.group_aucs``), aligned by user.

    Args:
        predictions (Sequence[np.ndarray]): M arrays of shape (N,), click probabilities.
        labels (np.ndarray): 0/1 clicks, array of shape (N,).
        user_ids (np.ndarray): integer user IDs, array of shape (N,).

    Returns:
        UserAucs: users (U,), AUCs (M, U), sizes (U,).
    """
    if not predictions:
        raise ValueError("user_auc_table needs at least one model's predictions")
    y, u = torch.as_tensor(np.asarray(labels, dtype=np.float64)), torch.as_tensor(np.asarray(user_ids))
    per_model = [group_aucs(torch.as_tensor(np.asarray(p, dtype=np.float64)), y, u) for p in predictions]
    first = per_model[0]
    for m, g in enumerate(per_model[1:], start=1):
        if not torch.equal(g.groups, first.groups):  # only possible if the label or user arrays changed
            raise ValueError(f"model {m} counts other users than model 0; were they scored on other impressions?")
    return UserAucs(
        users=first.groups.numpy(),
        auc=torch.stack([g.auc for g in per_model]).numpy().reshape(len(per_model), -1),
        size=first.size.numpy(),
    )


def resample_counts(n_users: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap draw counts of ``U`` users, ``R`` resamples, in row chunks (deterministic for the arguments).

    Args:
        n_users (int): U, users to resample (each resample draws U with replacement).
        resamples (int): R.
        seed (int): numpy ``default_rng`` seed.

    Yields:
        np.ndarray: int64 counts, arrays of shape (c, U) whose rows sum to U;
        the chunks stack to (R, U).

    Example::

        >>> counts = np.concatenate(list(resample_counts(5, 3, seed=0)))
        >>> counts.shape, counts.sum(axis=1).tolist()
        ((3, 5), [5, 5, 5])
    """
    if n_users < 1 or resamples < 1:
        raise ValueError(f"need n_users >= 1 and resamples >= 1, got {n_users} and {resamples}")
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK_CELLS // n_users)
    for start in range(0, resamples, rows):
        c = min(rows, resamples - start)
        drawn = rng.integers(0, n_users, size=(c, n_users))  # (c, U) user indices
        flat = (drawn + np.arange(c)[:, None] * n_users).ravel()
        yield np.bincount(flat, minlength=c * n_users).reshape(c, n_users)


def resampled_gauc(table: UserAucs, resamples: int, seed: int) -> np.ndarray:
    """GAUC of every model in every user resample, array of shape (R, M) (module docstring)."""
    parts = []
    for counts in resample_counts(len(table.users), resamples, seed):
        weight = counts * table.size  # (c, U): w_ru * n_u
        parts.append((weight @ table.auc.T) / weight.sum(axis=1, keepdims=True))  # (c, M)
    return np.concatenate(parts)


@dataclass(frozen=True)
class GaucComparison:
    """GAUCs of ``M`` models and their differences to a baseline with bootstrap intervals (fields inline)."""

    gauc: np.ndarray  # (M,) GAUC of each model
    diff: np.ndarray  # (M,) GAUC - the baseline's GAUC (0 for the baseline)
    diff_ci: np.ndarray  # (M, 2) percentile interval of the difference
    lift: np.ndarray  # (M,) GAUC / the baseline's GAUC - 1
    lift_ci: np.ndarray  # (M, 2) percentile interval of the relative lift
    users: int  # U
    resamples: int  # R


def compare_gauc(
    table: UserAucs, baseline: int, resamples: int = RESAMPLES, seed: int = 0, confidence: float = 0.95
) -> GaucComparison:
    """Differences of each model's GAUC to the baseline's, with user-bootstrap percentile intervals.

    Args:
        table (UserAucs): per-user AUCs of M models (:func:`user_auc_table`).
        baseline (int): the baseline's row in ``table.auc``.
        resamples (int): R, bootstrap resamples of the users.
        seed (int): resampling seed (the same draws for every model: paired).
        confidence (float): the interval's coverage, e.g. 0.95.

    Returns:
        GaucComparison: every field ``nan`` where no user has both labels.
    """
    M = table.auc.shape[0]
    if not 0 <= baseline < M:
        raise ValueError(f"baseline {baseline} is not a model index in [0, {M})")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    gauc = table.gauc()
    diff, lift = gauc - gauc[baseline], gauc / gauc[baseline] - 1
    if len(table.users) == 0:
        nan = np.full((M, 2), np.nan)
        return GaucComparison(gauc, diff, nan, lift, nan.copy(), users=0, resamples=resamples)
    g = resampled_gauc(table, resamples, seed)  # (R, M)
    q = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
    diff_ci = np.percentile(g - g[:, [baseline]], q, axis=0).T  # (M, 2)
    lift_ci = np.percentile(g / g[:, [baseline]] - 1, q, axis=0).T
    return GaucComparison(gauc, diff, diff_ci, lift, lift_ci, users=len(table.users), resamples=resamples)
