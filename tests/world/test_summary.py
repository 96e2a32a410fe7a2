"""``summarize`` on a log whose columns the feature spec names (not the world's), as README's worked example."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.schema import Manifest
from recsys.data.spec import Dense, FeatureSpec, Sparse, Table
from recsys.world.summary import NEW_ITEM_FIGURES, format_summary, summarize

TEST_DAY = 3


def _movie_log(root: Path, created: bool) -> dict[str, np.ndarray]:
    """A small log in the worked example's layout (``movie_id``, ``click``, history ``liked``), raw 64-bit
    IDs, no ``counts`` in its manifest; with ``created``, the items carry a ``created_day``. Returns its columns."""
    rng = np.random.default_rng(3)
    users = (np.arange(20, dtype=np.int64) + 1) * 7_919
    movies = (np.arange(30, dtype=np.int64) + 1) * 1_000_000_007
    n = 400
    cols = {
        "day": np.sort(rng.integers(0, TEST_DAY + 1, n)).astype(np.int32),
        "user_id": rng.choice(users, n),
        "movie_id": rng.choice(movies, n),
        "click": (rng.random(n) < 0.3).astype(np.float32),
        "born": rng.integers(0, TEST_DAY + 1, len(movies)),
    }
    liked = [list(rng.choice(movies, int(k))) for k in rng.integers(0, 5, n)]
    for table in ("users", "items", "impressions"):
        (root / table).mkdir(parents=True)
    pq.write_table(pa.table({"user_id": users, "age": rng.integers(0, 7, len(users))}), root / "users/part-0.parquet")
    items = {"movie_id": movies, "title": [f"movie {i}" for i in range(len(movies))], "genre": rng.integers(0, 4, len(movies))}
    if created:
        items["created_day"] = pa.array(cols["born"], pa.int32())
    pq.write_table(pa.table(items), root / "items/part-0.parquet")
    pq.write_table(pa.table({"day": cols["day"], "user_id": cols["user_id"], "movie_id": cols["movie_id"],
                             "liked": pa.array(liked, pa.list_(pa.int64())), "click": cols["click"]}),
                   root / "impressions/part-0.parquet", row_group_size=150)  # fmt: skip
    cols["liked_len"] = np.array([len(h) for h in liked])
    spec = FeatureSpec(
        user_key="user_id", item_key="movie_id", label="click", day="day", history="liked", history_side=("genre",),
        sparse=(Sparse("user_id", "impressions"), Sparse("movie_id", "impressions"), Sparse("age", "users"),
                Sparse("genre", "items")),
        dense=(Dense("liked_count", "history", "log1p"),),
        tables=(Table("user_id", ids="managed", rows=21), Table("movie_id", ids="managed", rows=31), Table("age"),
                Table("genre")),
        content=("title",),
    )  # fmt: skip
    Manifest(format_version=2, first_day=0, last_day=TEST_DAY, max_history_len=20, id_ranges={"age": 7, "genre": 4},
             features=spec, preset="movielens-style").write(root)  # fmt: skip
    cols["movies"] = movies
    return cols


@pytest.mark.parametrize("created", [False, True], ids=["no-created_day", "created_day"])
def test_a_log_with_its_own_column_names_is_summarized(tmp_path: Path, created: bool) -> None:
    c = _movie_log(tmp_path, created)
    s = summarize(tmp_path)
    n = len(c["day"])
    assert (s["items"], s["users"], s["impressions"], s["searches"], s["days"]) == (30, 20, n, 0, TEST_DAY + 1)
    assert s["ctr"] == pytest.approx(c["click"].mean())
    assert s["mean_history_len"] == pytest.approx(c["liked_len"].mean())
    train = c["day"] != TEST_DAY
    assert s["train_items_seen"] == len(np.unique(c["movie_id"][train]))
    if created:
        born = dict(zip(c["movies"].tolist(), c["born"].tolist()))
        test_items = c["movie_id"][~train]
        new = np.array([born[i] == TEST_DAY for i in test_items.tolist()])
        assert s["test_day_new_item_share"] == pytest.approx(new.mean())
        assert s["items_created_on_test_day"] == int((c["born"] == TEST_DAY).sum())
        assert "skipped" not in s
    else:
        assert not set(NEW_ITEM_FIGURES) & set(s)
        assert "created_day" in s["skipped"] and all(name in s["skipped"] for name in NEW_ITEM_FIGURES)
    assert "skipped" in format_summary(s) or created


def test_a_file_without_a_spec_column_is_named(tmp_path: Path) -> None:
    _movie_log(tmp_path, created=False)
    f = tmp_path / "impressions/part-0.parquet"
    pq.write_table(pq.read_table(f).drop_columns(["click"]), f)
    with pytest.raises(ValueError, match=rf"^{f}: no column 'click'"):
        summarize(tmp_path)
