"""Scoring finished runs: the same numbers as the runs' own test-day evaluation; SimTier histograms against numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.data.schema import Manifest, table_files
from recsys.data.vectors import read_item_vectors
from recsys.train.run_folder import METRICS_FILE


def test_scores_reproduce_each_runs_metrics_json(eval_report: tuple[dict, Path], eval_runs: dict[str, Path]) -> None:
    report, _ = eval_report
    assert list(report["models"]) == ["simtier", "id_only"] and report["baseline"] == "id_only"
    for name, run in eval_runs.items():
        own = json.loads((run / METRICS_FILE).read_text())
        assert own["test_day"] == report["day"]
        for subset, values in own["metrics"].items():
            for key, value in values.items():
                got = report["models"][name]["metrics"][subset][key]
                assert got == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True) or (got is None and np.isnan(value)), \
                    (name, subset, key)


def _reference_tiers(world: Path, day: int, vectors: Path, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean hard tier share of clicked / non-clicked impressions, one impression at a time in numpy."""
    ids, vecs = read_item_vectors(vectors)
    table = np.zeros((Manifest.read(world).id_ranges["item_id"], vecs.shape[1]), dtype=np.float32)
    table[ids] = vecs
    L = Manifest.read(world).max_history_len
    sums, counts = np.zeros((2, T)), np.zeros(2)
    for path in table_files(world, "impressions"):
        rows = pq.read_table(path, columns=["day", "item_id", "history_item_ids", "label"]).to_pylist()
        for row in rows:
            hist = row["history_item_ids"][-L:]
            if row["day"] != day or not hist:
                continue
            sims = np.clip(table[hist] @ table[row["item_id"]], -1, 1)
            tiers = np.clip(np.floor((sims + 1) * T / 2).astype(int), 0, T - 1)
            label = int(row["label"])
            sums[label] += np.bincount(tiers, minlength=T) / len(hist)
            counts[label] += 1
    return sums[1] / counts[1], sums[0] / counts[0]


def test_tier_histograms_match_numpy_and_separate_clicks(eval_report: tuple[dict, Path], tiny_world: Path,
                                                         oracle_vectors: Path) -> None:
    report, _ = eval_report
    assert report["models"]["id_only"]["tiers"] is None
    tiers = report["models"]["simtier"]["tiers"]
    T = tiers["n_tiers"]
    clicked, not_clicked = np.array(tiers["clicked"]), np.array(tiers["not_clicked"])
    assert clicked.shape == not_clicked.shape == (T,)
    assert clicked.sum() == pytest.approx(1.0) and not_clicked.sum() == pytest.approx(1.0)
    want_clicked, want_not = _reference_tiers(tiny_world, report["day"], oracle_vectors, T)
    np.testing.assert_allclose(clicked, want_clicked, atol=2e-3)
    np.testing.assert_allclose(not_clicked, want_not, atol=2e-3)
    # Oracle vectors: clicked impressions sit closer to their history than the others.
    assert tiers["mean_similarity_clicked"] > tiers["mean_similarity_not_clicked"] + 0.1
