"""``mmctr online-eval``'s sampling: a day's impressions in the readers' order, grouped into requests, none lost.

The served comparison (online against ``mmctr evaluate`` on a real server) is in ``test_ranker.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.data.reader import ImpressionReader, ReaderConfig, dense_moments
from recsys.data.schema import Manifest, table_files
from serving.ranker_online import OnlineEvalConfig, day_impressions, sample_requests


def _reader_order(world: Path, day: int) -> tuple[np.ndarray, np.ndarray]:
    """The (user, item) of each impression of ``day`` as one unshuffled reader yields them (padding rows dropped)."""
    users, items = [], []
    stats = dense_moments(world, (day,))  # any statistics: only the IDs are compared
    for batch in ImpressionReader(world, ReaderConfig(batch_size=97, days=(day,), prefetch=0, dense_stats=stats or None)):
        real = (batch.weights > 0).numpy()
        users.append(batch.user_ids.numpy()[real])
        items.append(batch.item_ids.numpy()[real])
    return np.concatenate(users), np.concatenate(items)


@pytest.mark.parametrize("layout", ["groups_3000", "empty_files", "one_group"])
def test_day_impressions_are_in_the_readers_order(layout: str, relayout: Callable[[str], Path]) -> None:
    world = relayout(layout)
    manifest = Manifest.read(world)
    day = manifest.test_day
    table = day_impressions(world, day)
    users, items = _reader_order(world, day)
    assert np.array_equal(table["user_id"].to_numpy(), users)
    assert np.array_equal(table["item_id"].to_numpy(), items)
    on_day = sum(int((pq.read_table(f, columns=["day"])["day"].to_numpy() == day).sum()) for f in table_files(world, "impressions"))
    assert table.num_rows == on_day > 0


def test_day_impressions_of_a_raw_id_log_straddling_days(unlike_log: Path) -> None:
    """One file of 1,000-row groups whose groups straddle days; raw 64-bit IDs; the log's own column names."""
    day = Manifest.read(unlike_log).test_day
    table = day_impressions(unlike_log, day)
    users, items = _reader_order(unlike_log, day)
    assert np.array_equal(table["uid"].to_numpy(), users) and np.array_equal(table["iid"].to_numpy(), items)
    assert items.max() > 2**40 and set(table.column_names) >= {"slot", "clicked_iids", "clk"}


def test_an_empty_day_has_no_rows(tiny_world: Path) -> None:
    assert day_impressions(tiny_world, Manifest.read(tiny_world).last_day + 5).num_rows == 0


@pytest.mark.parametrize("max_candidates", [1, 3, 500])
def test_sampled_users_rows_each_in_one_request(tiny_world: Path, max_candidates: int) -> None:
    spec = Manifest.read(tiny_world).features
    table = day_impressions(tiny_world, Manifest.read(tiny_world).test_day)
    requests = sample_requests(table, spec, users=25, seed=3, max_candidates=max_candidates)
    rows = np.concatenate([idx for _, idx in requests])
    user = table["user_id"].to_numpy()
    sampled = np.unique(user[rows])
    assert len(sampled) == 25
    assert np.array_equal(np.sort(rows), np.flatnonzero(np.isin(user, sampled)))  # every row of theirs, once
    history = table["history_item_ids"].to_pylist()
    for request, idx in requests:
        assert 1 <= len(idx) <= max_candidates
        assert (user[idx] == request.user).all()
        assert all(history[r] == request.history.tolist() for r in idx)
        assert np.array_equal(request.candidates, table["item_id"].to_numpy()[idx])
        assert np.array_equal(request.context["position"], table["position"].to_numpy()[idx])
    if max_candidates == 1:
        assert len(requests) == len(rows)
    else:
        assert len(requests) < len(rows)  # a user with one history ranks several candidates at once


def test_the_sample_is_seeded_and_takes_every_user_when_asked_for_more(tiny_world: Path) -> None:
    spec = Manifest.read(tiny_world).features
    table = day_impressions(tiny_world, Manifest.read(tiny_world).test_day)
    users = lambda seed, n: sorted({r.user for r, _ in sample_requests(table, spec, n, seed)})  # noqa: E731
    assert users(1, 10) == users(1, 10) != users(2, 10)
    assert users(0, 10**6) == sorted(set(table["user_id"].to_numpy().tolist()))
    with pytest.raises(ValueError, match="users"):
        OnlineEvalConfig(users=0)


def test_a_day_in_files_whose_label_types_and_nullability_differ(tiny_world: Path, tmp_path: Path) -> None:
    # one file's label as int8 (accepted by validate and the reader), another's columns declared not null
    import shutil

    import pyarrow as pa

    from recsys.data.validate import validate_dataset

    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    files = table_files(world, "impressions")
    assert len(files) >= 2
    first = pq.read_table(files[0])
    i = first.schema.get_field_index("label")
    pq.write_table(first.set_column(i, "label", first["label"].cast(pa.int8())), files[0])
    second = pq.read_table(files[1])
    pq.write_table(second.cast(pa.schema([f.with_nullable(False) for f in second.schema])), files[1])
    validate_dataset(world)  # the log is accepted as it is
    day = Manifest.read(world).test_day
    table = day_impressions(world, day)
    users, items = _reader_order(world, day)
    assert np.array_equal(table["user_id"].to_numpy(), users) and np.array_equal(table["item_id"].to_numpy(), items)
    labels = np.concatenate([pq.read_table(f, columns=["day", "label"]).filter(
        pq.read_table(f, columns=["day"])["day"].to_numpy() == day)["label"].to_numpy().astype(np.float64) for f in files])
    assert np.array_equal(table["label"].to_numpy().astype(np.float64), labels)
