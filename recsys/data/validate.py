"""``mmctr validate``: checks a dataset against its own feature spec (``manifest.json``'s ``features``).

Every check derives from the manifest's :class:`~recsys.data.spec.FeatureSpec`
(a format-1 manifest reads as ``spec.world_spec()``), so a real log with its
own column names validates as the world does. The first fault raises
:class:`DatasetError` naming the file (relative to the dataset directory),
the column and the row (0-based, within that file)::

    impressions/day-0013-part-00000.parquet: column 'label', row 17: value 0.5, expected 0.0 or 1.0

Checks, in order:

1. ``manifest.json`` reads (``Manifest.read``: a bad spec, e.g. an unknown
   source, is named there); every ``identity`` table has its rows
   (``rows``, else ``id_ranges[table]``, an integer >= 1); ``image_size`` >= 1
   when the content holds images; ``counts`` and days are integers.
2. From Parquet footers only (no data read), the columns of :func:`layout`,
   each with its type: IDs (the spec's sparse features, user and item keys)
   ``int32``/``int64``; the history a list of them; the label any integer,
   float or bool (real logs store clicks as ``int8``, ``bool``...; its values
   must be 0 or 1, below); the day a signed integer (not a Parquet ``DATE``);
   dense features numbers; ``title`` a string, ``image`` bytes (``large_``
   layouts count as one): the reader's own rule, in its words
   (``recsys/data/side.py`` ``type_fault``), so the reader refuses an
   impressions file's types as this does. Columns the spec does not name
   are allowed (a real log has more) and reported as ignored. ``items/`` and
   ``impressions/`` must have files; ``users/`` too when a feature comes from
   it (else it is not read, and an impression's user needs no row);
   ``searches/`` is optional (absent or empty: no search log, pre-training
   falls back to CLIP-style) and read only when the content holds a title or
   an image. Rows per table equal ``manifest.counts`` where it gives them.
3. Contents, file by file and batch by batch (bounded memory, vectorised with
   pyarrow and numpy; only the content rules loop in Python, images on a
   thread pool): no nulls, in lists included; IDs of an ``identity`` table
   within ``[0, rows)``; IDs of a ``managed`` or ``hash`` table any int64
   (negatives included) but ``2**63 - 1``, the empty-slot sentinel of
   TorchRec's managed-collision modules (:data:`SENTINEL`; refused for
   ``hash`` tables too, so a table can change mapping without its data
   changing); no item or user listed twice; every impression's user (when
   ``users/`` is read) and item, every history item (so its ``history_side``
   features) and every item a search names has its row; labels 0.0 or 1.0;
   days within ``[first_day, last_day]``; dense values finite once cast to
   float32, the reader's type (no NaN, inf, or beyond +-3.4e38, which the
   cast turns into inf), and within their transform's domain (``log1p`` and
   ``log1p_standardize``: > -1); labels and dense values by the reader's own
   rules (``recsys/data/side.py`` ``label_fault``, ``dense_fault``), in its
   words; and the content rules every stage applies, in the same words
   (``recsys/data/content.py``): images decode to RGB at exactly
   ``image_size`` px, titles and queries are not blank.
4. The split: ``test_day`` holds impressions, and at least one earlier day
   does (training needs one).

Histories longer than ``max_history_len`` are not refused (the reader keeps
the last ones); the report counts them.

Memory grows with the rows, never with ID values or ranges: the user and
item keys seen so far are kept as sorted runs of unique IDs (:class:`_IdSet`,
merged like a binary counter), so IDs spread up to 2**62 cost what dense ones do.

Example::

    >>> import tempfile
    >>> from recsys.data.spec import FeatureSpec, Sparse, Table
    >>> spec = FeatureSpec(user_key="uid", item_key="iid", label="clk", history=None, content=(),
    ...     sparse=(Sparse("uid", "impressions"), Sparse("iid", "impressions")),
    ...     tables=(Table("uid", "hash", rows=8), Table("iid", "managed", rows=8)))
    >>> root = Path(tempfile.mkdtemp())
    >>> def write(table, columns):
    ...     (root / table).mkdir(exist_ok=True)
    ...     pq.write_table(pa.table(columns), root / table / "part-00000.parquet")
    >>> write("items", {"iid": [10**15, 7]})
    >>> write("impressions", {"day": [0, 1], "uid": [-5, 3], "iid": [7, 10**15], "clk": [0.0, 1.0], "ip": ["a", "b"]})
    >>> Manifest(format_version=2, first_day=0, last_day=1, features=spec).write(root)
    >>> print(format_report(validate_dataset(root), "ds"))  # doctest: +NORMALIZE_WHITESPACE
    OK: ds: items=2, impressions=2
      keys: user uid, item iid; label clk; day day
      sparse: impressions uid, iid
      history: none
      dense: none
      tables: uid hash 8 rows; iid managed 8 rows (lfu every 1 step)
      content: none
      search log: none (and no item content: no pre-training, ID features only)
      split: days 0..1; train 0..0 (1 impressions), test day 1 (1 impressions); new items: first shown that day
      ignored columns: impressions: ip
      users/: not read (no feature comes from users; an impression's user needs no row)
    >>> write("impressions", {"day": [0, 1], "uid": [-5, 3], "iid": [7, 8], "clk": [0.0, 1.0]})
    >>> try:
    ...     validate_dataset(root)
    ... except DatasetError as e:
    ...     print(e)
    impressions/part-00000.parquet: column 'iid', row 1: unknown iid 8 (no row in items/)
    >>> import shutil; shutil.rmtree(root)
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from recsys.data.content import check_image, check_text, first_fault, where
from recsys.data.layout import Column, layout, needs_users
from recsys.data.schema import MANIFEST, TABLES, Manifest, table_files
from recsys.data.side import dense_fault, label_fault, type_fault
from recsys.data.stats import CREATED_DAY
from recsys.data.spec import Table

BATCH_ROWS = 65_536  # rows per batch of a table without images
IMAGE_BATCH_ROWS = 2_048  # rows per batch of a table with images (~10 KB a PNG)
IMAGE_CHUNK = 128  # images checked per thread-pool task
SENTINEL = 2**63 - 1  # TorchRec MCH's empty-slot ID: refused in managed and hash tables
NO_SEARCHES = "none (SCL unavailable; pre-training will be CLIP-style)"


def _no_searches(content: tuple[str, ...]) -> str:
    """What a dataset without a search log can pre-train (pretrain/train.py's rules)."""
    if set(content) == {"title", "image"}:
        return NO_SEARCHES
    if content:
        return f"none (SCL unavailable; {content[0]}s only: pre-training runs random towers, --method random)"
    return "none (and no item content: no pre-training, ID features only)"
# Users and items first: later tables are checked against their keys.
_ORDER = ("users", "items", "impressions", "searches")


class DatasetError(ValueError):
    """A dataset that breaks its format or spec; the message names file, column and row."""


@dataclass(frozen=True)
class Report:
    """What :func:`validate_dataset` found in a valid dataset (:func:`format_report` prints it)."""

    manifest: Manifest
    counts: dict[str, int]  # rows per table read, in schema.TABLES order
    ignored: dict[str, tuple[str, ...]]  # columns the spec does not name, per table read
    days: dict[int, int]  # impressions per day, sorted by day
    searches: str  # the search log: NO_SEARCHES, or what was read
    unread: tuple[str, ...] = ()  # table directories present but not read, with why
    long_histories: int = 0  # histories longer than max_history_len (cut by the reader)
    rows: dict[str, int] = field(default_factory=dict)  # identity tables' rows, as resolved
    created_day: bool = False  # items/ holds CREATED_DAY: evaluation's new items are those created on the day


def _where(path: str, column: str, row: int, what: str) -> DatasetError:
    return DatasetError(f"{where(path, column, row)}: {what}")


def _flat(col: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(values, row of each value): lists flattened, scalars as they are."""
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        rows = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
        return col.flatten().to_numpy(zero_copy_only=False), rows
    return col.to_numpy(zero_copy_only=False), np.arange(len(col))


def _first(bad: np.ndarray) -> int | None:
    return int(np.flatnonzero(bad)[0]) if bad.any() else None


def _image_fault(blobs: list[bytes | None], size: int) -> tuple[int, str] | None:
    """(index, message) of the first blob ``content.check_image`` refuses, or None."""
    return first_fault(blobs, lambda blob: check_image(blob, size))  # type: ignore[arg-type]


def _whole(value: object, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _read_manifest(root: Path) -> tuple[Manifest, dict[str, int]]:
    """``Manifest.read`` with its faults as :class:`DatasetError`; also the rows of each identity table."""
    try:
        m = Manifest.read(root)
    except (OSError, ValueError, TypeError) as e:
        raise DatasetError(f"{MANIFEST}: {str(e).removeprefix(f'{root / MANIFEST}: ')}") from e
    for what in ("counts", "id_ranges"):
        mapping = getattr(m, what)
        if not isinstance(mapping, dict):
            raise DatasetError(f"{MANIFEST}: {what} is {mapping!r}, expected an object")
    for name, value in m.counts.items():
        if not _whole(value):
            raise DatasetError(f"{MANIFEST}: counts['{name}'] is {value!r}, expected an integer >= 0")
    for name in ("first_day", "last_day", "max_history_len", "test_day"):
        if not _whole(getattr(m, name)):
            raise DatasetError(f"{MANIFEST}: {name} is {getattr(m, name)!r}, expected an integer >= 0")
    if "image" in m.spec.content and not _whole(m.image_size, 1):
        what = f"image_size is {m.image_size!r}, expected an integer >= 1 (features.content has 'image')"
        raise DatasetError(f"{MANIFEST}: {what}")
    if m.first_day > m.last_day:
        raise DatasetError(f"{MANIFEST}: first_day {m.first_day} > last_day {m.last_day}")
    rows = {}  # a table's own `rows` wins over id_ranges
    for t in m.spec.tables:
        if t.ids == "identity":
            rows[t.name] = t.rows if t.rows is not None else m.id_ranges.get(t.name)
            if not _whole(rows[t.name], 1):
                raise DatasetError(
                    f"{MANIFEST}: id_ranges['{t.name}'] is {rows[t.name]!r}, expected an integer >= 1 "
                    f"(the rows of identity table '{t.name}', which declares no 'rows')"
                )
    return m, rows


def _open(root: Path, f: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(f)
    except Exception as e:  # noqa: BLE001 - not Parquet at all
        raise DatasetError(f"{f.relative_to(root)}: not a readable Parquet file ({e})") from e


def _check_footer(path: str, columns: tuple[Column, ...], got: pa.Schema) -> None:
    """Each column present with a type its kind accepts (``side.type_fault``, the reader's own rule and words)."""
    for c in columns:
        fault = type_fault(c, got)
        if fault is not None:
            raise DatasetError(f"{path}: {fault}")


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
    """Checks batches of rows; remembers the user and item keys seen so far and the impression days."""

    def __init__(self, manifest: Manifest, rows: dict[str, int], pool: ThreadPoolExecutor) -> None:
        self.m = manifest
        self.rows = rows  # identity table -> rows; other tables absent
        self.pool = pool
        self.known = {"users": _IdSet(), "items": _IdSet()}  # keys defined so far (memory O(rows))
        self.days: dict[int, int] = {}
        self.long_histories = 0
        self.transforms = {f.name: f.transform for f in manifest.spec.dense}  # dense column -> its transform

    def batch(self, path: str, table: str, columns: tuple[Column, ...], b: pa.RecordBatch, offset: int) -> None:
        for c in columns:
            if c.name not in b.schema.names:  # an optional column this file lacks
                continue
            col = b.column(c.name)
            self._nulls(path, c.name, col, offset)
            if c.kind in ("id", "ids"):
                self._ids(path, c, col, offset)
            elif c.kind == "label":
                self._labels(path, c.name, col, offset)
            elif c.kind == "dense":
                self._dense(path, c.name, col, offset)
            elif c.kind == "text":
                fault = first_fault(col.to_pylist(), lambda text, name=c.name: check_text(text, name))
                if fault is not None:
                    raise _where(path, c.name, offset + fault[0], fault[1])
            elif c.kind == "image":
                self._images(path, c.name, col, offset)
        if table == "impressions":
            self._impressions(path, b, offset)

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

    def _ids(self, path: str, c: Column, col: pa.Array, offset: int) -> None:
        values, rows = _flat(col)
        values = values.astype(np.int64, copy=False)
        if c.table in self.rows:
            size = self.rows[c.table]
            i = _first((values < 0) | (values >= size))
            if i is not None:
                what = f"ID {values[i]} outside [0, {size}) (identity table '{c.table}')"
                raise _where(path, c.name, offset + int(rows[i]), what)
        elif c.table is not None:
            i = _first(values == SENTINEL)
            if i is not None:
                ids = self.m.spec.table(c.table).ids
                what = (
                    f"ID {values[i]} is 2**63-1, the managed-collision sentinel "
                    f"({ids} table '{c.table}' takes any other int64)"
                )
                raise _where(path, c.name, offset + int(rows[i]), what)
        if c.ref is None:
            return
        key = self.m.spec.user_key if c.ref == "users" else self.m.spec.item_key
        if c.key:  # the table that defines the IDs: no repeats
            unique, first = np.unique(values, return_index=True)
            repeated = np.ones(len(values), dtype=bool)
            repeated[first] = False
            i = _first(repeated | self.known[c.ref].contains(values))
            if i is not None:
                raise _where(path, c.name, offset + i, f"{key} {values[i]} appears more than once")
            self.known[c.ref].add(unique)
            return
        i = _first(~self.known[c.ref].contains(values))
        if i is not None:
            raise _where(path, c.name, offset + int(rows[i]), f"unknown {key} {values[i]} (no row in {c.ref}/)")

    def _labels(self, path: str, name: str, col: pa.Array, offset: int) -> None:
        fault = label_fault(col.to_numpy(zero_copy_only=False))  # exactly 0 or 1 (NaN refused), as the reader reads them
        if fault is not None:
            raise _where(path, name, offset + fault[0], fault[1])

    def _dense(self, path: str, name: str, col: pa.Array, offset: int) -> None:
        # Finite as float32 and within the transform's domain, as the reader and the side tables check.
        fault = dense_fault(col.to_numpy(zero_copy_only=False), self.transforms.get(name, "none"))
        if fault is not None:
            raise _where(path, name, offset + fault[0], fault[1])

    def _impressions(self, path: str, b: pa.RecordBatch, offset: int) -> None:
        spec, m = self.m.spec, self.m
        day = b.column(spec.day).to_numpy(zero_copy_only=False)
        i = _first((day < m.first_day) | (day > m.last_day))
        if i is not None:
            what = f"day {day[i]} outside manifest days [{m.first_day}, {m.last_day}]"
            raise _where(path, spec.day, offset + i, what)
        for d, n in zip(*np.unique(day, return_counts=True)):
            self.days[int(d)] = self.days.get(int(d), 0) + int(n)
        if spec.history is not None:
            length = pc.list_value_length(b.column(spec.history)).to_numpy(zero_copy_only=False)
            self.long_histories += int((length > m.max_history_len).sum())

    def _images(self, path: str, name: str, col: pa.Array, offset: int) -> None:
        blobs = col.to_pylist()
        starts = range(0, len(blobs), IMAGE_CHUNK)
        size = int(self.m.image_size)  # type: ignore[arg-type]
        faults = self.pool.map(lambda s: _image_fault(blobs[s : s + IMAGE_CHUNK], size), starts)
        for start, fault in zip(starts, faults):
            if fault is not None:
                raise _where(path, name, offset + start + fault[0], fault[1])


def _check_split(m: Manifest, days: dict[int, int]) -> None:
    if not days.get(m.test_day):
        raise DatasetError(
            f"impressions/: no impressions on test_day {m.test_day} ({MANIFEST}); the test day must hold "
            f"the impressions evaluated (days with impressions: {sorted(days) or 'none'})"
        )
    if not any(d < m.test_day for d in days):
        raise DatasetError(
            f"impressions/: no impressions before test_day {m.test_day} ({MANIFEST}); "
            "training needs at least one earlier day"
        )


def _rows(root: Path, files: list[Path]) -> int:
    return sum(_open(root, f).metadata.num_rows for f in files)


def validate_dataset(directory: Path, *, progress: bool = False, workers: int | None = None) -> Report:
    """Checks a dataset directory against its manifest's feature spec (see the module docstring).

    Args:
        directory (Path): dataset directory, the one holding ``manifest.json``.
        progress (bool): show a tqdm bar over the files whose contents are checked.
        workers (int | None): image-decoding threads; default ``min(8, cpu count)``.

    Returns:
        Report: rows per table read, the columns ignored, impressions per day,
        the search log's state.

    Raises:
        DatasetError: at the first fault, naming file, column and row.
    """
    root = Path(directory)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    manifest, id_rows = _read_manifest(root)
    spec = manifest.spec
    files = {t: table_files(root, t) for t in _ORDER}
    read = ["items", "impressions"]
    unread: list[str] = []
    if needs_users(spec):
        read.append("users")
        if not files["users"]:
            sources = [f.name for f in (*spec.sparse, *spec.dense) if f.source == "users"]
            raise DatasetError(f"users/: no Parquet files (features {sources} come from users)")
    else:
        unread.append("users/: not read (no feature comes from users; an impression's user needs no row)")
    searches, search_rows = _no_searches(spec.content), _rows(root, files["searches"])
    if search_rows:
        if spec.content:
            read.append("searches")
        else:
            searches = "present, not read: no item content (features.content is empty)"
    tables = tuple(t for t in _ORDER if t in read)
    columns = layout(spec, tables)
    counts: dict[str, int] = {}
    ignored: dict[str, tuple[str, ...]] = {}
    created = False  # an items column CREATED_DAY, read by evaluation (recsys.data.stats.new_item_mask)
    for table in tables:  # footers only: layout and counts before any data is read
        if not files[table]:
            raise DatasetError(f"{table}/: no Parquet files")
        names = {c.name for c in columns[table]}
        counts[table], extra = 0, {}
        for f in files[table]:
            pf = _open(root, f)
            _check_footer(str(f.relative_to(root)), columns[table], pf.schema_arrow)
            counts[table] += pf.metadata.num_rows
            if table == "items" and CREATED_DAY in pf.schema_arrow.names:
                kind = pf.schema_arrow.field(CREATED_DAY).type
                if not pa.types.is_integer(kind):
                    raise DatasetError(f"{f.relative_to(root)}: column '{CREATED_DAY}' is {kind}, expected an integer "
                                       "day numbered as the impressions' days (evaluation's new items are those "
                                       "created on the test day); rename it if it means something else")
                created = True
            read = names | ({CREATED_DAY} if table == "items" else set())
            extra.update(dict.fromkeys(n for n in pf.schema_arrow.names if n not in read))
        ignored[table] = tuple(extra)
    for table, n in {**counts, "searches": search_rows}.items():
        if table in manifest.counts and n != manifest.counts[table]:
            raise DatasetError(f"{table}/: {n} rows, {MANIFEST} counts says {manifest.counts[table]}")
    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    with (
        ThreadPoolExecutor(max(1, n_workers)) as pool,
        tqdm(total=sum(len(files[t]) for t in tables), desc="validate", unit="file", disable=not progress) as bar,
    ):
        checker = _ContentChecker(manifest, id_rows, pool)
        for table in tables:
            images = any(c.kind == "image" for c in columns[table])
            for f in files[table]:
                _check_file(root, f, table, columns[table], checker, IMAGE_BATCH_ROWS if images else BATCH_ROWS)
                bar.update(1)
            if table == "impressions":
                _check_split(manifest, checker.days)
    if "searches" in counts:
        queries = [c.name for c in columns["searches"] if c.kind in ("text", "image")]
        searches = f"{counts['searches']} sessions (SCL pre-training; queries: {', '.join(queries)})"
    return Report(
        manifest, {t: counts[t] for t in TABLES if t in counts}, ignored, dict(sorted(checker.days.items())),
        searches, tuple(unread), checker.long_histories, id_rows, created,
    )  # fmt: skip


def _check_file(
    root: Path, f: Path, table: str, columns: tuple[Column, ...], checker: _ContentChecker, rows: int
) -> None:
    """Checks the contents of one file, ``rows`` rows a batch (the columns of ``columns`` it holds)."""
    path = str(f.relative_to(root))
    pf = _open(root, f)
    present = tuple(c for c in columns if c.name in pf.schema_arrow.names)
    offset = 0
    batches = pf.iter_batches(batch_size=rows, columns=list(dict.fromkeys(c.name for c in present)))
    while True:
        try:
            b = next(batches, None)
        except pa.ArrowException as e:
            raise DatasetError(f"{path}: unreadable Parquet data after row {offset} ({e})") from e
        if b is None:
            return
        checker.batch(path, table, present, b, offset)
        offset += b.num_rows


def format_report(report: Report, directory: Path | str) -> str:
    """What ``mmctr validate`` prints for a valid dataset: the rows, then the spec it was checked against."""
    m, s = report.manifest, report.manifest.spec

    def table(t: Table) -> str:
        if t.ids == "identity":
            return f"{t.name} identity {report.rows[t.name]} rows" + (" (id_ranges)" if t.rows is None else "")
        steps = f"{t.eviction_interval} step{'s' if t.eviction_interval != 1 else ''}"
        return f"{t.name} {t.ids} {t.rows} rows" + (f" ({t.eviction} every {steps})" if t.ids == "managed" else "")

    def named(name: str) -> str:
        return name if s.table_of(name) == name else f"{name} (table {s.table_of(name)})"

    by_source = {src: [named(f.name) for f in s.sparse if f.source == src] for src in ("impressions", "users", "items")}
    sparse = "; ".join(f"{src} {', '.join(names)}" for src, names in by_source.items() if names)
    history = "none"
    if s.history is not None:
        side = f"; side features {', '.join(s.history_side)}" if s.history_side else ""
        history = (
            f"{s.history} (item IDs, table {s.table_of(s.history)}{side}; {report.long_histories} longer than "
            f"max_history_len {m.max_history_len}, cut when read)"
        )
    dense = ", ".join(f"{f.name} ({f.source}, {f.transform})" for f in s.dense) or "none"
    content = ", ".join(s.content) or "none"
    if "image" in s.content:
        content += f" ({m.image_size} px)"
    train = {d: n for d, n in report.days.items() if d < m.test_day}  # never empty in a valid dataset
    later = sum(n for d, n in report.days.items() if d > m.test_day)
    split = (
        f"days {m.first_day}..{m.last_day}; train {min(train)}..{max(train)} ({sum(train.values())} impressions), "
        f"test day {m.test_day} ({report.days[m.test_day]} impressions)" + (f", {later} after it" if later else "")
        + f"; new items: {'created that day (items: ' + CREATED_DAY + ')' if report.created_day else 'first shown that day'}"
    )
    ignored = "; ".join(f"{t}: {', '.join(cols)}" for t, cols in report.ignored.items() if cols) or "none"
    lines = [
        f"OK: {directory}: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()),
        f"keys: user {s.user_key}, item {s.item_key}; label {s.label}; day {s.day}",
        f"sparse: {sparse}",
        f"history: {history}",
        f"dense: {dense}",
        f"tables: {'; '.join(table(t) for t in s.tables)}",
        f"content: {content}",
        f"search log: {report.searches}",
        f"split: {split}",
        f"ignored columns: {ignored}",
        *report.unread,
    ]
    return "\n  ".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``mmctr validate`` (shared by :func:`main` and ``recsys.cli``)."""
    parser.add_argument("directory", type=Path, help="dataset directory (holds manifest.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def check(directory: Path, quiet: bool = False) -> int:
    """``mmctr validate DIRECTORY``: prints the report (``OK: ...``) and returns 0, or the fault on stderr and 1."""
    try:
        report = validate_dataset(directory, progress=not quiet)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"mmctr validate: {e}", file=sys.stderr)
        return 1
    print(format_report(report, directory))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m recsys.data.validate``: the same as ``mmctr validate``."""
    parser = argparse.ArgumentParser(
        prog="mmctr validate", description="Check a dataset directory against its manifest's feature spec."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return check(args.directory, args.quiet)


if __name__ == "__main__":
    sys.exit(main())
