"""``table_files``: every ``*.parquet`` file under a table's folder, at any depth, in a fixed order."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.data.schema import Manifest, read_table_file, table_files
from recsys.data.validate import DatasetError, validate_dataset

PARTITION = Path("impressions/day=14/part-0.parquet")  # Hive-style: the day in the folder name, and in the file


def _partitioned(tiny_world: Path, dst: Path) -> tuple[Path, int, int]:
    """A copy of the tiny world whose last impressions file sits in a partition folder, its manifest
    without counts (as a real log's): the copy, the impressions written and the rows of the moved file."""
    shutil.copytree(tiny_world, dst)
    files = sorted((dst / "impressions").glob("*.parquet"))
    total = sum(pq.read_table(f).num_rows for f in files)  # counted here, not by the code under test
    moved = pq.read_table(files[-1]).num_rows
    (dst / PARTITION).parent.mkdir()
    files[-1].rename(dst / PARTITION)
    dataclasses.replace(Manifest.read(dst), counts={}).write(dst)
    return dst, total, moved


def test_files_in_partition_folders_are_read(tiny_world: Path, tmp_path: Path) -> None:
    world, total, moved = _partitioned(tiny_world, tmp_path / "hive")
    assert table_files(world, "impressions")[-1] == world / PARTITION
    report = validate_dataset(world)
    assert report.counts["impressions"] == total
    assert report.days[14] == moved  # the day's rows all come from the moved file
    assert ImpressionReader(world, ReaderConfig(prefetch=0)).total_rows == total


def test_a_partition_file_missing_a_column_is_refused_naming_it(tiny_world: Path, tmp_path: Path) -> None:
    world, _, _ = _partitioned(tiny_world, tmp_path / "hive")
    pq.write_table(read_table_file(world / PARTITION).drop_columns(["day"]), world / PARTITION)  # day=14 is no column
    with pytest.raises(DatasetError, match=rf"^{PARTITION}: missing column 'day'"):
        validate_dataset(world)


def test_a_partition_file_reads_as_it_is(tiny_world: Path, tmp_path: Path) -> None:
    world, _, moved = _partitioned(tiny_world, tmp_path / "hive")
    with pytest.raises(Exception, match="Unable to merge"):  # pyarrow's default: day=14 read as a second `day`
        pq.read_table(world / PARTITION)
    t = read_table_file(world / PARTITION, ["label"], [("day", "=", 14)])
    assert (t.column_names, t.num_rows) == (["label"], moved)
    with pytest.raises(ValueError, match=rf"^{world / PARTITION}: .*nope"):
        read_table_file(world / PARTITION, ["nope"])


def test_order_is_by_relative_path_and_links_are_followed_once(tmp_path: Path) -> None:
    top = tmp_path / "w" / "impressions"
    for name in ("b.parquet", "day=2/part-1.parquet", "day=2/part-0.parquet", "a.parquet", "day=10/x.parquet",
                 "day=2/_SUCCESS", "notes.txt", "spark.parquet/part-0.parquet"):  # spark.parquet is a folder
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).touch()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/part-0.parquet").touch()
    (top / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (top / "linked/loop").symlink_to(top, target_is_directory=True)  # a cycle: walked once
    want = ["a.parquet", "b.parquet", "day=10/x.parquet", "day=2/part-0.parquet", "day=2/part-1.parquet",
            "linked/part-0.parquet", "spark.parquet/part-0.parquet"]
    assert [p.relative_to(top).as_posix() for p in table_files(tmp_path / "w", "impressions")] == want
    assert all(p.is_file() for p in table_files(tmp_path / "w", "impressions"))


def test_a_folder_without_parquet_files_has_none(tmp_path: Path) -> None:
    (tmp_path / "items/sub").mkdir(parents=True)
    (tmp_path / "items/sub/readme.txt").touch()
    assert table_files(tmp_path, "items") == []
    assert table_files(tmp_path, "users") == []  # no folder at all
    with pytest.raises(KeyError, match="unknown table 'truth'"):
        table_files(tmp_path, "truth")


def test_evaluation_statistics_read_partition_folders(tiny_world: Path, tmp_path: Path) -> None:
    # items and impressions both in partition folders: the per-item statistics evaluation uses read them
    # as files (pyarrow's default would add the folder's `day` and fail), every row counted
    from recsys.data.stats import item_index, new_item_mask, train_item_counts

    world, total, _ = _partitioned(tiny_world, tmp_path / "hive")
    items = sorted((world / "items").glob("*.parquet"))
    (world / "items" / "day=0").mkdir()
    items[-1].rename(world / "items" / "day=0" / items[-1].name)
    ids = sorted(int(i) for f in table_files(world, "items") for i in pq.read_table(f, partitioning=None)["item_id"].to_pylist())
    assert item_index(world).tolist() == ids
    manifest = Manifest.read(world)
    days = range(manifest.first_day, manifest.last_day + 1)
    assert int(train_item_counts(world, days, manifest).sum()) == total  # every impression of every day
    assert new_item_mask(world, manifest.test_day, manifest).shape == (len(ids),)


def test_files_whose_id_columns_cannot_unify_exactly_are_named(tmp_path: Path) -> None:
    import pyarrow as pa

    from recsys.data.schema import read_table_files

    small, big, floats, wide = (tmp_path / f"{n}.parquet" for n in "abcd")
    pq.write_table(pa.table({"item_id": pa.array([5], pa.int64()), "label": pa.array([1], pa.int8())}), small)
    pq.write_table(pa.table({"item_id": pa.array([2**60 + 1], pa.int64()), "label": pa.array([1], pa.int8())}), big)
    pq.write_table(pa.table({"item_id": pa.array([7.0], pa.float64()), "label": pa.array([0.0], pa.float32())}), floats)
    pq.write_table(pa.table({"item_id": pa.array([2**63 + 1], pa.uint64()), "label": pa.array([1], pa.int8())}), wide)
    both = read_table_files([small, floats])  # not declared IDs: promoted as pyarrow does (the label's case)
    assert both["label"].to_pylist() == [1.0, 0.0] and both["item_id"].to_pylist() == [5.0, 7.0]
    with pytest.raises(ValueError, match=rf"{floats}: column 'item_id' holds IDs as floats"):
        read_table_files([small, floats], ids=["item_id"])
    for other in (floats, wide):  # an ID past what the other type holds exactly: pyarrow refuses, the file named
        with pytest.raises(ValueError, match=rf"{other}: its columns do not unify with {big}'s"):
            read_table_files([big, other], ids=["item_id"])
    assert read_table_files([big, big], ids=["item_id"])["item_id"].to_pylist() == [2**60 + 1] * 2  # exact
