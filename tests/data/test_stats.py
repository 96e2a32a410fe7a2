"""Counts read from the Parquet tables against a plain pyarrow row loop."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recsys.data.schema import Manifest, table_files
from recsys.data.stats import new_item_mask, train_item_counts, unseen_item_ids


def test_counts_and_new_items_from_parquet(tiny_world: Path) -> None:
    manifest = Manifest.read(tiny_world)
    days = range(manifest.first_day, manifest.last_day)
    want = Counter()
    for path in table_files(tiny_world, "impressions"):
        for row in pq.read_table(path, columns=["day", "item_id"]).to_pylist():
            if row["day"] in days:
                want[row["item_id"]] += 1
    counts = train_item_counts(tiny_world, days)
    assert counts.dtype == np.int64 and counts.shape == (manifest.id_ranges["item_id"],)
    assert {i: int(c) for i, c in enumerate(counts) if c} == dict(want)
    assert train_item_counts(tiny_world, []).sum() == 0
    created = {
        r["item_id"]: r["created_day"]
        for f in table_files(tiny_world, "items")
        for r in pq.read_table(f, columns=["item_id", "created_day"]).to_pylist()
    }
    mask = new_item_mask(tiny_world, manifest.last_day)
    assert mask.dtype == np.bool_ and mask.shape == counts.shape
    assert set(np.flatnonzero(mask).tolist()) == {i for i, d in created.items() if d == manifest.last_day}
    assert mask.any()


def test_manifest_passed_down_gives_the_same_reads(tiny_world: Path) -> None:
    manifest = Manifest.read(tiny_world)
    days = range(manifest.first_day, manifest.last_day)
    np.testing.assert_array_equal(train_item_counts(tiny_world, days, manifest), train_item_counts(tiny_world, days))
    np.testing.assert_array_equal(new_item_mask(tiny_world, manifest.last_day, manifest),
                                  new_item_mask(tiny_world, manifest.last_day))


def test_unseen_item_ids_against_sets(tiny_world: Path) -> None:
    manifest = Manifest.read(tiny_world)
    seen, shown = set(), set()
    for path in table_files(tiny_world, "impressions"):
        for row in pq.read_table(path, columns=["day", "item_id"]).to_pylist():
            if manifest.first_day <= row["day"] < manifest.last_day:
                seen.add(row["item_id"])
            elif row["day"] == manifest.last_day:
                shown.add(row["item_id"])
    fresh = shown - seen
    rows = sorted(fresh)[len(fresh) // 2] if fresh else 1
    got = unseen_item_ids(tiny_world, manifest.last_day, range(manifest.first_day, manifest.last_day), rows, manifest)
    assert got == (len(fresh), sum(i >= rows for i in fresh))
    assert got[0] > 0
