"""Counts read from a dataset's Parquet tables that evaluation needs: training impressions per item, new items.

Notation: ``I``: the items of ``items/`` (:func:`item_index`).

They read only the columns they need, table file by table file, and refuse
an item with no row in ``items/``. Per-item arrays are indexed by the
item's position among the sorted item IDs, so raw 64-bit IDs work. ``recsys.eval.metrics`` turns
them into item buckets and subsets; it reads no files itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recsys.data.row_groups import select_row_groups
from recsys.data.schema import Manifest, read_table_file, table_files

CREATED_DAY = "created_day"  # optional items column: the day an item was created (its new-item day)


def item_index(root: Path, manifest: Manifest | None = None) -> np.ndarray:
    """The dataset's item IDs, sorted: int64 array of shape (I,); position ``k`` is item ``index[k]``.

    Per-item arrays (:func:`train_item_counts`, :func:`new_item_mask`) are
    indexed by these positions, so raw 64-bit IDs cost what dense ones do. For
    a world whose items are ``0..I-1`` the position is the ID.

    Raises:
        ValueError: an item listed twice (naming the file).
    """
    manifest = manifest if manifest is not None else Manifest.read(root)
    key = manifest.features.item_key
    parts = [read_table_file(path, columns=[key]).column(0).to_numpy().astype(np.int64) for path in table_files(Path(root), "items")]
    ids = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    if len(ids) > 1 and bool((ids[1:] == ids[:-1]).any()):
        raise ValueError(f"{root}/items: {key} {int(ids[1:][ids[1:] == ids[:-1]][0])} appears more than once")
    return ids


def item_positions(index: np.ndarray, item_ids: np.ndarray, where: str) -> np.ndarray:
    """Positions (N,) in ``index`` (:func:`item_index`) of ``item_ids`` (N,); ValueError naming ``where`` for an unknown item."""
    at = np.searchsorted(index, item_ids)
    found = at < len(index)
    found[found] = index[at[found]] == item_ids[found]
    if not found.all():
        raise ValueError(f"{where}: item {int(item_ids[~found][0])} has no row in items/")
    return at


def train_item_counts(root: Path, days: Iterable[int], manifest: Manifest | None = None) -> np.ndarray:
    """Training impressions per item, from the day and item columns of the impressions.

    Args:
        root (Path): dataset directory (``manifest.json``, ``items/``, ``impressions/``).
        days (Iterable[int]): the training days counted (e.g. ``range(first, test)``).
        manifest (Manifest | None): the dataset's manifest when the caller has
            it; ``None`` reads ``root/manifest.json``.

    Returns:
        np.ndarray: int64 counts, array of shape (I,), by position in :func:`item_index`.

    Raises:
        ValueError: an impression's item has no row in ``items/`` (naming the file).
    """
    manifest = manifest if manifest is not None else Manifest.read(root)
    spec = manifest.features
    index = item_index(root, manifest)
    wanted = np.fromiter(days, dtype=np.int64)
    counts = np.zeros(len(index), dtype=np.int64)
    for path in table_files(Path(root), "impressions"):
        t = read_table_file(path, columns=[spec.day, spec.item_key])
        items = t.column(spec.item_key).to_numpy()[np.isin(t.column(spec.day).to_numpy(), wanted)].astype(np.int64)
        counts += np.bincount(item_positions(index, items, str(path)), minlength=len(index))
    return counts


def new_item_mask(root: Path, day: int, manifest: Manifest | None = None) -> np.ndarray:
    """True for the items new on ``day``: created that day (an items ``created_day`` column), else first shown that day.

    Args:
        root (Path): dataset directory (``manifest.json``, ``items/``).
        day (int): the scored (test) day.
        manifest (Manifest | None): the dataset's manifest when the caller has
            it; ``None`` reads ``root/manifest.json``.

    Returns:
        np.ndarray: bool, array of shape (I,), by position in :func:`item_index`.

    Raises:
        ValueError: an item or impression names an item with no row (naming the file).
    """
    manifest = manifest if manifest is not None else Manifest.read(root)
    key = manifest.features.item_key
    index = item_index(root, manifest)
    out = np.zeros(len(index), dtype=bool)
    paths = table_files(Path(root), "items")
    if paths and CREATED_DAY not in pq.read_schema(paths[0]).names:
        shown = train_item_counts(root, [day], manifest) > 0
        return shown & ~(train_item_counts(root, range(manifest.first_day, day), manifest) > 0)
    for path in paths:
        t = read_table_file(path, columns=[key, CREATED_DAY])
        ids = t.column(key).to_numpy()[t.column(CREATED_DAY).to_numpy() == day].astype(np.int64)
        out[item_positions(index, ids, str(path))] = True
    return out


def unseen_items(root: Path, day: int, seen_days: Iterable[int], manifest: Manifest) -> np.ndarray:
    """The item IDs shown on ``day`` that no day of ``seen_days`` showed, sorted (int64 (K,); raw or identity IDs).

    Raises:
        ValueError: as :func:`item_index` and :func:`train_item_counts` (an unreadable or inconsistent table).
    """
    seen = train_item_counts(root, seen_days, manifest) > 0
    return item_index(root, manifest)[(train_item_counts(root, [day], manifest) > 0) & ~seen]


def unseen_item_ids(
    root: Path, day: int, seen_days: Iterable[int], rows: int, manifest: Manifest | None = None
) -> tuple[int, int]:
    """Item IDs shown on ``day`` that no day of ``seen_days`` showed, and how many of them are ``>= rows``.

    Args:
        root (Path): dataset directory.
        day (int): the day whose impressions are checked.
        seen_days (Iterable[int]): the days already trained on.
        rows (int): rows of the item table (identity IDs at or beyond it are hashed;
            raw IDs of a managed table are admitted instead, and count 0 here).
        manifest (Manifest | None): the dataset's manifest, or ``None`` to read it.

    Returns:
        tuple[int, int]: the number of unseen item IDs, and how many of them are ``>= rows``.
    """
    manifest = manifest if manifest is not None else Manifest.read(root)
    fresh = unseen_items(root, day, seen_days, manifest)
    spec = manifest.features
    identity = spec.table(spec.table_of(spec.item_key)).ids == "identity"  # raw IDs are admitted, not hashed
    return int(len(fresh)), int((fresh >= rows).sum()) if identity else 0


def day_rows(world: Path, day: int, manifest: Manifest | None = None) -> int:
    """Impressions of ``day`` in ``world/impressions``, counted by the plan ``ImpressionReader`` reads an epoch by.

    The row groups are selected as the reader selects them
    (``recsys.data.row_groups``): from the Parquet metadata where the ``day``
    statistics decide, reading only the ``day`` column of a row group that
    straddles ``day`` (or has no statistics). No other column is read.

    Args:
        world (Path): dataset directory (``manifest.json``, ``impressions/``).
        day (int): the impression day counted.
        manifest (Manifest | None): the dataset's manifest when the caller has
            it; ``None`` reads ``world/manifest.json``.

    Returns:
        int: the number of impressions (rows) with that day; 0 for a day without any.

    Raises:
        ValueError: an impressions file without the manifest's day column (naming the file).
    """
    manifest = manifest if manifest is not None else Manifest.read(world)
    files = table_files(Path(world), "impressions")
    return sum(g.rows for g in select_row_groups(files, manifest.features.day, np.array([day], dtype=np.int64)))


def check_day_has_impressions(world: Path, day: int, manifest: Manifest, what: str) -> int:
    """The impressions of ``day`` (:func:`day_rows`), refusing a day without any.

    Args:
        world (Path): dataset directory.
        day (int): the day a job is about to read.
        manifest (Manifest): the dataset's manifest.
        what (str): what the job would do with the day, for the message (``"evaluate"``, ``"retrain on"``).

    Returns:
        int: the day's impressions, at least 1.

    Raises:
        ValueError: the day has no impressions, naming the day and the impressions folder, e.g.
            ``--day 4: day 4 has no impressions in w/impressions; nothing to evaluate``.
    """
    n = day_rows(world, day, manifest)
    if n == 0:
        raise ValueError(f"--day {day}: day {day} has no impressions in {Path(world) / 'impressions'}; nothing to {what}")
    return n
