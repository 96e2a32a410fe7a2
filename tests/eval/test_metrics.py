"""Ranking metrics against plain references: sklearn overall and per user, hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from recsys.eval.metrics import BUCKETS, auc, evaluation_report, gauc, group_aucs, item_buckets, ranking_metrics


def reference_gauc(p: np.ndarray, y: np.ndarray, u: np.ndarray) -> tuple[float, int]:
    """A per-user loop over sklearn's AUC, weighted by impressions, users with one class left out."""
    num = den = 0.0
    users = 0
    for user in np.unique(u):
        m = u == user
        if 0 < y[m].sum() < m.sum():
            num += m.sum() * roc_auc_score(y[m], p[m])
            den += m.sum()
            users += 1
    return (num / den if den else math.nan), users


def sample(
    n: int = 3000, users: int = 300, seed: int = 0, decimals: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zipf impressions over large, signed, unsorted user IDs, ~15% clicks, in shuffled order.

    Besides the random users (many with one impression): 20 users with only
    non-clicks, 20 with only clicks, 20 with one impression.
    """
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(-(2**62), 2**62, 2**50), size=users + 60, replace=False)
    zipf = 1.0 / np.arange(1, users + 1)
    u = rng.choice(ids[:users], size=n, p=zipf / zipf.sum())
    y = (rng.random(n) < 0.15).astype(np.float64)
    u = np.concatenate([u, np.repeat(ids[users : users + 40], 3), ids[users + 40 :]])
    y = np.concatenate([y, np.zeros(60), np.ones(60), rng.integers(0, 2, 20)])
    p = 1 / (1 + np.exp(-(y + rng.standard_normal(len(y)) - 2)))
    if decimals is not None:
        p = np.round(p, decimals)
    shuffle = rng.permutation(len(y))
    return torch.from_numpy(p[shuffle]), torch.from_numpy(y[shuffle]), torch.from_numpy(u[shuffle])


@pytest.mark.parametrize(("seed", "decimals"), [(0, None), (1, 1), (2, 2), (3, 0)])
def test_gauc_equals_per_user_sklearn_loop(seed: int, decimals: int | None) -> None:
    p, y, u = sample(seed=seed, decimals=decimals)
    got, users = gauc(p, y, u)
    want, want_users = reference_gauc(p.numpy(), y.numpy(), u.numpy())
    assert users == want_users and users > 30
    assert got == pytest.approx(want, abs=1e-9)


def test_gauc_ignores_order_and_input_dtypes() -> None:
    p, y, u = sample(seed=5, decimals=1)
    value = gauc(p, y, u)
    perm = torch.randperm(len(p), generator=torch.Generator().manual_seed(0))
    assert gauc(p[perm], y[perm], u[perm]) == value
    dense = torch.unique(u, return_inverse=True)[1].int()  # int32 IDs
    want = reference_gauc(p.float().numpy(), y.numpy(), u.numpy())
    assert gauc(p.float(), y.bool(), dense) == pytest.approx(want, abs=1e-9)


def test_gauc_without_two_class_users_is_nan() -> None:
    value, users = gauc(torch.tensor([0.2, 0.4, 0.3]), torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1, 2, 3]))
    assert math.isnan(value) and users == 0
    value, users = gauc(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert math.isnan(value) and users == 0


def test_ranking_metrics_equal_references() -> None:
    p, y, u = sample(seed=3)
    m = ranking_metrics(p, y, u)
    pn, yn = p.numpy(), y.numpy()
    assert (m["impressions"], m["clicks"]) == (len(yn), yn.sum())
    assert m["ctr"] == pytest.approx(yn.mean(), rel=1e-12)
    assert m["pred_ctr"] == pytest.approx(pn.mean(), rel=1e-12)
    assert m["calibration"] == pytest.approx(pn.mean() / yn.mean(), rel=1e-12)
    assert m["auc"] == pytest.approx(roc_auc_score(yn, pn), abs=1e-6)  # torchmetrics returns float32
    assert (m["gauc"], m["gauc_users"]) == pytest.approx(reference_gauc(pn, yn, u.numpy()), abs=1e-9)
    assert m["logloss"] == pytest.approx(log_loss(yn, pn) / math.log(2), rel=1e-9)  # torchrec: bits
    base = yn.mean()
    entropy = -(base * math.log(base) + (1 - base) * math.log(1 - base))  # nats, as sklearn's log_loss
    assert m["ne"] == pytest.approx(log_loss(yn, pn) / entropy, rel=1e-9)


def test_tied_pair_counts_half_in_either_order() -> None:
    for y in ([1.0, 0.0], [0.0, 1.0]):
        m = ranking_metrics(torch.tensor([0.5, 0.5]), torch.tensor(y), torch.tensor([4, 4]))
        assert m["auc"] == 0.5 and m["gauc"] == 0.5  # torchrec's compute_auc gave 1.0 and 0.0 by row order


def tied_cases() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Scores with many ties, rows in random and in adversarial orders: name -> (p, y, u), each of shape (N,).

    A constant predictor over 20,000 impressions with the clicks last (as
    when clicks are joined late and appended), first, and shuffled; scores
    rounded to 1 and 2 decimals, sorted by label; float32 sigmoids of logits
    +-50 (saturated: 1.0 and ~2e-22) with a few in between.
    """
    rng = np.random.default_rng(0)
    n = 20_000
    u = rng.integers(0, 400, n)
    y = np.zeros(n)
    y[-2000:] = 1.0  # clicks last
    constant = np.full(n, 0.1)
    shuffle = rng.permutation(n)
    noisy = 1 / (1 + np.exp(-(y + rng.standard_normal(n) - 2)))
    logits = np.where(rng.random(n) < 0.9, 50.0 * (2 * y - 1) * np.sign(rng.random(n) - 0.2), rng.standard_normal(n))
    saturated = torch.sigmoid(torch.from_numpy(logits).float()).double().numpy()
    by_label = np.argsort(-y, kind="stable")  # clicks first
    return {
        "constant, clicks last": (constant, y, u),
        "constant, clicks first": (constant, y[::-1].copy(), u),
        "constant, shuffled": (constant, y[shuffle], u),
        "1 decimal, clicks last": (np.round(noisy, 1), y, u),
        "2 decimals, clicks first": (np.round(noisy, 2)[by_label], y[by_label], u),
        "2 decimals, shuffled": (np.round(noisy, 2)[shuffle], y[shuffle], u),
        "saturated sigmoid, clicks last": (saturated, y, u),
        "saturated sigmoid, clicks first": (saturated[by_label], y[by_label], u),
    }


@pytest.mark.parametrize("case", list(tied_cases()))
def test_auc_and_gauc_on_ties_equal_sklearn_in_any_row_order(case: str) -> None:
    p, y, u = tied_cases()[case]
    tp, ty, tu = torch.from_numpy(p), torch.from_numpy(y), torch.from_numpy(u)
    want = roc_auc_score(y, p)
    if case.startswith("constant"):
        assert want == 0.5
    assert auc(tp, ty) == pytest.approx(want, abs=1e-6)
    assert auc(tp.float(), ty.bool()) == pytest.approx(roc_auc_score(y, p.astype(np.float32)), abs=1e-6)
    m = ranking_metrics(tp, ty, tu)
    assert m["auc"] == pytest.approx(want, abs=1e-6)
    assert (m["gauc"], m["gauc_users"]) == pytest.approx(reference_gauc(p, y, u), abs=1e-6)
    per_user = group_aucs(tp, ty, tu)
    for user, value in zip(per_user.groups.tolist()[::37], per_user.auc.tolist()[::37]):
        keep = u == user
        assert value == pytest.approx(roc_auc_score(y[keep], p[keep]), abs=1e-6)
    reverse = torch.arange(len(p) - 1, -1, -1)
    assert ranking_metrics(tp[reverse], ty[reverse], tu[reverse])["auc"] == pytest.approx(m["auc"], abs=1e-6)


def test_degenerate_inputs_give_nan_not_exceptions() -> None:
    empty = ranking_metrics(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert empty["impressions"] == 0 and empty["gauc_users"] == 0
    assert all(math.isnan(empty[k]) for k in ("ctr", "pred_ctr", "calibration", "auc", "gauc", "ne", "logloss"))
    for label in (0.0, 1.0):
        p = torch.tensor([0.2, 0.7, 0.4], dtype=torch.float64)
        one = ranking_metrics(p, torch.full((3,), label), torch.tensor([1, 1, 2]))
        assert all(math.isnan(one[k]) for k in ("auc", "gauc", "ne"))
        want = log_loss([label] * 3, [0.2, 0.7, 0.4], labels=[0, 1]) / math.log(2)
        assert one["logloss"] == pytest.approx(want, rel=1e-9)
        assert math.isnan(one["calibration"]) == (label == 0.0)  # no clicks: no calibration


def test_bad_input_is_named() -> None:
    p = torch.linspace(0.05, 0.95, 10, dtype=torch.float64)
    y = torch.tensor([1.0, 0.0] * 5, dtype=torch.float64)
    u = torch.arange(10) % 3
    cases = [
        ((p, y[:5], u), "labels has shape"),
        ((p, y, u[:5]), "user_ids has shape"),
        ((p.view(2, 5), y, u), "predictions must be a tensor of shape"),
        ((torch.full((10,), math.nan, dtype=torch.float64), y, u), "predictions hold 10 NaN"),
        ((p + 1.0, y, u), r"predictions must be probabilities in \[0, 1\]"),
        ((p - 1.0, y, u), r"predictions must be probabilities in \[0, 1\]"),
        ((p, y + 0.5, u), "labels must be 0 or 1"),
        ((p, y, u.double()), "user_ids must be integer"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            ranking_metrics(*args)
    with pytest.raises(ValueError, match="groups has shape"):
        gauc(p, y, u[:5])
    with pytest.raises(ValueError, match="item_ids has shape"):
        evaluation_report(p, y, u, u[:5], np.zeros(3, dtype=np.int8))


def test_item_buckets_by_impression_share() -> None:
    # 100 impressions, ranked 40 (item 2), 30 (4), 15 (5), 10 (3), 5 (0), 0 (1), 0 (6);
    # shares of impressions ranked before each: 0, .4, .7, .85, .95, 1, 1
    counts = np.array([5, 0, 40, 10, 30, 15, 0])
    buckets = item_buckets(counts)
    assert buckets.dtype == np.int8
    assert buckets.tolist() == [2, 2, 0, 2, 0, 1, 2]  # head: before < .5; torso: before < .8
    shares = {BUCKETS[b]: counts[buckets == b].sum() / counts.sum() for b in range(3)}
    assert shares == pytest.approx({"head": 0.7, "torso": 0.15, "tail": 0.15})
    assert item_buckets(counts, head_share=0.7, torso_share=0.2).tolist() == [2, 2, 0, 1, 0, 1, 2]
    assert item_buckets(counts, head_share=1.0, torso_share=0.0).tolist() == [0, 2, 0, 0, 0, 0, 2]  # never shown: tail


def test_item_buckets_break_ties_by_item_id() -> None:
    # Four items of 25: the first two by ID make the head (0 and .25 before), then .5 and .75 -> torso.
    assert item_buckets(np.array([25, 25, 25, 25])).tolist() == [0, 0, 1, 1]
    assert item_buckets(np.array([0, 0, 0])).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="counts must be"):
        item_buckets(np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match="head_share"):
        item_buckets(np.array([1, 2]), head_share=0.8, torso_share=0.3)


def test_report_subsets_are_consistent() -> None:
    p, y, u = sample(seed=4)
    I = 50
    items = torch.from_numpy(np.random.default_rng(0).integers(0, I, len(p)))
    buckets = item_buckets(np.bincount(items.numpy()[: len(p) // 2], minlength=I))
    new = np.zeros(I, dtype=bool)
    new[[3, 7]] = True
    report = evaluation_report(p, y, u, items, buckets, new)
    assert list(report) == ["all", "head", "torso", "tail", "new_items"]
    assert report["all"] == ranking_metrics(p, y, u)
    assert sum(report[b]["impressions"] for b in BUCKETS) == len(p)
    assert sum(report[b]["clicks"] for b in BUCKETS) == y.sum()
    for b, name in enumerate(BUCKETS):
        keep = torch.from_numpy(buckets[items.numpy()] == b)
        assert report[name]["impressions"] > 0
        assert report[name] == ranking_metrics(p[keep], y[keep], u[keep])
    keep = torch.from_numpy(np.isin(items.numpy(), [3, 7]))
    assert report["new_items"] == ranking_metrics(p[keep], y[keep], u[keep])
    assert "new_items" not in evaluation_report(p, y, u, items, buckets)
