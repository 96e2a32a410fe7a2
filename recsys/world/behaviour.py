"""Behaviour histories and the hidden click model.

The click logit of user ``u`` seeing item ``i`` with history ``H`` is::

    b0 + w_hist * softpool_{h in H} cos(s_i, s_h)     # semantic match to history
       + w_taste * cos(s_i, taste_u)                  # semantic match to taste
       + item_effect_i + user_effect_u                # only IDs can learn these
       + w_pos * position + N(0, noise)               # context, noise

``softpool`` is a log-mean-exp with sharpness ``beta``: one very similar
history item counts, as target attention does. ``b0`` is set once, on the
first simulated day, so that the click rate hits ``target_ctr``.

Notation: ``B`` impressions, ``U`` users, ``L`` history length, ``S`` dims.

Example::

    >>> import numpy as np
    >>> h = HistoryState(n_users=2, max_len=3)
    >>> h.append(np.array([0, 0, 1, 0, 0]), np.array([5, 6, 7, 8, 9]))
    >>> offsets, values = h.rows(np.array([0, 1]))  # oldest first, last L kept
    >>> offsets.tolist(), values.tolist()
    ([0, 3, 4], [6, 8, 9, 7])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClickModel:
    """Weights of the hidden click logit (see the module docstring)."""

    w_hist: float = 3.0
    w_taste: float = 1.5
    beta: float = 4.0
    w_pos: float = -0.08
    noise: float = 0.3
    target_ctr: float = 0.10

    def semantic_logit(
        self, target_sem: np.ndarray, hist_sem: np.ndarray, hist_mask: np.ndarray, taste: np.ndarray
    ) -> np.ndarray:
        """Semantic part of the logit, float32 (B,).

        Args:
            target_sem (np.ndarray): (B, S) unit vectors.
            hist_sem (np.ndarray): (B, L, S).
            hist_mask (np.ndarray): (B, L) bool, True on real history items.
            taste (np.ndarray): (B, S) the user's taste.
        """
        cos = np.einsum("bls,bs->bl", hist_sem, target_sem)  # (B, L)
        e = np.where(hist_mask, np.exp(self.beta * cos), 0.0)
        n = hist_mask.sum(axis=1)
        taste_cos = np.einsum("bs,bs->b", taste, target_sem)
        pooled = np.log(np.maximum(e.sum(axis=1), 1e-12) / np.maximum(n, 1)) / self.beta
        pooled = np.where(n > 0, pooled, taste_cos)  # no history: taste alone
        return (self.w_hist * pooled + self.w_taste * taste_cos).astype(np.float32)

    def calibrate(self, logit: np.ndarray) -> float:
        """The intercept b0 for which mean(sigmoid(b0 + logit)) == target_ctr."""
        lo, hi = -30.0, 30.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if np.mean(1.0 / (1.0 + np.exp(-(mid + logit)))) > self.target_ctr:
                hi = mid
            else:
                lo = mid
        return (lo + hi) / 2


class HistoryState:
    """Each user's most recent clicked items, oldest first, left-padded with -1.

    Args:
        n_users (int): U.
        max_len (int): L.
    """

    def __init__(self, n_users: int, max_len: int) -> None:
        self.items = np.full((n_users, max_len), -1, dtype=np.int64)  # (U, L)
        self.lengths = np.zeros(n_users, dtype=np.int64)  # (U,)
        self.max_len = max_len

    def rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Histories of ``users`` flattened: (offsets (B+1,), values (sum of lengths,))."""
        lens = self.lengths[users]
        offsets = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        row = np.repeat(np.arange(len(users)), lens)
        pos = np.arange(offsets[-1]) - offsets[row] + (self.max_len - lens[row])
        return offsets, self.items[users[row], pos]

    def append(self, users: np.ndarray, items: np.ndarray) -> None:
        """Appends clicks in the given order (stable per user); keeps the last L."""
        if len(users) == 0:
            return
        order = np.argsort(users, kind="stable")
        users, items = users[order], items[order]
        uniq, start, counts = np.unique(users, return_index=True, return_counts=True)
        L = self.max_len
        k = counts[:, None] + np.arange(L)[None, :]  # index into old ++ clicks, (Uc, L)
        old = self.items[uniq]
        from_old = k < L
        old_part = np.take_along_axis(old, np.minimum(k, L - 1), axis=1)
        new_part = items[np.minimum(start[:, None] + k - L, len(items) - 1).clip(0)]
        self.items[uniq] = np.where(from_old, old_part, new_part)
        self.lengths[uniq] = np.minimum(self.lengths[uniq] + counts, L)
