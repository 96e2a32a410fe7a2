"""``python -m bench.collisions``: managed collisions vs modulo hashing at the same table capacity, on raw IDs.

Quality, not speed: the test-day GAUC and AUC of ``id_only`` trained on a
world of raw 64-bit IDs (``mmctr world --raw-ids``: user, item, shop and
brand IDs random in [1, 2^62]) whose raw-ID tables are

* ``managed``: TorchRec's ``MCHManagedCollisionModule`` (sorted ZCH, LFU
  eviction every step; ``recsys.models.remap.IdRemapper``), as the world is written;
* ``hash``: row ``id mod rows``, the baseline: a copy of the world (the
  Parquet directories symlinked) whose ``manifest.json`` declares the same
  tables with ``ids: "hash"`` and the same ``rows``.

Per seed, one world; per capacity, both arms train from the same files with
the same ``--seed`` and batch size, each as its own ``python -m recsys.cli
train`` process (sequentially), with ``OMP_NUM_THREADS=1`` unless set: the
metrics are bitwise the same with 1 or 2 threads (checked), but on 2 shared
cores under load a 1-rank run with torch's default 2 threads trained at
~1k samples/s where 1 thread gave ~25k. A capacity is a fraction ``f`` of each raw-ID
kind's count ``n``: every raw-ID table gets ``round(f n) + 1`` rows (the last
is managed tables' row for IDs never admitted; ``f = 1`` is the world as
written, count + 1 rows, where ``managed`` never evicts). At ``f < 1`` both
arms collide: ``managed`` keeps the ``round(f n)`` most frequent IDs (LFU) and
sends the rest to its last row, ``hash`` folds every ID into the table.

The world: ``--world-size mid`` (default) is the ``tiny`` preset with 5x its
users, items, shops, brands and impressions (2,000 users, 7,500 items, 300
shops, 200 brands, 100k impressions over 5 days, the last the 20k-impression
test day), written with titles only and no searches (``id_only`` reads
neither); ``tiny`` is the preset as is. The ``hash`` arm's share of IDs that
share a row with another ID of their kind is printed per capacity (every ID
of ``items/`` and ``users/``).

Prints per capacity a table of GAUC and AUC of ``all``, ``tail`` and
``new_items`` (``recsys.eval.metrics``' subsets of ``metrics.json``): per seed
managed / hash / managed - hash, then the mean ± sample sd over seeds; and
``results.json`` under ``--out`` holds every run's metrics and timings.

Usage::

    python -m bench.collisions [--seeds 0 1 2] [--capacities 1.0 0.5] [--world-size {mid,tiny}]
                               [--batch-size 512] [--out runs/bench-collisions] [--reuse]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recsys.data.schema import MANIFEST, Manifest, table_files
from recsys.world.config import PRESETS, UNSEEN_ROWS, WorldConfig, WorldFormat

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("runs/bench-collisions")
WORLDS: dict[str, WorldConfig] = {
    "tiny": PRESETS["tiny"],
    "mid": dataclasses.replace(
        PRESETS["tiny"], name="tiny-x5", n_users=2_000, n_items=7_500, n_impressions=100_000,
        n_shops=300, n_brands=200,
    ),
}
ARMS = ("managed", "hash")
SUBSETS = ("all", "tail", "new_items")
METRICS = ("gauc", "auc")


def capacity_rows(world_rows: int, fraction: float) -> int:
    """Rows of a raw-ID table at ``fraction`` of its kind's count (world_rows = count + UNSEEN_ROWS)."""
    return max(1, round(fraction * (world_rows - UNSEEN_ROWS))) + UNSEEN_ROWS


def arm_world(world: Path, dest: Path, ids: str, fraction: float) -> Path:
    """``world`` itself (managed at f = 1), else a copy at ``dest``: Parquet dirs symlinked, a new manifest.

    The copy's raw-ID tables (those not ``identity``) get ``ids`` and
    ``capacity_rows(rows, fraction)`` rows; everything else is the world's.
    """
    manifest = Manifest.read(world)
    if ids == "managed" and fraction == 1.0:
        return world
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for entry in world.iterdir():
        if entry.is_dir():
            (dest / entry.name).symlink_to(entry.resolve(), target_is_directory=True)
    tables = tuple(
        t if t.ids == "identity" else dataclasses.replace(t, ids=ids, rows=capacity_rows(t.rows, fraction))
        for t in manifest.features.tables
    )
    dataclasses.replace(manifest, features=dataclasses.replace(manifest.features, tables=tables)).write(dest)
    return dest


def hash_sharing(world: Path, fraction: float) -> dict[str, float]:
    """Share of the IDs of ``users/`` and ``items/`` whose row ``id mod rows`` holds another ID of theirs."""
    spec = Manifest.read(world).features
    shares: dict[str, float] = {}
    for table, key in (("users", spec.user_key), ("items", spec.item_key)):
        ids = np.concatenate([pq.read_table(f, columns=[key]).column(key).to_numpy() for f in table_files(world, table)])
        rows = capacity_rows(spec.table(spec.table_of(key)).rows, fraction)
        _, inverse, counts = np.unique(ids % rows, return_inverse=True, return_counts=True)
        shares[key] = float((counts[inverse] > 1).mean())
    return shares


def train(world: Path, out: Path, seed: int, batch_size: int, reuse: bool) -> dict:
    """One ``id_only`` run in its own process; returns metrics.json plus the wall time of the command."""
    if reuse and (out / "metrics.json").is_file() and (out / "bench_wall_s.txt").is_file():
        result = json.loads((out / "metrics.json").read_text())
        result["wall_s"] = float((out / "bench_wall_s.txt").read_text())
        return result
    if out.exists():
        shutil.rmtree(out)  # `mmctr train` resumes from a checkpoint in --out: start clean
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.setdefault("OMP_NUM_THREADS", "1")  # see the module docstring
    cmd = [sys.executable, "-m", "recsys.cli", "train", "--world", str(world), "--out", str(out),
           "--variant", "id_only", "--batch-size", str(batch_size), "--seed", str(seed), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    (out / "bench_wall_s.txt").write_text(f"{wall:.3f}\n")
    result = json.loads((out / "metrics.json").read_text())
    result["wall_s"] = wall
    return result


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def print_table(fraction: float, seeds: list[int], runs: dict[int, dict[str, dict]]) -> None:
    """Per (subset, metric): managed, hash and managed - hash per seed, then mean ± sd over seeds."""
    print(f"{'':<16}" + "".join(f" | {'seed ' + str(s):<25}" for s in seeds) + f" | {'mean ± sd over seeds':<51}")
    print(f"{'subset metric':<16}" + "".join(f" | {'managed':<9}{'hash':<9}{'diff':<7}" for _ in seeds)
          + f" | {'managed':<15} | {'hash':<15} | diff")
    for subset in SUBSETS:
        for metric in METRICS:
            m = [runs[s]["managed"]["metrics"][subset][metric] for s in seeds]
            h = [runs[s]["hash"]["metrics"][subset][metric] for s in seeds]
            d = [a - b for a, b in zip(m, h)]
            cells = "".join(f" | {a:<9.4f}{b:<9.4f}{c:+.4f}" for a, b, c in zip(m, h, d))
            sd = statistics.stdev(d) if len(d) > 1 else 0.0
            print(f"{subset + ' ' + metric.upper():<16}{cells} | {_mean_sd(m):<15} | {_mean_sd(h):<15} | "
                  f"{statistics.mean(d):+.4f} ± {sd:.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.collisions", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--capacities", type=float, nargs="+", default=[1.0, 0.5],
                        help="raw-ID table rows as fractions of each kind's ID count (+1 row)")
    parser.add_argument("--world-size", choices=sorted(WORLDS), default="mid")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="worlds, runs and results.json")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs found under --out (an interrupted bench)")
    args = parser.parse_args(argv)
    from recsys.world.generate import generate_world

    cfg = WORLDS[args.world_size]
    out: Path = args.out
    results: dict[str, object] = {
        "world": dataclasses.asdict(cfg), "format": "raw_ids, content text, no searches",
        "batch_size": args.batch_size, "seeds": args.seeds, "capacities": {},
    }
    runs: dict[float, dict[int, dict[str, dict]]] = {f: {} for f in args.capacities}
    sharing: dict[float, dict[int, dict[str, float]]] = {f: {} for f in args.capacities}
    bench_start = time.perf_counter()
    for seed in args.seeds:
        world = out / f"seed{seed}" / "world"
        if not (args.reuse and (world / MANIFEST).is_file()):
            generate_world(world, cfg, seed, fmt=WorldFormat(raw_ids=True, content="text", searches=False))
        for fraction in args.capacities:
            tag = f"{round(fraction * 100)}pct"
            sharing[fraction][seed] = hash_sharing(world, fraction)
            runs[fraction][seed] = {}
            for arm in ARMS:
                w = arm_world(world, out / f"seed{seed}" / f"world-{arm}-{tag}", arm, fraction)
                r = train(w, out / f"seed{seed}" / f"run-{arm}-{tag}", seed, args.batch_size, args.reuse)
                runs[fraction][seed][arm] = r
                print(f"  seed {seed}, capacity {fraction:g}, {arm:<7}: GAUC {r['metrics']['all']['gauc']:.4f} "
                      f"AUC {r['metrics']['all']['auc']:.4f} ({r['wall_s']:.0f} s, "
                      f"training {r['train_samples_per_s']:,.0f} samples/s)",
                      flush=True)
    manifest = Manifest.read(out / f"seed{args.seeds[0]}" / "world")
    counts = {t.name: t.rows - UNSEEN_ROWS for t in manifest.features.managed_tables()}
    print(f"\nid_only on raw-ID worlds ({cfg.name}: {cfg.n_users:,} users, {cfg.n_items:,} items, "
          f"{cfg.n_impressions:,} impressions, test day {manifest.test_day}), batch {args.batch_size}, "
          f"seeds {' '.join(map(str, args.seeds))}; managed = TorchRec MCH (LFU), hash = id mod rows")
    for fraction in args.capacities:
        rows = {k: capacity_rows(n + UNSEEN_ROWS, fraction) for k, n in counts.items()}
        share = {k: statistics.mean(sharing[fraction][s][k] for s in args.seeds) for k in ("user_id", "item_id")}
        print(f"\ncapacity {fraction:g} x IDs + 1: rows {', '.join(f'{k} {v:,}' for k, v in rows.items())}; "
              f"hash: {share['item_id']:.0%} of items and {share['user_id']:.0%} of users share their row")
        print_table(fraction, args.seeds, runs[fraction])
        results["capacities"][str(fraction)] = {
            "rows": rows,
            "hash_shared_row_share": {str(s): sharing[fraction][s] for s in args.seeds},
            "runs": {str(s): runs[fraction][s] for s in args.seeds},
            "mean_diff": {
                f"{subset}.{metric}": statistics.mean(
                    runs[fraction][s]["managed"]["metrics"][subset][metric] - runs[fraction][s]["hash"]["metrics"][subset][metric]
                    for s in args.seeds)
                for subset in SUBSETS for metric in METRICS
            },
        }
    results["bench_wall_s"] = time.perf_counter() - bench_start
    results["reused_runs"] = args.reuse  # then bench_wall_s excludes the runs kept from before
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{out / 'results.json'} ({results['bench_wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
