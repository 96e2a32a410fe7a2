"""The epoch plan against a row-by-row simulation of ranks training and resuming."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from recsys.data import plan


def expand(remaining: plan.Remaining) -> list[int]:
    """Global positions of ``remaining``, one by one."""
    return [p for a, b in remaining for p in range(a, b)]


def rank_batches(share: plan.Remaining, T: int, B: int) -> list[list[int]]:
    """The T batches of one rank as global positions (a padding batch is the empty list)."""
    rows = expand(share)
    batches = [rows[i : i + B] for i in range(0, len(rows), B)]
    return batches + [[]] * (T - len(batches))


def run(remaining: plan.Remaining, W: int, B: int, steps: int) -> list[int]:
    """Positions every rank trains in its first ``steps`` batches (simulated row by row)."""
    T = plan.num_batches(remaining, W, B)
    out: list[int] = []
    for share in plan.split(remaining, W):
        batches = rank_batches(share, T, B)
        assert len(batches) == T
        assert all(len(b) <= B for b in batches)
        assert all(batches[:-1]) or T == 0 or not any(batches)  # only the last batch may be padding
        out += [p for b in batches[:steps] for p in b]
    return out


def random_layout(rng: np.random.Generator) -> list[list[int]]:
    """Row-group sizes per file: empty files, zero-row groups, one big group, many small ones."""
    kind = rng.integers(0, 4)
    if kind == 0:
        return [[int(rng.integers(0, 3000))]]  # one file, one group
    if kind == 1:
        return [[] for _ in range(int(rng.integers(0, 3)))] + [[int(rng.integers(1, 5))]]  # fewer groups than ranks
    return [[int(x) for x in rng.integers(0, 60, rng.integers(0, 6))] for _ in range(int(rng.integers(1, 6)))]


def test_shares_partition_the_stream() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        cuts = np.sort(rng.integers(0, 100, 2 * int(rng.integers(0, 5))))
        remaining = plan.normalize(cuts.reshape(-1, 2).tolist())
        W = int(rng.integers(1, 5))
        shares = plan.split(remaining, W)
        sizes = [plan.count(s) for s in shares]
        assert max(sizes) - min(sizes) <= 1 if sizes else True
        assert [p for s in shares for p in expand(s)] == expand(remaining)  # contiguous, in rank order


@pytest.mark.parametrize("seed", range(6))
def test_every_row_once_across_resumes_at_other_world_sizes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(60):
        layout = random_layout(rng)
        N = sum(sum(f) for f in layout)
        remaining = plan.whole(N)
        trained: list[int] = []
        B = int(rng.integers(1, 40))
        for _ in range(int(rng.integers(0, 4))):  # stops, each resumed at another world size
            W = int(rng.integers(1, 5))
            T = plan.num_batches(remaining, W, B)
            steps = int(rng.integers(0, T + 1))
            trained += run(remaining, W, B, steps)
            remaining = plan.remaining_after(remaining, W, B, steps)
            remaining = plan.normalize(json.loads(json.dumps(remaining)), N)  # through a checkpoint file
        W = int(rng.integers(1, 5))
        trained += run(remaining, W, B, plan.num_batches(remaining, W, B))
        assert plan.remaining_after(remaining, W, B, plan.num_batches(remaining, W, B)) == ()
        assert Counter(trained) == Counter(range(N))


@pytest.mark.parametrize("path", [(2, 1), (1, 2), (2, 3), (3, 2), (2, 3, 1, 2)])
def test_named_resume_paths(path: tuple[int, ...]) -> None:
    N, B = 1003, 16
    remaining, trained = plan.whole(N), []
    for i, W in enumerate(path):
        T = plan.num_batches(remaining, W, B)
        steps = T if i == len(path) - 1 else T // 3
        trained += run(remaining, W, B, steps)
        remaining = plan.remaining_after(remaining, W, B, steps)
    assert remaining == () and sorted(trained) == list(range(N))


def test_num_batches_is_ceil_of_largest_share() -> None:
    for N in range(0, 40):
        for W in range(1, 5):
            for B in range(1, 7):
                shares = plan.split(plan.whole(N), W)
                want = math.ceil(max(plan.count(s) for s in shares) / B)
                assert plan.num_batches(plan.whole(N), W, B) == want


def test_segments_cover_each_row_of_each_group_once() -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        sizes = [s for f in random_layout(rng) for s in f]
        starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        N = int(starts[-1])
        cuts = np.sort(rng.integers(0, N + 1, 4))
        remaining = plan.normalize(cuts.reshape(-1, 2).tolist())
        got = [(j, r) for j, lo, hi in plan.segments(starts, remaining) for r in range(lo, hi)]
        assert all(0 <= r < sizes[j] for j, r in got)
        assert [int(starts[j]) + r for j, r in got] == expand(remaining)


def test_row_group_order_is_a_seeded_permutation() -> None:
    a, b = plan.row_group_order(50, True, 3, 0), plan.row_group_order(50, True, 3, 1)
    assert sorted(a) == sorted(b) == list(range(50)) and list(a) != list(b)
    assert list(a) == list(plan.row_group_order(50, True, 3, 0))
    assert list(plan.row_group_order(5, False, 3, 0)) == list(range(5))


@pytest.mark.parametrize("bad", [[[3, 1]], [[0, 4], [2, 6]], [[0, 1.5]], [[0, 1, 2]]])
def test_normalize_rejects_bad_intervals(bad: list) -> None:
    with pytest.raises(ValueError, match="remaining"):
        plan.normalize(bad)
    with pytest.raises(ValueError, match="outside"):
        plan.normalize([[0, 5]], total=4)
