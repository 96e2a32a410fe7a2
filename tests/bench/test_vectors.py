"""Vector tables the benches write (``bench.vectors``): random and the world's hidden semantics."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np

import bench.vectors
from bench.vectors import world_items, write_random_vectors, write_truth_vectors
from recsys.data.vectors import load_vectors


def test_doc_examples() -> None:
    assert doctest.testmod(bench.vectors).failed == 0


def test_every_item_gets_a_unit_vector_under_its_own_id(unlike_log: Path, tiny_world: Path, tmp_path: Path) -> None:
    table = load_vectors(write_random_vectors(unlike_log, tmp_path / "random", dim=12))  # raw 64-bit item IDs
    assert np.array_equal(np.sort(table.item_ids), np.sort(world_items(unlike_log))) and table.dim == 12
    truth = load_vectors(write_truth_vectors(tiny_world, tmp_path / "truth"))
    assert np.array_equal(np.sort(truth.item_ids), np.sort(world_items(tiny_world)))
    np.testing.assert_allclose(np.linalg.norm(truth.vectors, axis=1), 1.0, atol=1e-5)
