"""Side tables (``users/``, ``items/``) as lookups whose memory grows with their rows, not their ID range.

Notation: ``U``: rows of the side table; ``C``: its joined columns; ``R``:
the manifest's ID range of its key; ``n``: IDs looked up at once.

A table is held either dense (an array (C, R) indexed by ID, -1 where an
ID has no row) when ``R <= DENSE_LOOKUP_FACTOR * U`` (so still proportional
to the rows; the fastest join), or as its sorted unique IDs (U,) and the
matching columns (C, U), searched with ``np.searchsorted``. Memory is
O(U) either way, so IDs spread up to 2**62 cost what dense ones do.

Example::

    >>> import tempfile, pathlib
    >>> import pyarrow as pa, pyarrow.parquet as pq
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "users").mkdir()
    >>> pq.write_table(pa.table({"user_id": [7 * 10**15, 3], "city_id": [1, 2]}), root / "users/part-0.parquet")
    >>> users = SideTable.read(root, "users", "user_id", ("city_id",), {"user_id": 2**62, "city_id": 5})
    >>> users.dense, users.join(np.array([3, 7 * 10**15, 3]), "doc")
    (False, array([[2, 1, 2]], dtype=int32))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.schema import table_files

# A key range up to this many times the table's rows is held as a dense array.
DENSE_LOOKUP_FACTOR = 4


@dataclass(frozen=True)
class SideTable:
    """Columns of a side table by ID (module doc); build with :meth:`read`."""

    name: str  # table directory, e.g. "users"
    key: str  # ID column, e.g. "user_id"
    key_range: int | None  # R: the manifest's range of `key`; None = raw IDs (any int64)
    ids: np.ndarray | None  # int64 (U,) sorted unique IDs; None = `values` indexed by ID (dense)
    values: np.ndarray  # (C, U) matching `ids`, or (C, R) with -1 where an ID has no row

    @property
    def dense(self) -> bool:
        return self.ids is None

    @staticmethod
    def read(
        root: Path, name: str, key: str, columns: tuple[str, ...], ranges: dict[str, int | None], floats: bool = False
    ) -> "SideTable":
        """Reads ``key`` and ``columns`` of table ``name`` (never titles or images).

        Args:
            root (Path): the dataset directory.
            name (str): the table directory, ``users`` or ``items``.
            key (str): its ID column.
            columns (tuple[str, ...]): the columns to join, C.
            ranges (dict[str, int | None]): the ID range of ``key`` and of each
                integer column (``0 <= id < range``); a name absent or ``None``
                is not range-checked (raw IDs, dense floats).
            floats (bool): the columns are float (dense features): held as float32.

        Raises:
            ValueError: nulls or NaN, an ID or value outside its range, or an
                ID listed twice (naming the file and the ID).
        """
        size = ranges.get(key)
        if floats:
            dtype = np.float32
        else:
            limit = max([1] + [int(ranges.get(c) or 2**62) for c in columns])  # column values (and the -1 mark) fit
            dtype = np.int32 if limit < 2**31 else np.int64
        paths = table_files(root, name)
        ids_parts, value_parts, file_of = [], [], []
        for f, path in enumerate(paths):
            part = pq.read_table(path, columns=[key, *columns])
            ids = read_column(part, key, str(path)).astype(np.int64, copy=False)
            if size is not None:
                check_range(ids, size, key, str(path))
            values = np.empty((len(columns), len(ids)), dtype=dtype)
            for c, column in enumerate(columns):
                values[c] = read_column(part, column, str(path))
                if ranges.get(column) is not None:
                    check_range(values[c], ranges[column], column, str(path))  # type: ignore[arg-type]
            ids_parts.append(ids)
            value_parts.append(values)
            file_of.append(np.full(len(ids), f, dtype=np.int32))
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int64)
        values = np.concatenate(value_parts, axis=1) if value_parts else np.zeros((len(columns), 0), dtype=dtype)
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        repeated = np.flatnonzero(ids[1:] == ids[:-1])
        if len(repeated):
            second = order[repeated[0] + 1]  # the later of the two rows, in file order
            f = int(np.concatenate(file_of)[second])
            raise ValueError(f"{paths[f]}: {key} {int(ids[repeated[0]])} appears more than once in {name}/; expected unique IDs")
        bounded = bool(columns) and all(ranges.get(c) is not None for c in columns)  # values >= 0: -1 marks "no row"
        if size is not None and not floats and bounded and size <= DENSE_LOOKUP_FACTOR * len(ids):
            table = np.full((len(columns), size), -1, dtype=dtype)
            table[:, ids] = values[:, order]
            return SideTable(name, key, size, None, table)
        return SideTable(name, key, size, ids, np.ascontiguousarray(values[:, order]))

    def join(self, ids: np.ndarray, where: str, default: int | float | None = None) -> np.ndarray:
        """Columns (C, n) of the rows of ``ids`` (n,).

        Args:
            ids (np.ndarray): int64 IDs (n,).
            where (str): names the rows in errors.
            default (int | float | None): the value of every column for an ID with no row
                (or outside the manifest range); ``None``: such an ID is refused.

        Raises:
            ValueError: with ``default`` None, an ID outside the manifest range, or with no row (naming ``where``).
        """
        missing = self.missing(ids) if default is not None else None
        if missing is not None and missing.any():
            out = self.join(np.where(missing, self._some_id(), ids), where)
            out[:, missing] = default
            return out
        if self.key_range is not None:
            check_range(ids, self.key_range, self.key, where)
        if self.ids is None:
            out = self.values[:, ids]
            missing = (out < 0).any(axis=0) if len(ids) and out.size and int(out.min()) < 0 else None
        else:
            at = np.searchsorted(self.ids, ids)
            if len(self.ids) == 0:
                missing, out = np.ones(len(ids), dtype=bool), self.values[:, :0]
            else:
                np.minimum(at, len(self.ids) - 1, out=at)
                found = self.ids[at] == ids
                missing = None if found.all() else ~found
                out = self.values[:, at]
        if missing is not None and missing.any():
            raise ValueError(f"{where}: {self.key} {int(ids[missing][0])} has no row in {self.name}/")
        return out

    def missing(self, ids: np.ndarray) -> np.ndarray:
        """bool (n,): the IDs with no row (outside the manifest range, or not listed).

        Example::

            >>> t = SideTable("users", "user_id", 10, np.array([2, 5]), np.array([[7, 8]]))
            >>> t.missing(np.array([5, 3, 12, -1])).tolist(), t.join(np.array([5, 3]), "r", default=0).tolist()
            ([False, True, True, True], [[8, 0]])
        """
        ids = np.asarray(ids, dtype=np.int64)
        outside = (ids < 0) | (ids >= self.key_range) if self.key_range is not None else np.zeros(len(ids), dtype=bool)
        inside = np.where(outside, 0, ids)
        if self.ids is None:
            if self.values.shape[1] == 0:
                return np.ones(len(ids), dtype=bool)
            return outside | (self.values[:, inside] < 0).any(axis=0) if self.values.shape[0] else outside
        if len(self.ids) == 0:
            return np.ones(len(ids), dtype=bool)
        at = np.minimum(np.searchsorted(self.ids, inside), len(self.ids) - 1)
        return outside | (self.ids[at] != inside)

    def _some_id(self) -> int:
        """An ID that has a row (the placeholder a refused-free join reads before overwriting)."""
        if self.ids is not None:
            if len(self.ids) == 0:
                raise ValueError(f"{self.name}/ has no rows")
            return int(self.ids[0])
        rows = np.flatnonzero((self.values >= 0).all(axis=0)) if self.values.shape[0] else np.arange(self.values.shape[1])
        if len(rows) == 0:
            raise ValueError(f"{self.name}/ has no rows")
        return int(rows[0])


def read_column(table: pa.Table, name: str, where: str) -> np.ndarray:
    """A flat column as numpy; raises ValueError on nulls or NaN."""
    column = table.column(name)
    if column.null_count:
        raise ValueError(f"{where}: column {name!r} has {column.null_count} null(s); expected none")
    array = column.to_numpy()
    if array.dtype.kind == "f" and np.isnan(array).any():
        raise ValueError(f"{where}: column {name!r} has NaN value(s); expected finite numbers")
    return array


def check_range(ids: np.ndarray, size: int, name: str, where: str) -> None:
    """Raises ValueError naming ``where`` if an ID lies outside ``[0, size)``."""
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= size):
        bad = ids[(ids < 0) | (ids >= size)][0]
        raise ValueError(f"{where}: {name} {bad} outside the manifest ID range [0, {size})")
