"""The run folder's records: the JSON written is the format the trainer wrote as dicts; readers name file and field."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from recsys.models.config import ModelConfig
from recsys.train.checkpoint import Progress
from recsys.train.config import TrainConfig
from recsys.train.run_folder import (
    TRAIN_LOG,
    Lineage,
    RetrainNote,
    RunFolder,
    RunMetrics,
    Segment,
    TrainLog,
)

REPORT = {"all": {"auc": 0.7, "gauc": float("nan")}}


def _log(**changes: object) -> TrainLog:
    base = dict(variant="simtier", model=ModelConfig(variant="simtier"), train=TrainConfig(batch_size=64), world="/w",
                world_manifest_sha="0123456789abcdef", days=(3, 4), curve=({"step": 20, "epoch": 0, "loss": 0.5},),
                segments=(Segment(world_size=2, samples=512, seconds=1.5),), out_of_range_ids={"item_id": 3},
                sharding="row_wise", table_sizes={"item_id": 10}, warm_start=None,
                vectors={"method": "scl", "path": "/v/item_vectors.parquet"}, items_without_vector=2,
                make_from="/r/make_stage1", progress=Progress(epoch=1, step=8, world_size=2, finished=True))
    base.update(changes)
    return TrainLog(**base)  # type: ignore[arg-type]


def _legacy_train_log(log: TrainLog, warm: dict | None) -> dict:
    """What ``trainer._run`` wrote before the records: its dict, built in its order."""
    out: dict = {"curve": list(log.curve), "segments": [asdict(s) for s in log.segments], "out_of_range_ids": {}}
    if warm is not None:
        out["warm_start_metrics"] = warm
    out.update(out_of_range_ids=log.out_of_range_ids, variant=log.variant,
               config={"model": asdict(log.model), "train": asdict(log.train)}, sharding=log.sharding, world=log.world,
               world_manifest_sha=log.world_manifest_sha, days=list(log.days), table_sizes=log.table_sizes,
               warm_start=log.warm_start, vectors=log.vectors, items_without_vector=log.items_without_vector,
               make_from=log.make_from, progress=asdict(log.progress), malloc_pinned=log.malloc_pinned,
               rows_in_days=log.rows_in_days, rows_trained=sum(s.samples for s in log.segments))
    return out


@pytest.mark.parametrize("warm", [None, REPORT])
def test_train_log_writes_the_legacy_json_and_reads_it_back(tmp_path: Path, warm: dict | None) -> None:
    log = _log(warm_start_metrics=warm)
    folder = RunFolder(tmp_path)
    folder.write_train_log(log)
    text = folder.train_log_file.read_text()
    assert text == json.dumps(_legacy_train_log(log, warm), indent=2)
    back = folder.read_train_log()
    assert back.to_json() == log.to_json() or warm is not None  # nan != nan inside the report
    extra = _log(warm_start_metrics=warm, vectors_without_item=20)  # a catalogue's vectors beyond the log: recorded
    folder.write_train_log(extra)
    assert json.loads(folder.train_log_file.read_text())["vectors_without_item"] == 20
    assert folder.read_train_log().vectors_without_item == 20
    assert json.dumps(back.to_json(), indent=2) == text
    assert back.vectors_path == Path("/v/item_vectors.parquet") and back.vectors_store is None
    assert RunFolder.at(folder.train_log_file) == folder


def test_run_metrics_keys_and_round_trip(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    m = RunMetrics(variant="make", seed=0, test_day=9, train_days=(3, 8), train_samples_per_s=10.0, world_size=2,
                   metrics={"all": {"auc": 0.7}})
    folder.write_metrics(m)
    raw = json.loads(folder.metrics_file.read_text())
    assert list(raw) == ["variant", "seed", "test_day", "train_days", "train_samples_per_s", "world_size", "metrics"]
    assert raw["train_days"] == [3, 8] and folder.read_metrics() == m
    warm = RunMetrics(**{**m.__dict__, "warm_start_metrics": {"all": {"auc": 0.6}}})
    folder.write_metrics(warm)
    assert list(json.loads(folder.metrics_file.read_text()))[-1] == "warm_start_metrics"
    assert folder.read_metrics() == warm


def test_lineage_versions_days_and_flat_retrain_keys(tmp_path: Path) -> None:
    first = Lineage.of_run(tmp_path / "a", _log(days=(3, 4)), parent=None)
    assert (first.version, first.parent, first.all_days, first.make) == (1, None, (3, 4), "/r/make_stage1")
    note = RetrainNote(new_item_ids=5, new_item_ids_hashed=1, make_retrained=False)
    child = Lineage.of_run(tmp_path / "b", _log(days=(5,)), parent=first, retrain=note)
    assert (child.version, child.parent, child.parent_version, child.all_days) == (2, str(tmp_path / "a"), 1, (3, 4, 5))
    folder = RunFolder(tmp_path / "b")
    folder.write_lineage(child)
    raw = json.loads(folder.lineage_file.read_text())
    assert list(raw) == ["version", "run", "parent", "parent_version", "variant", "days", "all_days", "world",
                         "world_manifest_sha", "vectors", "make", "created_at",
                         "new_item_ids", "new_item_ids_hashed", "make_retrained"]
    assert raw["all_days"] == [3, 4, 5] and folder.read_lineage() == child
    with pytest.raises(FileNotFoundError, match="no lineage"):
        RunFolder(tmp_path / "a").read_lineage()


def test_readers_name_the_file_and_the_field(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{TRAIN_LOG} does not exist: no training log"):
        folder.read_train_log()
    raw = _log().to_json()
    del raw["config"]["train"]
    folder.train_log_file.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"train_log.json: no field 'config.train'"):
        folder.read_train_log()
    folder.train_log_file.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        folder.read_train_log()
