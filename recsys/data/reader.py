"""Reads impressions into TorchRec ``Batch``es: joined, day-filtered, sharded, prefetched.

Notation:

* ``B``: batch size; ``W``: world size (ranks); ``K``: DataLoader workers.
* ``N``: impressions of the selected days (all files); ``n_r``: rank ``r``'s share.
* ``T``: batches per rank and epoch, the same on every rank.

What one epoch of rank ``r`` reads:

1. Row groups of ``impressions/`` (files in sorted order, row groups in file
   order) whose ``day`` statistics meet ``days``; rows of other days are
   filtered out exactly. Empty files and row groups are skipped. Counts come
   from the Parquet metadata (plus the ``day`` column of row groups that
   straddle a day boundary), never from reading rows.
2. Those rows in the epoch's global order (``recsys.data.plan``): the same
   on every rank and for every ``W`` and row-group layout; with
   ``shuffle=True`` whole row groups are permuted by ``(seed, epoch)`` and
   the rows within each row group by ``(seed, epoch, file, row group)``.
3. ``config.remaining`` (default: the whole epoch) is cut into ``W``
   contiguous shares (``plan.split``): rank ``r`` gets ``n_r`` rows, and
   shares differ by at most one row, so every impression is read exactly
   once per epoch by exactly one rank, whatever the files look like.
4. Every rank yields ``T = ceil(max_r n_r / B)`` batches (the collectives of
   ``DistributedModelParallel`` need lock-step): its rows cut every ``B`` (the
   last batch may be smaller); a rank with one batch fewer yields, last, one
   padding batch of one row (every ID 0, no history, label 0) of weight 0
   (``Batch.weights``), which moves no gradient and no metric.
5. DataLoader worker ``k`` of ``K`` builds a contiguous run of those batches,
   reading only the row groups under them, so the batches are the same for
   any ``K`` (only their order interleaves).
6. Each impression is joined with its user (``users/``) and item
   (``items/``) side features; ``items/`` is read without its title and image
   columns. The side tables take memory proportional to their rows: sorted
   unique IDs searched with ``np.searchsorted``, or a dense array indexed by
   ID when the ID range is at most ``DENSE_LOOKUP_FACTOR`` times the rows. An
   ID listed twice in a side table, or an impression whose user or item has
   no row, is a ``ValueError`` naming the file.
7. IDs at or beyond their embedding table's rows (``table_sizes``, by
   default the manifest's ranges) are refused (``ValueError`` naming file,
   feature and count) or, with ``out_of_range="hash"``, folded in as
   ``id % rows`` and counted in ``out_of_range_counts``.
8. A background thread prepares up to ``prefetch`` batches ahead.

Resuming mid-epoch: once every rank has done ``steps`` batches,
``reader.remaining_after(steps)`` is what the epoch has left (global
intervals, JSON-friendly, the same on every rank); a reader built with
``ReaderConfig(remaining=...)`` on any number of ranks trains exactly those
rows (same ``seed`` and ``set_epoch``).

Dense features (``DENSE_FEATURES``): ``position`` as float and
``log1p(len(history_item_ids))`` of the history as written (before
truncation). ``history_item_ids`` keeps its last (most recent)
``max_history_len`` entries.

Example::

    >>> import tempfile, pathlib
    >>> import pyarrow as pa, pyarrow.parquet as pq
    >>> from recsys.data import schema
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("users", "items", "impressions"):
    ...     (root / name).mkdir()
    >>> pq.write_table(pa.table({"user_id": [0, 1], "age_bucket": [2, 3], "gender": [0, 1],
    ...     "city_id": [5, 6]}, schema=schema.USERS), root / "users/part-00000.parquet")
    >>> pq.write_table(pa.table({"item_id": [0, 1], "category_id": [4, 4], "shop_id": [7, 8],
    ...     "brand_id": [9, 9], "price_bucket": [1, 2], "created_day": [0, 0], "title": ["a", "b"],
    ...     "image": [b"", b""]}, schema=schema.ITEMS), root / "items/part-00000.parquet")
    >>> pq.write_table(pa.table({"day": [3, 3, 4], "user_id": [0, 1, 1], "item_id": [1, 0, 1],
    ...     "history_item_ids": [[0, 1, 0], [], [1]], "position": [0, 2, 1],
    ...     "label": [1.0, 0.0, 0.0]}, schema=schema.IMPRESSIONS),
    ...     root / "impressions/day-0003-part-00000.parquet")
    >>> ranges = {"user_id": 2, "item_id": 2, "age_bucket": 4, "gender": 2, "city_id": 7,
    ...     "category_id": 5, "shop_id": 9, "brand_id": 10, "price_bucket": 3}
    >>> schema.Manifest(format_version=1, preset="doc", seed=0, counts={}, id_ranges=ranges,
    ...     first_day=3, last_day=4, max_history_len=3, image_size=8).write(root)
    >>> reader = ImpressionReader(root, ReaderConfig(batch_size=2, days=[3], max_history_len=2))
    >>> reader.num_batches()
    1
    >>> (batch,) = list(reader)
    >>> batch.dense_features  # position, log1p(history length)
    tensor([[0.0000, 1.3863],
            [2.0000, 0.0000]])
    >>> batch.sparse_features["history_item_ids"].to_dense()  # the last 2 of [0, 1, 0]
    [tensor([1, 0]), tensor([], dtype=torch.int64)]
    >>> batch.sparse_features["shop_id"].values(), batch.labels, batch.weights
    (tensor([8, 7]), tensor([1., 0.]), tensor([1., 1.]))
    >>> two = [ImpressionReader(root, ReaderConfig(batch_size=2, rank=r, world_size=2)) for r in (0, 1)]
    >>> two[0].total_rows, two[0].rank_rows, two[0].num_batches()
    (3, (1, 2), 1)
    >>> two[0].remaining_after(0), two[0].remaining_after(1)
    (((0, 3),), ())
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data import plan
from recsys.data.batch import DENSE_FEATURES, FEATURE_ID_KIND, SINGLE_FEATURES, SPARSE_FEATURES, Batch
from recsys.data.prefetch import prefetch
from recsys.data.schema import Manifest, table_files
from recsys.data.side import SideTable, check_range as _check_range, read_column as _column

# Side features joined from users/ and items/, in `SINGLE_FEATURES` order.
USER_SIDE: tuple[str, ...] = ("age_bucket", "gender", "city_id")
ITEM_SIDE: tuple[str, ...] = ("shop_id", "brand_id", "category_id", "price_bucket")
IMPRESSION_COLUMNS: tuple[str, ...] = ("day", "user_id", "item_id", "history_item_ids", "position", "label")

_S = len(SINGLE_FEATURES)
OUT_OF_RANGE: tuple[str, ...] = ("refuse", "hash")
if SINGLE_FEATURES != ("user_id", *USER_SIDE, "item_id", *ITEM_SIDE):
    raise ImportError("recsys.data.batch.SINGLE_FEATURES no longer matches the reader's join order")


@dataclass(frozen=True)
class ReaderConfig:
    """How ``ImpressionReader`` reads (fields documented inline)."""

    batch_size: int = 4096  # B: impressions per batch
    days: tuple[int, ...] | range | None = None  # impression days to read; None = every day
    rank: int = 0  # this process's rank, 0 <= rank < world_size
    world_size: int = 1  # W: ranks sharing the epoch's rows
    shuffle: bool = False  # permute row-group order and rows within each row group
    seed: int = 0  # shuffle seed, combined with the epoch of `set_epoch`
    prefetch: int = 2  # batches a background thread prepares ahead; 0 = no thread
    max_history_len: int | None = None  # keep the last this many history items; None = manifest's
    # the epoch's rows still to read, as global [start, end) intervals (`remaining_after`); None = all
    remaining: tuple[tuple[int, int], ...] | None = None
    table_sizes: dict[str, int] | None = None  # rows per ID kind; None = the manifest's id_ranges
    out_of_range: str = "refuse"  # IDs >= their table's rows: "refuse" (ValueError) or "hash" (id % rows)

    def __post_init__(self) -> None:
        if self.days is not None and not isinstance(self.days, range):
            object.__setattr__(self, "days", tuple(int(d) for d in self.days))  # lists stay hashable
        if self.remaining is not None:  # lists (from JSON) become the canonical tuple
            object.__setattr__(self, "remaining", plan.normalize(self.remaining))
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={self.rank}, world_size={self.world_size}")
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0 (0 = no thread), got {self.prefetch}")
        if self.max_history_len is not None and self.max_history_len < 0:
            raise ValueError(f"max_history_len must be >= 0 or None, got {self.max_history_len}")
        if self.out_of_range not in OUT_OF_RANGE:
            raise ValueError(f"out_of_range must be one of {OUT_OF_RANGE}, got {self.out_of_range!r}")


@dataclass(frozen=True)
class _RowGroup:
    """A selected row group of one impressions file."""

    file: int  # index into the sorted impressions files
    index: int  # row group index within the file
    rows: int  # rows of the selected days
    whole: bool  # every row is of a selected day (no row filter needed)


@dataclass(frozen=True)
class _Block:
    """Selected rows of one row group, joined and truncated, columnar (n rows)."""

    single: np.ndarray  # int64 (S, n): rows as SINGLE_FEATURES
    dense: np.ndarray  # float32 (n, F): columns as DENSE_FEATURES
    labels: np.ndarray  # float32 (n,)
    hist_offsets: np.ndarray  # int64 (n + 1,), hist_offsets[0] == 0
    hist_values: np.ndarray  # int64 (hist_offsets[-1],)


class ImpressionReader(IterableDataset[Batch]):
    """Impressions of a dataset directory as an iterable of ``Batch`` (see module doc).

    Use directly (``for batch in reader``) or through
    ``DataLoader(reader, batch_size=None, num_workers=K)``; either way each
    epoch yields ``num_batches()`` batches on every rank.

    Args:
        root (Path): dataset directory in the format of ``recsys.data.schema``.
        config (ReaderConfig): batch size, days, sharding, shuffle, prefetch, resume point.
    """

    def __init__(self, root: Path, config: ReaderConfig = ReaderConfig()) -> None:
        super().__init__()
        self.root = Path(root)
        self.config = config
        self.manifest = Manifest.read(self.root)
        self.max_history_len = (
            self.manifest.max_history_len if config.max_history_len is None else config.max_history_len
        )
        self._days = None if config.days is None else np.unique(np.asarray(list(config.days), dtype=np.int64))
        self._files = table_files(self.root, "impressions")
        self._groups = self._select_row_groups()
        self.total_rows = sum(rg.rows for rg in self._groups)  # N
        whole = plan.whole(self.total_rows)
        self._remaining = whole if config.remaining is None else plan.normalize(config.remaining, self.total_rows)
        self._shares = plan.split(self._remaining, config.world_size)
        self._num_batches = plan.num_batches(self._remaining, config.world_size, config.batch_size)
        ranges = self.manifest.id_ranges
        self._users = SideTable.read(self.root, "users", "user_id", USER_SIDE, ranges)
        self._items = SideTable.read(self.root, "items", "item_id", ITEM_SIDE, ranges)
        self._table_rows = _table_rows(ranges, config.table_sizes)
        self._epoch = 0
        # IDs hashed per feature, counted as rows are read (each pass counts again).
        self.out_of_range_counts: dict[str, int] = {f: 0 for f in SPARSE_FEATURES}

    def num_batches(self) -> int:
        """Batches of this epoch (of ``config.remaining``), the same on every rank."""
        return self._num_batches

    def __len__(self) -> int:
        return self._num_batches

    @property
    def rank_rows(self) -> tuple[int, ...]:
        """Impressions each rank reads this epoch (its share of ``config.remaining``), n_r."""
        return tuple(plan.count(share) for share in self._shares)

    @property
    def remaining(self) -> plan.Remaining:
        """The epoch's rows this reader reads over all ranks (``config.remaining``, or all N)."""
        return self._remaining

    def remaining_after(self, steps: int) -> plan.Remaining:
        """What is left of the epoch once every rank has yielded ``steps`` batches (module doc)."""
        return plan.remaining_after(self._remaining, self.config.world_size, self.config.batch_size, steps)

    def set_epoch(self, epoch: int) -> None:
        """Reseeds the shuffle (call before each epoch, as with ``DistributedSampler``).

        DataLoader workers see it only if they are started after the call
        (the default, ``persistent_workers=False``).
        """
        self._epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        batches = self._batches()
        if self.config.prefetch == 0:
            return batches
        return prefetch(batches, self.config.prefetch)

    # -- planning (metadata only) -------------------------------------------

    def _select_row_groups(self) -> list[_RowGroup]:
        days = self._days
        out: list[_RowGroup] = []
        for fi, path in enumerate(self._files):
            meta = pq.read_metadata(path)
            if meta.num_row_groups == 0:
                continue
            file: pq.ParquetFile | None = None  # opened for straddling row groups only
            day_col = _leaf_index(meta, "day", path)
            for gi in range(meta.num_row_groups):
                group = meta.row_group(gi)
                n = group.num_rows
                if n == 0:
                    continue
                if days is None:
                    out.append(_RowGroup(fi, gi, n, True))
                    continue
                stats = group.column(day_col).statistics
                if stats is not None and stats.has_min_max:
                    lo, hi = int(stats.min), int(stats.max)
                    inside = int(np.searchsorted(days, hi, "right") - np.searchsorted(days, lo, "left"))
                    if inside == 0:
                        continue
                    if inside == hi - lo + 1:
                        out.append(_RowGroup(fi, gi, n, True))
                        continue
                # Straddles a day boundary (or has no statistics): count exactly.
                file = file or pq.ParquetFile(path)
                day = file.read_row_group(gi, columns=["day"]).column(0).to_numpy()
                k = int(np.isin(day, days).sum())
                if k:
                    out.append(_RowGroup(fi, gi, k, k == n))
        return out

    def _order(self) -> tuple[list[_RowGroup], np.ndarray]:
        """This epoch's row groups in global order and where each starts (int64 (G + 1,))."""
        c = self.config
        order = [self._groups[i] for i in plan.row_group_order(len(self._groups), c.shuffle, c.seed, self._epoch)]
        starts = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum([rg.rows for rg in order], out=starts[1:])
        return order, starts

    # -- reading -------------------------------------------------------------

    def _batches(self) -> Iterator[Batch]:
        B, T = self.config.batch_size, self._num_batches
        info = get_worker_info()
        k, K = (0, 1) if info is None else (info.id, info.num_workers)
        first, last = k * T // K, (k + 1) * T // K
        share = self._shares[self.config.rank]
        real = math.ceil(plan.count(share) / B)  # batches with rows; T - real padding batches (0 or 1)
        order, starts = self._order()
        segs = list(plan.segments(starts, plan.stretch(share, first * B, min(last, real) * B)))
        files: dict[int, pq.ParquetFile] = {}
        cached: tuple[int, int, _Block] | None = None  # (j, first row of the block, block)
        pieces: list[tuple[_Block, int, int]] = []
        filled = 0
        for i, (j, lo, hi) in enumerate(segs):
            if cached is None or cached[0] != j:
                rg = order[j]
                if rg.file not in files:
                    files[rg.file] = pq.ParquetFile(self._files[rg.file])
                end = hi  # up to the last row of j this worker reads (a worker never comes back to j)
                for jj, _, h in segs[i + 1 :]:
                    if jj != j:
                        break
                    end = h
                cached = (j, lo, self._load(files[rg.file], rg, lo, end))
            _, offset, block = cached
            lo, hi = lo - offset, hi - offset
            while lo < hi:
                take = min(hi - lo, B - filled)
                pieces.append((block, lo, lo + take))
                filled += take
                lo += take
                if filled == B:
                    yield _assemble(pieces)
                    pieces, filled = [], 0
        if pieces:
            yield _assemble(pieces)
        for _ in range(max(real, first), last):
            yield _padding()

    def _load(self, file: pq.ParquetFile, rg: _RowGroup, lo: int, hi: int) -> _Block:
        """Rows ``[lo, hi)`` of row group ``rg`` in the epoch's order (day-filtered, shuffled), joined."""
        where = f"{self._files[rg.file]} (row group {rg.index})"
        table = file.read_row_group(rg.index, columns=list(IMPRESSION_COLUMNS))
        rows: np.ndarray | None = None  # selected row indices; None = all, in order
        if not rg.whole:
            rows = np.flatnonzero(np.isin(_column(table, "day", where), self._days))
        if self.config.shuffle:
            rng = np.random.default_rng((self.config.seed, self._epoch, rg.file, rg.index))
            perm = rng.permutation(rg.rows)
            rows = perm if rows is None else rows[perm]
        if rows is not None:
            rows = rows[lo:hi]
        elif (lo, hi) != (0, table.num_rows):
            table = table.slice(lo, hi - lo)  # zero-copy; rows stay in order
        user = _take(_column(table, "user_id", where), rows).astype(np.int64, copy=False)
        item = _take(_column(table, "item_id", where), rows).astype(np.int64, copy=False)
        position = _take(_column(table, "position", where), rows).astype(np.float32)
        labels = _take(_column(table, "label", where), rows).astype(np.float32)
        hist = table.column("history_item_ids").combine_chunks()
        if hist.null_count or hist.values.null_count:
            raise ValueError(f"{where}: column 'history_item_ids' has nulls; expected lists of item IDs")
        full_len, offsets, values = _jagged_take(
            hist.offsets.to_numpy(), hist.values.to_numpy(), rows, self.max_history_len
        )
        m = len(user)
        single = np.empty((_S, m), dtype=np.int64)
        single[0] = user
        single[1 : 1 + len(USER_SIDE)] = self._users.join(user, where)
        single[1 + len(USER_SIDE)] = item
        single[2 + len(USER_SIDE) :] = self._items.join(item, where)
        _check_range(values, self.manifest.id_ranges["item_id"], "history_item_ids", where)
        for s, name in enumerate(SINGLE_FEATURES):
            single[s] = self._fit_table(single[s], name, where)
        values = self._fit_table(values, "history_item_ids", where)
        dense = np.empty((m, len(DENSE_FEATURES)), dtype=np.float32)
        dense[:, 0] = position
        dense[:, 1] = np.log1p(full_len)
        return _Block(single, dense, labels, offsets, values)

    def _fit_table(self, ids: np.ndarray, feature: str, where: str) -> np.ndarray:
        """IDs of ``feature`` within its table's rows: hashed (``id % rows``) or refused, counted."""
        rows = self._table_rows[FEATURE_ID_KIND[feature]]
        over = ids >= rows
        n = int(over.sum()) if len(ids) and int(ids.max()) >= rows else 0
        if not n:
            return ids
        if self.config.out_of_range == "refuse":
            raise ValueError(
                f"{where}: {n} {feature} value(s) >= the table's {rows} rows (e.g. {int(ids[over][0])}); "
                f"set out_of_range='hash' to fold them into the table"
            )
        self.out_of_range_counts[feature] += n
        return np.where(over, ids % rows, ids)


def _table_rows(ranges: dict[str, int], sizes: dict[str, int] | None) -> dict[str, int]:
    """Rows of each ID kind's table: ``sizes`` where given, else the manifest's range."""
    kinds = sorted(set(FEATURE_ID_KIND.values()))
    rows = {k: int(ranges[k]) for k in kinds}
    for k, n in (sizes or {}).items():
        if k not in rows:
            raise ValueError(f"table_sizes names unknown ID kind {k!r}; known: {kinds}")
        if n < 1:
            raise ValueError(f"table_sizes[{k!r}] must be >= 1, got {n}")
        rows[k] = int(n)
    return rows


def _padding() -> Batch:
    """A batch of one padding row: every ID 0 (a row of every table), no history, weight 0."""
    kjt = KeyedJaggedTensor(
        keys=list(SPARSE_FEATURES),
        values=torch.zeros(_S, dtype=torch.int64),
        lengths=torch.tensor([1] * _S + [0], dtype=torch.int32),
        stride=1,
    )
    return Batch(
        dense_features=torch.zeros(1, len(DENSE_FEATURES)),
        sparse_features=kjt,
        labels=torch.zeros(1),
        user_ids=torch.zeros(1, dtype=torch.int64),
        item_ids=torch.zeros(1, dtype=torch.int64),
        weights=torch.zeros(1),
    )


def _assemble(pieces: list[tuple[_Block, int, int]]) -> Batch:
    """One Batch from row ranges of blocks (copies; no reference to the blocks survives)."""
    values = [blk.single[s, a:b] for s in range(_S) for blk, a, b in pieces]
    values += [blk.hist_values[blk.hist_offsets[a] : blk.hist_offsets[b]] for blk, a, b in pieces]
    B = sum(b - a for _, a, b in pieces)
    lengths = np.empty((_S + 1) * B, dtype=np.int32)
    lengths[: _S * B] = 1
    np.concatenate([np.diff(blk.hist_offsets[a : b + 1]) for blk, a, b in pieces], out=lengths[_S * B :], casting="unsafe")
    user_ids = np.concatenate([blk.single[0, a:b] for blk, a, b in pieces])
    item_ids = np.concatenate([blk.single[1 + len(USER_SIDE), a:b] for blk, a, b in pieces])
    kjt = KeyedJaggedTensor(
        keys=list(SPARSE_FEATURES),
        values=torch.from_numpy(np.concatenate(values)),
        lengths=torch.from_numpy(lengths),
        stride=B,
    )
    return Batch(
        dense_features=torch.from_numpy(np.concatenate([blk.dense[a:b] for blk, a, b in pieces])),
        sparse_features=kjt,
        labels=torch.from_numpy(np.concatenate([blk.labels[a:b] for blk, a, b in pieces])),
        user_ids=torch.from_numpy(user_ids),
        item_ids=torch.from_numpy(item_ids),
        weights=torch.ones(B, dtype=torch.float32),
    )


def _jagged_take(
    offsets: np.ndarray, values: np.ndarray, rows: np.ndarray | None, max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Selects ``rows`` of a list column, keeping each list's last ``max_len`` entries.

    Returns (full lengths (n,), new offsets (n + 1,) from 0, new values), vectorised.
    """
    starts, ends = offsets[:-1].astype(np.int64), offsets[1:].astype(np.int64)
    if rows is not None:
        starts, ends = starts[rows], ends[rows]
    full = ends - starts
    keep = np.minimum(full, max_len)
    new_offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(keep, out=new_offsets[1:])
    if rows is None and len(full) and int(full.max()) <= max_len:
        # Whole row group in order, nothing to cut: one contiguous slice.
        return full, new_offsets, values[starts[0] : ends[-1]].astype(np.int64, copy=False)
    src = np.repeat(ends - keep - new_offsets[:-1], keep) + np.arange(new_offsets[-1], dtype=np.int64)
    return full, new_offsets, values[src].astype(np.int64, copy=False)


def _take(array: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return array if rows is None else array[rows]


def _leaf_index(meta: pq.FileMetaData, name: str, path: Path) -> int:
    for i in range(meta.num_columns):
        if meta.schema.column(i).path == name:
            return i
    raise ValueError(f"{path}: no column {name!r}; impressions need {list(IMPRESSION_COLUMNS)}")
