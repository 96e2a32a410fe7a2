"""Counts read from a dataset's Parquet tables that evaluation needs: training impressions per item, new items.

Notation: ``I``: the item ID range (``manifest.id_ranges["item_id"]``).

Both read only the columns they need, table file by table file, and refuse
an item ID outside the manifest's range. ``recsys.eval.metrics`` turns
them into item buckets and subsets; it reads no files itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recsys.data.schema import Manifest, table_files


def _num_items(root: Path, manifest: Manifest | None) -> int:
    return (manifest if manifest is not None else Manifest.read(root)).id_ranges["item_id"]


def train_item_counts(root: Path, days: Iterable[int], manifest: Manifest | None = None) -> np.ndarray:
    """Training impressions per item ID, from the ``day`` and ``item_id`` columns of the impressions.

    Args:
        root (Path): dataset directory (``manifest.json``, ``impressions/``).
        days (Iterable[int]): the training days counted (e.g. ``range(first, test)``).
        manifest (Manifest | None): the dataset's manifest when the caller has
            it; ``None`` reads ``root/manifest.json``.

    Returns:
        np.ndarray: int64 counts, array of shape (I,), indexed by item ID.

    Raises:
        ValueError: an impression's ``item_id`` lies outside ``[0, I)``.
    """
    I = _num_items(root, manifest)
    wanted = np.fromiter(days, dtype=np.int64)
    counts = np.zeros(I, dtype=np.int64)
    for path in table_files(Path(root), "impressions"):
        t = pq.read_table(path, columns=["day", "item_id"])
        items = t.column("item_id").to_numpy()[np.isin(t.column("day").to_numpy(), wanted)]
        if items.size and (items.min() < 0 or items.max() >= I):
            raise ValueError(f"{path}: item_id outside the manifest's range [0, {I})")
        counts += np.bincount(items, minlength=I)
    return counts


def new_item_mask(root: Path, day: int, manifest: Manifest | None = None) -> np.ndarray:
    """True for the items created on ``day``, from the ``item_id`` and ``created_day`` columns of the items.

    Args:
        root (Path): dataset directory (``manifest.json``, ``items/``).
        day (int): the scored (test) day.
        manifest (Manifest | None): the dataset's manifest when the caller has
            it; ``None`` reads ``root/manifest.json``.

    Returns:
        np.ndarray: bool per item ID, array of shape (I,).

    Raises:
        ValueError: an item's ``item_id`` lies outside ``[0, I)``.
    """
    I = _num_items(root, manifest)
    out = np.zeros(I, dtype=bool)
    for path in table_files(Path(root), "items"):
        t = pq.read_table(path, columns=["item_id", "created_day"])
        ids = t.column("item_id").to_numpy()[t.column("created_day").to_numpy() == day]
        if ids.size and (ids.min() < 0 or ids.max() >= I):
            raise ValueError(f"{path}: item_id outside the manifest's range [0, {I})")
        out[ids] = True
    return out


def unseen_item_ids(
    root: Path, day: int, seen_days: Iterable[int], rows: int, manifest: Manifest | None = None
) -> tuple[int, int]:
    """Item IDs shown on ``day`` that no day of ``seen_days`` showed, and how many of them are ``>= rows``.

    Args:
        root (Path): dataset directory.
        day (int): the day whose impressions are checked.
        seen_days (Iterable[int]): the days already trained on.
        rows (int): rows of the item table (IDs at or beyond it are hashed).
        manifest (Manifest | None): the dataset's manifest, or ``None`` to read it.

    Returns:
        tuple[int, int]: the number of unseen item IDs, and how many of them are ``>= rows``.
    """
    seen = train_item_counts(root, seen_days, manifest) > 0
    today = np.flatnonzero(train_item_counts(root, [day], manifest) > 0)
    fresh = today[(today >= len(seen)) | ~seen[np.minimum(today, len(seen) - 1)]]
    return int(len(fresh)), int((fresh >= rows).sum())
