"""The vector store's writer: one vector per item, versions, consistent snapshots under a concurrent writer.

Its read-only reader and the merge with a table are tested with the data layer (tests/data/test_vectors.py).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from recsys.data.vectors import STORE_FORMAT, read_store
from serving.store import VectorStore

D = 4


def _vectors(ids: np.ndarray, salt: float = 0.0) -> np.ndarray:
    """Unit rows that say which item they belong to: [id + salt, 1, 2, 3] normalised, float32 (N, D)."""
    ids = np.asarray(ids, np.float32)
    v = np.concatenate([ids[:, None] + np.float32(salt), np.tile(np.arange(1, D, dtype=np.float32), (len(ids), 1))], 1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path: Path) -> VectorStore:
    s = VectorStore(tmp_path / "vectors.sqlite")
    s.bind(dim=D, encoder_sha256="sha-a")
    yield s
    s.close()


def test_a_duplicate_never_gets_a_second_vector_nor_replaces_the_first(store: VectorStore) -> None:
    ids = np.array([1, 2, 3])
    first = store.write(ids, _vectors(ids), created_at=np.zeros(3))
    assert first.inserted.tolist() == [1, 2, 3] and first.version == 1
    again = store.write(np.array([3, 2, 4]), _vectors(np.array([3, 2, 4]), salt=0.5), created_at=np.ones(3))
    assert again.inserted.tolist() == [4] and again.version == 2
    replay = store.write(ids, _vectors(ids, salt=9.0), created_at=np.ones(3))
    assert replay.inserted.tolist() == [] and replay.version == 2 == store.version  # nothing added: same version
    snap = store.read()
    assert snap.item_ids.tolist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(snap.vectors, np.concatenate([_vectors(ids), _vectors(np.array([4]), 0.5)]))
    assert store.has_vector([4, 5, 1]).tolist() == [True, False, True]


def test_versions_let_readers_fetch_only_what_is_new(store: VectorStore) -> None:
    for v in range(1, 4):
        ids = np.arange(10 * v, 10 * v + 3)
        assert store.write(ids, _vectors(ids), np.zeros(3)).version == v
    assert store.read(since_version=2).item_ids.tolist() == [30, 31, 32]
    assert store.read(since_version=3).item_ids.tolist() == []
    assert len(store.read().item_ids) == 9 and store.read().version == 3


def test_failures_and_handled_files_commit_with_the_vectors(store: VectorStore) -> None:
    ids = np.array([1])
    store.write(ids, _vectors(ids), np.zeros(1), failures=[(7, "f, row 3: image undecodable", 5.0), (1, "x", 0.0)],
                handled_files=[("part-1.parquet", 2)])  # fmt: skip
    assert store.failures() == {7: "f, row 3: image undecodable"}  # item 1 has a vector: not a failure
    assert store.handled_files() == {"part-1.parquet"}
    store.write(np.array([7]), _vectors(np.array([7])), np.array([6.0]))  # a later event succeeds
    assert store.failures() == {}
    stats = store.stats()
    assert (stats.vectors, stats.failures, stats.version, stats.feed_files) == (2, 0, 2, 1)
    assert len(stats.latency_s) == 2 and (stats.latency_s > 0).all()


def test_a_failed_batch_commits_nothing(store: VectorStore) -> None:
    ids = np.array([1, 2])
    with pytest.raises(ValueError, match="vectors of shape"):
        store.write(ids, np.zeros((2, D + 1), np.float32), np.zeros(2), handled_files=[("part-1.parquet", 2)])
    with pytest.raises(ValueError, match="not enough values"):
        store.write(ids, _vectors(ids), np.zeros(2), handled_files=[("part-1.parquet",)])  # a bad row mid-transaction
    assert store.read().item_ids.tolist() == [] and store.handled_files() == set() and store.version == 0


@pytest.mark.parametrize("fault, message", [(np.nan, "vector not finite"), (0.0, "zero vector"),
                                            (3.0, "vector of norm 3, expected unit norm")])  # fmt: skip
def test_a_row_that_is_not_a_unit_vector_is_refused_at_write(store: VectorStore, fault: float, message: str) -> None:
    ids = np.array([4, 9, 6])
    vectors = _vectors(ids)
    vectors[1:] *= fault  # rows of items 9 and 6: the first is named
    with pytest.raises(ValueError, match=f"^{store.path}: item {ids[1]}: {message}"):
        store.write(ids, vectors, np.zeros(3))
    assert store.read().item_ids.tolist() == [] and store.version == 0


def test_one_store_one_encoder(store: VectorStore, tmp_path: Path) -> None:
    store.bind(dim=D, encoder_sha256="sha-a")  # the same encoder again: fine
    with pytest.raises(ValueError, match="'encoder_sha256' is 'sha-a', the encoder serves 'sha-b'"):
        store.bind(dim=D, encoder_sha256="sha-b")
    with pytest.raises(ValueError, match="'dim' is '4'"):
        store.bind(dim=8, encoder_sha256="sha-a")
    reader = VectorStore(store.path, readonly=True)
    with pytest.raises(PermissionError, match="read-only"):
        reader.write(np.array([1]), _vectors(np.array([1])), np.zeros(1))
    reader.close()
    with pytest.raises(FileNotFoundError, match="no vector store"):
        VectorStore(tmp_path / "missing.sqlite", readonly=True)
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(FileNotFoundError, match="no 'meta' table: not a vector store"):
        VectorStore(tmp_path / "other.sqlite", readonly=True)


def test_store_format_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    VectorStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '0' WHERE key = 'format'")
    with pytest.raises(ValueError, match=f"'format' is '0', this mmctr reads store format {STORE_FORMAT}"):
        VectorStore(path)


def test_readers_see_whole_batches_while_one_writer_writes(store: VectorStore) -> None:
    batches, per_batch = 60, 25
    done = threading.Event()

    def write() -> None:
        with VectorStore(store.path) as writer:  # its own connection, as another process would have
            for b in range(batches):
                ids = np.arange(b * per_batch, (b + 1) * per_batch)
                writer.write(ids, _vectors(ids), np.zeros(per_batch))
                time.sleep(0.002)  # leave the reader time to look between batches
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    seen, last = [], 0
    with VectorStore(store.path, readonly=True) as reader:
        while not done.is_set() or last < batches:
            snap = reader.read()
            assert len(snap.item_ids) == snap.version * per_batch  # never part of a batch
            np.testing.assert_array_equal(snap.vectors, _vectors(snap.item_ids))
            assert snap.version >= last
            new = reader.read(since_version=last)
            assert len(new.item_ids) == (new.version - last) * per_batch
            last = new.version
            seen.append(snap.version)
    thread.join()
    assert last == batches and len({v for v in seen if 0 < v < batches}) >= 2  # the reader saw the table grow


def test_what_the_writer_commits_the_data_layer_reads(store: VectorStore) -> None:
    store.write(np.array([5, 1]), _vectors(np.array([5, 1]), salt=0.5), np.zeros(2))
    snap = read_store(store.path)
    assert snap.item_ids.tolist() == [1, 5] and (snap.version, snap.dim, snap.encoder_sha256) == (1, D, "sha-a")
    np.testing.assert_array_equal(snap.vectors, store.read().vectors)
    np.testing.assert_array_equal(snap.vectors, _vectors(np.array([1, 5]), salt=0.5))
