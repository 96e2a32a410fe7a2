"""The item vector table: ``item_vectors.parquet`` plus ``vectors.json``.

What pre-training exports and the CTR side loads into its frozen TorchRec
table: one unit-norm float32 vector of width D per item.

Example::

    >>> import tempfile, pathlib, numpy as np
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> v = np.eye(3, 4, dtype=np.float32)
    >>> write_item_vectors(d / VECTORS_FILE, np.array([5, 6, 7]), v, dim=4)
    >>> ids, got = read_item_vectors(d / VECTORS_FILE)
    >>> ids.tolist(), got.shape
    ([5, 6, 7], (3, 4))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

VECTORS_FILE = "item_vectors.parquet"
VECTORS_MANIFEST = "vectors.json"
UNIT_TOL = 1e-3  # |norm - 1| allowed


def vectors_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("item_id", pa.int64(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def write_item_vectors(path: Path, item_ids: np.ndarray, vectors: np.ndarray, dim: int) -> None:
    """Writes the table after checking it; nothing is written on error.

    Raises:
        ValueError: vectors not of width ``dim`` (a mismatched D), rows that
            are not finite or not unit norm (naming the item), repeated IDs.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"{path}: vectors have shape {vectors.shape}, expected (N, {dim}) for D={dim}")
    if len(item_ids) != len(vectors):
        raise ValueError(f"{path}: {len(item_ids)} item IDs for {len(vectors)} vectors")
    bad = ~np.isfinite(vectors).all(axis=1) | (np.abs(np.linalg.norm(vectors, axis=1) - 1.0) > UNIT_TOL)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: item {item_ids[i]}: vector not finite or not unit norm ({vectors[i][:4]}...)")
    if len(np.unique(item_ids)) != len(item_ids):
        raise ValueError(f"{path}: repeated item IDs")
    table = pa.table(
        {"item_id": item_ids, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)},
        schema=vectors_schema(dim),
    )
    tmp = Path(path).with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_item_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids (N,) int64, vectors (N, D) float32) of a vector table."""
    table = pq.read_table(path)
    field = table.schema.field("vector") if "vector" in table.column_names else None
    if field is None or "item_id" not in table.column_names:
        raise ValueError(f"{path}: expected columns item_id and vector, got {table.column_names}")
    if not pa.types.is_fixed_size_list(field.type):
        raise ValueError(f"{path}: column 'vector' is {field.type}, expected fixed_size_list<float>[D]")
    dim = field.type.list_size
    values = table["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return table["item_id"].to_numpy().astype(np.int64), values.astype(np.float32).reshape(-1, dim)
