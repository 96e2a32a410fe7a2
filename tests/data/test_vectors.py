"""Item vectors: the table, the store's snapshot, their checks, and ``load_vectors`` (table, store, or both merged)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from recsys.data.vectors import (
    STORE_FORMAT,
    VECTORS_FILE,
    VECTORS_MANIFEST,
    StoreSnapshot,
    check_vectors,
    is_store,
    load_vectors,
    merge_vectors,
    read_item_vectors,
    read_store,
    write_item_vectors,
)
from serving.store import VectorStore

D = 4


def _unit(ids: list[int], salt: int) -> np.ndarray:
    v = np.random.default_rng(salt).standard_normal((len(ids), D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A pretrain run folder: vectors of items 0..4 by encoder "sha-a"."""
    write_item_vectors(tmp_path / VECTORS_FILE, np.arange(5), _unit(list(range(5)), 0), dim=D)
    (tmp_path / VECTORS_MANIFEST).write_text(json.dumps({"method": "scl", "dim": D, "encoder_sha256": "sha-a"}))
    return tmp_path


def _store(path: Path, sha: str, ids: list[int]) -> Path:
    with VectorStore(path) as store:
        store.bind(D, sha)
        store.write(np.array(ids), _unit(ids, 1), np.zeros(len(ids)))
    return path


# -- the table and its checks ---------------------------------------------------------
def test_the_table_round_trips_as_float32(tmp_path: Path) -> None:
    v = _unit([3, 1, 2], 0).astype(np.float64)
    write_item_vectors(tmp_path / VECTORS_FILE, np.array([3, 1, 2]), v, dim=D)
    ids, got = read_item_vectors(tmp_path / VECTORS_FILE)
    assert ids.dtype == np.int64 and ids.tolist() == [3, 1, 2]  # rows as written
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, v.astype(np.float32))


def test_export_rejects_mismatched_dim(tmp_path: Path) -> None:
    vectors = np.eye(3, 8, dtype=np.float32)
    with pytest.raises(ValueError, match=r"expected \(N, 16\) for D=16"):
        write_item_vectors(tmp_path / VECTORS_FILE, np.array([1, 2, 3]), vectors, dim=16)
    assert not (tmp_path / VECTORS_FILE).exists()


@pytest.mark.parametrize("bad, fault", [(0.5, "vector of norm 0.5, expected unit norm"), (np.nan, "vector not finite")])
def test_export_rejects_a_vector_that_is_not_unit_norm(tmp_path: Path, bad: float, fault: str) -> None:
    vectors = np.eye(3, 4, dtype=np.float32)
    vectors[1] *= bad
    with pytest.raises(ValueError, match=f"item 42: {fault}"):
        write_item_vectors(tmp_path / VECTORS_FILE, np.array([41, 42, 43]), vectors, dim=4)
    assert not (tmp_path / VECTORS_FILE).exists()


def test_check_vectors_names_its_source_and_each_fault() -> None:
    eye = np.eye(2, dtype=np.float32)
    check_vectors(np.array([1, 2]), eye * (1 + 0.9e-3), dim=2, source="ok")  # within UNIT_TOL
    faults = {
        "item 1: vectors have shape": (np.array([1, 2]), eye, 3),
        "3 item IDs for 2 vectors": (np.array([1, 2, 3]), eye, 2),
        "item 2: vector of norm 1.01, expected unit norm": (np.array([1, 2]), eye * [[1], [1.01]], 2),
        "item 2: zero vector": (np.array([1, 2]), eye * [[1], [0]], 2),
        r"item 7: repeated item ID \(rows 0 and 1\)": (np.array([7, 7]), eye, 2),
    }
    for message, (ids, vectors, dim) in faults.items():
        with pytest.raises(ValueError, match=f"^store.sqlite: {message}"):
            check_vectors(ids, vectors, dim, source=Path("store.sqlite"))


def test_a_table_without_its_columns_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"item_id": [1], "vec": [[1.0]]}), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="expected columns item_id and vector"):
        read_item_vectors(tmp_path / "t.parquet")


# -- the store, read side -------------------------------------------------------------
def test_read_store_is_the_writers_snapshot(tmp_path: Path) -> None:
    path = _store(tmp_path / "v.sqlite", "sha-a", [9, 7])
    with VectorStore(path) as writer:
        writer.write(np.array([8]), _unit([8], 2), np.zeros(1))
        want = writer.read()
    got = read_store(path)
    assert isinstance(got, StoreSnapshot)
    assert (got.version, got.dim, got.encoder_sha256) == (want.version, want.dim, want.encoder_sha256) == (2, D, "sha-a")
    assert got.item_ids.tolist() == want.item_ids.tolist() == [7, 8, 9]
    np.testing.assert_array_equal(got.vectors, want.vectors)
    assert got.vectors.dtype == np.float32
    assert read_store(path, since_version=1).item_ids.tolist() == [8]


def test_an_unbound_store_reads_as_empty(tmp_path: Path) -> None:
    VectorStore(tmp_path / "v.sqlite").close()
    snap = read_store(tmp_path / "v.sqlite")
    assert snap.item_ids.tolist() == [] and snap.vectors.shape == (0, 0) and (snap.version, snap.dim) == (0, 0)


def test_read_store_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no vector store"):
        read_store(tmp_path / "missing.sqlite")
    sqlite3.connect(tmp_path / "other.sqlite").execute("CREATE TABLE t (x)").connection.close()
    assert is_store(tmp_path / "other.sqlite") and not is_store(tmp_path / "missing.sqlite")
    with pytest.raises(FileNotFoundError, match="no 'meta' table: not a vector store"):
        read_store(tmp_path / "other.sqlite")
    old = _store(tmp_path / "old.sqlite", "sha-a", [1])
    with sqlite3.connect(old) as db:
        db.execute("UPDATE meta SET value = '0' WHERE key = 'format'")
    with pytest.raises(ValueError, match=f"'format' is '0', this mmctr reads store format {STORE_FORMAT}"):
        read_store(old)


def test_merge_keeps_the_table_and_adds_new_items() -> None:
    snap = StoreSnapshot(np.array([1, 5]), np.full((2, D), 0.5, np.float32), 1, D, "")
    ids, vectors = merge_vectors(np.array([2, 1]), np.zeros((2, D), np.float32), snap)
    assert ids.tolist() == [1, 2, 5]
    np.testing.assert_array_equal(vectors[:, 0], [0.0, 0.0, 0.5])  # item 1 keeps the table's row
    with pytest.raises(ValueError, match="D=4, the table's D=3"):
        merge_vectors(np.array([1]), np.zeros((1, 3), np.float32), snap)


# -- load_vectors ---------------------------------------------------------------------
def test_the_run_folder_and_its_table_load_alike(run: Path) -> None:
    by_folder, by_file = load_vectors(run), load_vectors(run / VECTORS_FILE)
    assert by_folder.path == by_file.path == run / VECTORS_FILE
    np.testing.assert_array_equal(by_folder.vectors, by_file.vectors)
    assert by_folder.manifest == by_file.manifest == {"method": "scl", "dim": D, "encoder_sha256": "sha-a"}
    (run / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"empty/{VECTORS_FILE}: no item vector table"):
        load_vectors(run / "empty")  # the file looked for is named


def test_a_store_loads_like_a_table(tmp_path: Path) -> None:
    store = _store(tmp_path / "v.sqlite", "sha-a", [9, 7])
    got = load_vectors(store)
    assert got.item_ids.tolist() == [7, 9] and got.dim == D and got.path == store
    np.testing.assert_array_equal(got.vectors, _unit([9, 7], 1)[::-1])
    assert got.manifest == {"dim": D, "encoder_sha256": "sha-a", "store_version": 1}


def test_table_plus_store_keeps_old_vectors_and_adds_new_items(run: Path, tmp_path: Path) -> None:
    store = _store(tmp_path / "v.sqlite", "sha-a", [3, 5, 6])  # item 3 is in the table too
    table = load_vectors(run)
    merged = load_vectors(run, store=store)
    assert merged.item_ids.tolist() == [0, 1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(merged.vectors[:5], table.vectors)  # the table's rows as they were
    np.testing.assert_array_equal(merged.vectors[5:], _unit([3, 5, 6], 1)[1:])
    assert merged.manifest["store_version"] == 1 and merged.manifest["method"] == "scl"


def test_vectors_of_two_encoders_are_refused(run: Path, tmp_path: Path) -> None:
    store = _store(tmp_path / "v.sqlite", "sha-b", [7])
    with pytest.raises(ValueError, match="vectors of two encoders cannot share a table"):
        load_vectors(run, store=store)
    with pytest.raises(ValueError, match="is a vector store"):
        load_vectors(store, store=store)
