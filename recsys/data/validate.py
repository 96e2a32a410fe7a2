"""``mmctr validate``: checks a dataset against the public format.

Every table file is checked batch by batch (bounded memory, vectorised with
pyarrow and numpy); the first fault raises :class:`DatasetError` naming the
file, the column and the row (0-based, within that file)::

    impressions/day-0013-part-00000.parquet: column 'label', row 17: value 0.5, expected 0.0 or 1.0

Checks: manifest present and valid; each table has files; every column of
``schema.TABLES`` present with its type; no nulls; every ID within
``[0, manifest.id_ranges[kind])``; impression users and items, history items
and search items known (present in ``users/`` or ``items/``); labels 0 or 1
(no NaN); histories no longer than ``max_history_len``; every image decodes;
row counts equal the manifest's; no item or user listed twice.

Example::

    >>> import tempfile, pathlib
    >>> from recsys.world.generate import generate_world
    >>> world = pathlib.Path(tempfile.mkdtemp()) / "w"
    >>> _ = generate_world(world, "tiny", 0)
    >>> validate_dataset(world)["impressions"]
    20000
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from recsys.data.schema import ID_COLUMNS, IMAGE_COLUMNS, TABLES, Manifest, table_files

BATCH_ROWS = 65_536
# Types accepted for a schema type (the same values, another Arrow layout).
_EQUIVALENT = {
    pa.string(): (pa.string(), pa.large_string()),
    pa.binary(): (pa.binary(), pa.large_binary()),
    pa.list_(pa.int64()): (pa.list_(pa.int64()), pa.large_list(pa.int64())),
}
# Tables checked first so that later ones can be checked against their IDs.
_ORDER = ("users", "items", "impressions", "searches")
# ID kinds whose values must exist as rows of a table (kind -> table, key column).
_KNOWN = {"item_id": ("items", "item_id"), "user_id": ("users", "user_id")}


class DatasetError(ValueError):
    """A dataset that breaks the public format; the message names file, column and row."""


def _where(path: str, column: str, row: int, what: str) -> DatasetError:
    return DatasetError(f"{path}: column '{column}', row {row}: {what}")


def _flat(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, row of each value): lists flattened, scalars as they are."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        return arr.flatten().to_numpy(zero_copy_only=False), pc.list_parent_indices(arr).to_numpy()
    return arr.to_numpy(zero_copy_only=False), np.arange(len(arr))


def _decodes(blob: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(blob)) as im:
            im.load()
            return im.size[0] > 0 and im.size[1] > 0
    except Exception:  # noqa: BLE001 - any decoder failure means "undecodable"
        return False


class _Checker:
    def __init__(self, root: Path, manifest: Manifest, workers: int) -> None:
        self.root, self.m = root, manifest
        self.known: dict[str, np.ndarray] = {}  # ID kind -> presence mask
        self.pool = ThreadPoolExecutor(max(1, workers))

    def schema(self, path: str, table: str, schema: pa.Schema, got: pa.Schema) -> None:
        for field in schema:
            if field.name not in got.names:
                raise DatasetError(f"{path}: missing column '{field.name}' (expected {field.type})")
            t = got.field(field.name).type
            if t not in _EQUIVALENT.get(field.type, (field.type,)):
                raise DatasetError(f"{path}: column '{field.name}' has type {t}, expected {field.type}")

    def batch(self, path: str, table: str, b: pa.RecordBatch, offset: int) -> None:
        for name in TABLES[table].names:
            col = b.column(name)
            if col.null_count:
                row = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
                raise _where(path, name, offset + row, "null value")
        for name, kind in ID_COLUMNS[table].items():
            values, rows = _flat(b.column(name))
            size = self.m.id_ranges.get(kind)
            if size is None:
                raise DatasetError(f"manifest.json: id_ranges has no '{kind}' (needed by {path} column '{name}')")
            bad = (values < 0) | (values >= size)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise _where(path, name, offset + int(rows[i]), f"ID {values[i]} outside [0, {size})")
            if kind in self.known and not (table == _KNOWN[kind][0] and name == _KNOWN[kind][1]):
                unknown = ~self.known[kind][values]
                if unknown.any():
                    i = int(np.flatnonzero(unknown)[0])
                    src = _KNOWN[kind][0]
                    raise _where(path, name, offset + int(rows[i]), f"unknown {kind} {values[i]} (not in {src}/)")
        if table == "impressions":
            label = b.column("label").to_numpy(zero_copy_only=False)
            bad = ~((label == 0.0) | (label == 1.0))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise _where(path, "label", offset + i, f"value {label[i]}, expected 0.0 or 1.0")
            lengths = pc.list_value_length(b.column("history_item_ids")).to_numpy(zero_copy_only=False)
            long = lengths > self.m.max_history_len
            if long.any():
                i = int(np.flatnonzero(long)[0])
                raise _where(
                    path, "history_item_ids", offset + i, f"length {lengths[i]} > max_history_len {self.m.max_history_len}"
                )
        for name in IMAGE_COLUMNS.get(table, ()):
            blobs = b.column(name).to_pylist()
            ok = list(self.pool.map(_decodes, blobs, chunksize=64))
            if not all(ok):
                raise _where(path, name, offset + ok.index(False), "image does not decode")

    def remember(self, path: str, table: str, b: pa.RecordBatch, offset: int) -> None:
        for kind, (src, key) in _KNOWN.items():
            if src == table:
                mask = self.known.setdefault(kind, np.zeros(self.m.id_ranges[kind], dtype=bool))
                ids = b.column(key).to_numpy(zero_copy_only=False)
                _, first = np.unique(ids, return_index=True)
                repeated = np.ones(len(ids), dtype=bool)
                repeated[first] = False
                dup = mask[ids] | repeated
                if dup.any():
                    i = int(np.flatnonzero(dup)[0])
                    raise _where(path, key, offset + i, f"{kind} {ids[i]} appears more than once")
                mask[ids] = True


def validate_dataset(directory: Path, *, progress: bool = False, workers: int = 2) -> dict[str, int]:
    """Checks ``directory``; returns rows per table, raises :class:`DatasetError` on the first fault."""
    root = Path(directory)
    try:
        manifest = Manifest.read(root)
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise DatasetError(str(e)) from e
    files = {t: table_files(root, t) for t in _ORDER}
    for t, fs in files.items():
        if not fs:
            raise DatasetError(f"{t}/: no Parquet files")
    checker = _Checker(root, manifest, workers)
    counts: dict[str, int] = {}
    bar = tqdm(total=sum(len(f) for f in files.values()), desc="validate", disable=not progress, unit="file")
    try:
        for table in _ORDER:
            counts[table] = 0
            for f in files[table]:
                path = str(f.relative_to(root))
                try:
                    pf = pq.ParquetFile(f)
                except Exception as e:  # noqa: BLE001 - not Parquet at all
                    raise DatasetError(f"{path}: not a readable Parquet file ({e})") from e
                checker.schema(path, table, TABLES[table], pf.schema_arrow)
                offset = 0
                for b in pf.iter_batches(batch_size=BATCH_ROWS, columns=TABLES[table].names):
                    checker.batch(path, table, b, offset)
                    checker.remember(path, table, b, offset)
                    offset += b.num_rows
                counts[table] += offset
                bar.update(1)
        for table, n in counts.items():  # last: a content fault is the more useful message
            if manifest.counts.get(table) != n:
                raise DatasetError(f"{table}/: {n} rows, manifest.json counts says {manifest.counts.get(table)}")
    finally:
        bar.close()
        checker.pool.shutdown()
    return counts
