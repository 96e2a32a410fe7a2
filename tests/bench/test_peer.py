"""The peer DIN (``bench.peer``): trains on the world's spec and on a log unlike it, its SimTier and its GAUC."""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import roc_auc_score

import bench.peer
from bench.gauc import sklearn_gauc
from bench.peer import PeerConfig, build_peer, evaluate_peer, predict_peer, simtier_histogram, train_peer
from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.data.schema import Manifest, table_files
from recsys.data.vectors import VECTORS_FILE, write_item_vectors

BATCH = 512
D = 8
TIERS = 20


def _vectors(world: Path, out: Path) -> Path:
    """Random unit vectors for every item of ``world`` but every 7th (missing), keyed by the raw item ID."""
    key = Manifest.read(world).features.item_key
    ids = np.concatenate([pq.read_table(f, columns=[key]).column(key).to_numpy() for f in table_files(world, "items")])
    ids = np.sort(ids)[np.arange(len(ids)) % 7 != 3]
    v = np.random.default_rng(1).standard_normal((len(ids), D)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    out.mkdir(parents=True, exist_ok=True)
    write_item_vectors(out / VECTORS_FILE, ids, v, dim=D)
    return out / VECTORS_FILE


@pytest.fixture(scope="module", params=["tiny_world", "unlike_log"])
def world(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def vectors(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _vectors(world, tmp_path_factory.mktemp("peer-vectors"))


def _days(world: Path) -> tuple[range, int]:
    m = Manifest.read(world)
    return range(m.first_day, m.test_day), m.test_day


def test_doc_examples() -> None:
    assert doctest.testmod(bench.peer).failed == 0


@pytest.mark.parametrize("simtier", [False, True])
def test_trains_and_scores_on_the_spec(world: Path, vectors: Path, simtier: bool) -> None:
    train_days, test_day = _days(world)
    run = train_peer(world, train_days, vectors, simtier=simtier, tiers=TIERS, seed=0, batch_size=BATCH,
                     config=PeerConfig(lr=1e-2))
    expected = sum(b.num_real for b in ImpressionReader(world, ReaderConfig(batch_size=8192, days=train_days,
                                                                             dense_stats=run.model.dense_stats or None)))
    assert run.samples == expected and math.isfinite(run.loss) and run.samples_per_s > 0
    scores = evaluate_peer(run.model, world, test_day)
    assert scores["samples"] == sum(
        b.num_real for b in ImpressionReader(world, ReaderConfig(days=(test_day,), dense_stats=run.model.dense_stats or None)))
    assert scores["auc"] > 0.6 and scores["gauc"] > 0.55  # learned something (0.5: a constant); margins hold here


def test_simtier_histogram_equals_a_per_row_reference(world: Path, vectors: Path) -> None:
    train_days, _ = _days(world)
    model = build_peer(world, train_days[:1], vectors, PeerConfig(simtier=True, tiers=TIERS))
    spec = model.spec
    table = pq.read_table(vectors)
    lookup = dict(zip(table["item_id"].to_pylist(), np.asarray(table["vector"].to_pylist(), dtype=np.float64)))
    reader = ImpressionReader(world, ReaderConfig(batch_size=300, days=train_days[-1:], dense_stats=model.dense_stats or None))
    batch = next(iter(reader))
    got = model.tier_shares(batch)
    by_key = batch.sparse_features.to_dict()
    targets, history = by_key[spec.item_key].values().tolist(), by_key[spec.history].to_dense()
    for i, (target, hist) in enumerate(zip(targets, history)):
        expected = np.zeros(TIERS)
        if target in lookup:
            sims = [float(lookup[target] @ lookup[h] / np.linalg.norm(lookup[target]) / np.linalg.norm(lookup[h]))
                    for h in hist.tolist() if h in lookup]
            for s in sims:
                expected[min(TIERS - 1, int(math.floor((s + 1.0) * TIERS / 2)))] += 1
            expected /= max(len(sims), 1)
        torch.testing.assert_close(got[i].double(), torch.from_numpy(expected), atol=1e-6, rtol=0)
    assert (got.sum(1) > 0).any()  # some rows counted something
    random = torch.nn.functional.normalize(torch.randn(4, 5, 3), dim=-1)
    shares = simtier_histogram(random[:, 0], random, torch.ones(4, 5, dtype=torch.bool), tiers=10)
    assert shares[:, -1].min() >= 0.2 and torch.allclose(shares.sum(1), torch.ones(4))  # self-similarity 1.0: last tier


def test_gauc_equals_per_user_sklearn_reference(world: Path) -> None:
    train_days, test_day = _days(world)
    run = train_peer(world, train_days, seed=1, batch_size=BATCH)
    pred = predict_peer(run.model, world, test_day)
    scores = evaluate_peer(run.model, world, test_day)
    assert scores["gauc"] == pytest.approx(sklearn_gauc(pred.predictions, pred.labels, pred.user_ids), abs=1e-9)
    assert scores["auc"] == pytest.approx(roc_auc_score(pred.labels, pred.predictions), abs=1e-6)
