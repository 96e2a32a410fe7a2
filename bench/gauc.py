"""``python -m bench.gauc``: our vectorised GAUC against a per-user sklearn loop.

Both sides compute the impression-weighted GAUC of ``recsys.eval.metrics``
(users with one class left out, ties 1/2) on the same synthetic test day, in
this process, on one thread:

* baseline: group impressions by user (one numpy sort), then a Python loop
  calling ``sklearn.metrics.roc_auc_score`` per user with both labels;
* ours: :func:`recsys.eval.metrics.gauc` (two sorts and segment sums in torch).

The day: ``n_users`` users with Zipf impressions (user ``k`` gets a share
``∝ 1/k``), ~10% clicks, predictions a noisy logistic of the label rounded
to 3 decimals (so there are ties). The two values must agree to 1e-6, else
it raises.

Usage::

    python -m bench.gauc [--users 20000] [--impressions 400000] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from recsys.eval.metrics import gauc


def sklearn_gauc(p: np.ndarray, y: np.ndarray, users: np.ndarray) -> float:
    """The baseline: group by user, ``roc_auc_score`` per user with both labels, weight by impressions."""
    order = np.argsort(users, kind="stable")
    p, y, users = p[order], y[order], users[order]
    cuts = np.flatnonzero(np.diff(users)) + 1
    num = den = 0.0
    for ps, ys in zip(np.split(p, cuts), np.split(y, cuts)):
        if 0 < ys.sum() < len(ys):
            num += len(ys) * roc_auc_score(ys, ps)
            den += len(ys)
    return num / den if den else float("nan")


def synthetic_day(n_users: int, n_impressions: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions (float64), labels (float64 0/1) and user IDs (int64, scattered), each of shape (N,)."""
    rng = np.random.default_rng(seed)
    share = 1.0 / np.arange(1, n_users + 1)
    ids = rng.choice(2**40, size=n_users, replace=False).astype(np.int64)  # large, non-contiguous IDs
    users = ids[rng.choice(n_users, size=n_impressions, p=share / share.sum())]
    y = (rng.random(n_impressions) < 0.1).astype(np.float64)
    p = np.round(1.0 / (1.0 + np.exp(-(y + rng.standard_normal(n_impressions) - 2.5))), 3)
    return p, y, users


def bench_gauc(n_users: int = 20_000, n_impressions: int = 400_000, seed: int = 0) -> dict[str, float]:
    """Times both sides once on one thread; returns seconds, the value, users counted and the speed-up.

    Returns:
        dict[str, float]: ``sklearn_s``, ``ours_s``, ``speedup`` (sklearn_s / ours_s),
        ``gauc``, ``users`` (users with both labels), ``impressions``.
    """
    p, y, users = synthetic_day(n_users, n_impressions, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tp, ty, tu = torch.from_numpy(p), torch.from_numpy(y), torch.from_numpy(users)
        gauc(tp[:1000], ty[:1000], tu[:1000])  # warm-up: first-call overheads out of the clock
        t = time.perf_counter()
        ours, counted = gauc(tp, ty, tu)
        t_ours = time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)
    t = time.perf_counter()
    baseline = sklearn_gauc(p, y, users)
    t_base = time.perf_counter() - t
    if not abs(ours - baseline) <= 1e-6:
        raise AssertionError(f"GAUC differs: ours {ours!r}, sklearn loop {baseline!r}")
    return {
        "sklearn_s": t_base,
        "ours_s": t_ours,
        "speedup": t_base / t_ours,
        "gauc": ours,
        "users": float(counted),
        "impressions": float(n_impressions),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--impressions", type=int, default=400_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    r = bench_gauc(args.users, args.impressions, args.seed)
    print(f"GAUC over {args.impressions:,} impressions, {args.users:,} users ({r['users']:,.0f} with both labels), one thread")
    print(f"  value {r['gauc']:.6f} on both sides (agree to 1e-6)")
    print(f"  per-user sklearn loop {r['sklearn_s']:.3f} s | vectorised {r['ours_s']:.4f} s | {r['speedup']:.0f}x (goal >= 20x)")


if __name__ == "__main__":
    main()
