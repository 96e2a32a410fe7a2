"""The generator's true click probability as a model: the ceiling a ranking model can reach on a day.

A generated world has ``truth/impressions/`` with one file per
``impressions/`` file, at the same relative path (sub-folders included) and
with the same rows (row-aligned), holding the
hidden ``p_click`` of each impression. Scored with the same metrics and
subsets as the models, it gives the AUC and GAUC the labels allow; a
model's **gap** is its metric minus the truth's (negative: short of it).
Only evaluation reports read ``truth/`` (README, "The public data format").

Example::

    >>> import tempfile
    >>> truth_report(Path(tempfile.mkdtemp()), 3, np.zeros(1, np.int8)) is None  # a world without truth/
    True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recsys.data.schema import TRUTH_DIR, read_table_file, table_files
from recsys.data.stats import item_positions
from recsys.eval.metrics import evaluation_report

TRUE_PROBABILITY = "p_click"  # the column of truth/impressions/ scored here


def truth_report(
    world: Path, day: int, buckets: np.ndarray, new_items: np.ndarray | None = None, index: np.ndarray | None = None
) -> dict[str, dict[str, float]] | None:
    """``evaluation_report`` of the true click probability on ``day``, or ``None`` without ``truth/``.

    Args:
        world (Path): the dataset directory.
        day (int): the scored day.
        buckets (np.ndarray): bucket per item ID (``recsys.eval.metrics.item_buckets``), shape (I,).
        new_items (np.ndarray | None): bool per item, shape (I,).
        index (np.ndarray | None): the sorted item IDs the arrays are indexed by
            (``recsys.data.stats.item_index``); ``None``: by item ID.

    Returns:
        dict[str, dict[str, float]] | None: metrics of ``all``, each bucket
        and ``new_items``, as for a model.
    """
    folder = Path(world) / TRUTH_DIR / "impressions"
    if not folder.is_dir():
        return None
    cols: dict[str, list[np.ndarray]] = {"p": [], "label": [], "user_id": [], "item_id": []}
    impressions = Path(world) / "impressions"
    for path in table_files(Path(world), "impressions"):
        twin = folder / path.relative_to(impressions)  # the same relative path, sub-folders included
        if not twin.is_file():
            raise FileNotFoundError(f"{twin}: missing; truth/impressions/ must mirror impressions/ file by file")
        t = read_table_file(path, ["day", "user_id", "item_id", "label"])
        p = read_table_file(twin, [TRUE_PROBABILITY]).column(0).to_numpy()
        if len(p) != t.num_rows:
            raise ValueError(f"{twin}: {len(p)} rows, but {path} has {t.num_rows}; truth must be row-aligned")
        keep = t.column("day").to_numpy() == day
        cols["p"].append(p[keep].astype(np.float64))
        for name in ("label", "user_id", "item_id"):
            cols[name].append(t.column(name).to_numpy()[keep])
    p, label, user, item = (torch.from_numpy(np.concatenate(cols[k])) for k in ("p", "label", "user_id", "item_id"))
    if index is not None:
        item = torch.from_numpy(item_positions(index, item.numpy(), str(folder)))
    return evaluation_report(p, label.double(), user, item, buckets, new_items)
