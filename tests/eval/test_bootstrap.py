"""The user bootstrap of GAUC differences: equal to a plain per-resample loop, shapes, paired zeros, coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.eval.bootstrap import UserAucs, compare_gauc, resample_counts, resampled_gauc, user_auc_table
from recsys.eval.metrics import gauc


def _data(seed: int = 0, n: int = 400, users: int = 40, models: int = 3) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Impressions of ``users`` users (a few with one label only), ``models`` noisy scorers of a hidden signal."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n) * 1000 + 7  # sparse, unsorted IDs
    signal = rng.standard_normal(n)
    y = (signal + rng.standard_normal(n) > 1.0).astype(np.float64)
    preds = [1 / (1 + np.exp(-(signal * (m + 1) / models + rng.standard_normal(n)))) for m in range(models)]
    preds[0] = np.round(preds[0], 1)  # ties inside users
    return preds, y, u


def _reference_resampled_gauc(preds: list[np.ndarray], y: np.ndarray, u: np.ndarray, counts: np.ndarray,
                              users: np.ndarray) -> np.ndarray:
    """GAUC per resample by materialising each resample: user k's impressions repeated counts[r, k] times, each copy its own user."""
    out = np.empty((len(counts), len(preds)))
    for r, row in enumerate(counts):
        rows, groups = [], []
        for k, user in enumerate(users):
            own = np.flatnonzero(u == user)
            for copy in range(row[k]):
                rows.append(own)
                groups.append(np.full(len(own), k * 10_000 + copy))
        idx, g = np.concatenate(rows), torch.from_numpy(np.concatenate(groups))
        for m, p in enumerate(preds):
            out[r, m] = gauc(torch.from_numpy(p[idx]), torch.from_numpy(y[idx]), g)[0]
    return out


def test_vectorised_resamples_equal_a_plain_loop() -> None:
    preds, y, u = _data()
    table = user_auc_table(preds, y, u)
    U = len(table.users)
    assert table.auc.shape == (3, U) and table.size.shape == (U,) and U < 40  # one-label users left out
    for m, p in enumerate(preds):  # the table reproduces metrics.gauc
        assert table.gauc()[m] == pytest.approx(gauc(torch.from_numpy(p), torch.from_numpy(y), torch.from_numpy(u))[0], abs=1e-12)
    counts = np.concatenate(list(resample_counts(U, 30, seed=5)))
    assert counts.shape == (30, U) and (counts.sum(axis=1) == U).all()
    want = _reference_resampled_gauc(preds, y, u, counts, table.users)
    np.testing.assert_allclose(resampled_gauc(table, 30, seed=5), want, rtol=0, atol=1e-12)


def test_chunked_counts_and_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    a = np.concatenate(list(resample_counts(7, 1000, seed=1)))
    assert a.shape == (1000, 7) and a.min() >= 0 and (a.sum(axis=1) == 7).all()
    assert np.array_equal(a, np.concatenate(list(resample_counts(7, 1000, seed=1))))
    assert not np.array_equal(a, np.concatenate(list(resample_counts(7, 1000, seed=2))))
    assert abs(a.mean() - 1.0) < 0.02  # each user drawn once per resample on average
    monkeypatch.setattr("recsys.eval.bootstrap.CHUNK_CELLS", 20)  # 2 rows per chunk
    chunks = list(resample_counts(7, 5, seed=1))
    assert [len(c) for c in chunks] == [2, 2, 1]
    small = np.concatenate(chunks)
    assert small.shape == (5, 7) and (small.sum(axis=1) == 7).all()


def test_comparison_shapes_paired_zero_and_interval_order() -> None:
    preds, y, u = _data(models=3)
    preds.append(preds[1].copy())  # model 3 = model 1
    c = compare_gauc(user_auc_table(preds, y, u), baseline=1, resamples=300, seed=0)
    assert c.gauc.shape == c.diff.shape == c.lift.shape == (4,)
    assert c.diff_ci.shape == c.lift_ci.shape == (4, 2) and c.resamples == 300
    np.testing.assert_array_equal(c.diff_ci[[1, 3]], 0.0)  # the baseline and its copy: paired draws, zero width
    assert (c.diff_ci[:, 0] <= c.diff_ci[:, 1]).all()
    assert c.diff[2] > 0 and c.diff_ci[2, 1] > c.diff_ci[2, 0]  # the strongest scorer beats the baseline
    np.testing.assert_allclose(c.lift, c.gauc / c.gauc[1] - 1)
    with pytest.raises(ValueError, match="baseline 4"):
        compare_gauc(user_auc_table(preds, y, u), baseline=4)


def test_no_user_with_both_labels_gives_nan() -> None:
    y = np.array([1.0, 1.0, 0.0])
    c = compare_gauc(user_auc_table([np.array([0.1, 0.2, 0.3])] * 2, y, np.array([1, 1, 2])), baseline=0)
    assert c.users == 0 and np.isnan(c.gauc).all() and np.isnan(c.diff_ci).all()


def test_percentile_interval_covers_the_population_difference() -> None:
    """Users drawn from a known population: the 95% interval holds the true GAUC difference ~95% of the time."""
    rng = np.random.default_rng(0)
    U, trials, hits = 300, 200, 0
    true_diff = 0.01  # E[n d] / E[n] with the per-user difference d independent of n
    for t in range(trials):
        size = rng.integers(2, 30, U).astype(np.float64)
        base = rng.beta(7, 3, U)
        other = base + true_diff + rng.normal(0, 0.08, U)  # unclipped: the weighting needs no AUC range
        table = UserAucs(users=np.arange(U), auc=np.stack([base, other]), size=size)
        c = compare_gauc(table, baseline=0, resamples=400, seed=t)
        hits += bool(c.diff_ci[1, 0] <= true_diff <= c.diff_ci[1, 1])
    assert 0.89 <= hits / trials <= 0.99, hits / trials  # 0.945 with these seeds
