"""Training and the daily retrain on a log unlike the world (``unlike_log``): raw IDs admitted by managed collisions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.schema import Manifest


def _mmctr(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "recsys.cli", *args, "--quiet"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def _distinct_items(world: Path, days: list[int]) -> set[int]:
    """Raw item IDs the impressions of ``days`` show or hold in their histories (read another way)."""
    t = pq.read_table(world / "impressions")
    t = t.filter(np.isin(t["ts_day"].to_numpy(), days))
    return set(t["iid"].to_numpy().tolist()) | set(pc.list_flatten(t["clicked_iids"]).to_numpy().tolist())


def test_train_and_retrain_admit_raw_ids(unlike_log: Path, tmp_path: Path) -> None:
    m = Manifest.read(unlike_log)
    run, re = tmp_path / "run", tmp_path / "retrain"
    _mmctr("train", "--world", str(unlike_log), "--out", str(run), "--batch-size", "256")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_day"] == m.test_day == 13 and metrics["train_days"] == [m.first_day, 12]
    everything = metrics["metrics"]["all"]
    # a constant predictor has AUC 0.5 and NE 1.0 (normalised entropy); the margins hold on this data
    assert everything["auc"] > 0.6 and everything["ne"] < 0.97
    log = json.loads((run / "train_log.json").read_text())
    seen = _distinct_items(unlike_log, list(range(m.first_day, 13)))
    assert log["managed_ids"]["item"] == {"admitted": len(seen), "evicted": 0}  # capacity > IDs: every one admitted
    assert log["rows_trained"] == log["rows_in_days"] == sum(
        int((pq.read_table(unlike_log / "impressions", columns=["ts_day"])["ts_day"].to_numpy() == d).sum()) for d in (10, 11, 12))
    assert set(log["dense_stats"]) == {"hist_len"}

    _mmctr("retrain", "--from", str(run), "--day", "13", "--out", str(re))
    relog = json.loads((re / "train_log.json").read_text())
    fresh = _distinct_items(unlike_log, [13]) - seen
    assert relog["managed_ids"]["item"] == {"admitted": len(fresh), "evicted": 0}  # the parent's state was loaded
    assert relog["dense_stats"] == log["dense_stats"]  # the parent's scale
    remetrics = json.loads((re / "metrics.json").read_text())
    assert remetrics["test_day"] == 14 and remetrics["metrics"]["all"]["auc"] > 0.6


def test_a_retrain_counts_new_items_left_on_the_unseen_row_of_a_full_managed_table(unlike_log: Path,
                                                                                  tmp_path: Path) -> None:
    import shutil

    import torch

    from recsys.models.remap import IdRemapper
    from serving.ranker import Ranker

    world = tmp_path / "full"
    shutil.copytree(unlike_log, world)
    seen = _distinct_items(world, [10, 11, 12])
    raw = json.loads((world / "manifest.json").read_text())
    (item,) = [t for t in raw["features"]["tables"] if t["name"] == "item"]
    item["rows"] = len(seen) + 1  # the training days' items fill it: day 13's new items must evict to get a row
    (world / "manifest.json").write_text(json.dumps(raw, indent=2))
    run, re = tmp_path / "run", tmp_path / "retrain"
    _mmctr("train", "--world", str(world), "--out", str(run), "--batch-size", "256")
    _mmctr("retrain", "--from", str(run), "--day", "13", "--out", str(re))
    lineage = json.loads((re / "lineage.json").read_text())
    t = pq.read_table(world / "impressions", columns=["ts_day", "iid"])  # shown items (targets), as the lineage counts
    shown = {d: set(t["iid"].to_numpy()[t["ts_day"].to_numpy() == d].tolist()) for d in (10, 11, 12, 13)}
    fresh = sorted(shown[13] - shown[10] - shown[11] - shown[12])
    assert lineage["new_item_ids"] == len(fresh) > 0
    # the retrained run as serving loads it, from its checkpoint: which new items hold a row of their own
    remap = next(m for m in Ranker.load(re, world).model.modules() if isinstance(m, IdRemapper))
    rows = remap.rows_of("item", torch.tensor(fresh, dtype=torch.int64))
    assert 0 < lineage["new_item_ids_without_row"] == int((rows == item["rows"] - 1).sum()) < len(fresh)
    assert "new_item_ids_without_row" not in json.loads((run / "lineage.json").read_text())  # a first run: none
