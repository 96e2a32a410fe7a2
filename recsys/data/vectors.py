"""Item vectors: the table pre-training exports, the vector store's snapshot, their checks, the merge.

One unit-norm float32 vector of width D per item, from two sources:

* the **table**, ``item_vectors.parquet`` plus ``vectors.json`` in a
  pre-training run folder: what ``mmctr pretrain`` exports (written here,
  :func:`write_item_vectors`);
* the **vector store**, the SQLite file the real-time embedder
  (``mmctr embed-new``, ``serving.store.VectorStore``) writes with the vectors
  of new items. Its format (:data:`STORE_SCHEMA`) is defined here, beside its
  read-only reader :func:`read_store`; the writer lives with the embedder.

:func:`load_vectors` reads either, or a table merged with a store (the daily
refresh of the CTR model's frozen table), into one :class:`ItemVectors`:
what training, evaluation, the retrain and serving load, checked at the door
whatever wrote it (another encoder's export, an edited table, a store written
around the embedder): a ``ValueError`` names the file and the first bad
``item_id`` of a null row or value, a width other than the declared D, a NaN
or inf, a norm off 1 by more than ``UNIT_TOL`` (|‖v‖ − 1| ≤ 1e-3 passes), an
item listed twice (:func:`table_arrays`, :func:`read_snapshot`,
:func:`check_vectors`). ``renormalize=True`` (``TrainConfig.renormalize_vectors``)
re-normalises finite non-zero rows instead, counted and logged.

Notation: ``N`` items of a table, ``M`` items of a store or of the result, ``D`` width.

Example::

    >>> import tempfile, pathlib, numpy as np
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> v = np.eye(3, 4, dtype=np.float32)
    >>> write_item_vectors(d / VECTORS_FILE, np.array([5, 6, 7]), v, dim=4)
    >>> ids, got = read_item_vectors(d / VECTORS_FILE)
    >>> ids.tolist(), got.shape
    ([5, 6, 7], (3, 4))
    >>> table = load_vectors(d)  # the run folder, or the file itself
    >>> table.item_ids.tolist(), table.dim, table.path.name
    ([5, 6, 7], 4, 'item_vectors.parquet')
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.paths import artefact_path

VECTORS_FILE = "item_vectors.parquet"
VECTORS_MANIFEST = "vectors.json"
UNIT_TOL = 1e-3  # a vector passes when |norm - 1| <= UNIT_TOL
MIN_NORM = 1e-6  # a row of smaller norm is zero: no direction to re-normalise to, always refused
RENORMALIZE_HINT = "re-normalise the rows, or load them with renormalize (`mmctr train --renormalize-vectors`)"
LOG = logging.getLogger(__name__)

# -- the vector store's format ------------------------------------------------------
STORE_FORMAT = "1"  # meta 'format' this mmctr reads and writes
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first bytes of every SQLite file
# Autocommit (transactions are explicit), wait up to 30 s for the write lock, and usable from
# another thread than the one that opened it (one thread at a time: a store is not shared).
STORE_CONNECT: dict[str, object] = {"isolation_level": None, "timeout": 30.0, "check_same_thread": False}
# The tables (serving/store.py documents each column and the writer's guarantees); run by the writer.
STORE_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vectors (
    item_id INTEGER PRIMARY KEY, vector BLOB NOT NULL, created_at REAL NOT NULL,
    embedded_at REAL NOT NULL, version INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS vectors_version ON vectors (version);
CREATE TABLE IF NOT EXISTS failures (
    item_id INTEGER PRIMARY KEY, reason TEXT NOT NULL, created_at REAL NOT NULL, failed_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS feed_files (name TEXT PRIMARY KEY, rows INTEGER NOT NULL, committed_at REAL NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('format', '{STORE_FORMAT}'), ('version', '0');
COMMIT;
"""


# -- checks -------------------------------------------------------------------------
def first_repeat(item_ids: np.ndarray) -> int | None:
    """The row of the first ID that an earlier row already holds, ``None`` if every ID is once.

    Example::

        >>> first_repeat(np.array([4, 9, 2, 9, 4])), first_repeat(np.array([1, 2]))
        (3, None)
    """
    _, first = np.unique(item_ids, return_index=True)
    if len(first) == len(item_ids):
        return None
    repeat = np.ones(len(item_ids), dtype=bool)
    repeat[first] = False
    return int(np.flatnonzero(repeat)[0])


def _check_shape(item_ids: np.ndarray, vectors: np.ndarray, dim: int, source: Path | str) -> None:
    """Refuses vectors not of shape (N, ``dim``) and a count of IDs other than N."""
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        item = f"item {item_ids[0]}: " if len(item_ids) else ""
        raise ValueError(f"{source}: {item}vectors have shape {vectors.shape}, expected (N, {dim}) for D={dim}")
    if len(item_ids) != len(vectors):
        raise ValueError(f"{source}: {len(item_ids)} item IDs for {len(vectors)} vectors")


def _row_fault(row: np.ndarray, norm: float) -> str:
    """What is wrong with one refused row (not finite, zero, or not unit norm)."""
    if not np.isfinite(row).all():
        nan, inf = int(np.isnan(row).sum()), int(np.isinf(row).sum())
        return f"vector not finite ({nan} NaN, {inf} inf of D={len(row)}: {row[:4]}...)"
    if norm < MIN_NORM:
        return f"zero vector (norm {norm:.3g}), expected unit norm"
    return (f"vector of norm {norm:.6g}, expected unit norm (|norm - 1| <= UNIT_TOL = {UNIT_TOL:g}); "
            f"{RENORMALIZE_HINT}")  # fmt: skip


def check_vectors(item_ids: np.ndarray, vectors: np.ndarray, dim: int, source: Path | str) -> None:
    """Checks item vectors: width ``dim``, one ID per row, finite and unit-norm rows, no repeated ID.

    Vectorised (no loop over rows). Unit norm: ``|norm - 1| <= UNIT_TOL`` (1e-3).

    Args:
        item_ids (np.ndarray): int (N,).
        vectors (np.ndarray): float (N, D), checked as float32.
        dim (int): the width expected.
        source (Path | str): where the vectors come from (a file, a store); starts every message.

    Raises:
        ValueError: vectors not of shape (N, ``dim``) (a mismatched D), a count
            of IDs other than N, the first row that is not finite, zero, or of
            a norm more than ``UNIT_TOL`` from 1, the first repeated ID; each
            message names ``source`` and the item.

    Example::

        >>> check_vectors(np.array([1, 2]), np.eye(2, dtype=np.float32), dim=2, source="t")
        >>> v = np.array([[1, 0], [0, 2]], np.float32)
        >>> check_vectors(np.array([1, 2]), v, dim=2, source="t")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: t: item 2: vector of norm 2, expected unit norm (|norm - 1| <= UNIT_TOL = 0.001); ...
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    _check_shape(item_ids, vectors, dim, source)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(vectors, axis=1)  # NaN/inf for rows that are not finite
        bad = ~np.isfinite(vectors).all(axis=1) | ~(np.abs(norms - 1.0) <= UNIT_TOL)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{source}: item {item_ids[i]}: {_row_fault(vectors[i], float(norms[i]))}")
    i = first_repeat(item_ids)
    if i is not None:
        first = int(np.flatnonzero(item_ids == item_ids[i])[0])
        raise ValueError(f"{source}: item {item_ids[i]}: repeated item ID (rows {first} and {i}), "
                         "expected one row per item")


def renormalize_vectors(
    item_ids: np.ndarray, vectors: np.ndarray, dim: int, source: Path | str
) -> tuple[np.ndarray, int]:
    """Scales finite rows of norm off 1 by more than ``UNIT_TOL`` to unit norm, then :func:`check_vectors`.

    Args:
        item_ids (np.ndarray): int (N,).
        vectors (np.ndarray): float (N, D); not modified.
        dim (int): the width expected.
        source (Path | str): where the vectors come from; starts every message.

    Returns:
        tuple[np.ndarray, int]: the vectors, float32 (N, D), and how many rows were re-normalised.

    Raises:
        ValueError: as :func:`check_vectors`: a zero (norm < ``MIN_NORM``) or
            non-finite row is still refused, as are widths and repeated IDs.

    Example::

        >>> v, n = renormalize_vectors(np.array([1, 2]), np.array([[1, 0], [0, 2]], np.float32), 2, "t")
        >>> v.tolist(), n
        ([[1.0, 0.0], [0.0, 1.0]], 1)
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    _check_shape(item_ids, vectors, dim, source)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(vectors, axis=1)
        fix = np.isfinite(vectors).all(axis=1) & (norms >= MIN_NORM) & (np.abs(norms - 1.0) > UNIT_TOL)
    if fix.any():
        vectors = vectors.copy()
        vectors[fix] /= norms[fix, None]
    check_vectors(item_ids, vectors, dim, source)
    return vectors, int(fix.sum())


# -- the table ----------------------------------------------------------------------
def vectors_schema(dim: int) -> pa.Schema:
    """The Parquet schema of a table of width ``dim``: ``item_id`` int64, ``vector`` fixed_size_list<float>[D]."""
    return pa.schema(
        [
            pa.field("item_id", pa.int64(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def write_item_vectors(path: Path, item_ids: np.ndarray, vectors: np.ndarray, dim: int) -> None:
    """Writes the table after :func:`check_vectors`; nothing is written on error.

    Args:
        path (Path): the ``item_vectors.parquet`` to write (replaced atomically).
        item_ids (np.ndarray): int (N,).
        vectors (np.ndarray): float (N, D), stored as float32.
        dim (int): D.

    Raises:
        ValueError: see :func:`check_vectors`.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    check_vectors(item_ids, vectors, dim, source=path)
    table = pa.table(
        {"item_id": item_ids, "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)},
        schema=vectors_schema(dim),
    )
    tmp = Path(path).with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_item_vectors(path: Path, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids (N,) int64, vectors (N, D) float32) of a vector table file (:func:`table_arrays`)."""
    return table_arrays(pq.read_table(path), path, dim)


def table_arrays(table: pa.Table, path: Path | str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids (N,) int64, vectors (N, D) float32) of a vector table, its structure checked.

    ``vector`` may be a ``fixed_size_list<float>[D]`` (what :func:`write_item_vectors`
    writes) or a ``list<float>`` of one length; nulls are found from Arrow's
    validity before anything is flattened. Values are not checked here
    (:func:`load_vectors` runs :func:`check_vectors`).

    Args:
        table (pa.Table): the table as read.
        path (Path | str): the file it was read from; starts every message.
        dim (int | None): the declared width (``vectors.json`` "dim"); ``None``:
            the fixed list size, or the first row's length.

    Raises:
        ValueError: the file lacks the columns ``item_id`` (integer) and
            ``vector`` (a list of floats); a null ``item_id`` (naming the row);
            naming the first such item: a null vector, a vector of another
            length than D, a null value inside a vector.
    """
    if "vector" not in table.column_names or "item_id" not in table.column_names:
        raise ValueError(f"{path}: expected columns item_id and vector, got {table.column_names}")
    vtype, itype = table.schema.field("vector").type, table.schema.field("item_id").type
    is_list = pa.types.is_fixed_size_list(vtype) or pa.types.is_list(vtype) or pa.types.is_large_list(vtype)
    if not is_list or not pa.types.is_floating(vtype.value_type) or not pa.types.is_integer(itype):
        raise ValueError(f"{path}: columns item_id {itype}, vector {vtype}; expected an integer item_id "
                         "and vector fixed_size_list<float>[D] (or list<float> of one length)")  # fmt: skip
    id_col = table["item_id"].combine_chunks()
    if id_col.null_count:
        row = int(np.flatnonzero(id_col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{path}: row {row}: item_id is null")
    ids = id_col.to_numpy().astype(np.int64)
    col = table["vector"].combine_chunks()
    if col.null_count:
        i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{path}: item {ids[i]}: vector is null (row {i})")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    declared = dim is not None
    if dim is None:
        dim = vtype.list_size if pa.types.is_fixed_size_list(vtype) else int(lengths[0]) if len(lengths) else 0
    wrong = lengths != dim
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        said = f"{VECTORS_MANIFEST} 'dim'" if declared else "the first row's"
        raise ValueError(f"{path}: item {ids[i]}: vector of length {lengths[i]}, expected D={dim} ({said})")
    values = col.flatten()  # N * D values: no null rows left to drop
    if values.null_count:
        i = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]) // dim
        raise ValueError(f"{path}: item {ids[i]}: vector holds a null value")
    vectors = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(ids), dim)
    return ids, vectors


# -- the store, read side -----------------------------------------------------------
@dataclass(frozen=True)
class StoreSnapshot:
    """Vectors of a store at one version, ascending ``item_id``."""

    item_ids: np.ndarray  # int64 (M,)
    vectors: np.ndarray  # float32 (M, D)
    version: int  # the store version they are of
    dim: int  # D (0 if unbound)
    encoder_sha256: str  # the encoder they came from ("" if unbound)


def is_store(path: Path) -> bool:
    """Whether ``path`` is an SQLite file (a vector store, or another SQLite database)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def table_sha256(path: Path) -> str | None:
    """SHA-256 (hex) of a vector table's bytes, the identity a run records of the table it trained on; ``None``
    for a vector store, whose rows change as items arrive (its version is recorded instead).

    Example::

        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / VECTORS_FILE
        >>> _ = f.write_bytes(b"abc")
        >>> table_sha256(f)[:12]
        'ba7816bf8f01'
    """
    path = Path(path)
    if is_store(path):
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def store_meta(db: sqlite3.Connection, key: str) -> str | None:
    """The ``meta`` table's value of ``key``, ``None`` if absent."""
    # fetchall, not fetchone: a statement left unfinished would pin the reader to an old snapshot
    rows = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchall()
    return rows[0][0] if rows else None


def check_store(db: sqlite3.Connection, path: Path) -> None:
    """Checks that an open SQLite file is a vector store of format ``STORE_FORMAT``.

    Raises:
        FileNotFoundError: no ``meta`` table (another database, or a store still being created); ``db`` is closed.
        ValueError: another store format.
    """
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
    if "meta" not in tables:
        db.close()
        raise FileNotFoundError(f"{path}: no 'meta' table: not a vector store, or one still being created")
    fmt = store_meta(db, "format")
    if fmt != STORE_FORMAT:
        raise ValueError(f"{path}: meta field 'format' is {fmt!r}, this mmctr reads store format {STORE_FORMAT}")


def open_store(path: Path) -> sqlite3.Connection:
    """A read-only connection to a vector store: never writes, never takes the write lock.

    Raises:
        FileNotFoundError: no file at ``path``, or not a vector store (:func:`check_store`).
        ValueError: another store format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no vector store (expected the --store of `mmctr embed-new`)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, **STORE_CONNECT)
    check_store(db, path)
    return db


def read_snapshot(db: sqlite3.Connection, since_version: int = 0) -> StoreSnapshot:
    """The vectors an open store added after ``since_version`` (all by default), in one read transaction.

    Raises:
        ValueError: naming the store file and the first such item: a vector that
            is not a BLOB of D float32 (D the store's bound ``dim``), or vectors
            in a store bound to no width. Values are checked by :func:`load_vectors`.
    """
    source = db.execute("PRAGMA database_list").fetchall()[0][2] or "the vector store"
    db.execute("BEGIN")
    try:
        version = int(store_meta(db, "version") or 0)
        dim_value = store_meta(db, "dim")
        dim = int(dim_value) if dim_value is not None else 0
        bad = db.execute(
            "SELECT item_id, typeof(vector), length(vector) FROM vectors WHERE version > ? "
            "AND (typeof(vector) != 'blob' OR length(vector) != ?) ORDER BY item_id LIMIT 1",
            (since_version, 4 * dim),
        ).fetchall()
        rows = [] if bad else db.execute(
            "SELECT item_id, vector FROM vectors WHERE version > ? ORDER BY item_id", (since_version,)
        ).fetchall()
        sha = store_meta(db, "encoder_sha256") or ""
    finally:
        db.execute("COMMIT")
    if bad:
        item, kind, size = bad[0]
        raise ValueError(f"{source}: item {item}: vector is a {kind} of {size} bytes, expected a blob of "
                         f"D={dim} float32 ({4 * dim} bytes; the store's meta 'dim' is {dim_value!r})")  # fmt: skip
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim).astype(np.float32)
    return StoreSnapshot(ids, vectors, version, dim, sha)


def read_store(path: Path, since_version: int = 0) -> StoreSnapshot:
    """:func:`read_snapshot` of the store at ``path``, opened read-only (:func:`open_store`) and closed again."""
    db = open_store(path)
    try:
        return read_snapshot(db, since_version)
    finally:
        db.close()


def merge_vectors(
    base_ids: np.ndarray, base_vectors: np.ndarray, snapshot: StoreSnapshot
) -> tuple[np.ndarray, np.ndarray]:
    """An item vector table from a base table and a store: the base's rows, plus the store's
    vectors of items the base lacks (new items), ascending ``item_id``.

    Args:
        base_ids (np.ndarray): int64 (N,), e.g. of ``item_vectors.parquet``.
        base_vectors (np.ndarray): float32 (N, D).
        snapshot (StoreSnapshot): the store's vectors (M, D).

    Returns:
        tuple[np.ndarray, np.ndarray]: item IDs (K,) and vectors (K, D), K = N + new items.

    Raises:
        ValueError: the store's D differs from the table's.

    Example::

        >>> snap = StoreSnapshot(np.array([2, 5]), np.full((2, 2), 9, np.float32), 1, 2, "")
        >>> ids, vec = merge_vectors(np.array([3, 2]), np.zeros((2, 2), np.float32), snap)
        >>> ids.tolist(), vec[:, 0].tolist()
        ([2, 3, 5], [0.0, 0.0, 9.0])
    """
    if len(snapshot.item_ids) and snapshot.vectors.shape[1] != base_vectors.shape[1]:
        raise ValueError(f"the store's vectors have D={snapshot.vectors.shape[1]}, the table's D={base_vectors.shape[1]}")
    new = ~np.isin(snapshot.item_ids, base_ids)
    store_vectors = snapshot.vectors.reshape(len(snapshot.item_ids), base_vectors.shape[1])  # an empty store: (0, D)
    ids = np.concatenate([np.asarray(base_ids, np.int64), snapshot.item_ids[new]])
    vectors = np.concatenate([np.asarray(base_vectors, np.float32), store_vectors[new]])
    order = np.argsort(ids, kind="stable")
    return ids[order], vectors[order]


# -- what the CTR side loads ---------------------------------------------------------
@dataclass(frozen=True)
class ItemVectors:
    """The multimodal item vector table and where it came from."""

    item_ids: np.ndarray  # int64 (M,), each once
    vectors: np.ndarray  # float32 (M, D), finite, unit norm within UNIT_TOL
    path: Path  # the item_vectors.parquet file, or the vector store
    manifest: dict  # its vectors.json (method, D, hashes), {} if absent; "store_version" when a store was read;
    # "renormalized" (rows) when loaded with renormalize=True
    renormalized: int = 0  # rows scaled to unit norm on load (renormalize=True), table and store together

    @property
    def dim(self) -> int:
        """D, the width of the vectors."""
        return int(self.vectors.shape[1])


def _checked(
    item_ids: np.ndarray, vectors: np.ndarray, dim: int, source: Path, renormalize: bool
) -> tuple[np.ndarray, int]:
    """(vectors (N, D) float32, rows re-normalised) after :func:`check_vectors` or :func:`renormalize_vectors`."""
    if not renormalize:
        check_vectors(item_ids, vectors, dim, source)
        return np.asarray(vectors, np.float32), 0
    vectors, fixed = renormalize_vectors(item_ids, vectors, dim, source)
    if fixed:
        LOG.warning("%s: re-normalised %d of %d item vectors to unit norm (renormalize)", source, fixed, len(vectors))
    return vectors, fixed


def load_vectors(path: Path, store: Path | None = None, renormalize: bool = False) -> ItemVectors:
    """Reads an item vector table, or a vector store, or both merged; checks each at the door.

    The table (:func:`read_item_vectors`, its width the ``vectors.json``
    "dim" when given), the store's snapshot (its bound dim) and the merged
    result each pass :func:`check_vectors`: finite, unit norm
    (``|norm - 1| <= UNIT_TOL`` = 1e-3), one row per item, width D.

    Args:
        path (Path): an ``item_vectors.parquet`` file, a run folder holding one, or
            a vector store (the SQLite file of ``mmctr embed-new``).
        store (Path | None): a vector store whose vectors are added for the items
            the table at ``path`` lacks (new items); the table's rows are kept as
            they are. One call refreshes the frozen table:
            ``fill_mm_table(arch, load_vectors(run, store=store), n)``.
        renormalize (bool): scale finite, non-zero rows that are not unit norm
            to unit norm instead of refusing them (logged; counted in
            ``renormalized`` and ``manifest["renormalized"]``). Zero and
            non-finite rows are refused all the same.

    Returns:
        ItemVectors: (M, D) vectors; a store's version goes into
        ``manifest["store_version"]``.

    Raises:
        FileNotFoundError: no table at ``path`` (nor in it), or no store at ``store``.
        ValueError: ``path`` is a store and ``store`` is given; a table and a
            store made by different encoders (``encoder_sha256``); widths that
            differ (:func:`merge_vectors`); naming the file and the first bad
            item: a null row or value, a row of another width than declared,
            a NaN or inf, a zero or non-unit row, an item listed twice.
    """
    path = Path(path)
    if is_store(path):
        if store is not None:
            raise ValueError(f"{path} is a vector store; pass the item_vectors.parquet table as path to merge {store}")
        snap = read_store(path)
        vectors, fixed = _checked(snap.item_ids, snap.vectors, snap.dim, path, renormalize)
        meta = {"dim": snap.dim, "encoder_sha256": snap.encoder_sha256, "store_version": snap.version}
        if renormalize:
            meta["renormalized"] = fixed
        return ItemVectors(item_ids=snap.item_ids, vectors=vectors, path=path, manifest=meta, renormalized=fixed)
    file = artefact_path(path, VECTORS_FILE)
    if not file.exists():
        raise FileNotFoundError(f"{file}: no item vector table (expected {VECTORS_FILE} from `mmctr pretrain`)")
    meta_file = file.parent / VECTORS_MANIFEST
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    declared = int(meta["dim"]) if meta.get("dim") is not None else None
    ids, vectors = read_item_vectors(file, dim=declared)
    vectors, fixed = _checked(ids, vectors, vectors.shape[1], file, renormalize)
    if store is not None:
        snap = read_store(store)
        table_sha = meta.get("encoder_sha256", "")
        if table_sha and snap.encoder_sha256 and table_sha != snap.encoder_sha256:
            raise ValueError(f"{store}: vectors of encoder {snap.encoder_sha256[:12]}..., but {meta_file} says "
                             f"{table_sha[:12]}...; vectors of two encoders cannot share a table")  # fmt: skip
        store_vectors, store_fixed = _checked(snap.item_ids, snap.vectors, snap.dim, Path(store), renormalize)
        ids, vectors = merge_vectors(ids, vectors, replace(snap, vectors=store_vectors))
        check_vectors(ids, vectors, vectors.shape[1], source=f"{file} merged with {store}")
        fixed += store_fixed
        meta = {**meta, "store": str(store), "store_version": snap.version}
    if renormalize:
        meta = {**meta, "renormalized": fixed}
    return ItemVectors(item_ids=ids, vectors=vectors, path=file, manifest=meta, renormalized=fixed)
