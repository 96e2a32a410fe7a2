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
what training, evaluation, the retrain and serving load. Every check on
vectors (width, finite, unit norm within ``UNIT_TOL``, repeated IDs) is
:func:`check_vectors`.

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

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.paths import artefact_path

VECTORS_FILE = "item_vectors.parquet"
VECTORS_MANIFEST = "vectors.json"
UNIT_TOL = 1e-3  # |norm - 1| allowed

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
def check_vectors(item_ids: np.ndarray, vectors: np.ndarray, dim: int, source: Path | str) -> None:
    """Checks item vectors: width ``dim``, one ID per row, finite and unit-norm rows, no repeated ID.

    Args:
        item_ids (np.ndarray): int (N,).
        vectors (np.ndarray): float (N, D), checked as float32.
        dim (int): the width expected.
        source (Path | str): where the vectors come from (a file, a store); starts every message.

    Raises:
        ValueError: vectors not of shape (N, ``dim``) (a mismatched D), a count
            of IDs other than N, rows that are not finite or whose norm is
            more than ``UNIT_TOL`` from 1 (naming the first such item),
            repeated IDs.

    Example::

        >>> check_vectors(np.array([1, 2]), np.eye(2, dtype=np.float32), dim=2, source="t")
        >>> check_vectors(np.array([1, 2]), np.array([[1, 0], [0, 2]], np.float32), dim=2, source="t")
        Traceback (most recent call last):
        ...
        ValueError: t: item 2: vector not finite or not unit norm ([0. 2.]...)
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"{source}: vectors have shape {vectors.shape}, expected (N, {dim}) for D={dim}")
    if len(item_ids) != len(vectors):
        raise ValueError(f"{source}: {len(item_ids)} item IDs for {len(vectors)} vectors")
    bad = ~np.isfinite(vectors).all(axis=1) | (np.abs(np.linalg.norm(vectors, axis=1) - 1.0) > UNIT_TOL)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{source}: item {item_ids[i]}: vector not finite or not unit norm ({vectors[i][:4]}...)")
    if len(np.unique(item_ids)) != len(item_ids):
        raise ValueError(f"{source}: repeated item IDs")


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


def read_item_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids (N,) int64, vectors (N, D) float32) of a vector table.

    Raises:
        ValueError: the file lacks the columns ``item_id`` and ``vector``, or
            ``vector`` is not a fixed-size list.
    """
    table = pq.read_table(path)
    field = table.schema.field("vector") if "vector" in table.column_names else None
    if field is None or "item_id" not in table.column_names:
        raise ValueError(f"{path}: expected columns item_id and vector, got {table.column_names}")
    if not pa.types.is_fixed_size_list(field.type):
        raise ValueError(f"{path}: column 'vector' is {field.type}, expected fixed_size_list<float>[D]")
    dim = field.type.list_size
    values = table["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return table["item_id"].to_numpy().astype(np.int64), values.astype(np.float32).reshape(-1, dim)


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
    """The vectors an open store added after ``since_version`` (all by default), in one read transaction."""
    db.execute("BEGIN")
    try:
        version = int(store_meta(db, "version") or 0)
        dim_value = store_meta(db, "dim")
        dim = int(dim_value) if dim_value is not None else 0
        rows = db.execute(
            "SELECT item_id, vector FROM vectors WHERE version > ? ORDER BY item_id", (since_version,)
        ).fetchall()
        sha = store_meta(db, "encoder_sha256") or ""
    finally:
        db.execute("COMMIT")
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
    ids = np.concatenate([np.asarray(base_ids, np.int64), snapshot.item_ids[new]])
    vectors = np.concatenate([np.asarray(base_vectors, np.float32), snapshot.vectors[new]])
    order = np.argsort(ids, kind="stable")
    return ids[order], vectors[order]


# -- what the CTR side loads ---------------------------------------------------------
@dataclass(frozen=True)
class ItemVectors:
    """The multimodal item vector table and where it came from."""

    item_ids: np.ndarray  # int64 (M,)
    vectors: np.ndarray  # float32 (M, D), unit norm
    path: Path  # the item_vectors.parquet file, or the vector store
    manifest: dict  # its vectors.json (method, D, hashes), {} if absent; "store_version" when a store was read

    @property
    def dim(self) -> int:
        """D, the width of the vectors."""
        return int(self.vectors.shape[1])


def load_vectors(path: Path, store: Path | None = None) -> ItemVectors:
    """Reads an item vector table, or a vector store, or both merged.

    Args:
        path (Path): an ``item_vectors.parquet`` file, a run folder holding one, or
            a vector store (the SQLite file of ``mmctr embed-new``).
        store (Path | None): a vector store whose vectors are added for the items
            the table at ``path`` lacks (new items); the table's rows are kept as
            they are. One call refreshes the frozen table:
            ``fill_mm_table(arch, load_vectors(run, store=store), n)``.

    Returns:
        ItemVectors: (M, D) vectors; a store's version goes into
        ``manifest["store_version"]``.

    Raises:
        FileNotFoundError: no table at ``path`` (nor in it), or no store at ``store``.
        ValueError: ``path`` is a store and ``store`` is given; a table and a
            store made by different encoders (``encoder_sha256``); widths that
            differ (:func:`merge_vectors`).
    """
    path = Path(path)
    if is_store(path):
        if store is not None:
            raise ValueError(f"{path} is a vector store; pass the item_vectors.parquet table as path to merge {store}")
        snap = read_store(path)
        meta = {"dim": snap.dim, "encoder_sha256": snap.encoder_sha256, "store_version": snap.version}
        return ItemVectors(item_ids=snap.item_ids, vectors=snap.vectors, path=path, manifest=meta)
    file = artefact_path(path, VECTORS_FILE)
    if not file.exists():
        raise FileNotFoundError(f"{file}: no item vector table (expected {VECTORS_FILE} from `mmctr pretrain`)")
    ids, vectors = read_item_vectors(file)
    meta_file = file.parent / VECTORS_MANIFEST
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    ids = np.asarray(ids, dtype=np.int64)
    if store is not None:
        snap = read_store(store)
        table_sha = meta.get("encoder_sha256", "")
        if table_sha and snap.encoder_sha256 and table_sha != snap.encoder_sha256:
            raise ValueError(f"{store}: vectors of encoder {snap.encoder_sha256[:12]}..., but {meta_file} says "
                             f"{table_sha[:12]}...; vectors of two encoders cannot share a table")  # fmt: skip
        ids, vectors = merge_vectors(ids, vectors, snap)
        meta = {**meta, "store": str(store), "store_version": snap.version}
    return ItemVectors(item_ids=ids, vectors=np.asarray(vectors), path=file, manifest=meta)
