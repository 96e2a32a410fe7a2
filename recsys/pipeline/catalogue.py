"""The item vector table as of a day: the vectors of the items created before it.

Pre-training embeds the whole catalogue; the CTR side is trained (and
serves) with the items that existed when it was trained, while items
created on the test day get their vectors from the real-time embedder
(Triton, into the vector store). This writes that "as of" table.

Example::

    >>> import tempfile, numpy as np, pyarrow as pa, pyarrow.parquet as pq
    >>> from recsys.data.vectors import write_item_vectors
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "world" / "items").mkdir(parents=True)
    >>> Manifest(format_version=2, first_day=3, last_day=9).write(root / "world")
    >>> pq.write_table(pa.table({"item_id": [0, 1, 2], "created_day": pa.array([3, 5, 9], pa.int32())}),
    ...                root / "world" / "items" / "part-00000.parquet")
    >>> (root / "run").mkdir()
    >>> write_item_vectors(root / "run" / VECTORS_FILE, np.arange(3), np.eye(3, dtype=np.float32), dim=3)
    >>> write_catalogue(root / "world", root / "run", 9, root / "cat")
    2
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.schema import Manifest, read_table_files, table_files
from recsys.data.stats import CREATED_DAY, item_index, train_item_counts
from recsys.data.vectors import VECTORS_FILE, VECTORS_MANIFEST, load_vectors, write_item_vectors


def write_catalogue(world: Path, pretrain_run: Path, before_day: int, out: Path) -> int:
    """Writes ``out/item_vectors.parquet`` with the run's vectors of items created before ``before_day``.

    Args:
        world (Path): the dataset whose ``items`` give each item's creation day.
        pretrain_run (Path): a pre-training run folder, or its ``item_vectors.parquet``.
        before_day (int): items created on this day or later are left out.
        out (Path): the folder to write ``item_vectors.parquet`` and ``vectors.json`` to.

    Returns:
        int: items kept.
    """
    item_ids, old = _items_before(Path(world), before_day)
    source = load_vectors(pretrain_run)
    ids, vectors = source.item_ids, source.vectors
    pos = np.minimum(np.searchsorted(item_ids, ids), len(item_ids) - 1)
    keep = (item_ids[pos] == ids) & old[pos]  # items unknown to the world are dropped
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_item_vectors(out / VECTORS_FILE, ids[keep], vectors[keep], dim=vectors.shape[1])
    meta = dict(source.manifest)
    meta.update(items=int(keep.sum()), created_before_day=int(before_day), source=str(pretrain_run))
    (out / VECTORS_MANIFEST).write_text(json.dumps(meta, indent=2))
    return int(keep.sum())


def _items_before(world: Path, day: int) -> tuple[np.ndarray, np.ndarray]:
    """The sorted item IDs (I,) and which of them exist before ``day``: created before it (an items
    ``created_day`` column), else shown on an earlier day or on none of ``day`` and after
    (``recsys.data.stats.new_item_mask`` decides "new" the same way for evaluation)."""
    manifest = Manifest.read(world)
    index = item_index(world, manifest)
    files = table_files(world, "items")
    if files and CREATED_DAY in pq.read_schema(files[0]).names:
        items = read_table_files(files, columns=[manifest.features.item_key, CREATED_DAY], ids=[manifest.features.item_key])
        order = np.argsort(items[manifest.features.item_key].to_numpy())
        return index, items[CREATED_DAY].to_numpy()[order] < day
    later = train_item_counts(world, range(day, manifest.last_day + 1), manifest) > 0
    earlier = train_item_counts(world, range(manifest.first_day, day), manifest) > 0
    return index, earlier | ~later
