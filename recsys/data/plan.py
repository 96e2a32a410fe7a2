"""An epoch's global row order, its split over ranks, and where a stopped epoch stands.

Notation:

* ``N``: rows of an epoch (impressions of the selected days, over all files).
* ``W``: world size (ranks); ``B``: batch size per rank.
* ``n``: rows still to train in the epoch; ``n_r``: rank ``r``'s share of them.
* ``T``: batches every rank yields, ``ceil(max_r n_r / B)``.

The global order does not depend on ``W`` nor on how the files were written:

1. The selected row groups (files sorted, row groups in file order) are
   laid end to end; with ``shuffle`` they are permuted (whole row groups)
   by ``rng(seed, epoch)`` (:func:`row_group_order`), the same on every rank.
2. The rows of a row group keep their order, or with ``shuffle`` are
   permuted by ``rng(seed, epoch, file, row group)`` (done by the reader).
3. Row ``p`` of that sequence has global position ``p`` in ``[0, N)``.

The work left in an epoch is a ``Remaining``: a sorted tuple of disjoint,
non-empty, non-touching half-open intervals of global positions (JSON-friendly;
``((0, N),)`` at the start of an epoch, ``()`` once done). :func:`split`
gives rank ``r`` the contiguous stretch ``[floor(r n / W), floor((r+1) n / W))``
of the remaining rows laid end to end, so shares differ by at most one row
and each rank reads long runs of consecutive rows.

Every rank yields ``T`` batches (:func:`num_batches`): its rows cut every ``B``
(the last batch may be smaller), and a rank whose rows fill one batch fewer
yields one padding batch (rows of loss weight 0) last. After every rank has
done ``steps`` batches, :func:`remaining_after` says what is left; it is a
pure function of its arguments, so every rank computes the same value with no
communication, and a job resumed from it on any number of ranks trains the
rest of the epoch, each row once.

Example::

    >>> rest = whole(10)
    >>> split(rest, 3)
    (((0, 3),), ((3, 6),), ((6, 10),))
    >>> num_batches(rest, 3, 2)
    2
    >>> rest = remaining_after(rest, 3, 2, 1)  # every rank did one batch of 2
    >>> rest
    ((2, 3), (5, 6), (8, 10))
    >>> split(rest, 2)  # resumed on 2 ranks
    (((2, 3), (5, 6)), ((8, 10),))
    >>> remaining_after(rest, 2, 2, 1)
    ()
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

Interval = tuple[int, int]
# Half-open intervals [a, b) of global positions, sorted, disjoint, non-empty, not touching.
Remaining = tuple[Interval, ...]


def whole(n: int) -> Remaining:
    """The whole epoch of ``n`` rows: ``((0, n),)``, or ``()`` when ``n == 0``."""
    if n < 0:
        raise ValueError(f"an epoch has >= 0 rows, got {n}")
    return ((0, int(n)),) if n else ()


def normalize(remaining: Sequence[Sequence[int]], total: int | None = None) -> Remaining:
    """``remaining`` checked and in canonical form (touching intervals merged, empty ones dropped).

    Args:
        remaining (Sequence[Sequence[int]]): ``[a, b)`` pairs, e.g. read back from JSON.
        total (int | None): N; when given, every interval must lie in ``[0, N)``.

    Raises:
        ValueError: a pair that is not two integers ``a <= b``, intervals out of
            order or overlapping, or outside ``[0, total)``.

    Example::

        >>> normalize([[0, 2], [2, 5], [7, 7], [8, 9]])
        ((0, 5), (8, 9))
    """
    out: list[list[int]] = []
    end = 0
    for pair in remaining:
        if len(pair) != 2 or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in pair):
            raise ValueError(f"remaining holds {pair!r}; expected [start, end) pairs of integers")
        a, b = int(pair[0]), int(pair[1])
        if a > b or a < end:
            raise ValueError(f"remaining {list(remaining)!r}: intervals must be sorted, disjoint and start <= end")
        if a == b:
            continue
        if out and out[-1][1] == a:
            out[-1][1] = b
        else:
            out.append([a, b])
        end = b
    if total is not None and out and (out[0][0] < 0 or out[-1][1] > total):
        raise ValueError(f"remaining {list(remaining)!r} reaches outside the epoch's {total} rows")
    return tuple((a, b) for a, b in out)


def count(remaining: Remaining) -> int:
    """Rows in ``remaining``."""
    return sum(b - a for a, b in remaining)


def stretch(remaining: Remaining, start: int, stop: int) -> Remaining:
    """The global intervals of rows ``[start, stop)`` of ``remaining`` laid end to end.

    Example::

        >>> stretch(((0, 3), (10, 14)), 2, 5)
        ((2, 3), (10, 12))
    """
    out: list[Interval] = []
    seen = 0
    for a, b in remaining:
        lo, hi = max(start - seen, 0), min(stop - seen, b - a)
        if lo < hi:
            out.append((a + lo, a + hi))
        seen += b - a
        if seen >= stop:
            break
    return tuple(out)


def split(remaining: Remaining, world_size: int) -> tuple[Remaining, ...]:
    """Each rank's share of ``remaining``: rank ``r`` gets rows ``[floor(r n / W), floor((r+1) n / W))``."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    n = count(remaining)
    return tuple(stretch(remaining, r * n // world_size, (r + 1) * n // world_size) for r in range(world_size))


def num_batches(remaining: Remaining, world_size: int, batch_size: int) -> int:
    """T: batches every rank yields for ``remaining``, ``ceil(max_r n_r / B)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    largest = math.ceil(count(remaining) / world_size)  # max_r n_r
    return math.ceil(largest / batch_size)


def remaining_after(remaining: Remaining, world_size: int, batch_size: int, steps: int) -> Remaining:
    """What is left of ``remaining`` once every rank has done ``steps`` of its batches.

    Rank ``r`` has trained the first ``min(steps * B, n_r)`` rows of its share
    (padding batches train none). ``steps >= num_batches(...)`` leaves ``()``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    done = steps * batch_size
    left: list[Interval] = []
    for share in split(remaining, world_size):
        left.extend(stretch(share, done, count(share)))
    return normalize(left)


def row_group_order(num_groups: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """Order of the selected row groups in the epoch: identity, or permuted by ``rng(seed, epoch)``."""
    if not shuffle:
        return np.arange(num_groups)
    return np.random.default_rng((seed, epoch)).permutation(num_groups)


def segments(starts: np.ndarray, remaining: Remaining) -> Iterator[tuple[int, int, int]]:
    """``(j, lo, hi)``: rows ``[lo, hi)`` of the ``j``-th row group in epoch order, covering ``remaining``.

    Args:
        starts (np.ndarray): int64 (G + 1,), global position where each row
            group (in epoch order) starts; ``starts[-1] == N``.
        remaining (Remaining): global intervals, in order.

    Example::

        >>> list(segments(np.array([0, 4, 4, 10]), ((2, 7),)))
        [(0, 2, 4), (2, 0, 3)]
    """
    for a, b in remaining:
        p = a
        while p < b:
            j = int(np.searchsorted(starts, p, "right")) - 1
            end = min(int(starts[j + 1]), b)
            yield j, p - int(starts[j]), end - int(starts[j])
            p = end
