"""A summary of a dataset read from its public files only (never ``truth/``).

Example::

    >>> import tempfile, pathlib
    >>> from recsys.world.generate import generate_world
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "w"
    >>> _ = generate_world(out, preset="tiny", seed=0)
    >>> s = summarize(out)
    >>> 0.0 < s["ctr"] < 1.0 and s["impressions"] == 20000
    True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.schema import Manifest, table_files


def summarize(directory: Path) -> dict[str, float | int]:
    """Counts, click rate, cold-start share and popularity tail of a dataset.

    Item IDs may be dense or raw (any int64): items are looked up by their row
    in ``items/``. A dataset without ``searches/`` counts 0 searches.

    Raises:
        ValueError: an impression names an item not in ``items/``.
    """
    m = Manifest.read(directory)
    parts = [pq.read_table(f, columns=["item_id", "created_day"]) for f in table_files(directory, "items")]
    ids = np.concatenate([t["item_id"].to_numpy() for t in parts]) if parts else np.zeros(0, np.int64)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]  # sorted: an item's row is its searchsorted index
    created = np.concatenate([t["created_day"].to_numpy() for t in parts])[order] if parts else np.zeros(0, np.int64)
    freq = np.zeros(len(ids), dtype=np.int64)
    clicks = rows = test_rows = test_new = hist_total = 0
    for f in table_files(directory, "impressions"):
        for batch in pq.ParquetFile(f).iter_batches(columns=["day", "item_id", "history_item_ids", "label"]):
            day = batch.column("day").to_numpy()
            item = batch.column("item_id").to_numpy()
            rows += len(day)
            clicks += float(batch.column("label").to_numpy().sum())
            hist_total += int(pc.sum(pc.list_value_length(batch.column("history_item_ids"))).as_py() or 0)
            test = day == m.test_day
            test_rows += int(test.sum())
            row = _rows(ids, item, f)
            test_new += int((created[row[test]] == m.test_day).sum())
            np.add.at(freq, row[~test], 1)
    seen = np.sort(freq[freq > 0])[::-1]
    top = max(1, len(seen) // 100)
    return {
        "items": m.counts["items"],
        "users": m.counts["users"],
        "impressions": rows,
        "searches": m.counts.get("searches", 0),
        "days": m.last_day - m.first_day + 1,
        "ctr": clicks / max(rows, 1),
        "mean_history_len": hist_total / max(rows, 1),
        "test_day_new_item_share": test_new / max(test_rows, 1),
        "train_items_seen": int(len(seen)),
        "top1pct_item_impression_share": float(seen[:top].sum() / max(seen.sum(), 1)),
        "items_created_on_test_day": int((created == m.test_day).sum()),
    }


def _rows(ids: np.ndarray, item: np.ndarray, where: Path) -> np.ndarray:
    """Rows of ``item`` in the sorted item IDs ``ids`` (both int64, any values)."""
    row = np.minimum(np.searchsorted(ids, item), max(len(ids) - 1, 0))
    bad = ids[row] != item if len(ids) else np.ones(len(item), dtype=bool)
    if bad.any():
        raise ValueError(f"{where}: item_id {int(item[bad][0])} is not in items/")
    return row


def format_summary(s: dict[str, float | int]) -> str:
    """One aligned line per entry."""
    width = max(len(k) for k in s)
    return "\n".join(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in s.items())
