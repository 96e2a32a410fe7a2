"""``recsys.train.setup``: items without a vector, and vectors without an item, counted alike for item IDs as rows
and for raw item IDs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recsys.data.schema import Manifest
from recsys.data.vectors import ItemVectors
from recsys.models.mm_table import MultimodalArch
from recsys.train.setup import fill_mm_table, vectors_without_item

D = 4


def _vectors(ids: np.ndarray, path: Path) -> ItemVectors:
    v = np.random.default_rng(1).standard_normal((len(ids), D)).astype(np.float32)
    return ItemVectors(item_ids=ids.astype(np.int64), vectors=v / np.linalg.norm(v, axis=1, keepdims=True), path=path,
                       manifest={})


def test_items_without_vector_counted_for_raw_and_identity_item_ids(unlike_log: Path, tiny_world: Path,
                                                                      tmp_path: Path) -> None:
    for world, raw in ((unlike_log, True), (tiny_world, False)):
        m = Manifest.read(world)
        key = m.features.item_key
        items = pq.read_table(world / "items", columns=[key])[key].to_numpy()  # the items the world lists
        rng = np.random.default_rng(0)
        lacking = rng.choice(items, size=7, replace=False)  # 7 of them get no vector
        given = items[~np.isin(items, lacking)]
        if raw:  # plus a vector of an item the world does not list: takes a row, lacks nothing
            given = np.r_[given, int(items.max()) + 1]
            arch = MultimodalArch(num_items=len(given) + 1, dim=D, raw_ids=True)
        else:
            arch = MultimodalArch(num_items=m.id_ranges[key], dim=D)
        expected = len(np.setdiff1d(items, given))
        assert expected == 7
        assert fill_mm_table(arch, _vectors(given, tmp_path / "v.parquet"), m, world) == expected, world
        assert int(arch.row_missing.sum()) == (1 if raw else expected)  # raw: only the shared missing row


def test_vectors_of_items_the_world_does_not_list_are_counted(unlike_log: Path, tiny_world: Path, tmp_path: Path) -> None:
    """A catalogue's vectors beyond the log (raw: IDs no item has; identity: IDs of the range no item uses), counted
    against a plain set difference, duplicates of a listed item not counted."""
    for world in (unlike_log, tiny_world):
        m = Manifest.read(world)
        key = m.features.item_key
        items = pq.read_table(world / "items", columns=[key])[key].to_numpy()
        unlisted = np.setdiff1d(np.arange(int(items.min()), int(items.min()) + 5 * len(items)), items)[:11]
        given = np.r_[items[::2], unlisted]
        expected = len(set(given.tolist()) - set(items.tolist()))
        assert expected == 11
        assert vectors_without_item(_vectors(given, tmp_path / "v.parquet"), m, world) == expected, world
        assert vectors_without_item(_vectors(items, tmp_path / "v.parquet"), m, world) == 0
