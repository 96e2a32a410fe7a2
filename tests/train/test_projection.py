"""Wide item vectors: a CTR run projects them once to ``ModelConfig.mm_width`` and every later use reuses the basis."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys.data.projection import PROJECTION_FILE, fit_projection, load_projection, save_projection
from recsys.data.schema import TRUTH_DIR
from recsys.data.vectors import VECTORS_FILE, load_vectors, write_item_vectors
from recsys.distributed import DistContext
from recsys.eval.evaluate import EvalJob, run_evaluate
from recsys.models.config import ModelConfig
from recsys.train.config import TrainConfig
from recsys.train.retrain import RetrainJob, retrain_train_job, run_retrain
from recsys.train.setup import projected_vectors
from recsys.train.trainer import TrainJob, run_train

WIDE = 96


def _wide_vectors(world: Path, out: Path) -> Path:
    """The world's 32-d semantic vectors lifted into 96 dimensions by a random rotation, plus a little noise."""
    t = pq.read_table(world / TRUTH_DIR / "items.parquet", columns=["item_id", "semantic"])
    v = np.stack(t.column("semantic").to_numpy(zero_copy_only=False)).astype(np.float64)
    rng = np.random.default_rng(3)
    rotation = np.linalg.qr(rng.standard_normal((WIDE, WIDE)))[0][:, : v.shape[1]]  # (96, 32) orthonormal columns
    wide = v @ rotation.T + 0.02 * rng.standard_normal((len(v), WIDE))
    wide /= np.linalg.norm(wide, axis=1, keepdims=True)
    path = out / VECTORS_FILE
    write_item_vectors(path, t.column("item_id").to_numpy(), wide.astype(np.float32), dim=WIDE)
    return path


def _top_directions(x: np.ndarray, k: int) -> np.ndarray:
    """The top-k eigenvectors of x^T x (another way to the principal basis), as columns."""
    values, vectors = np.linalg.eigh(x.astype(np.float64).T @ x.astype(np.float64))
    return vectors[:, np.argsort(values)[::-1][:k]]


def test_projection_fitted_once_and_reused(tmp_path: Path, tiny_world: Path) -> None:
    ctx = DistContext(rank=0, world_size=1, device=torch.device("cpu"))
    table = load_vectors(_wide_vectors(tiny_world, tmp_path))
    got = projected_vectors(table, 32, tmp_path / "run", None, ctx)
    basis, info = load_projection(tmp_path / "run" / PROJECTION_FILE)
    assert (info.source_dim, info.dim, info.items) == (WIDE, 32, len(table.item_ids))
    # the same subspace as the eigenvectors of X^T X: projecting one basis onto the other keeps every column
    np.testing.assert_allclose(np.linalg.norm(_top_directions(table.vectors, 32).T @ basis, axis=0), 1.0, atol=1e-4)
    assert got.vectors.shape == (len(table.item_ids), 32) and got.dim == 32
    # rows as they fall on the subspace, not re-normalised: their dot products approximate the input cosines
    np.testing.assert_allclose(got.vectors, table.vectors.astype(np.float64) @ basis.astype(np.float64), atol=1e-5)
    assert (np.linalg.norm(got.vectors, axis=1) <= 1.0 + 1e-5).all()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(got.item_ids), 2000), rng.integers(0, len(got.item_ids), 2000)
    cos_in = (table.vectors[a] * table.vectors[b]).sum(1)
    assert np.abs((got.vectors[a] * got.vectors[b]).sum(1) - cos_in).mean() < 0.02
    assert got.manifest["projection"]["source_dim"] == WIDE and info.cosine_fidelity > 0.95
    np.testing.assert_array_equal(got.item_ids, table.item_ids)
    # before training starts, a run folder's basis is the run's own: a second start fits again (here 16 wide)
    assert projected_vectors(table, 16, tmp_path / "run", None, ctx).dim == 16
    got = projected_vectors(table, 32, tmp_path / "run", None, ctx)
    (tmp_path / "run" / "train_log.json").write_text("{}")  # the run has begun (setup.run_started)
    # a run that has begun (resume, evaluation, ranker) reads its basis, even with a new width asked for
    again = projected_vectors(table, 16, tmp_path / "run", None, ctx)
    np.testing.assert_array_equal(again.vectors, got.vectors)
    assert again.manifest["projection"]["energy_kept_here"] == pytest.approx(info.retained_energy, abs=1e-6)
    # narrow vectors pass through untouched; a basis for another width is refused, naming its file
    narrow = replace(table, vectors=table.vectors[:, :32] / np.linalg.norm(table.vectors[:, :32], axis=1, keepdims=True))
    assert projected_vectors(narrow, 32, tmp_path / "fresh", None, ctx) is narrow
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(ValueError, match=f"{PROJECTION_FILE}: a basis for {WIDE}-d vectors"):
        projected_vectors(narrow, 32, tmp_path / "run", None, ctx)
    # another encoder's table of the same width: the basis keeps ~K/D of its energy, not what it kept of its own
    noise = rng.standard_normal(table.vectors.shape)
    other_encoder = replace(table, vectors=(noise / np.linalg.norm(noise, axis=1, keepdims=True)).astype(np.float32))
    with pytest.raises(ValueError, match=r"keeps \d+\.\d% of the energy .* not from the encoder"):
        projected_vectors(other_encoder, 32, tmp_path / "run", None, ctx)
    # a new run given a basis (a retrain: the parent's) holds its own copy of it
    other = tmp_path / "other.npz"
    save_projection(other, *fit_projection(table.vectors, 8, "x"))
    assert projected_vectors(table, 32, tmp_path / "retrain", other, ctx).dim == 8
    assert (tmp_path / "retrain" / PROJECTION_FILE).read_bytes() == other.read_bytes()
    # a basis left by a run refused before training is not reused: a new start replaces it (here: none needed)
    (tmp_path / "refused").mkdir()
    save_projection(tmp_path / "refused" / PROJECTION_FILE, *fit_projection(table.vectors, 8, "x"))
    assert projected_vectors(narrow, 32, tmp_path / "refused", None, ctx) is narrow
    assert not (tmp_path / "refused" / PROJECTION_FILE).exists()
    # a run that has begun but lost its basis is refused rather than silently given a new one
    (tmp_path / "run" / PROJECTION_FILE).unlink()
    with pytest.raises(ValueError, match=f"{PROJECTION_FILE}: missing, but .* has begun training"):
        projected_vectors(table, 32, tmp_path / "run", None, ctx)


def test_wide_vectors_train_evaluate_and_retrain(tmp_path: Path, tiny_world: Path) -> None:
    vectors = _wide_vectors(tiny_world, tmp_path)
    run = tmp_path / "simtier"
    model = ModelConfig(variant="simtier")  # soft tiers and the learned metric: W is (K, K), so the width must agree
    run_train(TrainJob(world=tiny_world, out=run, model=model, vectors=vectors, quiet=True,
                       train=TrainConfig(batch_size=256)))
    log = json.loads((run / "train_log.json").read_text())
    assert log["vectors"]["projection"]["dim"] == model.mm_width == 64
    assert log["vectors"]["projection"]["file"] == str((run / PROJECTION_FILE).resolve())
    assert log["vectors"]["path"] == str(vectors.resolve())  # the table as given is the recorded source
    # evaluation rebuilds the run with its own basis: a 96-wide rebuild could not load the (32, 32) metric
    report = run_evaluate(EvalJob(world=tiny_world, models=(run,), out=tmp_path / "report", resamples=1, quiet=True))
    trained = json.loads((run / "metrics.json").read_text())
    assert report is not None and report["day"] == trained["test_day"]
    assert report["models"][run.name]["metrics"]["all"]["auc"] == pytest.approx(trained["metrics"]["all"]["auc"], abs=1e-6)
    # tomorrow's retrain projects today's vectors through the same basis, and keeps a copy: evaluating the retrain
    # (or retraining it) reads that, never a basis fitted anew
    job = retrain_train_job(RetrainJob(parent=run, day=trained["test_day"], out=tmp_path / "re"))
    assert job.projection == run / PROJECTION_FILE
    run_retrain(RetrainJob(parent=run, day=trained["test_day"], out=tmp_path / "re", quiet=True))
    parent_basis = (run / PROJECTION_FILE).read_bytes()
    assert (tmp_path / "re" / PROJECTION_FILE).read_bytes() == parent_basis
    re_log = json.loads((tmp_path / "re" / "train_log.json").read_text())
    assert re_log["vectors"]["projection"]["file"] == str((tmp_path / "re" / PROJECTION_FILE).resolve())
    # (the tiny world's last day is the retrain's: it is scored on that day, as a run of its own)
    written = (tmp_path / "re" / PROJECTION_FILE).stat().st_mtime_ns
    report = run_evaluate(EvalJob(world=tiny_world, models=(tmp_path / "re",), day=trained["test_day"],
                                  out=tmp_path / "report-re", resamples=1, quiet=True))
    assert report is not None and (tmp_path / "re" / PROJECTION_FILE).stat().st_mtime_ns == written  # not re-fitted
    # a retrain made before runs kept their own copy: its log names the parent's file, which is copied in
    (tmp_path / "re" / PROJECTION_FILE).unlink()
    re_log["vectors"]["projection"]["file"] = str((run / PROJECTION_FILE).resolve())
    (tmp_path / "re" / "train_log.json").write_text(json.dumps(re_log))
    ctx = DistContext(rank=0, world_size=1, device=torch.device("cpu"))
    projected_vectors(load_vectors(vectors), 64, tmp_path / "re", None, ctx)
    assert (tmp_path / "re" / PROJECTION_FILE).read_bytes() == parent_basis
    # a parent whose basis is gone cannot be retrained: its log says its vectors went through one
    (run / PROJECTION_FILE).unlink()
    with pytest.raises(ValueError, match=f"{PROJECTION_FILE}: missing, but .*records"):
        retrain_train_job(RetrainJob(parent=run, day=trained["test_day"], out=tmp_path / "re2"))
    (tmp_path / "re2").mkdir()  # a basis left in a folder that never began training is not the retrain's own copy
    (tmp_path / "re2" / PROJECTION_FILE).write_bytes(parent_basis)
    with pytest.raises(ValueError, match=f"{PROJECTION_FILE}: missing, but .*records"):
        retrain_train_job(RetrainJob(parent=run, day=trained["test_day"], out=tmp_path / "re2"))
