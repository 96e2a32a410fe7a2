"""``mmctr validate``: checks a dataset against the public format of ``schema.py``.

The first fault raises :class:`DatasetError` naming the file (relative to the
dataset directory), the column and the row (0-based, within that file)::

    impressions/day-0013-part-00000.parquet: column 'label', row 17: value 0.5, expected 0.0 or 1.0

Checks, in order:

1. ``manifest.json`` present and valid, with a count for every table, a
   range for every ID kind of ``schema.ID_COLUMNS`` and an ``image_size`` >= 1.
2. From Parquet footers only (no data read): every table directory has files;
   every column of ``schema.TABLES`` is present with its type (``string`` may
   be ``large_string``, ``binary`` ``large_binary``, ``list`` ``large_list``);
   rows per table equal ``manifest.counts``.
3. Contents, file by file and batch by batch (bounded memory, vectorised with
   pyarrow and numpy; only the content rules loop in Python, images on a
   thread pool):
   no nulls, in lists included; every ID column, lists included, within
   ``0 <= id < manifest.id_ranges[kind]``; no item or user listed twice; every
   user and item an impression or search names (histories included) has a row
   in ``users/`` or ``items/``; impression labels 0.0 or 1.0 (no NaN), days
   within ``[first_day, last_day]``, positions >= 0, histories no longer than
   ``max_history_len``; and the content rules every stage applies, in the
   same words (``recsys/data/content.py``, whose docstring lists each stage's
   refusals): every image of ``schema.IMAGE_COLUMNS`` decodes to RGB at
   exactly ``manifest.image_size`` px, and no text of
   ``content.TEXT_COLUMNS`` (titles, queries) is blank.

Memory grows with the rows, never with ``id_ranges``: the user and item IDs
seen so far are kept as sorted runs of unique IDs (:class:`_IdSet`, merged
like a binary counter), so IDs spread up to 2**62 cost what dense ones do.

Example::

    >>> import tempfile
    >>> import pyarrow.parquet as pq
    >>> from recsys.data.schema import USERS
    >>> root = Path(tempfile.mkdtemp())
    >>> for name, schema in TABLES.items():
    ...     (root / name).mkdir()
    ...     pq.write_table(schema.empty_table(), root / name / "part-00000.parquet")
    >>> kinds = {kind for columns in ID_COLUMNS.values() for kind in columns.values()}
    >>> counts = {"items": 0, "users": 2, "impressions": 0, "searches": 0}
    >>> Manifest(1, "doc", 0, counts, dict.fromkeys(kinds, 5), 0, 0, 20, 64).write(root)
    >>> users = {"user_id": [0, 1], "age_bucket": [2, 2], "gender": [0, 1], "city_id": [4, 3]}
    >>> pq.write_table(pa.table(users, schema=USERS), root / "users" / "part-00000.parquet")
    >>> validate_dataset(root)
    {'items': 0, 'users': 2, 'impressions': 0, 'searches': 0}
    >>> users["city_id"] = [4, 7]
    >>> pq.write_table(pa.table(users, schema=USERS), root / "users" / "part-00000.parquet")
    >>> try:
    ...     validate_dataset(root)
    ... except DatasetError as e:
    ...     print(e)
    users/part-00000.parquet: column 'city_id', row 1: ID 7 outside [0, 5)
    >>> import shutil; shutil.rmtree(root)
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from recsys.data.content import TEXT_COLUMNS, check_image, check_text, first_fault, where
from recsys.data.schema import ID_COLUMNS, IMAGE_COLUMNS, MANIFEST, TABLES, Manifest, table_files

BATCH_ROWS = 65_536  # rows per batch of a table without images
IMAGE_BATCH_ROWS = 2_048  # rows per batch of a table with images (~10 KB a PNG)
IMAGE_CHUNK = 128  # images checked per thread-pool task
# Types accepted for a schema type: the same values in another Arrow layout.
_EQUIVALENT = {pa.string(): (pa.string(), pa.large_string()), pa.binary(): (pa.binary(), pa.large_binary())}
# Users and items first: later tables are checked against their IDs.
_ORDER = ("users", "items", "impressions", "searches")
# ID kinds whose values must be rows of a table: kind -> (table, key column).
_KNOWN = {"user_id": ("users", "user_id"), "item_id": ("items", "item_id")}


class DatasetError(ValueError):
    """A dataset that breaks the public format; the message names file, column and row."""


def _where(path: str, column: str, row: int, what: str) -> DatasetError:
    return DatasetError(f"{where(path, column, row)}: {what}")


def _same_type(got: pa.DataType, want: pa.DataType) -> bool:
    if pa.types.is_list(want):  # any list layout, any element field name
        return (pa.types.is_list(got) or pa.types.is_large_list(got)) and _same_type(got.value_type, want.value_type)
    return got in _EQUIVALENT.get(want, (want,))


def _flat(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, row of each value): lists flattened, scalars as they are."""
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        rows = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
        return col.flatten().to_numpy(zero_copy_only=False), rows
    return col.to_numpy(zero_copy_only=False), np.arange(len(col))


def _image_fault(blobs: list[bytes | None], size: int) -> tuple[int, str] | None:
    """(index, message) of the first blob ``content.check_image`` refuses, or None."""
    return first_fault(blobs, lambda blob: check_image(blob, size))


def _read_manifest(root: Path) -> Manifest:
    """``Manifest.read`` with its faults as :class:`DatasetError`, plus the fields validation needs."""
    try:
        m = Manifest.read(root)
    except (OSError, ValueError, TypeError) as e:
        raise DatasetError(f"{MANIFEST}: {str(e).removeprefix(f'{root / MANIFEST}: ')}") from e

    def whole(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    for what, mapping, names in (
        ("counts", m.counts, TABLES),
        ("id_ranges", m.id_ranges, sorted({k for cols in ID_COLUMNS.values() for k in cols.values()})),
    ):
        if not isinstance(mapping, dict):
            raise DatasetError(f"{MANIFEST}: {what} is {mapping!r}, expected an object")
        for name in names:
            if not whole(mapping.get(name)):
                raise DatasetError(f"{MANIFEST}: {what}['{name}'] is {mapping.get(name)!r}, expected an integer >= 0")
    for name in ("first_day", "last_day", "max_history_len"):
        if not whole(getattr(m, name)):
            raise DatasetError(f"{MANIFEST}: {name} is {getattr(m, name)!r}, expected an integer >= 0")
    if not whole(m.image_size) or m.image_size < 1:
        raise DatasetError(f"{MANIFEST}: image_size is {m.image_size!r}, expected an integer >= 1")
    if m.first_day > m.last_day:
        raise DatasetError(f"{MANIFEST}: first_day {m.first_day} > last_day {m.last_day}")
    return m


def _open(root: Path, f: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(f)
    except Exception as e:  # noqa: BLE001 - not Parquet at all
        raise DatasetError(f"{f.relative_to(root)}: not a readable Parquet file ({e})") from e


def _check_footer(path: str, table: str, got: pa.Schema) -> None:
    for field in TABLES[table]:
        if field.name not in got.names:
            raise DatasetError(f"{path}: missing column '{field.name}' (expected {field.type})")
        t = got.field(field.name).type
        if not _same_type(t, field.type):
            raise DatasetError(f"{path}: column '{field.name}' has type {t}, expected {field.type}")


class _IdSet:
    """A set of int64 IDs as sorted unique runs of doubling sizes (memory O(IDs), lookups O(log))."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []  # sorted, unique, disjoint; sizes decreasing

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Bool mask (n,): which of ``values`` are in the set."""
        found = np.zeros(len(values), dtype=bool)
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, values), len(run) - 1)
            found |= run[at] == values
        return found

    def add(self, unique: np.ndarray) -> None:
        """Adds sorted unique IDs that are not in the set yet."""
        run = unique.astype(np.int64, copy=False)
        while self.runs and len(self.runs[-1]) <= len(run):
            run = np.sort(np.concatenate([self.runs.pop(), run]), kind="stable")
        if len(run):
            self.runs.append(run)


class _ContentChecker:
    """Checks batches of rows; remembers the user and item IDs seen so far."""

    def __init__(self, manifest: Manifest, pool: ThreadPoolExecutor) -> None:
        self.m = manifest
        self.pool = pool
        self.known = {kind: _IdSet() for kind in _KNOWN}  # IDs defined so far (memory O(rows))

    def batch(self, path: str, table: str, b: pa.RecordBatch, offset: int) -> None:
        for name in TABLES[table].names:
            self._nulls(path, name, b.column(name), offset)
        for name, kind in ID_COLUMNS[table].items():
            self._ids(path, table, name, kind, b.column(name), offset)
        if table == "impressions":
            self._impressions(path, b, offset)
        for name in TEXT_COLUMNS.get(table, ()):
            self._texts(path, name, b.column(name), offset)
        for name in IMAGE_COLUMNS.get(table, ()):
            self._images(path, name, b.column(name), offset)

    def _nulls(self, path: str, name: str, col: pa.Array, offset: int) -> None:
        if col.null_count:
            row = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
            raise _where(path, name, offset + row, "null value")
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            values = col.flatten()
            if values.null_count:
                i = int(np.flatnonzero(pc.is_null(values).to_numpy(zero_copy_only=False))[0])
                row = pc.list_parent_indices(col)[i].as_py()
                raise _where(path, name, offset + row, "null value in list")

    def _ids(self, path: str, table: str, name: str, kind: str, col: pa.Array, offset: int) -> None:
        values, rows = _flat(col)
        size = self.m.id_ranges[kind]
        bad = (values < 0) | (values >= size)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _where(path, name, offset + int(rows[i]), f"ID {values[i]} outside [0, {size})")
        if kind not in _KNOWN:
            return
        src, key = _KNOWN[kind]
        if (table, name) == (src, key):  # the table that defines the IDs: no repeats
            unique, first = np.unique(values, return_index=True)
            repeated = np.ones(len(values), dtype=bool)
            repeated[first] = False
            dup = repeated | self.known[kind].contains(values)
            if dup.any():
                i = int(np.flatnonzero(dup)[0])
                raise _where(path, name, offset + i, f"{kind} {values[i]} appears more than once")
            self.known[kind].add(unique)
            return
        unknown = ~self.known[kind].contains(values)
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise _where(path, name, offset + int(rows[i]), f"unknown {kind} {values[i]} (no row in {src}/)")

    def _impressions(self, path: str, b: pa.RecordBatch, offset: int) -> None:
        label = b.column("label").to_numpy(zero_copy_only=False)
        bad = ~((label == 0.0) | (label == 1.0))  # NaN compares unequal to both
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _where(path, "label", offset + i, f"value {label[i]}, expected 0.0 or 1.0")
        day = b.column("day").to_numpy(zero_copy_only=False)
        bad = (day < self.m.first_day) | (day > self.m.last_day)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            what = f"day {day[i]} outside manifest days [{self.m.first_day}, {self.m.last_day}]"
            raise _where(path, "day", offset + i, what)
        position = b.column("position").to_numpy(zero_copy_only=False)
        if (position < 0).any():
            i = int(np.flatnonzero(position < 0)[0])
            raise _where(path, "position", offset + i, f"position {position[i]}, expected >= 0")
        length = pc.list_value_length(b.column("history_item_ids")).to_numpy(zero_copy_only=False)
        long = length > self.m.max_history_len
        if long.any():
            i = int(np.flatnonzero(long)[0])
            what = f"length {length[i]} > max_history_len {self.m.max_history_len}"
            raise _where(path, "history_item_ids", offset + i, what)

    def _texts(self, path: str, name: str, col: pa.Array, offset: int) -> None:
        # str.strip's whitespace, exactly as the stages apply it: a Python loop,
        # cheap beside the images that share these batches.
        fault = first_fault(col.to_pylist(), lambda text: check_text(text, name))
        if fault is not None:
            raise _where(path, name, offset + fault[0], fault[1])

    def _images(self, path: str, name: str, col: pa.Array, offset: int) -> None:
        blobs = col.to_pylist()
        starts = range(0, len(blobs), IMAGE_CHUNK)
        size = self.m.image_size
        faults = self.pool.map(lambda s: _image_fault(blobs[s : s + IMAGE_CHUNK], size), starts)
        for start, fault in zip(starts, faults):
            if fault is not None:
                raise _where(path, name, offset + start + fault[0], fault[1])


def validate_dataset(directory: Path, *, progress: bool = False, workers: int | None = None) -> dict[str, int]:
    """Checks a dataset directory against the public format (see the module docstring).

    Args:
        directory (Path): dataset directory, the one holding ``manifest.json``.
        progress (bool): show a tqdm bar over the files whose contents are checked.
        workers (int | None): image-decoding threads; default ``min(8, cpu count)``.

    Returns:
        dict[str, int]: rows per table, in ``schema.TABLES`` order.

    Raises:
        DatasetError: at the first fault, naming file, column and row.
    """
    root = Path(directory)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    manifest = _read_manifest(root)
    files = {t: table_files(root, t) for t in _ORDER}
    counts: dict[str, int] = {}
    for table in _ORDER:  # footers only: layout and counts before any data is read
        if not files[table]:
            raise DatasetError(f"{table}/: no Parquet files")
        counts[table] = 0
        for f in files[table]:
            pf = _open(root, f)
            _check_footer(str(f.relative_to(root)), table, pf.schema_arrow)
            counts[table] += pf.metadata.num_rows
        if counts[table] != manifest.counts[table]:
            raise DatasetError(f"{table}/: {counts[table]} rows, {MANIFEST} counts says {manifest.counts[table]}")
    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    with (
        ThreadPoolExecutor(max(1, n_workers)) as pool,
        tqdm(total=sum(map(len, files.values())), desc="validate", unit="file", disable=not progress) as bar,
    ):
        checker = _ContentChecker(manifest, pool)
        for table in _ORDER:
            rows = IMAGE_BATCH_ROWS if table in IMAGE_COLUMNS else BATCH_ROWS
            for f in files[table]:
                path = str(f.relative_to(root))
                offset = 0
                batches = _open(root, f).iter_batches(batch_size=rows, columns=TABLES[table].names)
                while True:
                    try:
                        b = next(batches, None)
                    except pa.ArrowException as e:
                        raise DatasetError(f"{path}: unreadable Parquet data after row {offset} ({e})") from e
                    if b is None:
                        break
                    checker.batch(path, table, b, offset)
                    offset += b.num_rows
                bar.update(1)
    return {t: counts[t] for t in TABLES}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mmctr validate`` (shared by :func:`main` and ``recsys.cli``)."""
    parser.add_argument("directory", type=Path, help="dataset directory (holds manifest.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def check(directory: Path, quiet: bool = False) -> int:
    """``mmctr validate DIRECTORY``: prints ``OK: ...`` and returns 0, or the fault on stderr and 1."""
    try:
        counts = validate_dataset(directory, progress=not quiet)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"mmctr validate: {e}", file=sys.stderr)
        return 1
    print(f"OK: {directory}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m recsys.data.validate``: the same as ``mmctr validate``."""
    parser = argparse.ArgumentParser(
        prog="mmctr validate", description="Check a dataset directory against the public Parquet format."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return check(args.directory, args.quiet)


if __name__ == "__main__":
    sys.exit(main())
