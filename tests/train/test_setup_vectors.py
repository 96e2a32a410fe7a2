"""``load_vectors`` reads the vector table, the vector store, or both merged (the frozen table's refresh)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys.data.vectors import VECTORS_FILE, VECTORS_MANIFEST, write_item_vectors
from recsys.train.setup import load_vectors
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
