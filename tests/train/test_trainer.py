"""mmctr train end to end on the tiny world: resume equivalence, resharding 2 -> 1, the frozen table, MAKE, TorchX."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from recsys.data import plan
from recsys.data.schema import Manifest, table_files
from recsys.data.vectors import VECTORS_FILE, write_item_vectors
from recsys.models.config import ModelConfig
from recsys.models.mm_table import MM_TABLE
from recsys.distributed import init_distributed
from recsys.train.checkpoint import LATEST_FILE, latest_checkpoint, load_checkpoint
from recsys.train.config import TrainConfig
from recsys.train.make_stage import MAKE_FILE
from recsys.train.run_folder import CHECKPOINTS, METRICS_FILE, TRAIN_LOG, RunFolder
from recsys.train.setup import split_days
from recsys.train.trainer import TrainJob, build, run_train

REPO = Path(__file__).resolve().parents[2]
BATCH = 256
D = 8


@pytest.fixture(scope="module")
def vectors(tiny_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random unit vectors in the public vector format for every item but every 10th (missing)."""
    n = Manifest.read(tiny_world).id_ranges["item_id"]
    rng = np.random.default_rng(0)
    ids = np.array([i for i in range(n) if i % 10 != 3])
    v = rng.standard_normal((len(ids), D)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    path = tmp_path_factory.mktemp("vectors") / VECTORS_FILE
    write_item_vectors(path, ids, v, dim=D)
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO)}


def torchrun_train(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "recsys.cli", "train", "--quiet", "--batch-size", str(BATCH), *args]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def metrics(out: Path) -> dict:
    return json.loads((out / METRICS_FILE).read_text())["metrics"]


def full_checkpoint(out: Path, tmp: Path) -> dict:
    """The newest checkpoint of a run as one plain state dict (DCP -> torch.save, unsharded)."""
    ckpt = out / CHECKPOINTS
    target = tmp / f"{out.name}-full.pt"
    dcp_to_torch_save(ckpt / (ckpt / LATEST_FILE).read_text().strip(), target)
    return torch.load(target, weights_only=False)


def _mm_weight(state: dict) -> torch.Tensor:
    (key,) = [k for k in state["model"] if k.endswith(f"embedding_bags.{MM_TABLE}.weight")]
    return state["model"][key]


def test_resume_on_two_ranks_ends_as_uninterrupted_run(tiny_world: Path, vectors: Path, tmp_path: Path) -> None:
    common = ["--world", str(tiny_world), "--vectors", str(vectors), "--variant", "simtier", "--sharding", "row_wise"]
    torchrun_train(2, *common, "--out", str(tmp_path / "whole"))
    torchrun_train(2, *common, "--out", str(tmp_path / "cut"), "--stop-after-steps", "9")
    assert not (tmp_path / "cut" / METRICS_FILE).exists()
    assert json.loads((tmp_path / "cut" / TRAIN_LOG).read_text())["progress"]["step"] == 9
    torchrun_train(2, *common, "--out", str(tmp_path / "cut"))
    whole, cut = metrics(tmp_path / "whole"), metrics(tmp_path / "cut")
    assert whole["all"]["auc"] > 0.5
    for bucket in whole:
        for name, value in whole[bucket].items():
            assert cut[bucket][name] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), (bucket, name)
    a, b = full_checkpoint(tmp_path / "whole", tmp_path), full_checkpoint(tmp_path / "cut", tmp_path)
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0)


def _gathered(state: dict) -> dict[str, torch.Tensor]:
    """A one-rank DMP state dict as plain tensors (ShardedTensor -> full tensor)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    out = {}
    for key, value in state.items():
        if isinstance(value, ShardedTensor):
            full = torch.empty(value.size())
            value.gather(dst=0, out=full)
            value = full
        out[key] = value.detach().clone()
    return out


def test_two_rank_checkpoint_resumes_on_one_rank(tiny_world: Path, vectors: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    torchrun_train(2, "--world", str(tiny_world), "--vectors", str(vectors), "--variant", "simtier",
                   "--sharding", "row_wise", "--out", str(out), "--stop-after-steps", "7")
    saved = full_checkpoint(out, tmp_path)
    # Loaded into a one-rank, table-wise model, the checkpoint is the same state (resharded by DCP).
    job = TrainJob(world=tiny_world, out=out, model=ModelConfig(variant="simtier"), vectors=vectors,
                   train=TrainConfig(batch_size=BATCH), sharding="table_wise", quiet=True)
    ctx = init_distributed(always=True)
    try:
        built = build(job, ctx)
        path, progress = latest_checkpoint(out / CHECKPOINTS)
        load_checkpoint(path, built.model, built.optimizer)
        loaded = _gathered(built.model.state_dict())
    finally:
        torch.distributed.destroy_process_group()
    # Rows of the training days, counted from the Parquet files (not the reader).
    train_days = set(split_days(Manifest.read(tiny_world)).train)
    n = sum(int(np.isin(pq.read_table(f, columns=["day"]).column(0).to_numpy(), list(train_days)).sum())
            for f in table_files(tiny_world, "impressions"))
    assert progress.world_size == 2 and plan.count(progress.remaining) == n - 7 * 2 * BATCH
    assert set(loaded) == set(saved["model"])
    for key, value in saved["model"].items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    # ...and the job finishes on one rank from the same number of impressions.
    result = run_train(job)
    assert result is not None and result.world_size == 1 and result == RunFolder(out).read_metrics()
    segments = json.loads((out / TRAIN_LOG).read_text())["segments"]
    assert [s["world_size"] for s in segments] == [2, 1]
    assert segments[0]["samples"] == 7 * 2 * BATCH
    assert sum(s["samples"] for s in segments) == n * job.train.epochs  # each row once per epoch
    assert 0.5 < metrics(out)["all"]["auc"] < 1.0


def test_frozen_table_bitwise_unchanged_and_stateless(tiny_world: Path, vectors: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    job = TrainJob(world=tiny_world, out=out, model=ModelConfig(variant="simtier_make", make_frozen=True),
                   vectors=vectors, train=TrainConfig(batch_size=BATCH, make_max_epochs=2), quiet=True)
    run_train(job)
    state = full_checkpoint(out, tmp_path)
    n = Manifest.read(tiny_world).id_ranges["item_id"]
    import pyarrow.parquet as pq

    table = pq.read_table(vectors)
    want = torch.zeros(n, D)
    want[torch.tensor(table.column("item_id").to_numpy())] = torch.tensor(
        np.stack(table.column("vector").to_numpy(zero_copy_only=False)))
    assert torch.equal(_mm_weight(state), want)
    mm_state = [k for k, v in state["optim"]["state"].items() if MM_TABLE in k and v]
    assert mm_state == [], mm_state
    # MAKE frozen in stage 2: its weights are stage 1's.
    make = torch.load(out / "make_stage1" / MAKE_FILE, weights_only=True)["state_dict"]
    for key, value in make.items():
        (full,) = [k for k in state["model"] if k.endswith(f"model.make.{key}")]
        assert torch.equal(state["model"][full], value), key
    log = json.loads((out / "make_stage1" / "make.json").read_text())
    assert len(log["epochs"]) == 2 and log["best_epoch"] in (0, 1)
    # each stage-1 epoch's rows and its validation day's, against the Parquet files
    split = split_days(Manifest.read(tiny_world))
    days = np.concatenate([pq.read_table(f, columns=["day"]).column(0).to_numpy() for f in table_files(tiny_world, "impressions")])
    assert [e["rows"] for e in log["epochs"]] == [int(np.isin(days, list(split.make_fit)).sum())] * 2
    assert [e["validation_rows"] for e in log["epochs"]] == [int((days == split.validation).sum())] * 2


def test_ids_beyond_capped_tables_hashed_or_refused(tiny_world: Path, tmp_path: Path) -> None:
    capped = TrainConfig(batch_size=BATCH, max_table_rows=1000, out_of_range="hash")
    run_train(TrainJob(world=tiny_world, out=tmp_path / "hash", model=ModelConfig(), train=capped, quiet=True))
    counts = json.loads((tmp_path / "hash" / TRAIN_LOG).read_text())["out_of_range_ids"]
    # the counts are the training days' IDs at or past the cap, counted from the Parquet (one epoch), once
    m = Manifest.read(tiny_world)
    t = pq.read_table(tiny_world / "impressions", columns=["day", "item_id", "history_item_ids"])
    t = t.filter(np.isin(t["day"].to_numpy(), list(split_days(m).train)))
    history = [h[-m.max_history_len:] for h in t["history_item_ids"].to_pylist()]
    assert counts["item_id"] == int((t["item_id"].to_numpy() >= 1000).sum()) > 0
    assert counts["history_item_ids"] == sum(int(i >= 1000) for h in history for i in h) > 0
    assert counts["category_id"] == 0
    run_train(TrainJob(world=tiny_world, out=tmp_path / "hash", model=ModelConfig(), train=capped, quiet=True))
    assert json.loads((tmp_path / "hash" / TRAIN_LOG).read_text())["out_of_range_ids"] == counts  # run again: kept
    refuse = TrainConfig(batch_size=BATCH, max_table_rows=1000)
    with pytest.raises(ValueError, match=r"item_ids? value\(s\) >= the table's 1000 rows"):
        run_train(TrainJob(world=tiny_world, out=tmp_path / "refuse", model=ModelConfig(), train=refuse, quiet=True))


def test_vectors_of_another_world_refused(tiny_world: Path, tmp_path: Path) -> None:
    path = tmp_path / VECTORS_FILE
    write_item_vectors(path, np.array([0, 99_999]), np.eye(2, D, dtype=np.float32), dim=D)
    job = TrainJob(world=tiny_world, out=tmp_path / "run", model=ModelConfig(variant="simtier"), vectors=path, quiet=True)
    with pytest.raises(ValueError, match=r"item_vectors.parquet: 1 item IDs outside the world's range .*99999"):
        run_train(job)
    with pytest.raises(ValueError, match="needs item vectors"):
        run_train(TrainJob(world=tiny_world, out=tmp_path / "run", model=ModelConfig(variant="make"), quiet=True))


def test_torchx_component_runs_two_rank_make_job(tiny_world: Path, vectors: Path, tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(f"train:\n  batch_size: {BATCH}\n  make_max_epochs: 2\n")
    out = tmp_path / "make"
    torchx = Path(sys.executable).parent / "torchx"
    cmd = [str(torchx), "run", "-s", "local_cwd", "torchx_components/pipeline.py:train",
           "--world", str(tiny_world), "--vectors", str(vectors), "--variant", "make", "--out", str(out),
           "--nproc", "2", "--sharding", "column_wise", "--config", str(config)]
    env = {**_env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((out / METRICS_FILE).read_text())
    assert result["world_size"] == 2 and result["variant"] == "make"
    assert set(result["metrics"]) >= {"all", "head", "torso", "tail", "new_items"}
    # Fine-tuned in stage 2 (the default): MAKE's weights moved away from stage 1's.
    make = torch.load(out / "make_stage1" / MAKE_FILE, weights_only=True)["state_dict"]
    state = full_checkpoint(out, tmp_path)
    moved = [k for k, v in make.items() if not torch.equal(state["model"][f"model.make.{k}"], v)]
    assert moved, "stage 2 left MAKE unchanged although make_frozen is False"


def _training_rows(world: Path) -> int:
    """Impressions of the training days (all but the last), counted from the Parquet files."""
    days = list(split_days(Manifest.read(world)).train)
    return sum(int(np.isin(pq.read_table(f, columns=["day"]).column(0).to_numpy(), days).sum())
               for f in table_files(world, "impressions"))


def test_every_impression_trained_once_on_uneven_row_groups_resumed_one_to_two_ranks(
    relayout: Callable[[str], Path], tmp_path: Path
) -> None:
    """Row groups of 3,000 and ~1,000 rows (the layout that lost 3/4 of the rows to rank sharding by row group):
    stopped mid-epoch on 1 rank, resumed on 2, every impression is trained exactly once."""
    world = relayout("groups_3000")
    out = tmp_path / "run"
    job = TrainJob(world=world, out=out, model=ModelConfig(variant="id_only"), quiet=True,
                   train=TrainConfig(batch_size=BATCH, stop_after_steps=11), sharding="table_wise")
    assert run_train(job) is None
    cut = RunFolder(out).read_train_log()
    n = _training_rows(world)
    assert cut.rows_trained == 11 * BATCH and plan.count(cut.progress.remaining) == n - 11 * BATCH
    # resumed on 2 ranks with periodic checkpoints: each stamps the rows trained, summed over both ranks
    torchrun_train(2, "--world", str(world), "--variant", "id_only", "--sharding", "table_wise", "--out", str(out),
                   "--checkpoint-every", "3")
    log = RunFolder(out).read_train_log()
    assert [s.world_size for s in log.segments] == [1, 2]
    assert log.rows_in_days == n and log.rows_trained == n  # each impression once (one epoch)
    assert log.progress.trained == n and log.progress.finished
    assert json.loads((out / TRAIN_LOG).read_text())["rows_trained"] == n
    assert 0.5 < metrics(out)["all"]["auc"] < 1.0


def test_every_impression_trained_once_with_fewer_row_groups_than_ranks(
    relayout: Callable[[str], Path], tmp_path: Path
) -> None:
    """One file, one row group, trained on 2 ranks (one rank held no row group before): all rows, once each."""
    world = relayout("one_group")
    out = tmp_path / "run"
    torchrun_train(2, "--world", str(world), "--variant", "id_only", "--sharding", "row_wise", "--out", str(out))
    log = RunFolder(out).read_train_log()
    assert log.rows_in_days == log.rows_trained == _training_rows(world)


def test_row_wise_tables_train_on_two_ranks_whose_shares_differ_by_a_row(
    relayout: Callable[[str], Path], vectors: Path, tmp_path: Path
) -> None:
    """An odd number of rows: the ranks' last batches hold 1 row apart, and a row-wise table's reduce-scatter
    (and its backward all-gather) needs equal sizes: the reader fills the shorter one with padding rows."""
    world = relayout("odd_rows")
    assert _training_rows(world) % 2 == 1
    out = tmp_path / "run"
    torchrun_train(2, "--world", str(world), "--variant", "simtier", "--vectors", str(vectors),
                   "--sharding", "row_wise", "--out", str(out))
    log = RunFolder(out).read_train_log()
    assert log.rows_in_days == log.rows_trained == _training_rows(world)


def test_a_run_that_lost_rows_fails(tmp_path: Path) -> None:
    from recsys.train.loop import RowCountError
    from recsys.train.run_folder import Segment, TrainLog
    from recsys.train.trainer import _check_rows

    log = TrainLog(variant="id_only", model=ModelConfig(), train=TrainConfig(), world="w", world_manifest_sha="s",
                   segments=(Segment(world_size=2, samples=4096, seconds=1.0),), rows_in_days=16000)
    with pytest.raises(RowCountError, match="4096 impressions trained.*16000 rows x 1 epoch"):
        _check_rows(log, 1, tmp_path / TRAIN_LOG)
    _check_rows(replace(log, segments=(Segment(2, 16000, 1.0), Segment(1, 16000, 1.0))), 2, tmp_path / TRAIN_LOG)


def test_last_step_checkpointed_by_checkpoint_every_ends_finished(tiny_world: Path, tmp_path: Path) -> None:
    """checkpoint_every dividing the run's last step: that checkpoint is marked finished (evaluation takes the run)."""
    steps = -(-_training_rows(tiny_world) // BATCH)  # one rank, one epoch: ceil(N / B) steps
    job = TrainJob(world=tiny_world, out=tmp_path / "run", model=ModelConfig(variant="id_only"), quiet=True,
                   train=TrainConfig(batch_size=BATCH, checkpoint_every=steps), sharding="table_wise")
    assert run_train(job) is not None
    path, progress = latest_checkpoint(tmp_path / "run" / CHECKPOINTS)
    assert path.name == f"step-{steps:08d}" and progress.step == steps and progress.finished


def test_resume_with_another_model_config_is_refused(tiny_world: Path, vectors: Path, tmp_path: Path) -> None:
    from recsys.train.trainer import _check_resumed_model

    out = tmp_path / "run"
    job = TrainJob(world=tiny_world, out=out, model=ModelConfig(variant="simtier"), vectors=vectors,
                   train=TrainConfig(batch_size=BATCH, stop_after_steps=2), quiet=True)
    assert run_train(job) is None  # stopped as if preempted: a checkpoint and a train log
    saved = latest_checkpoint(out / CHECKPOINTS)
    assert saved is not None
    other = replace(job, model=ModelConfig(variant="simtier", simtier_soft=False, simtier_tiers=20))
    with pytest.raises(ValueError, match=r"simtier_tiers: 50 in its train log, 20 now") as info:
        run_train(other)
    assert str(out) in str(info.value) and "simtier_soft: True in its train log, False now" in str(info.value)
    assert latest_checkpoint(out / CHECKPOINTS) == saved  # nothing written
    logged = RunFolder(out).read_train_log().model
    _check_resumed_model(logged, replace(logged, fused_kernels=not logged.fused_kernels), out)  # a runtime switch


def test_resume_on_another_vector_table_is_refused(tiny_world: Path, vectors: Path, tmp_path: Path) -> None:
    """The frozen table is refilled from the file at each start: a resume on a changed table would train the
    rest of the run on other vectors. Refused, nothing written; on the table it trained on, it resumes."""
    import hashlib

    table = tmp_path / VECTORS_FILE
    table.write_bytes(vectors.read_bytes())
    out = tmp_path / "run"
    job = TrainJob(world=tiny_world, out=out, model=ModelConfig(variant="simtier"), vectors=table,
                   train=TrainConfig(batch_size=BATCH, stop_after_steps=2), quiet=True)
    assert run_train(job) is None  # stopped as if preempted
    saved, log = latest_checkpoint(out / CHECKPOINTS), (out / TRAIN_LOG).read_text()
    was = hashlib.sha256(vectors.read_bytes()).hexdigest()
    assert RunFolder(out).read_train_log().vectors["table_sha256"] == was
    got = pq.read_table(vectors)
    ids = got.column(0).to_numpy()
    rows = np.stack(got.column(1).to_numpy(zero_copy_only=False))
    write_item_vectors(table, ids, rows[::-1].copy(), dim=D)  # the same items and width, other rows
    now = hashlib.sha256(table.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=rf"{out}: has checkpoints trained on the vector table {table} \(SHA-256 "
                                         rf"{was[:12]}\.\.\., its train_log.json\), but {table} now has {now[:12]}"):
        run_train(replace(job, train=replace(job.train, stop_after_steps=None)))
    assert latest_checkpoint(out / CHECKPOINTS) == saved and (out / TRAIN_LOG).read_text() == log  # nothing written
    table.write_bytes(vectors.read_bytes())
    assert run_train(replace(job, train=replace(job.train, stop_after_steps=None))) is not None


def test_resume_on_other_days_or_another_warm_start_is_refused(tiny_world: Path, tmp_path: Path) -> None:
    """Resuming into the folder with other days (or warm start) would relabel its weights: refused, nothing written."""
    from recsys.data.schema import Manifest

    m = Manifest.read(tiny_world)
    out = tmp_path / "run"
    job = TrainJob(world=tiny_world, out=out, model=ModelConfig(variant="id_only"), quiet=True,
                   train=TrainConfig(batch_size=BATCH, stop_after_steps=2), train_until=m.last_day - 2)
    assert run_train(job) is None
    saved, log = latest_checkpoint(out / CHECKPOINTS), (out / TRAIN_LOG).read_text()
    assert RunFolder(out).read_train_log().days == tuple(range(m.first_day, m.last_day - 1))
    with pytest.raises(ValueError, match=rf"{out}: has checkpoints trained on days {m.first_day}..{m.last_day - 2} "
                                         rf"\(its train_log.json\), but this job trains on days {m.first_day}.."
                                         rf"{m.last_day - 1}; resume it with the days it records"):
        run_train(replace(job, train_until=m.last_day - 1))
    with pytest.raises(ValueError, match=rf"has checkpoints warm-started from None .* but this job starts from "
                                         rf"{tmp_path.resolve() / 'parent'}"):
        run_train(replace(job, warm_start=tmp_path / "parent"))
    assert latest_checkpoint(out / CHECKPOINTS) == saved and (out / TRAIN_LOG).read_text() == log  # nothing written


@pytest.mark.parametrize("fault", ["value 2", "null"])
def test_a_bad_test_day_label_is_refused_before_training_as_the_reader_refuses_it(
    tiny_world: Path, tmp_path: Path, fault: str
) -> None:
    """The test day is read only when the trained model is scored: its labels are checked before training,
    in the reader's words (naming file, row group, column and row), and nothing is written."""
    import shutil

    import pyarrow as pa

    from recsys.data.reader import ImpressionReader, ReaderConfig
    from recsys.train.setup import check_day_labels

    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    m = Manifest.read(world)
    day = split_days(m).test
    files = [f for f in table_files(world, "impressions") if (pq.read_table(f, columns=["day"]).column(0).to_numpy() == day).any()]
    table = pq.read_table(files[0])
    labels = table.column("label")
    row = int(np.flatnonzero(table.column("day").to_numpy() == day)[3])
    values = labels.to_numpy().copy()
    values[row] = 2
    mask = np.arange(len(values)) == row if fault == "null" else None
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(values, type=labels.type, mask=mask))
    pq.write_table(table, files[0], row_group_size=97)  # other row groups than the generator's
    with pytest.raises(ValueError) as by_reader:  # the same fault, found by reading the test day
        list(ImpressionReader(world, ReaderConfig(batch_size=64, days=[day], prefetch=0)))
    assert f"column 'label', row {row}: " in str(by_reader.value)
    with pytest.raises(ValueError) as early:
        check_day_labels(world, m, day)
    assert str(early.value) == str(by_reader.value)
    out = tmp_path / "run"
    with pytest.raises(ValueError) as by_train:
        run_train(TrainJob(world=world, out=out, model=ModelConfig(variant="id_only"), quiet=True,
                           train=TrainConfig(batch_size=BATCH)))
    assert str(by_train.value) == str(by_reader.value)
    assert not (out / CHECKPOINTS).exists() and not (out / TRAIN_LOG).exists()  # refused before any training
    in_day = sum(int((pq.read_table(f, columns=["day"]).column(0).to_numpy() == day).sum())
                 for f in table_files(tiny_world, "impressions"))
    assert check_day_labels(tiny_world, m, day) == in_day > 0  # the clean world passes, its day's rows counted


def test_a_job_killed_after_a_checkpoint_resumes_and_trains_every_row_once(tiny_world: Path, tmp_path: Path) -> None:
    # SIGKILL leaves no train log behind: the rows of the steps a checkpoint saved are counted in the checkpoint
    import signal
    import time

    out, batch = tmp_path / "run", 128
    cmd = [sys.executable, "-m", "recsys.cli", "train", "--world", str(tiny_world), "--out", str(out), "--variant",
           "id_only", "--batch-size", str(batch), "--checkpoint-every", "4", "--quiet"]
    job = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while job.poll() is None and time.monotonic() < deadline:
        found = latest_checkpoint(out / CHECKPOINTS) if (out / CHECKPOINTS / LATEST_FILE).exists() else None
        if found is not None and found[1].step >= 4:
            os.killpg(job.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    assert job.wait() == -signal.SIGKILL, "the job ended before its first checkpoint could be killed"
    path, saved = latest_checkpoint(out / CHECKPOINTS)
    assert saved.trained == saved.step * batch and not saved.finished  # every step before the epoch's end is full
    m = Manifest.read(tiny_world)
    days = pq.read_table(tiny_world / "impressions", columns=["day"])["day"].to_numpy()
    rows = int(np.isin(days, list(split_days(m).train)).sum())
    resumed = TrainJob(world=tiny_world, out=out, model=ModelConfig(variant="id_only"), quiet=True,
                       train=TrainConfig(batch_size=batch, checkpoint_every=4))
    assert run_train(resumed) is not None
    log = RunFolder(out).read_train_log()
    assert log.rows_trained == rows and log.progress.finished and log.progress.trained == rows
    assert log.segments[0].samples == saved.trained and sum(s.samples for s in log.segments) == rows


def test_vectors_that_lose_their_row_to_a_capped_table_are_counted_and_said(
    tiny_world: Path, vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capped = TrainConfig(batch_size=BATCH, max_table_rows=1000, out_of_range="hash")
    run_train(TrainJob(world=tiny_world, out=tmp_path / "run", model=ModelConfig(variant="simtier"), vectors=vectors,
                       train=capped, quiet=True))
    ids = pq.read_table(vectors, columns=["item_id"])["item_id"].to_pylist()
    per_row: dict[int, int] = {}
    for i in ids:  # items per row of a 1000-row table, counted one by one
        per_row[i % 1000] = per_row.get(i % 1000, 0) + 1
    expected = sum(n - 1 for n in per_row.values())
    assert expected > 0 and RunFolder(tmp_path / "run").read_train_log().vectors_sharing_rows == expected
    assert f"simtier: {expected} of the {len(ids)} vectors in {vectors} lose their frozen-table row" in capsys.readouterr().err
    uncapped = tmp_path / "uncapped"
    run_train(TrainJob(world=tiny_world, out=uncapped, model=ModelConfig(variant="simtier"), vectors=vectors,
                       train=TrainConfig(batch_size=BATCH), quiet=True))
    assert "vectors_sharing_rows" not in json.loads((uncapped / TRAIN_LOG).read_text())  # none: the log keeps its bytes
