"""The item vector store's writer: SQLite in WAL mode, one writer (the embedder), any number of readers.

The format (``STORE_SCHEMA``, ``STORE_FORMAT``) and the read-only reader the
CTR side uses (``read_store``, a :class:`~recsys.data.vectors.StoreSnapshot`)
belong to :mod:`recsys.data.vectors`; this module writes, and keeps the
bookkeeping only the embedder and the pipeline read (failures, handled feed
files, stats).

One file (plus SQLite's ``-wal`` and ``-shm``) with four tables::

    meta        key TEXT PRIMARY KEY, value TEXT       format, dim, encoder_sha256, version
    vectors     item_id INTEGER PRIMARY KEY,           one row per item, never overwritten
                vector BLOB (D little-endian float32), created_at REAL, embedded_at REAL (unix s),
                version INTEGER (the store version that added it)
    failures    item_id INTEGER PRIMARY KEY,           items that could not be embedded, and why
                reason TEXT, created_at REAL, failed_at REAL
    feed_files  name TEXT PRIMARY KEY, rows INTEGER, committed_at REAL    feed files fully handled

Guarantees:

- **one vector per item**: ``item_id`` is the primary key and vectors go in
  with ``INSERT OR IGNORE``, so a duplicate event or a replayed feed file
  never adds a second vector nor replaces the first;
- **atomic progress**: a write batch (its vectors, failures and the feed
  files it completes) is one transaction; a crash before the commit leaves
  none of it, so the writer redoes the batch (at-least-once delivery,
  idempotent writes);
- **versions**: ``version`` grows by one with every committed batch that adds
  vectors; readers see a consistent snapshot (WAL) and fetch only what a
  newer version added (:meth:`VectorStore.read` with ``since_version``);
- **one encoder**: the first writer binds the store to a width D and an
  encoder SHA-256; vectors of another encoder are refused.

Example::

    >>> import tempfile, numpy as np
    >>> store = VectorStore(Path(tempfile.mkdtemp()) / "vectors.sqlite")
    >>> store.bind(dim=2, encoder_sha256="abc")
    >>> v = np.array([[1, 0], [0, 1]], np.float32)  # unit rows: write() refuses others
    >>> store.write(np.array([7, 8]), v, created_at=np.array([1.0, 2.0])).inserted.tolist()
    [7, 8]
    >>> store.write(np.array([8, 9]), v, created_at=np.array([2.0, 3.0])).inserted.tolist()  # 8 is kept as it was
    [9]
    >>> snap = store.read()
    >>> snap.item_ids.tolist(), snap.version, store.read(since_version=1).item_ids.tolist()
    ([7, 8, 9], 2, [9])
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from recsys.data.vectors import (
    STORE_CONNECT,
    STORE_SCHEMA,
    StoreSnapshot,
    check_store,
    check_vectors,
    open_store,
    read_snapshot,
    store_meta,
)

_CHUNK = 500  # item IDs per `IN (...)` query


@dataclass(frozen=True)
class WriteResult:
    """What one :meth:`VectorStore.write` committed."""

    inserted: np.ndarray  # int64 item IDs that got their vector in this batch
    version: int  # the store version after the batch


@dataclass(frozen=True)
class StoreStats:
    """Counts and creation-to-vector latencies of a store."""

    vectors: int  # items with a vector
    failures: int  # items without one, each with a reason
    version: int  # the store version
    feed_files: int  # feed files fully handled
    latency_s: np.ndarray  # float64 (vectors,): embedded_at - created_at of each vector


class VectorStore:
    """The store of the module docstring; a context manager.

    Args:
        path (Path): the SQLite file (created when missing unless ``readonly``).
        readonly (bool): a reader: never writes, never takes the write lock.
    """

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            self._db = open_store(self.path)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, **STORE_CONNECT)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a power cut may drop the last commits, but never half of one; the feed
            # files of a dropped commit are not marked handled either, so they are redone.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(STORE_SCHEMA)
            check_store(self._db, self.path)

    # -- reading ------------------------------------------------------------------------
    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state."""
        self._db.execute("BEGIN")
        try:
            yield self._db
        finally:
            self._db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        return store_meta(self._db, key)

    @property
    def version(self) -> int:
        """Grows by one with every committed batch that added vectors."""
        return int(self._meta("version") or 0)

    @property
    def dim(self) -> int | None:
        value = self._meta("dim")
        return int(value) if value is not None else None

    @property
    def encoder_sha256(self) -> str:
        return self._meta("encoder_sha256") or ""

    def read(self, since_version: int = 0) -> StoreSnapshot:
        """The vectors added after ``since_version`` (all by default), as one consistent snapshot."""
        return read_snapshot(self._db, since_version)

    def has_vector(self, item_ids: Sequence[int]) -> np.ndarray:
        """bool (N,): which of ``item_ids`` already have a vector."""
        ids = [int(i) for i in item_ids]
        found: set[int] = set()
        for a in range(0, len(ids), _CHUNK):
            part = ids[a : a + _CHUNK]
            marks = ",".join("?" * len(part))
            found.update(r[0] for r in self._db.execute(f"SELECT item_id FROM vectors WHERE item_id IN ({marks})", part))
        return np.array([i in found for i in ids], dtype=bool)

    def handled_files(self) -> set[str]:
        """Names of the feed files whose every item has a vector or a failure."""
        return {r[0] for r in self._db.execute("SELECT name FROM feed_files")}

    def failures(self) -> dict[int, str]:
        """item_id -> reason, for items without a vector."""
        return {int(i): r for i, r in self._db.execute("SELECT item_id, reason FROM failures ORDER BY item_id")}

    def stats(self) -> StoreStats:
        with self._snapshot() as db:
            lat = [r[0] for r in db.execute("SELECT embedded_at - created_at FROM vectors")]
            failures = db.execute("SELECT COUNT(*) FROM failures").fetchall()[0][0]
            files = db.execute("SELECT COUNT(*) FROM feed_files").fetchall()[0][0]
            version = self.version
        return StoreStats(len(lat), int(failures), version, int(files), np.array(lat, dtype=np.float64))

    # -- writing ------------------------------------------------------------------------
    def bind(self, dim: int, encoder_sha256: str) -> None:
        """Binds an empty store to a width and an encoder; checks them on a bound one.

        Raises:
            ValueError: the store holds vectors of another width or encoder.
        """
        self._check_writer()
        with self._transaction() as db:
            for key, value in (("dim", str(dim)), ("encoder_sha256", encoder_sha256)):
                have = self._meta(key)
                if have is None:
                    db.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
                elif have != value:
                    raise ValueError(f"{self.path}: meta field {key!r} is {have!r}, the encoder serves {value!r}; "
                                     "vectors of two encoders cannot share a store (use a new --store)")  # fmt: skip

    def write(
        self,
        item_ids: np.ndarray,
        vectors: np.ndarray,
        created_at: np.ndarray,
        failures: Sequence[tuple[int, str, float]] = (),
        handled_files: Sequence[tuple[str, int]] = (),
    ) -> WriteResult:
        """Commits one batch in one transaction.

        Args:
            item_ids (np.ndarray): int64 (N,).
            vectors (np.ndarray): float32 (N, D).
            created_at (np.ndarray): float64 (N,), unix seconds each item was created.
            failures (Sequence[tuple[int, str, float]]): (item_id, reason, created_at) of items
                that could not be embedded; ignored for items that have a vector.
            handled_files (Sequence[tuple[str, int]]): (name, rows) of feed files this batch completes.

        Returns:
            WriteResult: the item IDs that got their vector now (the others had one), the version.

        Raises:
            ValueError: nothing is written when the shapes do not match the
                store's D, or a row is not finite or not unit norm, or an ID
                is twice in the batch (``check_vectors``, naming the first item).
        """
        self._check_writer()
        dim = self.dim
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if dim is None or vectors.ndim != 2 or vectors.shape[1] != dim or len(vectors) != len(item_ids):
            raise ValueError(f"{self.path}: {len(item_ids)} IDs and vectors of shape {vectors.shape}; "
                             f"the store holds D={dim} (bind it first)")  # fmt: skip
        check_vectors(item_ids, vectors, dim, source=self.path)  # the encoder's vectors are finite and unit norm
        now = time.time()
        with self._transaction() as db:
            version = self.version + 1
            inserted = []
            for item, vec, created in zip(item_ids.tolist(), vectors, np.asarray(created_at, np.float64).tolist()):
                cur = db.execute("INSERT OR IGNORE INTO vectors VALUES (?, ?, ?, ?, ?)",
                                 (item, vec.tobytes(), created, now, version))  # fmt: skip
                if cur.rowcount:
                    inserted.append(item)
            db.executemany("DELETE FROM failures WHERE item_id = ?", [(i,) for i in inserted])
            db.executemany(
                "INSERT OR REPLACE INTO failures SELECT ?, ?, ?, ? WHERE NOT EXISTS "
                "(SELECT 1 FROM vectors WHERE item_id = ?)",
                [(int(i), reason, float(c), now, int(i)) for i, reason, c in failures],
            )
            db.executemany("INSERT OR IGNORE INTO feed_files VALUES (?, ?, ?)", [(n, r, now) for n, r in handled_files])
            if inserted:
                db.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(version),))
            else:
                version -= 1
        return WriteResult(np.array(inserted, dtype=np.int64), version)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taking the write lock at once; rolled back on error."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _check_writer(self) -> None:
        if self.readonly:
            raise PermissionError(f"{self.path}: opened read-only")

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "VectorStore":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
