"""A summary of a dataset read from its public files only (never ``truth/``).

Columns are named by the dataset's feature spec (``manifest.json``'s
``features``: ``item_key``, ``day``, ``label``, ``history``), so a log of any
column names is summarized as the generated world is. A figure that needs a
column the log does not have (an items ``created_day``, a history) is left
out, and the ``skipped`` entry says which and why.

Example::

    >>> import tempfile, pathlib
    >>> from recsys.world.generate import generate_world
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "w"
    >>> _ = generate_world(out, preset="tiny", seed=0)
    >>> s = summarize(out)
    >>> 0.0 < s["ctr"] < 1.0 and s["impressions"] == 20000 and "skipped" not in s
    True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.days import split_days
from recsys.data.layout import layout
from recsys.data.schema import Manifest, read_table_file, table_files
from recsys.data.side import type_fault
from recsys.data.stats import CREATED_DAY, item_index, item_positions

NEW_ITEM_FIGURES = ("test_day_new_item_share", "items_created_on_test_day")  # need items' created_day


def summarize(directory: Path) -> dict[str, float | int | str]:
    """Counts, click rate, cold-start share and popularity tail of a dataset.

    The impression columns are the spec's (``features.item_key``, ``day``,
    ``label``, ``history``); item IDs may be dense or raw (any int64): items
    are looked up by their position among the sorted item IDs
    (``recsys.data.stats.item_index``). ``items``, ``users`` and ``searches``
    count the rows of those tables' files (0 for a table without files).

    ``train_items_seen`` and ``top1pct_item_impression_share`` count the
    training days of ``mmctr train`` (``recsys.data.days.split_days``:
    ``first_day`` .. ``test_day - 1``), never the test day nor the days after
    it. An impressions column of a type ``mmctr validate`` refuses (a Parquet
    DATE day) is refused in its words (``side.type_fault``).

    The new-item figures (``NEW_ITEM_FIGURES``) need an items ``created_day``
    column in every items file, and ``mean_history_len`` a history
    (``features.history``); without them those figures are left out and the
    entry ``skipped`` names them and the missing column.

    Raises:
        ValueError: naming the file: an impression names an item not in
            ``items/``, an item is listed twice, or a file lacks a column the
            spec names or holds it as a type ``mmctr validate`` refuses.
    """
    root = Path(directory)
    m = Manifest.read(root)
    spec = m.features
    try:
        train_days = np.asarray(split_days(m).train, dtype=np.int64)
    except ValueError:  # test_day == first_day: no day before it, nothing `mmctr train` could train on
        train_days = np.zeros(0, dtype=np.int64)
    item_files = table_files(root, "items")
    for f in item_files:
        _need(f, [spec.item_key], "items")
    ids = item_index(root, m)  # sorted int64; an item's position is its row in the per-item arrays
    has_created = bool(item_files) and all(CREATED_DAY in pq.read_schema(f).names for f in item_files)
    created = np.zeros(len(ids), dtype=np.int64)
    for f in item_files if has_created else ():
        t = read_table_file(f, [spec.item_key, CREATED_DAY])
        key = t.column(spec.item_key).to_numpy().astype(np.int64)
        created[item_positions(ids, key, str(f))] = t.column(CREATED_DAY).to_numpy()
    columns = [spec.day, spec.item_key, spec.label, *([spec.history] if spec.history is not None else [])]
    freq = np.zeros(len(ids), dtype=np.int64)
    clicks = 0.0
    rows = test_rows = test_new = hist_total = 0
    typed = [c for c in layout(spec, ("impressions",))["impressions"] if c.name in columns]
    for f in table_files(root, "impressions"):
        _need(f, columns, "impressions")
        schema = pq.read_schema(f)
        for c in typed:
            fault = type_fault(c, schema)
            if fault is not None:
                raise ValueError(f"{f}: {fault}")
        for batch in pq.ParquetFile(f).iter_batches(columns=columns):
            day = batch.column(spec.day).to_numpy()
            item = batch.column(spec.item_key).to_numpy().astype(np.int64)
            rows += len(day)
            clicks += float(batch.column(spec.label).to_numpy(zero_copy_only=False).sum())  # a bool label too
            if spec.history is not None:
                hist_total += int(pc.sum(pc.list_value_length(batch.column(spec.history))).as_py() or 0)
            test = day == m.test_day
            test_rows += int(test.sum())
            row = item_positions(ids, item, str(f))
            test_new += int((created[row[test]] == m.test_day).sum())
            np.add.at(freq, row[np.isin(day, train_days)], 1)
    seen = np.sort(freq[freq > 0])[::-1]
    top = max(1, len(seen) // 100)
    out: dict[str, float | int | str] = {
        "items": int(len(ids)),
        "users": _rows(root, "users"),
        "impressions": rows,
        "searches": _rows(root, "searches"),
        "days": m.last_day - m.first_day + 1,
        "ctr": clicks / max(rows, 1),
        "mean_history_len": hist_total / max(rows, 1),
        "test_day_new_item_share": test_new / max(test_rows, 1),
        "train_items_seen": int(len(seen)),
        "top1pct_item_impression_share": float(seen[:top].sum() / max(seen.sum(), 1)),
        "items_created_on_test_day": int((created == m.test_day).sum()),
    }
    skipped = []
    if not has_created:
        skipped.append(f"{', '.join(NEW_ITEM_FIGURES)} (items/ has no {CREATED_DAY} column)")
        for name in NEW_ITEM_FIGURES:
            del out[name]
    if spec.history is None:
        skipped.append("mean_history_len (no history: features.history is null)")
        del out["mean_history_len"]
    if skipped:
        out["skipped"] = "; ".join(skipped)
    return out


def _need(path: Path, columns: list[str], table: str) -> None:
    """ValueError naming ``path`` if it lacks one of ``columns`` (named by the manifest's feature spec)."""
    missing = [c for c in columns if c not in pq.read_schema(path).names]
    if missing:
        raise ValueError(
            f"{path}: no column {missing[0]!r}, which the feature spec names for {table}/ "
            f"(manifest.json 'features'); `mmctr validate` checks every file"
        )


def _rows(root: Path, table: str) -> int:
    """Rows of ``table``'s files (their footers; 0 without files)."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in table_files(root, table))


def format_summary(s: dict[str, float | int | str]) -> str:
    """One aligned line per entry."""
    width = max(len(k) for k in s)
    return "\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in s.items())
