"""``python -m bench.loader``: samples/s of ``ImpressionReader`` against a naive row loop.

Both sides run in this process on one core (pyarrow's CPU and I/O pools
and torch limited to one thread) and produce the same ``Batch`` tensors:

* baseline: ``pq.read_table(file).to_pylist()`` and a Python loop per row,
  joining users and items through dicts, truncating the history and
  building the KJT from Python lists (the first ``--baseline-rows`` rows);
* ours: ``ImpressionReader`` (vectorised numpy over whole row groups), with
  and without its prefetch thread.

Side tables are loaded before the clocks start on both sides (the reader's
own start-up time is shown on its own row). The first batch of both sides
is compared to make sure they compute the same thing.

Usage::

    python -m bench.loader [--world DIR] [--batch-size 4096] [--max-batches N]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import Batch
from recsys.data.spec import world_spec

_WORLD = world_spec()  # the naive baseline reads the world's features
SPARSE_FEATURES = _WORLD.kjt_keys()
USER_SIDE, ITEM_SIDE = _WORLD.sources("users"), _WORLD.sources("items")
IMPRESSION_COLUMNS = ("day", "user_id", "item_id", "history_item_ids", "position", "label")
from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.data.schema import Manifest, table_files

DEFAULT_WORLD = Path("runs/bench-world-small")


def ensure_world(world: Path | None) -> Path:
    """The world to read: ``world``, or the ``small`` preset generated into DEFAULT_WORLD once."""
    if world is not None:
        if not (world / "manifest.json").is_file():
            raise FileNotFoundError(f"{world}: no manifest.json; expected a dataset directory")
        return world
    if not (DEFAULT_WORLD / "manifest.json").is_file():
        from recsys.world.generate import generate_world

        print(f"generating the small world into {DEFAULT_WORLD} (once; a few minutes)")
        generate_world(DEFAULT_WORLD, preset="small", seed=0)
    return DEFAULT_WORLD


class NaiveLoader:
    """The baseline: to_pylist and a Python loop per row (no numpy, no pyarrow compute).

    Args:
        root (Path): dataset directory.
        batch_size (int): B.
        max_rows (int): rows read, from the first impressions files.
    """

    def __init__(self, root: Path, batch_size: int, max_rows: int) -> None:
        self.root = root
        self.batch_size = batch_size
        self.max_rows = max_rows
        self.max_len = Manifest.read(root).max_history_len
        self.users = {
            r["user_id"]: r
            for f in table_files(root, "users")
            for r in pq.read_table(f, columns=["user_id", *USER_SIDE]).to_pylist()
        }
        self.items = {
            r["item_id"]: r
            for f in table_files(root, "items")
            for r in pq.read_table(f, columns=["item_id", *ITEM_SIDE]).to_pylist()
        }

    def __iter__(self) -> Iterator[Batch]:
        rows: list[dict] = []
        seen = 0
        for path in table_files(self.root, "impressions"):
            table = pq.read_table(path, columns=list(IMPRESSION_COLUMNS))
            for row in table.slice(0, self.max_rows - seen).to_pylist():
                rows.append(row)
                seen += 1
                if len(rows) == self.batch_size:
                    yield self._batch(rows)
                    rows = []
            if seen == self.max_rows:
                break
        if rows:
            yield self._batch(rows)

    def _batch(self, rows: list[dict]) -> Batch:
        single: dict[str, list[int]] = {k: [] for k in SPARSE_FEATURES[:-1]}
        history: list[int] = []
        hist_lengths: list[int] = []
        dense: list[list[float]] = []
        for r in rows:
            user, item, hist = self.users[r["user_id"]], self.items[r["item_id"]], r["history_item_ids"]
            single["user_id"].append(r["user_id"])
            for k in USER_SIDE:
                single[k].append(user[k])
            single["item_id"].append(r["item_id"])
            for k in ITEM_SIDE:
                single[k].append(item[k])
            kept = hist[max(len(hist) - self.max_len, 0) :]
            history.extend(kept)
            hist_lengths.append(len(kept))
            dense.append([float(r["position"]), math.log1p(len(hist))])
        B = len(rows)
        values = [v for k in SPARSE_FEATURES[:-1] for v in single[k]] + history
        lengths = [1] * (B * (len(SPARSE_FEATURES) - 1)) + hist_lengths
        kjt = KeyedJaggedTensor(
            keys=list(SPARSE_FEATURES),
            values=torch.tensor(values, dtype=torch.int64),
            lengths=torch.tensor(lengths, dtype=torch.int32),
            stride=B,
        )
        return Batch(
            dense_features=torch.tensor(dense, dtype=torch.float32),
            sparse_features=kjt,
            labels=torch.tensor([r["label"] for r in rows], dtype=torch.float32),
            user_ids=torch.tensor(single["user_id"], dtype=torch.int64),
            item_ids=torch.tensor(single["item_id"], dtype=torch.int64),
        )


def timed(batches: Iterator[Batch], max_batches: int | None) -> tuple[int, float, Batch | None]:
    """(rows, seconds, first batch) of iterating ``batches``."""
    rows, first = 0, None
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        if first is None:
            first = batch
        rows += batch.batch_size
        if max_batches is not None and i + 1 == max_batches:
            break
    return rows, time.perf_counter() - start, first


def same_batch(a: Batch, b: Batch) -> bool:
    return (
        torch.equal(a.sparse_features.values(), b.sparse_features.values())
        and torch.equal(a.sparse_features.lengths(), b.sparse_features.lengths())
        and torch.allclose(a.dense_features, b.dense_features)
        and torch.equal(a.labels, b.labels)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loader", description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=None, help=f"dataset directory (default: {DEFAULT_WORLD})")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--max-batches", type=int, default=None, help="cap on batches read by our reader")
    parser.add_argument("--baseline-rows", type=int, default=100_000, help="rows read by the naive baseline")
    args = parser.parse_args(argv)

    world = ensure_world(args.world)
    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    B = args.batch_size

    start = time.perf_counter()
    naive = NaiveLoader(world, B, args.baseline_rows)
    naive_setup = time.perf_counter() - start
    base_rows, base_s, base_first = timed(iter(naive), None)
    base_rate = base_rows / base_s

    results: list[tuple[str, int, float, float]] = []
    firsts: list[Batch | None] = []
    for depth in (0, 2):
        start = time.perf_counter()
        reader = ImpressionReader(world, ReaderConfig(batch_size=B, prefetch=depth))
        setup = time.perf_counter() - start
        rows, seconds, first = timed(iter(reader), args.max_batches)
        results.append((f"ImpressionReader prefetch={depth}", rows, seconds, setup))
        firsts.append(first)

    manifest = Manifest.read(world)
    print(f"\nloader benchmark: {world} ({manifest.preset}, {manifest.counts.get('impressions', '?'):,} impressions)")
    print(f"batch {B}, one core (torch threads 1, pyarrow cpu/io threads 1), numpy {np.__version__}\n")
    header = f"| {'loader':<30} | {'rows':>10} | {'seconds':>8} | {'samples/s':>11} | {'vs baseline':>11} | {'setup s':>7} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    print(
        f"| {'naive to_pylist row loop':<30} | {base_rows:>10,} | {base_s:>8.2f} | {base_rate:>11,.0f} "
        f"| {1.0:>10.2f}x | {naive_setup:>7.2f} |"
    )
    for name, rows, seconds, setup in results:
        rate = rows / seconds
        print(f"| {name:<30} | {rows:>10,} | {seconds:>8.2f} | {rate:>11,.0f} | {rate / base_rate:>10.2f}x | {setup:>7.2f} |")
    agree = all(f is not None and base_first is not None and same_batch(f, base_first) for f in firsts)
    print(f"\nfirst batch identical to the baseline's: {'yes' if agree else 'NO'}")
    if not agree:
        raise SystemExit("the reader and the baseline disagree on the first batch")


if __name__ == "__main__":
    main()
