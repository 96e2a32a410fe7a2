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

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.content import where as _where
from recsys.data.layout import TYPES, Column
from recsys.data.schema import read_table_file, table_files

# A key range up to this many times the table's rows is held as a dense array.
DENSE_LOOKUP_FACTOR = 4
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the reader holds dense features and labels as float32


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
        root: Path,
        name: str,
        key: str,
        columns: tuple[str, ...],
        ranges: dict[str, int | None],
        floats: bool = False,
        transforms: dict[str, str] | None = None,
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
            floats (bool): the columns are float (dense features): held as float32,
                each value checked by :func:`dense_fault`.
            transforms (dict[str, str] | None): with ``floats``, the transform of
                each column (``spec.TRANSFORMS``; absent: ``none``), whose domain
                :func:`dense_fault` checks too.

        Raises:
            ValueError: a null, a float not finite as float32 (NaN, inf, or
                beyond float32's range) or outside its transform's domain
                (naming the file, column, row and ID); an ID or value outside
                its range, or an ID listed twice (naming the file and the ID).
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
            part = read_table_file(path, columns=[key, *columns])
            ids = read_column(part, key, str(path)).astype(np.int64, copy=False)
            if size is not None:
                check_range(ids, size, key, str(path))
            values = np.empty((len(columns), len(ids)), dtype=dtype)
            for c, column in enumerate(columns):
                # Dense values are checked before the float32 cast below (which turns 1e39 into inf).
                fault = partial(dense_fault, transform=(transforms or {}).get(column, "none")) if floats else finite_fault
                values[c] = read_column(part, column, str(path), fault=fault, ids=(key, ids))
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


def finite_fault(values: np.ndarray) -> tuple[int, str] | None:
    """The first float that is not finite once cast to float32 (the reader's dtype), and why; None if none.

    NaN, +-inf and finite values beyond float32's range (|v| > 3.4e38, which
    the cast turns into inf) are refused; integer arrays always pass.
    Vectorised (one float32 cast and ``np.isfinite``).

    Example::

        >>> finite_fault(np.array([1.0, 1e39]))
        (1, 'value 1e+39, expected a finite number (float32 overflows to inf beyond 3.403e+38)')
        >>> finite_fault(np.array([0.5, -np.inf])), finite_fault(np.array([-5]))
        ((1, 'value -inf, expected a finite number'), None)
    """
    if values.dtype.kind != "f" or not len(values):
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        bad = ~np.isfinite(values.astype(np.float32, copy=False))
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    value = values[i]
    why = f" (float32 overflows to inf beyond {FLOAT32_MAX:.4g})" if np.isfinite(value) else ""
    return i, f"value {value}, expected a finite number{why}"


def dense_fault(values: np.ndarray, transform: str = "none") -> tuple[int, str] | None:
    """The first value a dense feature of ``transform`` refuses, and why; None if none.

    The rule ``mmctr validate`` and the reader share (in the same words): a
    dense value is finite once cast to float32 (:func:`finite_fault`) and
    within its transform's domain: ``log1p`` and ``log1p_standardize`` need
    values > -1 (``standardize`` and ``none`` take any finite value).
    Vectorised.

    Example::

        >>> dense_fault(np.array([0.5, -1.0, -3.0]), "log1p_standardize")
        (1, "value -1.0, expected > -1 (transform 'log1p_standardize' takes log1p)")
        >>> dense_fault(np.array([-3, 2]), "standardize") is None
        True
    """
    fault = finite_fault(values)
    if fault is not None:
        return fault
    if transform.startswith("log1p") and len(values) and values.min() <= -1:
        i = int(np.flatnonzero(values <= -1)[0])
        return i, f"value {values[i]}, expected > -1 (transform {transform!r} takes log1p)"
    return None


def label_fault(values: np.ndarray) -> tuple[int, str] | None:
    """The first label that is not exactly 0 or 1 (NaN included), and why; None if none. Vectorised.

    Labels of any integer, float or bool type (``layout.TYPES``) are judged by value: an int8 or
    bool click column of 0s and 1s passes as a float32 one does.

    Example::

        >>> label_fault(np.array([0.0, 1.0, 2.0])), label_fault(np.array([1.0, np.nan])), label_fault(np.array([0.0]))
        ((2, 'value 2.0, expected 0.0 or 1.0'), (1, 'value nan, expected 0.0 or 1.0'), None)
        >>> label_fault(np.array([1, 0, -1], dtype=np.int8)), label_fault(np.array([True, False]))
        ((2, 'value -1, expected 0 or 1'), None)
    """
    bad = (values != 0) & (values != 1)  # NaN compares unequal to both
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    return i, f"value {values[i]}, expected {'0.0 or 1.0' if values.dtype.kind == 'f' else '0 or 1'}"


def type_fault(column: Column, schema: pa.Schema) -> str | None:
    """Why a file of footer ``schema`` cannot hold ``column`` (missing, or of a type its kind refuses); None if it can.

    The type rule ``mmctr validate`` and the reader share, in the same words: a
    column's kind accepts the types of ``layout.TYPES`` (a label: any
    integer, float or bool; :func:`label_fault` then checks its values). An ``optional`` column may be missing. The caller
    prefixes the file.

    Example::

        >>> day = Column("ds", "int", "features.day")
        >>> type_fault(day, pa.schema([("ds", pa.date32())]))
        "column 'ds' has type date32[day], expected a signed integer (features.day)"
        >>> type_fault(Column("y", "label", "features.label"), pa.schema([("y", pa.int8())])) is None
        True
        >>> type_fault(Column("y", "label", "features.label"), pa.schema([("ds", pa.int32())]))
        "missing column 'y' (expected an integer, float or bool: features.label)"
    """
    accepts, expected = TYPES[column.kind]
    if column.name not in schema.names:
        return None if column.optional else f"missing column '{column.name}' (expected {expected}: {column.why})"
    t = schema.field(column.name).type
    if not accepts(t):
        return f"column '{column.name}' has type {t}, expected {expected} ({column.why})"
    return None


def read_column(
    table: pa.Table,
    name: str,
    where: str,
    first_row: int = 0,
    fault: Callable[[np.ndarray], tuple[int, str] | None] = finite_fault,
    ids: tuple[str, np.ndarray] | None = None,
) -> np.ndarray:
    """A flat column as numpy, refused if it holds a null or a value ``fault`` refuses.

    Args:
        table (pa.Table): the rows read.
        name (str): the column.
        where (str): names the rows in errors (a file, a row group, a request).
        first_row (int): the row number of ``table``'s first row (its offset in
            the file), so errors name the row as ``mmctr validate`` does.
        fault (Callable): the vectorised rule of the column's values: index and
            message of the first bad value, or None (default
            :func:`finite_fault`: floats finite as float32; also
            :func:`dense_fault`, :func:`label_fault`).
        ids (tuple[str, np.ndarray] | None): a side table's key name and IDs
            (one per row), to name the ID of a refused row too.

    Returns:
        np.ndarray: the column's values (n,), its own dtype.

    Raises:
        ValueError: the first null, or the first value ``fault`` refuses (for
            floats by default NaN, inf, beyond float32's range), naming
            ``where``, the column and the row: ``where: column 'c', row r: ...``.
    """
    column = table.column(name)
    if column.null_count:
        i = int(np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{_place(where, name, first_row, i, ids)}: null value")
    array = column.to_numpy()
    bad = fault(array)
    if bad is not None:
        raise ValueError(f"{_place(where, name, first_row, bad[0], ids)}: {bad[1]}")
    return array


def _place(where: str, name: str, first_row: int, i: int, ids: tuple[str, np.ndarray] | None) -> str:
    """``where: column 'c', row r`` (``content.where``), and `` (key id)`` for a side table's row."""
    return _where(where, name, first_row + i) + (f" ({ids[0]} {int(ids[1][i])})" if ids is not None else "")


def check_range(ids: np.ndarray, size: int, name: str, where: str) -> None:
    """Raises ValueError naming ``where`` if an ID lies outside ``[0, size)``."""
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= size):
        bad = ids[(ids < 0) | (ids >= size)][0]
        raise ValueError(f"{where}: {name} {bad} outside the manifest ID range [0, {size})")
