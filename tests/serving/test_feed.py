"""The feed: whole files only, name order, checked columns, a world's new items published into it."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys.cli import main as cli_main
from recsys.data.schema import Manifest, table_files
from serving.feed import FEED_SCHEMA, TMP_PREFIX, FeedError, append, list_files, publish_world_items, read_file


def test_files_appear_whole_in_name_order_and_temporaries_are_ignored(tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    first = append(feed, [1], ["a"], [b"x"], [1.0])
    second = append(feed, [2, 3], ["b", "c"], [b"y", None], [2.0, 3.0])
    (feed / f"{TMP_PREFIX}part-9.parquet").write_bytes(b"half a file")
    (feed / "notes.txt").write_text("not a feed file")
    assert list_files(feed) == [first, second] and first.name < second.name
    table = read_file(second)
    assert table.schema == FEED_SCHEMA and table["image"].to_pylist() == [b"y", None]
    assert list_files(tmp_path / "no-feed-yet") == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pa.table({"item_id": [1], "title": ["a"], "image": [b"x"]}), "column 'created_at' missing"),
        (pa.table({"item_id": ["1"], "title": ["a"], "image": [b"x"], "created_at": [1.0]}), "column 'item_id' is string"),
        (pa.table({"item_id": [1, None], "title": ["a", "b"], "image": [b"x", b"y"], "created_at": [1.0, 2.0]}),
         "column 'item_id', row 1: null"),
    ],
)  # fmt: skip
def test_a_bad_file_is_named_with_its_column_and_row(tmp_path: Path, table: pa.Table, message: str) -> None:
    path = tmp_path / "part-1.parquet"
    pq.write_table(table, path)
    with pytest.raises(FeedError, match=f"{path}: {message}"):
        read_file(path)
    path.write_bytes(b"PAR1 garbage")
    with pytest.raises(FeedError, match="not a readable Parquet file"):
        read_file(path)


def test_publish_puts_a_days_items_in_the_feed_with_their_creation_time(tiny_world: Path, tmp_path: Path) -> None:
    manifest = Manifest.read(tiny_world)
    items = pa.concat_tables([pq.read_table(f) for f in table_files(tiny_world, "items")])
    new = items.filter(pc.equal(items["created_day"], manifest.last_day))
    t0 = time.time()
    n = publish_world_items(tiny_world, tmp_path / "feed", per_file=10)
    assert n == len(new) > 0
    files = list_files(tmp_path / "feed")
    assert len(files) == -(-n // 10)
    got = pa.concat_tables([read_file(f) for f in files])
    assert got["item_id"].to_pylist() == new["item_id"].to_pylist()
    assert got["title"].to_pylist() == new["title"].to_pylist() and got["image"].equals(new["image"])
    assert t0 <= min(got["created_at"].to_pylist()) <= max(got["created_at"].to_pylist()) <= time.time()


def test_publish_paces_at_the_rate_and_the_command_works(tiny_world: Path, tmp_path: Path) -> None:
    t = time.monotonic()
    assert publish_world_items(tiny_world, tmp_path / "a", rate=50.0, limit=11) == 11
    assert 0.2 - 0.05 <= time.monotonic() - t  # 11 items at 50/s: the last goes out at 0.2 s
    assert len(list_files(tmp_path / "a")) == 11
    day = Manifest.read(tiny_world).first_day
    assert cli_main(["feed", "--world", str(tiny_world), "--feed", str(tmp_path / "b"), "--day", str(day),
                     "--per-file", "100", "--limit", "30"]) == 0  # fmt: skip
    assert len(read_file(list_files(tmp_path / "b")[0])) == 30
    with pytest.raises(ValueError, match="per_file must be >= 1"):
        publish_world_items(tiny_world, tmp_path / "c", per_file=0)
