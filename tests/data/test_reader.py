"""ImpressionReader against a plain per-row pyarrow reference."""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from recsys.data import schema
from recsys.data.batch import Batch
from recsys.data.spec import world_spec

SPARSE_FEATURES = world_spec().kjt_keys()
SINGLE_FEATURES = world_spec().sparse_keys()
DENSE_FEATURES = world_spec().dense_names()
from recsys.data.prefetch import prefetch
from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.data.schema import Manifest, table_files

RANGES = {
    "user_id": 9,
    "item_id": 13,
    "age_bucket": 7,
    "gender": 3,
    "city_id": 11,
    "shop_id": 17,
    "brand_id": 19,
    "category_id": 23,
    "price_bucket": 5,
}
MAX_HIST = 6
# Impression files: name -> day of each row. One file mixes days 2 and 3, so
# some of its row groups straddle a day boundary.
FILES = {
    "day-0001-part-00000": [1] * 23,
    "day-0002-part-00000": [2] * 17,
    "day-0002-part-00001": [2, 3] * 6,
    "day-0003-part-00000": [3] * 9,
}
N_ROWS = sum(len(d) for d in FILES.values())
THREAD = "mmctr-reader-prefetch"


def write_dataset(root: Path, files: dict[str, list[int]] = FILES, row_group_size: int = 5, seed: int = 0) -> Path:
    """A small dataset in the public format; ``position`` is the global row number (unique)."""
    rng = np.random.default_rng(seed)
    users = pa.table(
        {
            "user_id": rng.permutation(RANGES["user_id"]),
            **{c: rng.integers(0, RANGES[c], RANGES["user_id"]) for c in ("age_bucket", "gender", "city_id")},
        },
        schema=schema.USERS,
    )
    n_items = RANGES["item_id"]
    items = pa.table(
        {
            "item_id": rng.permutation(n_items),
            **{c: rng.integers(0, RANGES[c], n_items) for c in ("category_id", "shop_id", "brand_id", "price_bucket")},
            "created_day": np.zeros(n_items, dtype=np.int32),
            "title": [f"item {i}" for i in range(n_items)],
            "image": [b"\x89PNG" for _ in range(n_items)],
        },
        schema=schema.ITEMS,
    )
    for name in ("users", "items", "impressions"):
        (root / name).mkdir(parents=True)
    # Side tables in two files each, rows in shuffled ID order.
    for part, table in enumerate([users.slice(0, 4), users.slice(4)]):
        pq.write_table(table, root / f"users/part-{part:05d}.parquet")
    for part, table in enumerate([items.slice(0, 6), items.slice(6)]):
        pq.write_table(table, root / f"items/part-{part:05d}.parquet")
    row = 0
    for name, days in files.items():
        n = len(days)
        lengths = rng.integers(0, MAX_HIST + 1, n)
        table = pa.table(
            {
                "day": np.asarray(days, dtype=np.int32),
                "user_id": rng.integers(0, RANGES["user_id"], n),
                "item_id": rng.integers(0, n_items, n),
                "history_item_ids": [rng.integers(0, n_items, k).tolist() for k in lengths],
                "position": np.arange(row, row + n, dtype=np.int32),
                "label": rng.integers(0, 2, n).astype(np.float32),
            },
            schema=schema.IMPRESSIONS,
        )
        pq.write_table(table, root / f"impressions/{name}.parquet", row_group_size=row_group_size)
        row += n
    all_days = [d for days in files.values() for d in days]
    Manifest(
        format_version=schema.FORMAT_VERSION,
        preset="test",
        seed=seed,
        counts={"users": RANGES["user_id"], "items": n_items, "impressions": row, "searches": 0},
        id_ranges=dict(RANGES),
        first_day=min(all_days),
        last_day=max(all_days),
        max_history_len=MAX_HIST,
        image_size=8,
    ).write(root)
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "ds")


def reference_rows(root: Path, days: set[int] | None = None, max_len: int | None = None) -> list[dict]:
    """The expected rows: a plain Python loop over ``to_pylist`` joined through dicts."""
    keep = Manifest.read(root).max_history_len if max_len is None else max_len
    users = {r["user_id"]: r for f in table_files(root, "users") for r in pq.read_table(f).to_pylist()}
    items = {r["item_id"]: r for f in table_files(root, "items") for r in pq.read_table(f).to_pylist()}
    rows = []
    for path in table_files(root, "impressions"):
        for r in pq.read_table(path).to_pylist():
            if days is not None and r["day"] not in days:
                continue
            user, item, hist = users[r["user_id"]], items[r["item_id"]], r["history_item_ids"]
            row = {
                "position": float(r["position"]),
                "log_history_len": math.log1p(len(hist)),
                "label": r["label"],
                "history_item_ids": hist[max(len(hist) - keep, 0) :],
            }
            row |= {k: r[k] for k in ("user_id", "item_id")}
            row |= {k: user[k] for k in ("age_bucket", "gender", "city_id")}
            row |= {k: item[k] for k in ("shop_id", "brand_id", "category_id", "price_bucket")}
            rows.append(row)
    return rows


def batch_rows(batch: Batch) -> list[dict]:
    """A Batch back as rows, checking its layout on the way."""
    B = batch.batch_size
    kjt = batch.sparse_features
    assert kjt.keys() == list(SPARSE_FEATURES)
    assert kjt.stride() == B
    assert batch.dense_features.shape == (B, len(DENSE_FEATURES))
    assert batch.dense_features.dtype == torch.float32 and batch.labels.dtype == torch.float32
    assert kjt.values().dtype == torch.int64
    per_key = {k: [t.tolist() for t in jt.to_dense()] for k, jt in kjt.to_dict().items()}
    rows = []
    for i in range(B):
        row = {
            "position": batch.dense_features[i, 0].item(),
            "log_history_len": batch.dense_features[i, 1].item(),
            "label": batch.labels[i].item(),
            "history_item_ids": per_key["history_item_ids"][i],
        }
        for k in SINGLE_FEATURES:
            (row[k],) = per_key[k][i]  # exactly one ID
        assert batch.user_ids[i].item() == row["user_id"] and batch.item_ids[i].item() == row["item_id"]
        rows.append(row)
    return rows


def read_rows(batches: object) -> list[dict]:
    return [row for batch in batches for row in batch_rows(batch)]


def key(row: dict) -> tuple:
    """A hashable row with the float32 log rounded, for multiset comparisons."""
    return tuple((k, tuple(v) if isinstance(v, list) else round(v, 5)) for k, v in sorted(row.items()))


def assert_rows_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["log_history_len"] == pytest.approx(w["log_history_len"], rel=1e-6)
        assert {k: v for k, v in g.items() if k != "log_history_len"} == {
            k: v for k, v in w.items() if k != "log_history_len"
        }


@pytest.mark.parametrize("max_len", [None, 2, 0])
@pytest.mark.parametrize("prefetch_depth", [0, 2])
def test_batches_equal_parquet_rows(dataset: Path, max_len: int | None, prefetch_depth: int) -> None:
    config = ReaderConfig(batch_size=7, prefetch=prefetch_depth, max_history_len=max_len)
    reader = ImpressionReader(dataset, config)
    batches = list(reader)
    assert len(batches) == reader.num_batches() == len(reader) == math.ceil(N_ROWS / 7)
    assert [b.batch_size for b in batches] == [7] * (N_ROWS // 7) + [N_ROWS % 7]
    assert_rows_equal(read_rows(batches), reference_rows(dataset, max_len=max_len))


def test_history_keeps_most_recent(dataset: Path) -> None:
    rows = read_rows(ImpressionReader(dataset, ReaderConfig(batch_size=64, max_history_len=2)))
    full = {r["position"]: r["history_item_ids"] for r in reference_rows(dataset)}
    assert any(len(h) > 2 for h in full.values())
    for row in rows:
        assert row["history_item_ids"] == full[row["position"]][-2:]
        assert row["log_history_len"] == pytest.approx(math.log1p(len(full[row["position"]])), rel=1e-6)


@pytest.mark.parametrize("days", [{1}, {2}, {3}, {2, 3}, {1, 3}, {7}])
def test_day_filter(dataset: Path, days: set[int], monkeypatch: pytest.MonkeyPatch) -> None:
    # Which row groups hold a selected day, read before the reader runs.
    wanted = 0
    for path in table_files(dataset, "impressions"):
        file = pq.ParquetFile(path)
        for i in range(file.num_row_groups):
            wanted += bool(set(file.read_row_group(i, columns=["day"]).column(0).to_pylist()) & days)
    reads: list[set[int]] = []
    original = pq.ParquetFile.read_row_group

    def spy(self: pq.ParquetFile, i: int, columns: list[str] | None = None, **kw: object) -> pa.Table:
        table = original(self, i, columns=columns, **kw)
        if columns and "user_id" in columns:
            reads.append(set(table.column("day").to_pylist()))
        return table

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    reader = ImpressionReader(dataset, ReaderConfig(batch_size=4, days=sorted(days), prefetch=0))
    got = read_rows(reader)
    assert_rows_equal(got, reference_rows(dataset, days=days))
    assert len(reads) == wanted  # statistics skipped every row group without a selected day
    assert all(r & days for r in reads)


def test_day_filter_accepts_range(dataset: Path) -> None:
    reader = ImpressionReader(dataset, ReaderConfig(batch_size=4, days=range(2, 4)))
    assert_rows_equal(read_rows(reader), reference_rows(dataset, days={2, 3}))


@pytest.mark.parametrize("W", [2, 3])
def test_rank_sharding(dataset: Path, W: int) -> None:
    B = 4
    readers = [ImpressionReader(dataset, ReaderConfig(B, rank=r, world_size=W)) for r in range(W)]
    n = readers[0].rank_rows
    assert sum(n) == N_ROWS == readers[0].total_rows and max(n) - min(n) <= 1
    assert {r.num_batches() for r in readers} == {math.ceil(max(n) / B)}
    per_rank = [list(r) for r in readers]
    assert all(len(batches) == r.num_batches() for batches, r in zip(per_rank, readers))
    for step in zip(*per_rank):  # lock-step collectives: every rank's batch of one size at every step
        assert len({b.batch_size for b in step}) == 1
    rows = [row for batches in per_rank for row in real_rows(batches)]
    assert Counter(map(key, rows)) == Counter(map(key, reference_rows(dataset)))


def test_padding_batch_has_weight_zero(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds", files={"day-0001-part-00000": [1] * 3}, row_group_size=5)
    W, B = 2, 2  # rank 0 gets 1 row, rank 1 gets 2: both yield one batch
    readers = [ImpressionReader(root, ReaderConfig(batch_size=B, rank=r, world_size=W)) for r in range(W)]
    assert readers[0].rank_rows == (1, 2) and {r.num_batches() for r in readers} == {1}
    W, B = 4, 2  # rank 0 gets no row: it yields one padding batch
    readers = [ImpressionReader(root, ReaderConfig(batch_size=B, rank=r, world_size=W)) for r in range(W)]
    batches = [list(r) for r in readers]
    assert [len(b) for b in batches] == [1] * W
    (pad,) = batches[0]
    assert pad.batch_size == 1 and pad.weights.sum().item() == 0 and pad.num_real == 0  # as large as the others
    assert sum(b.num_real for (b,) in batches) == 3
    assert all(torch.equal(b.weights, torch.ones(b.batch_size)) for (b,) in batches[1:])
    W, B = 2, 4  # rank 0 gets 1 row, rank 1 gets 2: rank 0's batch is filled to 2 with a padding row
    readers = [ImpressionReader(root, ReaderConfig(batch_size=B, rank=r, world_size=W)) for r in range(W)]
    (short,), (full,) = (list(r) for r in readers)
    assert (short.batch_size, short.num_real, full.batch_size, full.num_real) == (2, 1, 2, 2)
    assert short.weights.tolist() == [1.0, 0.0] and short.sparse_features["history_item_ids"].lengths().tolist()[1] == 0


def real_rows(batches: object) -> list[dict]:
    """The rows of weight 1, in order (padding rows, of weight 0, trail a batch: checked)."""
    out = []
    for batch in batches:
        weights = batch.weights.tolist()
        n = batch.num_real
        assert weights == [1.0] * n + [0.0] * (batch.batch_size - n)
        out += batch_rows(batch)[:n]
    return out


def test_shuffle_is_deterministic_and_complete(dataset: Path) -> None:
    def rows(seed: int, epoch: int) -> list[dict]:
        reader = ImpressionReader(dataset, ReaderConfig(batch_size=5, shuffle=True, seed=seed))
        reader.set_epoch(epoch)
        return read_rows(reader)

    plain = read_rows(ImpressionReader(dataset, ReaderConfig(batch_size=5)))
    a, b, c = rows(0, 0), rows(0, 0), rows(0, 1)
    assert a == b
    assert a != plain and a != c
    assert Counter(map(key, a)) == Counter(map(key, plain)) == Counter(map(key, c))


@pytest.mark.parametrize("num_workers", [0, 2, 3])
@pytest.mark.parametrize("rank", [0, 1])
def test_dataloader_yields_same_rows(dataset: Path, num_workers: int, rank: int) -> None:
    config = ReaderConfig(batch_size=4, rank=rank, world_size=2, shuffle=True)
    reader = ImpressionReader(dataset, config)
    direct = read_rows(reader)
    loader = DataLoader(reader, batch_size=None, num_workers=num_workers)
    batches = list(loader)
    assert len(batches) == reader.num_batches()
    assert all(isinstance(b, Batch) for b in batches)
    assert Counter(map(key, read_rows(batches))) == Counter(map(key, direct))
    assert sorted(b.num_real for b in batches) == sorted(b.num_real for b in reader)


@pytest.mark.parametrize("column", ["position", "label"])
def test_nan_dense_source_raises(tmp_path: Path, column: str) -> None:
    root = write_dataset(tmp_path / "ds")
    path = root / "impressions/day-0002-part-00000.parquet"
    table = pq.read_table(path)
    values = table.column(column).to_numpy().astype(np.float64)
    values[3] = np.nan
    table = table.set_column(table.schema.get_field_index(column), column, pa.array(values))
    pq.write_table(table, path, row_group_size=5)
    expected = "a finite number" if column == "position" else "0.0 or 1.0"  # row 3: row group 0 of rows 0-4
    with pytest.raises(ValueError, match=rf"day-0002-part-00000\.parquet \(row group 0, file rows 0-4\): "
                                         rf"column '{column}', row 3: value nan, expected {expected}"):
        list(ImpressionReader(root, ReaderConfig(batch_size=4, prefetch=2)))  # raised in the thread


def test_unknown_user_raises(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds")
    (root / "users/part-00001.parquet").unlink()
    with pytest.raises(ValueError, match=r"user_id \d+ has no row in users/"):
        list(ImpressionReader(root, ReaderConfig(batch_size=4)))


def test_side_tables_skip_content_columns(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[str] | None] = []
    original = pq.read_table

    def spy(source: object, columns: list[str] | None = None, **kw: object) -> pa.Table:
        asked.append(columns)
        return original(source, columns=columns, **kw)

    monkeypatch.setattr(pq, "read_table", spy)
    ImpressionReader(dataset, ReaderConfig())
    assert asked and all(c is not None and not {"image", "title"} & set(c) for c in asked)


def test_prefetch_propagates_worker_exception() -> None:
    def source():  # noqa: ANN202
        yield 1
        raise RuntimeError("boom in the worker")

    got = []
    with pytest.raises(RuntimeError, match="boom in the worker"):
        for item in prefetch(source(), depth=2):
            got.append(item)
    assert got == [1]
    assert not [t for t in threading.enumerate() if t.name == THREAD]


def test_early_stop_leaves_no_thread(dataset: Path) -> None:
    reader = ImpressionReader(dataset, ReaderConfig(batch_size=2, prefetch=2))
    for _ in reader:
        assert [t for t in threading.enumerate() if t.name == THREAD]
        break
    assert not [t for t in threading.enumerate() if t.name == THREAD]
    it = iter(reader)
    next(it)
    it.close()
    assert not [t for t in threading.enumerate() if t.name == THREAD]


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="rank"):
        ReaderConfig(rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        ReaderConfig(batch_size=0)
    with pytest.raises(ValueError, match="prefetch"):
        ReaderConfig(prefetch=-1)


def test_batch_to_and_pin_memory(dataset: Path) -> None:
    batch = next(iter(ImpressionReader(dataset, ReaderConfig(batch_size=6, prefetch=0))))
    moved = batch.to(torch.device("cpu"))
    assert batch_rows(moved) == batch_rows(batch)
    if torch.cuda.is_available():
        pinned = batch.pin_memory()
        assert pinned.dense_features.is_pinned() and pinned.sparse_features.values().is_pinned()
        back = pinned.to(torch.device("cuda"), non_blocking=True).to(torch.device("cpu"))
        assert batch_rows(back) == batch_rows(batch)


def test_generated_tiny_world(tiny_world: Path) -> None:
    manifest = Manifest.read(tiny_world)
    reader = ImpressionReader(tiny_world, ReaderConfig(batch_size=4096))
    assert_rows_equal(read_rows(reader), reference_rows(tiny_world))
    test_day = ImpressionReader(tiny_world, ReaderConfig(batch_size=512, days=[manifest.test_day]))
    rows = read_rows(test_day)
    assert rows and len(rows) == len(reference_rows(tiny_world, days={manifest.test_day}))


@pytest.mark.parametrize("shuffle", [False, True])
def test_remaining_yields_the_rest_of_the_epoch(dataset: Path, shuffle: bool) -> None:
    config = ReaderConfig(batch_size=4, shuffle=shuffle, seed=3, world_size=2, rank=1)
    full = list(ImpressionReader(dataset, config))
    reader = ImpressionReader(dataset, config)
    for steps in (0, 2, len(full), len(full) + 3):
        rest = ImpressionReader(dataset, replace(config, remaining=reader.remaining_after(steps)))
        got = list(rest)
        assert len(got) == rest.num_batches()
        # The same rows as the batches not yet done, in the same order (possibly cut differently).
        assert real_rows(got) == real_rows(full[steps:])


def test_ids_beyond_table_refused_or_hashed_and_counted(dataset: Path) -> None:
    sizes = {"item_id": 5, "shop_id": 4}
    with pytest.raises(ValueError, match=r"\d+ (history_)?item_ids? value\(s\) >= the table's 5 rows"):
        list(ImpressionReader(dataset, ReaderConfig(batch_size=4, table_sizes=sizes)))
    plain = list(ImpressionReader(dataset, ReaderConfig(batch_size=4)))
    reader = ImpressionReader(dataset, ReaderConfig(batch_size=4, table_sizes=sizes, out_of_range="hash"))
    hashed = list(reader)
    want = Counter()
    for raw, got in zip(plain, hashed):
        for feature, rows in (("item_id", 5), ("history_item_ids", 5), ("shop_id", 4)):
            a, b = raw.sparse_features[feature].values(), got.sparse_features[feature].values()
            assert torch.equal(b, a % rows)
            want[feature] += int((a >= rows).sum())
        assert torch.equal(raw.sparse_features["user_id"].values(), got.sparse_features["user_id"].values())
    assert want["item_id"] > 0
    assert {k: v for k, v in reader.out_of_range_counts.items() if v} == dict(want)
    with pytest.raises(ValueError, match="unknown table 'items'"):
        ImpressionReader(dataset, ReaderConfig(table_sizes={"items": 3}))


# -- row-exact sharding whatever the file layout ---------------------------------


def _row_keys(batches: list[Batch]) -> Counter:
    """Real rows as (user, item, position, label, history) tuples."""
    out: Counter = Counter()
    for b in batches:
        hist = b.sparse_features["history_item_ids"]
        offsets, values = hist.offsets().tolist(), hist.values().tolist()
        for i in range(b.num_real):  # padding rows trail the real ones (real_rows checks it)
            out[(b.user_ids[i].item(), b.item_ids[i].item(), b.dense_features[i, 0].item(), b.labels[i].item(),
                 tuple(values[offsets[i] : offsets[i + 1]]))] += 1
    return out


def _parquet_keys(root: Path, days: set[int]) -> Counter:
    out: Counter = Counter()
    for f in table_files(root, "impressions"):
        for r in pq.read_table(f).to_pylist():
            if r["day"] in days:
                out[(r["user_id"], r["item_id"], float(r["position"]), r["label"], tuple(r["history_item_ids"]))] += 1
    return out


@pytest.mark.parametrize("layout", ["groups_3000", "one_group", "empty_files"])
def test_every_row_once_for_any_layout_and_world_size(relayout: Callable[[str], Path], layout: str) -> None:
    root = relayout(layout)
    manifest = Manifest.read(root)
    days = set(range(manifest.first_day, manifest.last_day))  # the training days (all but the last)
    want = _parquet_keys(root, days)
    B = 1024
    for W in (1, 2, 3):
        config = ReaderConfig(batch_size=B, days=sorted(days), world_size=W, shuffle=True, seed=1, prefetch=0)
        readers = [ImpressionReader(root, replace(config, rank=r)) for r in range(W)]
        batches = [list(r) for r in readers]
        assert {len(b) for b in batches} == {readers[0].num_batches()}
        assert _row_keys([b for bs in batches for b in bs]) == want
        assert readers[0].total_rows == sum(want.values())
    # Stopped after 3 steps on 2 ranks, resumed on 3, then on 1: still every row once.
    got: Counter = Counter()
    remaining = None
    for W, steps in ((2, 3), (3, 2), (1, None)):
        config = ReaderConfig(batch_size=B, days=sorted(days), world_size=W, shuffle=True, seed=1, prefetch=0,
                              remaining=remaining)
        readers = [ImpressionReader(root, replace(config, rank=r)) for r in range(W)]
        for reader in readers:
            got += _row_keys(list(reader)[:steps])
        remaining = readers[0].remaining_after(steps if steps is not None else readers[0].num_batches())
    assert remaining == () and got == want


def test_duplicate_side_row_raises_naming_file_and_id(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ds")
    first = pq.read_table(root / "users/part-00000.parquet")
    twice = first.slice(0, 1)["user_id"][0].as_py()
    pq.write_table(pa.concat_tables([pq.read_table(root / "users/part-00001.parquet"), first.slice(0, 1)]),
                   root / "users/part-00001.parquet")
    with pytest.raises(ValueError, match=rf"part-00001\.parquet: user_id {twice} appears more than once"):
        ImpressionReader(root, ReaderConfig(batch_size=4))


# --- values the reader refuses, naming file, column and row (as `mmctr validate` does) ---


def _set_float(path: Path, column: str, row: int, value: float, row_group_size: int = 5) -> None:
    """Column ``column`` of the file as float64, ``value`` at ``row``; the file rewritten in row groups of ``row_group_size``."""
    table = pq.read_table(path)
    values = table.column(column).to_numpy().astype(np.float64)
    values[row] = value
    pq.write_table(table.set_column(table.schema.get_field_index(column), column, pa.array(values)), path,
                   row_group_size=row_group_size)


def _row_group_of(path: Path, row: int) -> tuple[int, int, int]:
    """(row group, its first and last file row) holding ``row``, from the footer alone."""
    meta, first = pq.read_metadata(path), 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if first <= row < first + n:
            return g, first, first + n - 1
        first += n
    raise AssertionError(f"{path} has no row {row}")


@pytest.mark.parametrize(
    ("name", "row", "value", "days", "shuffle"),
    [
        ("day-0001-part-00000", 12, 2.0, None, False),  # a training day, the third row group
        ("day-0003-part-00000", 7, 0.5, [3], True),  # the test day alone, rows shuffled
        ("day-0002-part-00001", 9, -1.0, [3], False),  # a row group straddling days 2 and 3 (row 9: day 3)
        ("day-0002-part-00000", 16, 1.0 + 1e-7, None, True),  # not exactly 1; the last, short row group
    ],
)
def test_label_not_0_or_1_is_refused_naming_file_column_and_row(
    tmp_path: Path, name: str, row: int, value: float, days: list[int] | None, shuffle: bool
) -> None:
    root = write_dataset(tmp_path / "ds")
    path = root / f"impressions/{name}.parquet"
    _set_float(path, "label", row, value)
    group, first, last = _row_group_of(path, row)
    want = f"{path} (row group {group}, file rows {first}-{last}): column 'label', row {row}: value {value}, expected 0.0 or 1.0"
    with pytest.raises(ValueError) as e:
        list(ImpressionReader(root, ReaderConfig(batch_size=4, days=days, shuffle=shuffle, seed=3, prefetch=2)))
    assert str(e.value) == want


def test_batch_of_refuses_a_label_not_0_or_1_naming_the_row(dataset: Path) -> None:
    reader = ImpressionReader(dataset, ReaderConfig(batch_size=4, prefetch=0))
    table = pq.read_table(dataset / "impressions/day-0001-part-00000.parquet").slice(0, 4)
    labels = table.column("label").to_numpy().copy()
    labels[2] = 3.0
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    with pytest.raises(ValueError, match=r"^request: column 'label', row 2: value 3\.0, expected 0\.0 or 1\.0$"):
        reader.batch_of(table, where="request")


F32_OVER = "expected a finite number (float32 overflows to inf beyond 3.403e+38)"


@pytest.mark.parametrize(
    ("row", "value", "message"),
    [
        (8, 1e39, f"value 1e+39, {F32_OVER}"),  # finite in float64, inf as float32
        (2, -1e300, f"value -1e+300, {F32_OVER}"),
        (11, float("inf"), "value inf, expected a finite number"),
        (16, float("-inf"), "value -inf, expected a finite number"),
    ],
)
def test_dense_value_not_finite_as_float32_is_refused_naming_file_column_and_row(
    tmp_path: Path, row: int, value: float, message: str
) -> None:
    root = write_dataset(tmp_path / "ds")
    path = root / "impressions/day-0002-part-00000.parquet"
    _set_float(path, "position", row, value)
    group, first, last = _row_group_of(path, row)
    with pytest.raises(ValueError) as e:
        list(ImpressionReader(root, ReaderConfig(batch_size=4, prefetch=0)))
    assert str(e.value) == f"{path} (row group {group}, file rows {first}-{last}): column 'position', row {row}: {message}"


def _priced(root: Path, price: list[float], dwell: list[float]) -> Path:
    """Items (two files) with a ``log1p`` dense ``price``; impressions (row groups of 4) with a ``log1p_standardize`` ``dwell``."""
    from recsys.data.spec import Dense, FeatureSpec, Sparse, Table

    spec = FeatureSpec(user_key="uid", item_key="iid", label="clk", history=None, content=(),
                       sparse=(Sparse("uid", "impressions"), Sparse("iid", "impressions")),
                       dense=(Dense("price", "items", "log1p"), Dense("dwell", "impressions", "log1p_standardize")),
                       tables=(Table("uid", "hash", rows=8), Table("iid")))  # fmt: skip
    for name in ("items", "impressions"):
        (root / name).mkdir(parents=True)
    iids = [30, 10, 50, 20, 40, 0, 60]
    items = pa.table({"iid": iids, "price": pa.array(price, pa.float64())})
    pq.write_table(items.slice(0, 3), root / "items/p0.parquet")
    pq.write_table(items.slice(3), root / "items/p1.parquet")
    n = len(dwell)
    impressions = pa.table({"day": [0] * (n - 2) + [1, 1], "uid": list(range(n)), "iid": [iids[i % 7] for i in range(n)],
                            "clk": [float(i % 2) for i in range(n)], "dwell": pa.array(dwell, pa.float64())})
    pq.write_table(impressions, root / "impressions/p.parquet", row_group_size=4)
    Manifest(format_version=2, first_day=0, last_day=1, id_ranges={"iid": 61}, features=spec).write(root)
    return root


PRICE, DWELL = [1.0, 2.5, 0.0, 7.0, 3.0, 0.5, 9.0], [0.0, 1.5, 2.0, 0.25, 4.0, 3.0, 1.0, 0.5, 6.0, 2.0]
CONFIG = ReaderConfig(batch_size=4, prefetch=0, dense_stats={"dwell": (0.0, 1.0)})


def test_a_priced_dataset_reads() -> None:
    """The fixture of the tests below is fine as written: every row read."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        reader = ImpressionReader(_priced(Path(tmp), PRICE, DWELL), CONFIG)
        dense = torch.cat([b.dense_features for b in reader])
        assert dense.shape == (len(DWELL), 2) and torch.isfinite(dense).all()


@pytest.mark.parametrize(
    ("at", "value", "message"),
    [
        (5, 1e39, f"value 1e+39, {F32_OVER}"),  # the repro: items.price = 1e39 trained on NaN
        (1, float("nan"), "value nan, expected a finite number"),
        (6, float("inf"), "value inf, expected a finite number"),
        (3, -1.0, "value -1.0, expected > -1 (transform 'log1p' takes log1p)"),
    ],
)
def test_side_table_dense_value_is_refused_naming_file_column_row_and_item(tmp_path: Path, at: int, value: float,
                                                                           message: str) -> None:
    price = list(PRICE)
    price[at] = value
    root = _priced(tmp_path / "ds", price, DWELL)
    file, row = ("p0", at) if at < 3 else ("p1", at - 3)  # items/p0 holds the first 3 items
    iid = pq.read_table(root / f"items/{file}.parquet").column("iid")[row].as_py()
    with pytest.raises(ValueError) as e:
        ImpressionReader(root, CONFIG)  # the side table is read when the reader is built
    assert str(e.value) == f"{root / 'items' / file}.parquet: column 'price', row {row} (iid {iid}): {message}"


@pytest.mark.parametrize(("row", "value"), [(6, -3.0), (9, -1.0)])
def test_impressions_dense_value_outside_its_transform_is_refused_naming_the_row(tmp_path: Path, row: int,
                                                                                 value: float) -> None:
    dwell = list(DWELL)
    dwell[row] = value
    root = _priced(tmp_path / "ds", PRICE, dwell)
    path = root / "impressions/p.parquet"
    group, first, last = _row_group_of(path, row)
    with pytest.raises(ValueError) as e:
        list(ImpressionReader(root, replace(CONFIG, days=[0, 1])))
    assert str(e.value) == (f"{path} (row group {group}, file rows {first}-{last}): column 'dwell', row {row}: "
                            f"value {value}, expected > -1 (transform 'log1p_standardize' takes log1p)")


def test_standardised_value_overflowing_float32_is_refused_naming_the_row(tmp_path: Path) -> None:
    """Inputs all fine, but a std near 0 sends one standardised value past float32: refused, never trained as inf."""
    dwell = list(DWELL)
    dwell[5] = 1e30
    root = _priced(tmp_path / "ds", PRICE, dwell)
    path = root / "impressions/p.parquet"
    group, first, last = _row_group_of(path, 5)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} \(row group {group}, file rows {first}-{last}\): "
                                         r"dense feature 'dwell' \(source impressions\), row 5: value 1e\+30 is -?inf"):
        list(ImpressionReader(root, replace(CONFIG, dense_stats={"dwell": (0.0, 1e-38)})))


def _cast_impressions(root: Path, column: str, type_: pa.DataType, names: list[str] | None = None) -> None:
    """Rewrites ``column`` of the impressions files (``names``, default all) as ``type_``, row groups as written."""
    for path in table_files(root, "impressions"):
        if names is None or path.stem in names:
            t = pq.read_table(path)
            i = t.schema.get_field_index(column)
            pq.write_table(t.set_column(i, pa.field(column, type_), t[column].cast(type_)), path, row_group_size=5)


def test_a_date_day_column_is_refused_naming_file_and_column_in_validates_words(tmp_path: Path) -> None:
    """A Parquet DATE day (date32, a log's usual ``ds``) is refused when the reader is built, as validate refuses it."""
    root = write_dataset(tmp_path / "ds")
    _cast_impressions(root, "day", pa.date32(), ["day-0002-part-00001"])  # not the first file
    path = root / "impressions/day-0002-part-00001.parquet"
    want = f"{path}: column 'day' has type date32[day], expected a signed integer (features.day)"
    for days in (None, [3]):
        with pytest.raises(ValueError) as e:
            ImpressionReader(root, ReaderConfig(batch_size=4, days=days, prefetch=0))
        assert str(e.value) == want


@pytest.mark.parametrize("type_", [pa.int8(), pa.int32(), pa.uint8(), pa.bool_(), pa.float64()], ids=str)
def test_a_label_of_any_integer_float_or_bool_type_reads_as_its_0_or_1(tmp_path: Path, type_: pa.DataType) -> None:
    root = write_dataset(tmp_path / "ds")
    want = [r["label"] for r in reference_rows(root)]  # in file order (no shuffle)
    _cast_impressions(root, "label", type_)
    got = [y for b in ImpressionReader(root, ReaderConfig(batch_size=7, prefetch=0))
           for y, w in zip(b.labels.tolist(), b.weights.tolist()) if w > 0]  # fmt: skip
    assert got == want and len(got) == N_ROWS


@pytest.mark.parametrize(("type_", "value"), [(pa.int8(), 2), (pa.int32(), -1), (pa.uint8(), 255)], ids=str)
def test_an_integer_label_not_0_or_1_is_refused_naming_file_column_and_row(
    tmp_path: Path, type_: pa.DataType, value: int
) -> None:
    root = write_dataset(tmp_path / "ds")
    _cast_impressions(root, "label", type_)
    path = root / "impressions/day-0002-part-00000.parquet"
    t = pq.read_table(path)
    labels = t.column("label").to_pylist()
    labels[11] = value
    pq.write_table(t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels, type_)), path, row_group_size=5)
    group, first, last = _row_group_of(path, 11)
    want = f"{path} (row group {group}, file rows {first}-{last}): column 'label', row 11: value {value}, expected 0 or 1"
    with pytest.raises(ValueError) as e:
        list(ImpressionReader(root, ReaderConfig(batch_size=4, prefetch=0)))
    assert str(e.value) == want
