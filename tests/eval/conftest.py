"""Fixtures of the evaluation tests: two tiny runs trained once, evaluated once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.data.schema import TRUTH_DIR
from recsys.data.vectors import VECTORS_FILE, write_item_vectors
from recsys.eval.evaluate import EvalJob, run_evaluate
from recsys.models.config import ModelConfig
from recsys.train.config import TrainConfig
from recsys.train.trainer import TrainJob, run_train

BATCH = 256
RESAMPLES = 200


@pytest.fixture(scope="session")
def oracle_vectors(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world's hidden semantic vectors as item vectors: SimTier then has a real signal to show."""
    t = pq.read_table(tiny_world / TRUTH_DIR / "items.parquet", columns=["item_id", "semantic"])
    v = np.stack(t.column("semantic").to_numpy(zero_copy_only=False)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    path = tmp_path_factory.mktemp("oracle") / VECTORS_FILE
    write_item_vectors(path, t.column("item_id").to_numpy(), v, dim=v.shape[1])
    return path


@pytest.fixture(scope="session")
def eval_runs(tiny_world: Path, oracle_vectors: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Finished one-rank runs of `simtier` and `id_only` (listed in that order: the baseline is not first).

    SimTier as the paper has it (hard tiers of the fixed cosine), so test_score's numpy reference applies.
    """
    root = tmp_path_factory.mktemp("runs")
    runs = {"simtier": root / "simtier", "id_only": root / "id_only"}
    for variant, out in runs.items():
        model = ModelConfig(variant=variant, simtier_soft=False, simtier_learned_metric=False)
        run_train(TrainJob(world=tiny_world, out=out, model=model, quiet=True,
                           vectors=oracle_vectors if variant != "id_only" else None,
                           train=TrainConfig(batch_size=BATCH)))
    return runs


@pytest.fixture(scope="session")
def eval_report(tiny_world: Path, eval_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The report of both runs on the test day (one process) and its folder."""
    out = tmp_path_factory.mktemp("eval") / "report"
    report = run_evaluate(EvalJob(world=tiny_world, models=tuple(eval_runs.values()), out=out,
                                  resamples=RESAMPLES, quiet=True))
    assert report is not None
    return report, out
