"""select_row_groups against a plain full read of the day column, on files laid out as real logs are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.row_groups import select_row_groups


def _files(tmp_path: Path) -> list[Path]:
    """Days sorted and unsorted, row groups of 1, 7 and 1000 rows, one file without statistics, one empty."""
    rng = np.random.default_rng(0)
    layouts = [(np.sort(rng.integers(0, 9, 300)), 7, True),  # sorted: most groups one day, some straddle
               (rng.integers(0, 9, 300), 1, True),  # a row per group
               (rng.integers(2, 6, 500), 1000, True),  # one group over many days
               (np.sort(rng.integers(0, 9, 200)), 7, False),  # no statistics: every group read
               (np.array([], dtype=np.int64), 7, True)]  # no rows
    files = []
    for i, (days, size, stats) in enumerate(layouts):
        path = tmp_path / f"part-{i}.parquet"
        pq.write_table(pa.table({"label": np.zeros(len(days)), "day": days.astype(np.int64)}), path,
                       row_group_size=size, write_statistics=stats)
        files.append(path)
    return files


@pytest.mark.parametrize("days", [[0], [4], [2, 3, 4], [0, 8], [9], list(range(9))])
def test_counts_and_positions_equal_a_full_read(tmp_path: Path, days: list[int]) -> None:
    files = _files(tmp_path)
    wanted = np.array(days, dtype=np.int64)
    groups = select_row_groups(files, "day", wanted)
    expected, got = 0, 0
    for fi, path in enumerate(files):
        table = pq.ParquetFile(path)
        for gi in range(table.num_row_groups):
            day = table.read_row_group(gi, columns=["day"]).column(0).to_numpy()
            k = int(np.isin(day, wanted).sum())
            expected += k
            chosen = [g for g in groups if (g.file, g.index) == (fi, gi)]
            assert len(chosen) == (1 if k else 0)  # taken once, exactly when it holds a row of the days
            if k:
                g = chosen[0]
                first = sum(table.metadata.row_group(j).num_rows for j in range(gi))
                assert (g.rows, g.whole, g.first, g.size) == (k, k == len(day), first, len(day))
                got += g.rows
    assert got == expected == sum(int(np.isin(pq.read_table(p).column("day").to_numpy(), wanted).sum()) for p in files)


def test_no_days_takes_every_row(tmp_path: Path) -> None:
    files = _files(tmp_path)
    assert sum(g.rows for g in select_row_groups(files, "day", None)) == sum(pq.read_metadata(p).num_rows for p in files)


def test_a_file_without_the_day_column_is_named(tmp_path: Path) -> None:
    files = _files(tmp_path)
    bad = tmp_path / "part-9.parquet"
    pq.write_table(pa.table({"ds": [1, 2]}), bad)
    with pytest.raises(ValueError, match=r"part-9\.parquet: no column 'day'; impressions need \['day', 'label'\]"):
        select_row_groups([*files, bad], "day", np.array([1]), ("day", "label"))
