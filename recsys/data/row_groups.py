"""Which Parquet row groups of an impressions table hold rows of given days, from the metadata first.

One plan serves the reader's epoch (``ImpressionReader``) and the jobs that
only count a day's impressions (``recsys.data.stats.day_rows``), so the two
always agree on what a day holds:

* a row group whose ``day`` statistics lie wholly inside the days is taken
  whole, counted from the metadata;
* one whose statistics lie wholly outside is skipped, unread;
* one that straddles the days (or has no statistics) has its ``day`` column
  read, and its rows of the days counted exactly.

No other column is read. Files are taken in the order given (``table_files``'s
sorted order), row groups in file order.

Example::

    >>> import tempfile
    >>> import pyarrow as pa
    >>> path = Path(tempfile.mkdtemp()) / "part-0.parquet"
    >>> pq.write_table(pa.table({"day": [1, 1, 2, 3, 3, 4]}), path, row_group_size=2)
    >>> [(g.index, g.rows, g.whole) for g in select_row_groups([path], "day", np.array([2, 3]))]
    [(1, 2, True), (2, 1, False)]
    >>> sum(g.rows for g in select_row_groups([path], "day", None))
    6
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recsys.data.layout import Column
from recsys.data.side import type_fault


@dataclass(frozen=True)
class RowGroup:
    """A selected row group of one file.

    Args:
        file (int): index into the files given to :func:`select_row_groups`.
        index (int): row group index within the file.
        rows (int): its rows of the selected days.
        whole (bool): every row is of a selected day (no row filter needed).
        first (int): the row group's first row within the file (errors name rows as ``validate`` does).
        size (int): the row group's rows, all days.
    """

    file: int
    index: int
    rows: int
    whole: bool
    first: int = 0
    size: int = 0

    def where(self, files: Sequence[Path]) -> str:
        """The row group as errors name it: ``FILE (row group I, file rows A-B)`` (``files``: those selected from).

        Example::

            >>> RowGroup(file=0, index=2, rows=5, whole=True, first=200, size=100).where([Path("a.parquet")])
            'a.parquet (row group 2, file rows 200-299)'
        """
        return f"{files[self.file]} (row group {self.index}, file rows {self.first}-{self.first + self.size - 1})"


def select_row_groups(
    files: Sequence[Path], day_column: str, days: np.ndarray | None, columns: Sequence[str] = (),
    typed: Sequence[Column] = (),
) -> list[RowGroup]:
    """The row groups of ``files`` holding rows of ``days``, each with its count of them.

    Args:
        files (Sequence[Path]): Parquet files, in the order their row groups are numbered.
        day_column (str): the column holding each row's day (the spec's ``day``).
        days (np.ndarray | None): sorted unique int64 days, shape (K,); None: every row group, whole.
        columns (Sequence[str]): the columns the caller reads, named in the error for a file without the day column.
        typed (Sequence[Column]): columns whose types are checked from the footer read here, as ``mmctr validate``
            checks them (the day column always is); one absent from a file is left to the caller's read.

    Returns:
        list[RowGroup]: the selected row groups, empty ones and those without a row of ``days`` left out.

    Raises:
        ValueError: a file without ``day_column``, naming the file, e.g.
            ``w/impressions/a.parquet: no column 'day'; impressions need ['day', 'label'] (the feature spec)``;
            a ``day_column`` that is not a signed integer (a Parquet DATE), or a column of ``typed`` of a type
            validate refuses, in its words (``side.type_fault``):
            ``...: column 'ds' has type date32[day], expected a signed integer (features.day)``.
    """
    day_type = Column(day_column, "int", "features.day")
    out: list[RowGroup] = []
    for fi, path in enumerate(files):
        meta = pq.read_metadata(path)
        if meta.num_row_groups == 0:
            continue
        day_col = _leaf_index(meta, day_column, path, columns or (day_column,))
        schema = meta.schema.to_arrow_schema()
        for c in (day_type, *typed):  # a Parquet DATE day, say: refused in validate's words (its statistics are no days)
            fault = type_fault(c, schema) if c.name in schema.names else None
            if fault is not None:
                raise ValueError(f"{path}: {fault}")
        file: pq.ParquetFile | None = None  # opened for straddling row groups only
        first = 0  # the file row of row group gi's first row
        for gi in range(meta.num_row_groups):
            group = meta.row_group(gi)
            n = group.num_rows
            first, start = first + n, first
            if n == 0:
                continue
            if days is None:
                out.append(RowGroup(fi, gi, n, True, start, n))
                continue
            stats = group.column(day_col).statistics
            if stats is not None and stats.has_min_max:
                lo, hi = int(stats.min), int(stats.max)
                inside = int(np.searchsorted(days, hi, "right") - np.searchsorted(days, lo, "left"))
                if inside == 0:
                    continue
                if inside == hi - lo + 1:
                    out.append(RowGroup(fi, gi, n, True, start, n))
                    continue
            # Straddles the days (or has no statistics): count exactly.
            file = file or pq.ParquetFile(path)
            day = file.read_row_group(gi, columns=[day_column]).column(0).to_numpy()
            k = int(np.isin(day, days).sum())
            if k:
                out.append(RowGroup(fi, gi, k, k == n, start, n))
    return out


def _leaf_index(meta: pq.FileMetaData, name: str, path: Path, columns: Sequence[str]) -> int:
    for i in range(meta.num_columns):
        if meta.schema.column(i).path == name:
            return i
    raise ValueError(f"{path}: no column {name!r}; impressions need {list(columns)} (the feature spec)")
