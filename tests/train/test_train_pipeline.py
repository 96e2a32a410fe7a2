"""TorchRec's TrainPipelineSparseDist against the plain loop: the same steps, rows and predictions at 2 ranks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from recsys.data.schema import Manifest
from recsys.data.vectors import VECTORS_FILE, write_item_vectors
from recsys.train.config import TRAIN_PIPELINES

STEPS = 7  # an odd count: the pipeline holds 2 batches ahead, so it is mid-stream when the generator closes


@pytest.fixture(scope="module")
def vectors(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random 8-d unit vectors for every item but every 7th (missing)."""
    n = Manifest.read(tiny_world).id_ranges["item_id"]
    ids = np.array([i for i in range(n) if i % 7 != 2])
    v = np.random.default_rng(1).standard_normal((len(ids), 8)).astype(np.float32)
    path = tmp_path_factory.mktemp("vectors") / VECTORS_FILE
    write_item_vectors(path, ids, v / np.linalg.norm(v, axis=1, keepdims=True), dim=8)
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sharding, log", [("row_wise", "tiny"), ("table_wise", "tiny"), ("row_wise", "unlike")])
def test_sparse_dist_pipeline_trains_as_the_plain_loop(
    sharding: str, log: str, tiny_world: Path, unlike_log: Path, vectors: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tiny: ``simtier`` with vectors; unlike: ``id_only`` on the log with raw 64-bit IDs in managed tables
    (the remapped KJT is not the batch's own, so nothing is pipelined but the rows and losses must still match)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import sharding_workers as workers

    init = f"tcp://127.0.0.1:{_free_port()}"
    world, vecs = (tiny_world, str(vectors)) if log == "tiny" else (unlike_log, None)
    mp.spawn(workers.pipeline_worker, args=(2, init, str(world), vecs, str(tmp_path), sharding, STEPS),
             nprocs=2, join=True)
    got = {p: torch.load(tmp_path / f"{p}.pt", weights_only=False) for p in TRAIN_PIPELINES}
    plain, piped = got["plain"], got["sparse_dist"]
    # the rows each step trained on: the reader's batches in order, on both ranks (a plain count of weights > 0)
    for rank in range(2):
        assert piped["rows"][rank] == plain["rows"][rank] == piped["expected_rows"][rank], (piped, plain)
    assert len(piped["losses"]) == STEPS
    torch.testing.assert_close(torch.tensor(piped["losses"]), torch.tensor(plain["losses"]))
    # the pipelined run had TorchRec's PipelinedForward on a sharded module while open, none after it closed
    assert piped["pipelined_while_open"] == (log == "tiny") and not piped["pipelined_after"], piped
    assert not plain["pipelined_while_open"]
    # after training, the model predicts the test day the same, every impression once
    assert len(piped["predictions"]) == piped["test_rows"] > 0
    np.testing.assert_allclose(piped["predictions"], plain["predictions"], rtol=1e-5, atol=1e-6)
    sys.modules.pop("sharding_workers", None)


def test_unknown_pipeline_is_refused() -> None:
    from recsys.train.config import TrainConfig, resolve_train_pipeline
    from recsys.train.loop import training_steps

    with pytest.raises(ValueError, match="train_pipeline must be one of"):
        TrainConfig(train_pipeline="semi_sync")
    with pytest.raises(ValueError, match="must be one of"):
        resolve_train_pipeline("semi_sync", 2, "cpu")
    with pytest.raises(ValueError, match="unknown, expected one of"):
        next(training_steps(torch.nn.Linear(1, 1), None, [], torch.device("cpu"), "semi_sync"))  # type: ignore[arg-type]
