"""``mmctr summary``'s training-day figures count exactly the days ``mmctr train`` trains on; a Parquet DATE day is
refused in ``mmctr validate``'s words, by summary and by train's day count alike."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys.data.schema import Manifest, table_files
from recsys.data.spec import FeatureSpec, Sparse, Table
from recsys.data.stats import day_rows
from recsys.data.validate import DatasetError, validate_dataset
from recsys.train.setup import split_days
from recsys.world.summary import summarize

ITEMS = np.arange(1, 17, dtype=np.int64) * 10**12 + 7  # raw 64-bit SKUs


def _log(root: Path, test_day: int, last_day: int = 5) -> Path:
    """Days 0..last_day, one Parquet file a day (``ds``, ``uid``, ``sku``, ``y``); a skewed item mix whose items
    drift day by day, so the days after the test day show items the training days never do."""
    rng = np.random.default_rng(7)
    for table in ("items", "impressions"):
        (root / table).mkdir(parents=True)
    pq.write_table(pa.table({"sku": ITEMS}), root / "items/part-0.parquet")
    for d in range(last_day + 1):
        n = 60 + 10 * d
        (root / f"impressions/ds={d}").mkdir()  # Hive-style day folders, as logs are partitioned
        pick = 2 * d + (rng.zipf(1.6, n) - 1) % 4  # day d shows items 2d..2d+3, the first most
        pq.write_table(pa.table({"ds": pa.array(np.full(n, d), pa.int32()),
                                 "uid": pa.array(rng.integers(-(2**62), 2**62, n), pa.int64()),
                                 "sku": pa.array(ITEMS[pick], pa.int64()),
                                 "y": pa.array((rng.random(n) < 0.2).astype(np.float32))}),
                       root / f"impressions/ds={d}/part-0.parquet", row_group_size=25)  # fmt: skip
    spec = FeatureSpec(user_key="uid", item_key="sku", label="y", day="ds", history=None, content=(),
                       sparse=(Sparse("uid", "impressions"), Sparse("sku", "impressions")),
                       tables=(Table("uid", ids="hash", rows=64), Table("sku", ids="managed", rows=17)))  # fmt: skip
    Manifest(format_version=2, first_day=0, last_day=last_day, test_day=test_day, features=spec).write(root)
    return root


@pytest.mark.parametrize("test_day", [2, 4, 5])
def test_training_day_figures_count_the_days_training_reads(tmp_path: Path, test_day: int) -> None:
    root = _log(tmp_path / "log", test_day)
    m = Manifest.read(root)
    train = set(split_days(m).train)
    assert train == set(range(test_day))  # the days `mmctr train` reads by default
    shown: Counter[int] = Counter()  # a plain-Python reference over the pyarrow rows
    for path in table_files(root, "impressions"):
        for r in pq.read_table(path, partitioning=None).to_pylist():
            if r["ds"] in train:
                shown[r["sku"]] += 1
    s = summarize(root)
    counts = sorted(shown.values(), reverse=True)
    top = max(1, len(counts) // 100)
    assert s["train_items_seen"] == len(shown)
    assert s["top1pct_item_impression_share"] == pytest.approx(sum(counts[:top]) / sum(counts))
    if test_day < m.last_day:  # the days after the test day show items training never sees
        later = {r["sku"] for p in table_files(root, "impressions")
                 for r in pq.read_table(p, partitioning=None).to_pylist() if r["ds"] > test_day}  # fmt: skip
        assert later - set(shown)


def test_summary_and_train_refuse_a_date_day_in_validates_words(tmp_path: Path) -> None:
    root = _log(tmp_path / "log", test_day=4)
    path = root / "impressions/ds=1/part-0.parquet"
    t = pq.read_table(path, partitioning=None)
    pq.write_table(t.set_column(0, "ds", pc.cast(t["ds"], pa.date32())), path)
    what = "column 'ds' has type date32[day], expected a signed integer (features.day)"
    with pytest.raises(DatasetError) as e:
        validate_dataset(root)
    assert str(e.value) == f"impressions/ds=1/part-0.parquet: {what}"
    with pytest.raises(ValueError) as e:
        summarize(root)
    assert str(e.value) == f"{path}: {what}"
    with pytest.raises(ValueError) as e:  # `mmctr train` counts the test day's rows before it builds a reader
        day_rows(root, 4)
    assert str(e.value) == f"{path}: {what}"


def test_summary_reads_a_bool_label(tmp_path: Path) -> None:
    root = _log(tmp_path / "log", test_day=4)
    clicks = rows = 0
    for path in table_files(root, "impressions"):
        t = pq.read_table(path, partitioning=None)
        clicks, rows = clicks + int(pc.sum(t["y"]).as_py()), rows + t.num_rows
        pq.write_table(t.set_column(3, "y", pc.cast(t["y"], pa.bool_())), path)
    assert validate_dataset(root).counts["impressions"] == rows
    assert summarize(root)["ctr"] == pytest.approx(clicks / rows)
