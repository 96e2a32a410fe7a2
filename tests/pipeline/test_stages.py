"""Stages built from a plan: own vectors into the catalogue, the test day into the train, evaluate and retrain apps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from recsys.data.schema import Manifest
from recsys.data.spec import world_spec
from recsys.data.vectors import VECTORS_FILE, load_vectors, vectors_schema, write_item_vectors
from recsys.pipeline.config import PRESETS, Layout
from recsys.pipeline.jobs import PipelineError
from recsys.pipeline.plan import DataFacts, Plan, plan_stages
from recsys.pipeline.stages import Context, stage, stages

CFG = PRESETS["tiny"]


def _context(plan: Plan, layout: Layout) -> Context:
    configs = {name: layout.configs / f"{name}.yaml" for name in ("clip", "scl", "train")}
    return Context(CFG, layout, configs, plan, None, None)  # type: ignore[arg-type]  # no runner: nothing is submitted


def _own_vectors(world: Path, path: Path, nan: bool = False) -> None:
    ids = ds.dataset(world / "items", format="parquet").to_table(columns=["item_id"])["item_id"].to_numpy()
    v = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    if not nan:
        write_item_vectors(path, ids, v, dim=8)
        return
    v[3, 0] = np.nan  # another encoder's export, written around our writer's checks
    vector = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 8)
    pq.write_table(pa.table({"item_id": ids, "vector": vector}, schema=vectors_schema(8)), path)


def test_own_vectors_catalogue_keeps_every_item(tiny_world: Path, tmp_path: Path) -> None:
    file = tmp_path / "theirs.parquet"
    _own_vectors(tiny_world, file)
    plan = plan_stages(Manifest.read(tiny_world), DataFacts(10, 10, 10), CFG, world=tiny_world, vectors=file)
    layout = Layout(tmp_path / "run", dataset=tiny_world)
    stage("catalogue").local(_context(plan, layout))  # type: ignore[misc]
    got = load_vectors(layout.catalogue / VECTORS_FILE)
    assert len(got.item_ids) == len(load_vectors(file).item_ids)  # the test day's new items too: no embedder to serve them


def test_own_vectors_refused_in_one_line(tiny_world: Path, tmp_path: Path) -> None:
    file = tmp_path / "theirs.parquet"
    _own_vectors(tiny_world, file, nan=True)
    plan = plan_stages(Manifest.read(tiny_world), DataFacts(10, 10, 10), CFG, world=tiny_world, vectors=file)
    with pytest.raises(PipelineError, match=rf"^stage catalogue: {file}: .*NaN") as e:
        stage("catalogue").local(_context(plan, Layout(tmp_path / "run", dataset=tiny_world)))  # type: ignore[misc]
    assert "\n" not in str(e.value)


def test_test_day_reaches_train_evaluate_and_retrain(tmp_path: Path) -> None:
    m = Manifest(format_version=2, first_day=10, last_day=14, test_day=12)
    plan = plan_stages(m, DataFacts(10, 10, 10), CFG, world=Path("/data/log"))
    c = _context(plan, Layout(tmp_path, dataset=Path("/data/log")))
    apps = {s.name: s.apps(c) for s in stages(plan) if s.apps is not None}
    cmd = {name: " ".join(a[0].roles[0].args) for name, a in apps.items()}  # torchrun's: ["-c", "torchrun ..."]
    assert "--train-until 11" in cmd["train_id_only"] and "--train-until 11" in cmd["train_simtier"]
    assert "--day 12" in cmd["evaluate"] and "--store" in cmd["evaluate"]
    assert f"--from {tmp_path}/ctr/simtier_make --day 12 --out {tmp_path}/retrain/simtier_make-day-12" in cmd["retrain"]
    assert cmd["validate"].endswith("validate /data/log --quiet") and "--world /data/log" in cmd["pretrain_clip"]


def test_no_content_retrains_id_only_without_vectors(tmp_path: Path) -> None:
    m = Manifest(format_version=2, first_day=10, last_day=14, features=world_spec(content=()))
    plan = plan_stages(m, DataFacts(0, 0, 10), CFG, world=Path("/data/log"))
    c = _context(plan, Layout(tmp_path, dataset=Path("/data/log")))
    retrain = stage("retrain").apps(c)[0].roles[0].args[-1]  # type: ignore[misc]
    evaluate = stage("evaluate").apps(c)[0].roles[0].args[-1]  # type: ignore[misc]
    assert "ctr/id_only" in retrain and "--vectors" not in retrain and "--store" not in retrain
    assert f"--models {tmp_path}/ctr/id_only --quiet" in evaluate and "--store" not in evaluate
