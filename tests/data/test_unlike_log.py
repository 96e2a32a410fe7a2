"""A log unlike the world (``unlike_log`` in conftest): validated, read and trained through its feature spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys.data.reader import ImpressionReader, ReaderConfig, dense_moments
from recsys.data.schema import Manifest
from recsys.data.validate import validate_dataset


def test_it_validates(unlike_log: Path) -> None:
    report = validate_dataset(unlike_log)
    assert report is not None


def test_batches_follow_the_spec(unlike_log: Path) -> None:
    m = Manifest.read(unlike_log)
    spec = m.features
    stats = dense_moments(unlike_log, range(m.first_day, m.test_day))
    reader = ImpressionReader(unlike_log, ReaderConfig(batch_size=512, days=(m.first_day,), dense_stats=stats, prefetch=0))
    batches = list(reader)
    kjt = batches[0].sparse_features
    assert kjt.keys() == ["uid", "iid", "slot", "age", "cat", "seller", "clicked_iids", "history_cat"]
    assert batches[0].dense_features.shape[1] == 2
    # every impression of the day, once, with its raw IDs (a row count and the IDs themselves, read another way)
    log = pq.read_table(unlike_log / "impressions/log.parquet")
    on_day = log.filter(pc.equal(log["ts_day"], m.first_day))
    assert sum(b.batch_size for b in batches) == on_day.num_rows
    assert np.array_equal(np.concatenate([b.item_ids.numpy() for b in batches]), on_day["iid"].to_numpy())
    assert int(on_day["iid"].to_numpy().max()) > 2**40  # raw, not remapped by the reader
    # history_cat is the category of each history item, looked up in items/
    items = pq.read_table(unlike_log / "items")
    order = np.argsort(items["iid"].to_numpy())
    ids, cat, price = (items[c].to_numpy()[order] for c in ("iid", "cat", "price"))
    hist, cats = kjt["clicked_iids"].values().numpy(), kjt["history_cat"].values().numpy()
    assert len(hist) and np.array_equal(cats, cat[np.searchsorted(ids, hist)])
    assert np.array_equal(kjt["clicked_iids"].lengths().numpy(), kjt["history_cat"].lengths().numpy())
    # price: log1p of the item's price; hist_len: standardised log1p of the history length
    first = on_day.slice(0, batches[0].batch_size)
    want_price = np.log1p(price[np.searchsorted(ids, first["iid"].to_numpy())])
    assert np.allclose(batches[0].dense_features[:, 0].numpy(), want_price, rtol=1e-6)
    mean, std = stats["hist_len"]
    want_len = (np.log1p(pc.list_value_length(first["clicked_iids"]).to_numpy()) - mean) / std
    assert np.allclose(batches[0].dense_features[:, 1].numpy(), want_len, rtol=1e-5, atol=1e-6)
    # the statistics are the training days' (computed here another way)
    days = log["ts_day"].to_numpy()
    train = log.filter(pa.array((days >= m.first_day) & (days < m.test_day)))
    x = np.log1p(pc.list_value_length(train["clicked_iids"]).to_numpy().astype(np.float64))
    assert stats["hist_len"] == pytest.approx((x.mean(), x.std()), rel=1e-6)  # summed from float32 features


def test_standardised_features_need_statistics(unlike_log: Path) -> None:
    with pytest.raises(ValueError, match=r"\['hist_len'\] are standardised"):
        ImpressionReader(unlike_log, ReaderConfig(batch_size=8))


def test_history_side_features_come_from_the_raw_item_even_in_a_capped_table(tmp_path: Path) -> None:
    from recsys.data.spec import FeatureSpec, Sparse, Table

    spec = FeatureSpec(user_key="uid", item_key="iid", label="clk", history="hist", history_side=("cat",), content=(),
                       sparse=(Sparse("uid", "impressions"), Sparse("iid", "impressions"), Sparse("cat", "items")),
                       tables=(Table("uid", "hash", rows=8), Table("iid"), Table("cat")))  # fmt: skip
    for name in ("items", "impressions"):
        (tmp_path / name).mkdir()
    pq.write_table(pa.table({"iid": list(range(8)), "cat": [10 * i for i in range(8)]}), tmp_path / "items/p.parquet")
    pq.write_table(pa.table({"day": [0, 1], "uid": [1, 2], "iid": [5, 6], "clk": [0.0, 1.0], "hist": [[5, 6], [1]]}),
                   tmp_path / "impressions/p.parquet")
    Manifest(format_version=2, first_day=0, last_day=1, id_ranges={"iid": 8, "cat": 80}, features=spec).write(tmp_path)
    config = ReaderConfig(batch_size=4, table_sizes={"iid": 4}, out_of_range="hash", prefetch=0)
    (batch,) = list(ImpressionReader(tmp_path, config))
    kjt = batch.sparse_features
    assert kjt["iid"].values().tolist() == [1, 2] and kjt["hist"].values().tolist() == [1, 2, 1]  # hashed: id % 4
    assert kjt["cat"].values().tolist() == [50, 60]  # items 5 and 6
    assert kjt["history_cat"].values().tolist() == [50, 60, 10]  # items 5, 6 and 1, not 1, 2, 1
    assert batch.item_ids.tolist() == [5, 6] and batch.user_ids.tolist() == [1, 2]  # raw, for evaluation
