"""Draws items by popularity, restricted to a leaf and to what exists on a day.

Items are numbered in creation order, so the items of a leaf that exist on
day ``d`` are a prefix of that leaf's ID list: one cumulative-popularity
array and a ``searchsorted`` draw any number of items at once.

Example::

    >>> import numpy as np
    >>> created = np.array([0, 0, 1, 2, 2])
    >>> leaf = np.array([0, 1, 0, 0, 1])
    >>> s = ItemSampler(leaf, created, np.ones(5), n_leaves=2)
    >>> rng = np.random.default_rng(0)
    >>> sorted(set(s.popular_in_leaf(rng, np.zeros(100, int), day=1).tolist()))
    [0, 2]
    >>> s.new_in_leaf(rng, np.array([1]), day=2).tolist()
    [4]
"""

from __future__ import annotations

import numpy as np


class ItemSampler:
    """Popularity-weighted item draws by leaf and day.

    Args:
        leaf (np.ndarray): (N,) leaf of each item.
        created_day (np.ndarray): (N,) non-decreasing creation day.
        popularity (np.ndarray): (N,) positive weights.
        n_leaves (int): number of leaves.
    """

    def __init__(self, leaf: np.ndarray, created_day: np.ndarray, popularity: np.ndarray, n_leaves: int) -> None:
        if np.any(np.diff(created_day) < 0):
            raise ValueError("items must be numbered in creation order (created_day non-decreasing)")
        self._created = np.asarray(created_day)
        self._global_cum = np.cumsum(popularity, dtype=np.float64)
        order = np.argsort(leaf, kind="stable")  # by leaf, then by ID
        self._by_leaf = order
        self._leaf_cum = np.cumsum(popularity[order], dtype=np.float64)
        counts = np.bincount(leaf, minlength=n_leaves)
        self._leaf_start = np.concatenate([[0], np.cumsum(counts)])
        self._leaf_created = self._created[order]

    def _leaf_prefix(self, leaves: np.ndarray, day: int, side: str) -> np.ndarray:
        """Per requested leaf, the end (exclusive) of items created before/at ``day``."""
        ends = np.empty(len(self._leaf_start) - 1, dtype=np.int64)
        for l in range(len(ends)):  # n_leaves iterations, not per row
            lo, hi = self._leaf_start[l], self._leaf_start[l + 1]
            ends[l] = lo + np.searchsorted(self._leaf_created[lo:hi], day, side=side)
        return ends[leaves]

    def popular(self, rng: np.random.Generator, size: int, day: int) -> np.ndarray:
        """Items created on or before ``day``, by popularity."""
        end = np.searchsorted(self._created, day, side="right")
        u = rng.random(size) * self._global_cum[end - 1]
        return np.minimum(np.searchsorted(self._global_cum, u, side="right"), end - 1)

    def popular_in_leaf(self, rng: np.random.Generator, leaves: np.ndarray, day: int) -> np.ndarray:
        """One item per requested leaf, created on or before ``day``, by popularity.

        A leaf with no item yet falls back to the global draw.
        """
        start = self._leaf_start[leaves]
        end = self._leaf_prefix(leaves, day, "right")
        empty = end <= start
        lo = np.where(start > 0, self._leaf_cum[np.maximum(start - 1, 0)], 0.0)
        hi = self._leaf_cum[np.maximum(end - 1, 0)]
        u = lo + rng.random(len(leaves)) * (hi - lo)
        pos = np.clip(np.searchsorted(self._leaf_cum, u, side="right"), start, np.maximum(end - 1, start))
        out = self._by_leaf[np.minimum(pos, len(self._by_leaf) - 1)]
        if empty.any():
            out[empty] = self.popular(rng, int(empty.sum()), day)
        return out

    def new_in_leaf(self, rng: np.random.Generator, leaves: np.ndarray, day: int) -> np.ndarray:
        """One item per requested leaf created exactly on ``day``, uniformly.

        A leaf with no item created that day falls back to any item of that day,
        then to the popularity draw.
        """
        lo = self._leaf_prefix(leaves, day, "left")
        hi = self._leaf_prefix(leaves, day, "right")
        pos = lo + (rng.random(len(leaves)) * (hi - lo)).astype(np.int64)
        out = self._by_leaf[np.minimum(pos, len(self._by_leaf) - 1)]
        empty = hi <= lo
        if empty.any():
            a = np.searchsorted(self._created, day, side="left")
            b = np.searchsorted(self._created, day, side="right")
            if b > a:
                out[empty] = rng.integers(a, b, int(empty.sum()))
            else:
                out[empty] = self.popular(rng, int(empty.sum()), day)
        return out
