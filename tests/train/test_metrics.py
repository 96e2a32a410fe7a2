"""Ranking metrics against plain references: sklearn per user, hand counts, pyarrow reads."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from recsys.data.schema import Manifest, table_files
from recsys.train.metrics import evaluation_report, gauc, item_buckets, new_item_mask, ranking_metrics, train_item_counts


def reference_gauc(p: np.ndarray, y: np.ndarray, u: np.ndarray) -> tuple[float, int]:
    """A per-user loop over sklearn's AUC, weighted by impressions."""
    num = den = 0.0
    users = 0
    for user in np.unique(u):
        m = u == user
        if 0 < y[m].sum() < m.sum():
            num += m.sum() * roc_auc_score(y[m], p[m])
            den += m.sum()
            users += 1
    return num / den, users


def sample(n: int = 3000, users: int = 200, seed: int = 0, decimals: int | None = None) -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(seed)
    u = rng.choice(rng.integers(0, 10**9, users), size=n, p=np.arange(1, users + 1) ** -1.0 / (np.arange(1, users + 1) ** -1.0).sum())
    y = (rng.random(n) < 0.15).astype(np.float64)
    p = 1 / (1 + np.exp(-(y + rng.standard_normal(n) - 2)))
    if decimals is not None:
        p = np.round(p, decimals)
    return torch.from_numpy(p), torch.from_numpy(y), torch.from_numpy(u)


@pytest.mark.parametrize(("seed", "decimals"), [(0, None), (1, 1), (2, 2)])
def test_gauc_equals_per_user_sklearn_loop(seed: int, decimals: int | None) -> None:
    p, y, u = sample(seed=seed, decimals=decimals)
    got, users = gauc(p, y, u)
    want, want_users = reference_gauc(p.numpy(), y.numpy(), u.numpy())
    assert users == want_users and users > 20
    assert got == pytest.approx(want, abs=1e-9)


def test_gauc_without_two_class_users_is_nan() -> None:
    value, users = gauc(torch.tensor([0.2, 0.4]), torch.tensor([1.0, 1.0]), torch.tensor([1, 2]))
    assert math.isnan(value) and users == 0


def test_ranking_metrics_equal_references() -> None:
    p, y, u = sample(seed=3)
    m = ranking_metrics(p, y, u)
    pn, yn = p.numpy(), y.numpy()
    assert m["auc"] == pytest.approx(roc_auc_score(yn, pn), abs=1e-9)
    assert m["logloss"] == pytest.approx(log_loss(yn, pn) / math.log(2), rel=1e-9)  # torchrec: bits
    base = yn.mean()
    entropy = -(base * math.log(base) + (1 - base) * math.log(1 - base))
    assert m["ne"] == pytest.approx(log_loss(yn, pn) / entropy, rel=1e-9)
    assert m["calibration"] == pytest.approx(pn.mean() / yn.mean(), rel=1e-12)
    assert (m["impressions"], m["clicks"]) == (len(yn), yn.sum())


def test_bad_input_is_named() -> None:
    p, y, u = sample(n=10)
    with pytest.raises(ValueError, match="labels has shape"):
        ranking_metrics(p, y[:5], u)
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(torch.full((10,), float("nan"), dtype=torch.float64), y, u)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        ranking_metrics(p, y + 0.5, u)
    empty = ranking_metrics(p[:0], y[:0], u[:0])
    assert empty["impressions"] == 0 and math.isnan(empty["auc"]) and math.isnan(empty["gauc"])


def test_item_buckets_by_impression_share() -> None:
    # 100 impressions, ranked 40, 30, 15, 10, 5, 0; shares before each: 0, .4, .7, .85, .95, 1
    counts = np.array([5, 0, 40, 10, 30, 15])
    assert item_buckets(counts).tolist() == [2, 2, 0, 2, 0, 1]  # head: before < .5; torso: before < .8
    assert item_buckets(counts, head_share=0.7, torso_share=0.2).tolist() == [2, 2, 0, 1, 0, 1]


def test_counts_and_new_items_from_parquet(tiny_world: Path) -> None:
    manifest = Manifest.read(tiny_world)
    days = range(manifest.first_day, manifest.last_day)
    want = Counter()
    for path in table_files(tiny_world, "impressions"):
        for row in pq.read_table(path, columns=["day", "item_id"]).to_pylist():
            if row["day"] in days:
                want[row["item_id"]] += 1
    counts = train_item_counts(tiny_world, days)
    assert {i: int(c) for i, c in enumerate(counts) if c} == dict(want)
    created = {r["item_id"]: r["created_day"] for f in table_files(tiny_world, "items")
               for r in pq.read_table(f, columns=["item_id", "created_day"]).to_pylist()}
    mask = new_item_mask(tiny_world, manifest.last_day)
    assert set(np.flatnonzero(mask).tolist()) == {i for i, d in created.items() if d == manifest.last_day}
    assert mask.any()


def test_report_subsets_are_consistent() -> None:
    p, y, u = sample(seed=4)
    items = torch.from_numpy(np.random.default_rng(0).integers(0, 50, len(p)))
    buckets = item_buckets(np.bincount(items.numpy(), minlength=50))
    new = np.zeros(50, dtype=bool)
    new[[3, 7]] = True
    report = evaluation_report(p, y, u, items, buckets, new)
    assert report["all"] == ranking_metrics(p, y, u)
    assert sum(report[b]["impressions"] for b in ("head", "torso", "tail")) == len(p)
    keep = torch.from_numpy(np.isin(items.numpy(), [3, 7]))
    assert report["new_items"] == ranking_metrics(p[keep], y[keep], u[keep])
