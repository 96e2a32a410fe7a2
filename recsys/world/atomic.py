"""RecBole atomic files: the tab-separated text tables public recommendation datasets ship in.

RecBole (Zhao et al., "RecBole: Towards a Unified, Comprehensive and
Efficient Framework for Recommendation Algorithms", CIKM 2021) distributes
its datasets as *atomic files*, one per kind: ``NAME.inter`` (interactions),
``NAME.item``, ``NAME.user``. Each is UTF-8 text, one row per line, fields
separated by a tab; the first line is the header, one ``name:type`` per
field, ``type`` one of ``token`` (a categorical value), ``token_seq``
(space-separated tokens), ``float`` or ``float_seq``::

    user_id:token   item_id:token   rating:float    timestamp:float
    196             242             3               881250949

:func:`read_atomic` reads such a file into its columns, as strings, and
checks its shape: a header of ``name:type`` fields holding the columns asked
for, and every row with as many fields as the header. :func:`ints`,
:func:`floats` and :func:`texts` turn a column into values, refusing the
first one that does not parse. Every refusal is an :class:`AtomicError`
naming the file, the row (0-based, the header not counted: as
``mmctr validate`` counts rows) with its line (1-based, as an editor shows
it) and the column as the header spells it::

    ml-100k.inter: row 17 (line 19), column 'rating:float': 'x' is not a number

Example::

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "toy.inter"
    >>> _ = path.write_text("user_id:token\\titem_id:token\\trating:float\\n1\\t10\\t4\\n2\\t11\\tfive\\n")
    >>> table = read_atomic(path, ("user_id", "item_id", "rating"))
    >>> len(table), ints(table, "item_id").tolist()
    (2, [10, 11])
    >>> floats(table, "rating")
    Traceback (most recent call last):
        ...
    recsys.world.atomic.AtomicError: toy.inter: row 1 (line 3), column 'rating:float': 'five' is not a number
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TYPES: tuple[str, ...] = ("token", "token_seq", "float", "float_seq")  # RecBole's field types
HEADER_LINES = 1  # rows are counted from the line after the header


class AtomicError(ValueError):
    """An atomic file that does not parse; the message names file, row (and line) and column."""


@dataclass(frozen=True)
class AtomicTable:
    """The columns of one atomic file, as read (strings, in file order).

    Args:
        path (Path): the file read.
        headers (dict[str, str]): field name -> the header's ``name:type`` (for messages).
        columns (dict[str, list[str]]): field name -> one raw string per row.
    """

    path: Path
    headers: dict[str, str]
    columns: dict[str, list[str]]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def where(self, name: str, row: int) -> str:
        """``file: row r (line l), column 'name:type'``: the place of a value, for messages."""
        return f"{self.path.name}: row {row} (line {row + HEADER_LINES + 1}), column '{self.headers[name]}'"

    def error(self, name: str, row: int, what: str) -> AtomicError:
        return AtomicError(f"{self.where(name, row)}: {what}")


def read_atomic(path: Path, required: tuple[str, ...]) -> AtomicTable:
    """Reads an atomic file: its header and the ``required`` columns (module docstring).

    Args:
        path (Path): a RecBole atomic file (``.inter``, ``.item``, ``.user``).
        required (tuple[str, ...]): field names (the part before ``:``) to
            read; other fields are skipped.

    Returns:
        AtomicTable: the ``required`` columns, a raw string per row; a trailing
        ``\\r`` (Windows line ends) is dropped, empty lines are refused.

    Raises:
        FileNotFoundError: no such file.
        AtomicError: an empty file, a header field not ``name:type`` or of an
            unknown type, a field named twice, a required field missing, or a
            row whose field count differs from the header's (naming file, row,
            line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; expected a RecBole atomic file")
    with path.open(encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    lines = [line.removesuffix("\r") for line in lines]
    if not lines:
        raise AtomicError(f"{path.name}: empty; expected a header line of name:type fields")
    fields = lines[0].split("\t")
    headers: dict[str, str] = {}
    for i, field in enumerate(fields):
        name, sep, kind = field.partition(":")
        if not sep or not name or kind not in TYPES:
            raise AtomicError(f"{path.name}: header field {i + 1} is {field!r}; expected name:type, "
                              f"type one of {list(TYPES)}")  # fmt: skip
        if name in headers:
            raise AtomicError(f"{path.name}: header names field {name!r} twice")
        headers[name] = field
    missing = [n for n in required if n not in headers]
    if missing:
        raise AtomicError(f"{path.name}: header has no field {missing} (it has {list(headers)})")
    index = {n: list(headers).index(n) for n in required}
    columns: dict[str, list[str]] = {n: [] for n in required}
    for row, line in enumerate(lines[1:]):
        values = line.split("\t")
        if len(values) != len(fields):
            raise AtomicError(f"{path.name}: row {row} (line {row + HEADER_LINES + 1}): {len(values)} fields, "
                              f"the header has {len(fields)}")  # fmt: skip
        for n, i in index.items():
            columns[n].append(values[i])
    return AtomicTable(path, {n: headers[n] for n in required}, columns)


def ints(table: AtomicTable, name: str, least: int = 0) -> np.ndarray:
    """Column ``name`` as int64 (N,), every value a whole number >= ``least`` (IDs, ages).

    Raises:
        AtomicError: the first value that is not such a number, naming file, row and column.
    """
    raw = table.columns[name]
    out = np.empty(len(raw), dtype=np.int64)
    for row, text in enumerate(raw):
        value = text.strip()
        if not (value.isascii() and value.isdigit()) or int(value) < least:
            raise table.error(name, row, f"{text!r} is not a whole number >= {least}")
        out[row] = int(value)
    return out


def floats(table: AtomicTable, name: str) -> np.ndarray:
    """Column ``name`` as float64 (N,), every value a finite number.

    Raises:
        AtomicError: the first value that is not a finite number, naming file, row and column.
    """
    raw = table.columns[name]
    out = np.empty(len(raw), dtype=np.float64)
    for row, text in enumerate(raw):
        try:
            out[row] = float(text)
        except ValueError:
            raise table.error(name, row, f"{text!r} is not a number") from None
        if not np.isfinite(out[row]):
            raise table.error(name, row, f"{text!r} is not a finite number")
    return out


def texts(table: AtomicTable, name: str, blank: bool = False) -> list[str]:
    """Column ``name`` as stripped strings; ``blank=False`` refuses an empty (or all-space) value.

    Raises:
        AtomicError: the first blank value when ``blank`` is false, naming file, row and column.
    """
    out = [text.strip() for text in table.columns[name]]
    if not blank:
        for row, text in enumerate(out):
            if not text:
                raise table.error(name, row, f"blank value {table.columns[name][row]!r}; expected a non-blank token")
    return out

