"""The IDs a world is written with: its dense IDs, or random sparse 64-bit ones (``mmctr world --raw-ids``).

The simulation numbers users, items, shops and brands ``0..N-1``. A real log
names them by sparse 64-bit integers instead; ``--raw-ids`` renames each kind
through a random injective map dense -> raw, applied wherever the world
writes an ID of that kind (every table, ``truth/`` included), so every join
holds and the behaviour is unchanged.

Raw IDs of a kind are ``N`` distinct integers drawn uniformly from
``[RAW_ID_MIN, RAW_ID_MAX]`` by a generator of their own (duplicates, about
``N^2 / 2^63`` of them, are redrawn), so the map depends on the seed and the
kind's count only.

Example::

    >>> import numpy as np
    >>> ids = IdMap.draw({"item_id": np.random.default_rng(0)}, {"item_id": 5})
    >>> raw = ids("item_id", np.arange(5))
    >>> len(set(raw.tolist())), bool(raw.min() >= RAW_ID_MIN), bool(raw.max() <= RAW_ID_MAX)
    (5, True, True)
    >>> ids.lists("item_id", [[4, 0], [], [2]]) == [raw[[4, 0]].tolist(), [], [raw[2]]]
    True
    >>> IdMap()("user_id", np.array([3, 1], dtype=np.int32))  # a kind without a map: written dense
    array([3, 1])
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

RAW_ID_MIN = 1  # 0 left out: a real log's "no ID"
RAW_ID_MAX = 2**62  # well inside int64, so a reader may add offsets without overflow


def draw_raw_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct raw IDs, int64 of shape (n,), uniform in ``[RAW_ID_MIN, RAW_ID_MAX]``, in draw order."""
    out = np.empty(0, dtype=np.int64)
    while len(out) < n:
        more = rng.integers(RAW_ID_MIN, RAW_ID_MAX, n - len(out), dtype=np.int64, endpoint=True)
        both = np.concatenate([out, more])
        _, first = np.unique(both, return_index=True)
        out = both[np.sort(first)]  # the first draw of each value, in draw order
    return out


@dataclass(frozen=True)
class IdMap:
    """The written ID of each dense ID, per kind (``user_id``, ``item_id``...).

    Args:
        raw (Mapping[str, np.ndarray]): per kind, int64 of shape (N,): the raw ID
            of dense ID ``i`` at ``[i]``. Kinds absent are written dense.
    """

    raw: Mapping[str, np.ndarray] = field(default_factory=dict)

    @staticmethod
    def draw(rngs: Mapping[str, np.random.Generator], counts: Mapping[str, int]) -> "IdMap":
        """A random injective map for each kind of ``counts``, drawn by ``rngs[kind]``."""
        return IdMap({kind: draw_raw_ids(rngs[kind], int(n)) for kind, n in counts.items()})

    def __call__(self, kind: str, dense: np.ndarray) -> np.ndarray:
        """The written IDs of dense IDs ``dense`` (any shape), int64 of the same shape."""
        dense = np.asarray(dense, dtype=np.int64)
        table = self.raw.get(kind)
        return dense if table is None else table[dense]

    def lists(self, kind: str, rows: list[list[int]]) -> list[list[int]]:
        """The written IDs of lists of dense IDs (``rows`` itself for a kind written dense)."""
        table = self.raw.get(kind)
        if table is None or not rows:
            return rows
        flat = table[np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64)]
        ends = np.cumsum([len(r) for r in rows])[:-1]
        return [part.tolist() for part in np.split(flat, ends)]
