"""The true click probability scored like a model: the same metrics and subsets, equal to a direct computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from recsys.data.schema import TRUTH_DIR, Manifest, table_files
from recsys.eval.truth import truth_report
from recsys.data.stats import new_item_mask, train_item_counts
from recsys.eval.metrics import item_buckets


def test_truth_report_matches_sklearn_on_the_day(tiny_world: Path) -> None:
    m = Manifest.read(tiny_world)
    day = m.last_day
    buckets = item_buckets(train_item_counts(tiny_world, range(m.first_day, day)))
    report = truth_report(tiny_world, day, buckets, new_item_mask(tiny_world, day))
    assert report is not None and set(report) == {"all", "head", "torso", "tail", "new_items"}
    labels, p = [], []
    for path in table_files(tiny_world, "impressions"):
        t = pq.read_table(path, columns=["day", "label"])
        keep = t.column("day").to_numpy() == day
        labels.append(t.column("label").to_numpy()[keep])
        p.append(pq.read_table(tiny_world / TRUTH_DIR / "impressions" / path.name).column("p_click").to_numpy()[keep])
    y, p = np.concatenate(labels), np.concatenate(p)
    assert report["all"]["impressions"] == len(y) == m.counts["impressions"] // (m.last_day - m.first_day + 1)
    assert report["all"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert report["all"]["auc"] >= 0.7
    assert sum(report[b]["impressions"] for b in ("head", "torso", "tail")) == len(y)


def test_truth_in_partition_folders_is_found_by_relative_path(tiny_world: Path, tmp_path: Path) -> None:
    """Impressions and truth moved into ``day=K/`` folders under one file name: the same report as the flat world."""
    m = Manifest.read(tiny_world)
    day = m.last_day
    buckets = item_buckets(train_item_counts(tiny_world, range(m.first_day, day)))
    world = tmp_path / "nested"
    for path in table_files(tiny_world, "impressions"):
        d = int(pq.read_table(path, columns=["day"]).column(0)[0].as_py())
        for src, root in ((path, world / "impressions"), (tiny_world / TRUTH_DIR / "impressions" / path.name,
                                                          world / TRUTH_DIR / "impressions")):
            (root / f"day={d}").mkdir(parents=True, exist_ok=True)
            (root / f"day={d}" / "part.parquet").write_bytes(src.read_bytes())  # one name in every folder
    assert truth_report(world, day, buckets) == truth_report(tiny_world, day, buckets)
    (world / TRUTH_DIR / "impressions" / f"day={day}" / "part.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=rf"truth/impressions/day={day}/part\.parquet: missing"):
        truth_report(world, day, buckets)
