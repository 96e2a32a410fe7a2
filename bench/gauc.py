"""``python -m bench.gauc``: our vectorised GAUC against a per-user sklearn loop.

Both sides compute the impression-weighted GAUC of ``recsys.train.metrics``
on the same synthetic test day (Zipf impressions per user, ~10% CTR), in
this process, one thread. The values must agree to 1e-6 (else it raises).

Usage::

    python -m bench.gauc [--users 20000] [--impressions 400000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from recsys.train.metrics import gauc


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
    return num / den


def bench_gauc(n_users: int = 20_000, n_impressions: int = 400_000, seed: int = 0) -> dict[str, float]:
    """Times both sides once on synthetic data; returns seconds, values and the speed-up."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    share = 1.0 / np.arange(1, n_users + 1)
    users = rng.choice(n_users, size=n_impressions, p=share / share.sum())
    y = (rng.random(n_impressions) < 0.1).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-(y + rng.standard_normal(n_impressions) - 2.5)))
    t = time.perf_counter()
    baseline = sklearn_gauc(p, y, users)
    t_base = time.perf_counter() - t
    t = time.perf_counter()
    ours, _ = gauc(torch.from_numpy(p), torch.from_numpy(y), torch.from_numpy(users))
    t_ours = time.perf_counter() - t
    if abs(ours - baseline) > 1e-6:
        raise AssertionError(f"GAUC differs: ours {ours!r}, sklearn loop {baseline!r}")
    return {"sklearn_s": t_base, "ours_s": t_ours, "gauc": ours, "speedup": t_base / t_ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--impressions", type=int, default=400_000)
    args = parser.parse_args()
    r = bench_gauc(args.users, args.impressions)
    print(f"GAUC over {args.impressions:,} impressions, {args.users:,} users: {r['gauc']:.6f} on both sides")
    print(f"  per-user sklearn loop {r['sklearn_s']:.3f} s | vectorised {r['ours_s']:.4f} s | {r['speedup']:.0f}x (goal >= 20x)")


if __name__ == "__main__":
    main()
