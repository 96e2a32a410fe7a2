"""Item vectors: the table, the store's snapshot, their checks, and ``load_vectors`` (table, store, or both merged)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recsys.data.vectors import (
    STORE_FORMAT,
    UNIT_TOL,
    VECTORS_FILE,
    VECTORS_MANIFEST,
    StoreSnapshot,
    check_vectors,
    is_store,
    load_vectors,
    merge_vectors,
    read_item_vectors,
    read_store,
    table_arrays,
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


# -- checked at the door: vectors not written by `mmctr pretrain` ---------------------
N = 12


def _raw_table(folder: Path, ids: np.ndarray, rows: list, vector_type: object, dim: int | None = D) -> Path:
    """A table written around :func:`write_item_vectors` (another encoder's export, an edited table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"item_id": pa.array(ids, pa.int64()), "vector": pa.array(rows, vector_type)}),
                   folder / VECTORS_FILE)  # fmt: skip
    (folder / VECTORS_MANIFEST).write_text(json.dumps({"method": "other", **({"dim": dim} if dim else {})}))
    return folder / VECTORS_FILE


def _ids_and_vectors(salt: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.default_rng(salt).permutation(100)[:N] + 1000  # not sorted, not row numbers
    return ids, _unit(list(ids), salt)


def _first_bad(bad_rows: np.ndarray, ids: np.ndarray) -> int:
    return int(ids[np.flatnonzero(bad_rows)[0]])


@pytest.mark.parametrize("fault", ["nan", "inf", "non-unit", "zero"])
def test_a_table_with_a_bad_value_is_refused_naming_file_and_first_item(tmp_path: Path, fault: str) -> None:
    import pyarrow as pa

    ids, v = _ids_and_vectors(3)
    value = {"nan": np.nan, "inf": -np.inf, "non-unit": 1.5, "zero": 0.0}[fault]
    if fault in ("nan", "inf"):
        v[[7, 4], [1, 3]] = value  # two bad rows: the first in row order is named
        bad = ~np.isfinite(v).all(axis=1)
        message = "vector not finite"
    else:
        v[[9, 5]] *= value
        bad = np.abs(np.linalg.norm(v, axis=1) - 1) > 1e-3
        message = "zero vector" if fault == "zero" else "vector of norm 1.5, expected unit norm"
    file = _raw_table(tmp_path, ids, list(v), pa.list_(pa.float32(), D))
    with pytest.raises(ValueError, match=f"^{file}: item {_first_bad(bad, ids)}: {message}"):
        load_vectors(tmp_path)


def test_a_norm_within_unit_tol_passes_and_one_beyond_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa

    ids, v = _ids_and_vectors(4)
    v[2] *= 1 + 0.9 * UNIT_TOL
    _raw_table(tmp_path / "ok", ids, list(v), pa.list_(pa.float32(), D))
    assert load_vectors(tmp_path / "ok").vectors.shape == (N, D)
    v[6] *= 1 - 1.5 * UNIT_TOL
    file = _raw_table(tmp_path / "off", ids, list(v), pa.list_(pa.float32(), D))
    with pytest.raises(ValueError, match=f"^{file}: item {ids[6]}: vector of norm 0.9985"):
        load_vectors(file)


@pytest.mark.parametrize("where", ["row", "value"])
def test_a_table_with_a_null_is_refused_naming_file_and_first_item(tmp_path: Path, where: str) -> None:
    import pyarrow as pa

    ids, v = _ids_and_vectors(5)
    rows: list = [list(map(float, r)) for r in v]
    for r in (8, 3):
        if where == "row":
            rows[r] = None
        else:
            rows[r][2] = None
    null = np.array([r is None or None in r for r in rows])
    message = "vector is null" if where == "row" else "vector holds a null value"
    # pyarrow cannot write a null row of a fixed-size list to Parquet ("non-zero length null components");
    # a null row arrives as a plain list<float>
    types = [pa.list_(pa.float32())] + ([pa.list_(pa.float32(), D)] if where == "value" else [])
    for vector_type in types:
        file = _raw_table(tmp_path, ids, rows, vector_type)
        with pytest.raises(ValueError, match=f"^{file}: item {_first_bad(null, ids)}: {message}"):
            load_vectors(file)


def test_a_null_row_of_a_fixed_size_list_is_found_before_flattening() -> None:
    """Arrow's flatten() drops null rows of a fixed-size list: N - 1 rows would read as N (mis-shaped)."""
    import pyarrow as pa

    ids, v = _ids_and_vectors(10)
    null = np.zeros(N, dtype=bool)
    null[[6, 11]] = True
    column = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), D, mask=pa.array(null))
    table = pa.table({"item_id": pa.array(ids), "vector": column})
    with pytest.raises(ValueError, match=f"^t.parquet: item {_first_bad(null, ids)}: vector is null"):
        table_arrays(table, "t.parquet", dim=D)


def test_a_repeated_item_id_is_refused_naming_file_and_the_first_repeat(tmp_path: Path) -> None:
    import pyarrow as pa

    ids, v = _ids_and_vectors(6)
    ids[[10, 7]] = ids[[2, 1]]  # items of rows 2 and 1 listed again, at rows 10 and 7
    seen: set[int] = set()
    repeat = np.array([i in seen or seen.add(i) for i in ids.tolist()], dtype=bool)  # a later row of a seen ID
    file = _raw_table(tmp_path, ids, list(v), pa.list_(pa.float32(), D))
    with pytest.raises(ValueError, match=f"^{file}: item {_first_bad(repeat, ids)}: repeated item ID"):
        load_vectors(tmp_path)


def test_a_width_other_than_vectors_json_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa

    ids, v = _ids_and_vectors(7)
    wide = np.concatenate([v, np.zeros((N, 1), np.float32)], axis=1)  # still unit norm, D + 1 wide
    file = _raw_table(tmp_path, ids, list(wide), pa.list_(pa.float32(), D + 1), dim=D)
    with pytest.raises(ValueError, match=rf"^{file}: item {ids[0]}: vector of length {D + 1}, expected D={D} "
                                         rf"\({VECTORS_MANIFEST} 'dim'\)"):  # fmt: skip
        load_vectors(tmp_path)
    _raw_table(tmp_path, ids, list(wide), pa.list_(pa.float32(), D + 1), dim=None)  # no declared width: read as is
    assert load_vectors(tmp_path).dim == D + 1


def test_a_ragged_list_column_is_refused_naming_the_first_item_of_another_length(tmp_path: Path) -> None:
    import pyarrow as pa

    ids, v = _ids_and_vectors(8)
    rows = [list(map(float, r)) for r in v]
    ragged = list(rows)
    ragged[9], ragged[4] = rows[9][:-1], rows[4] + [0.0]
    wrong = np.array([len(r) != D for r in ragged])
    for dim in (D, None):  # declared, or the first row's length
        file = _raw_table(tmp_path, ids, ragged, pa.list_(pa.float32()), dim=dim)
        with pytest.raises(ValueError, match=f"^{file}: item {_first_bad(wrong, ids)}: vector of length 5, expected D={D}"):
            load_vectors(file)
    _raw_table(tmp_path, ids, rows, pa.list_(pa.float32()))  # one length: a list<float> column reads as a fixed one
    np.testing.assert_array_equal(load_vectors(tmp_path).vectors, v)


def _poke_store(store: Path, item_id: int, vector: bytes | str) -> None:
    """Writes one row straight into the store's file with sqlite3, around ``VectorStore.write``'s checks."""
    with sqlite3.connect(store) as db:
        db.execute("INSERT OR REPLACE INTO vectors VALUES (?, ?, 0, 0, 1)", (item_id, vector))
    db.close()


def test_a_store_snapshot_with_a_bad_row_is_refused_naming_the_store_and_item(run: Path, tmp_path: Path) -> None:
    ids = [31, 12, 40, 25, 19]
    store = _store(tmp_path / "v.sqlite", "sha-a", ids)
    vectors = _unit(ids, 1)
    for i in (3, 0):  # items 25 and 31 get a NaN; the snapshot is read by item_id
        vectors[i, 1] = np.nan
        _poke_store(store, ids[i], vectors[i].astype("<f4").tobytes())
    order = np.argsort(ids)
    first = _first_bad(~np.isfinite(vectors[order]).all(axis=1), np.array(ids)[order])
    for call in (lambda: load_vectors(store), lambda: load_vectors(run, store=store)):  # alone and merged
        with pytest.raises(ValueError, match=f"^{store}: item {first}: vector not finite"):
            call()
    _poke_store(store, 7, np.ones(D + 1, "<f4").tobytes())  # not D float32
    with pytest.raises(ValueError, match=f"^{store}: item 7: vector is a blob of {4 * (D + 1)} bytes, expected a blob of D={D}"):
        load_vectors(store)


def test_renormalize_scales_non_unit_rows_and_still_refuses_nan_and_zero(tmp_path: Path) -> None:
    import pyarrow as pa

    ids, v = _ids_and_vectors(9)
    scaled = v * np.where(np.arange(N) % 3 == 0, 2.5, 1.0)[:, None].astype(np.float32)
    file = _raw_table(tmp_path, ids, list(scaled), pa.list_(pa.float32(), D))
    with pytest.raises(ValueError, match="expected unit norm"):
        load_vectors(tmp_path)
    got = load_vectors(tmp_path, renormalize=True)
    want = scaled / np.linalg.norm(scaled, axis=1, keepdims=True)
    np.testing.assert_allclose(got.vectors, want, rtol=0, atol=1e-6)
    assert got.renormalized == got.manifest["renormalized"] == int((np.arange(N) % 3 == 0).sum())
    assert load_vectors(tmp_path, renormalize=True).item_ids.tolist() == ids.tolist()
    for value, message in ((np.nan, "vector not finite"), (0.0, "zero vector")):
        bad = scaled.copy()
        bad[5] *= value
        _raw_table(tmp_path, ids, list(bad), pa.list_(pa.float32(), D))
        with pytest.raises(ValueError, match=f"^{file}: item {ids[5]}: {message}"):
            load_vectors(tmp_path, renormalize=True)


def test_renormalize_covers_the_store_too(run: Path, tmp_path: Path) -> None:
    store = _store(tmp_path / "v.sqlite", "sha-a", [7, 8])
    _poke_store(store, 9, (3 * _unit([9], 2)[0]).astype("<f4").tobytes())
    with pytest.raises(ValueError, match=f"^{store}: item 9: vector of norm 3"):
        load_vectors(run, store=store)
    merged = load_vectors(run, store=store, renormalize=True)
    np.testing.assert_allclose(merged.vectors[merged.item_ids == 9][0], _unit([9], 2)[0], atol=1e-6)
    assert merged.renormalized == merged.manifest["renormalized"] == 1
    assert "renormalized" not in load_vectors(run).manifest  # the option off: the manifest as written


def test_mmctr_train_refuses_a_nan_row_for_the_most_shown_item_at_start(tiny_world: Path, tmp_path: Path) -> None:
    """The issue's case: D = 16, one NaN row for the most shown item; training must not start."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from recsys.models.config import ModelConfig
    from recsys.train.config import TrainConfig
    from recsys.train.trainer import TrainJob, run_train

    shown = ds.dataset(tiny_world / "impressions", format="parquet").to_table(columns=["item_id"])["item_id"]
    top = int(np.bincount(shown.to_numpy()).argmax())
    n = int(json.loads((tiny_world / "manifest.json").read_text())["id_ranges"]["item_id"])
    v = np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v[top] = np.nan
    file = _raw_table(tmp_path / "vectors", np.arange(n), list(v), pa.list_(pa.float32(), 16), dim=16)
    out = tmp_path / "run"
    job = TrainJob(world=tiny_world, out=out, model=ModelConfig(variant="simtier"), vectors=file,
                   train=TrainConfig(batch_size=256), quiet=True)  # fmt: skip
    with pytest.raises(ValueError, match=f"^{file}: item {top}: vector not finite"):
        run_train(job)
    assert not (out / "checkpoints").exists() and not (out / "train_log.json").exists()  # refused before step 1
    # The job's TrainConfig.renormalize_vectors (--renormalize-vectors) reaches the load: an item before the most
    # shown one, not unit norm, is refused without it and re-normalised with it; the NaN row is refused either way.
    early = top // 2
    assert early < top, "the tiny world's most shown item is item 0"
    v[early] *= 2
    _raw_table(tmp_path / "vectors", np.arange(n), list(v), pa.list_(pa.float32(), 16), dim=16)
    with pytest.raises(ValueError, match=f"^{file}: item {early}: vector of norm 2"):
        run_train(job)
    with pytest.raises(ValueError, match=f"^{file}: item {top}: vector not finite"):
        run_train(replace(job, train=TrainConfig(batch_size=256, renormalize_vectors=True)))

