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
   ``DistributedModelParallel`` need lock-step): its rows cut every ``B``.
   At every step all ranks' batches have the same size, the most rows any
   rank has there (a row-wise table's reduce-scatter, and the all-gather of
   its backward, need equal sizes): a rank's shorter last batch is filled,
   and a rank with one batch fewer yields a whole batch, with padding rows
   (every ID 0, no history, label 0) of weight 0 (``Batch.weights``), which
   move no gradient and no metric.
5. DataLoader worker ``k`` of ``K`` builds a contiguous run of those batches,
   reading only the row groups under them, so the batches are the same for
   any ``K`` (only their order interleaves).
6. Each impression is joined with its user (``users/``) and item
   (``items/``) features as the dataset's feature spec declares them
   (``recsys.data.spec``; a side table no feature comes from is not read);
   each history item with the item features of ``history_side``; ``items/``
   is read without its title and image columns. The side tables take memory proportional to their rows: sorted
   unique IDs searched with ``np.searchsorted``, or a dense array indexed by
   ID when the ID range is at most ``DENSE_LOOKUP_FACTOR`` times the rows. An
   ID listed twice in a side table, or an impression whose user or item has
   no row, is a ``ValueError`` naming the file.
   Before anything is read, each impressions file's footer is checked as
   ``mmctr validate`` checks it (``side.type_fault``, in its words): a column
   the spec names of a type validate refuses (a Parquet DATE day, a string
   ID) is a ``ValueError`` naming the file and column. A label may be of any
   integer, float or bool type (read as float32).
   A null, a label not exactly 0 or 1, or a dense value that is not finite
   once cast to float32 (NaN, inf, beyond +-3.4e38) or outside its transform's
   domain (``log1p``: > -1) is a ``ValueError`` naming the file, column and row
   (0-based within the file, as ``mmctr validate`` counts; ``where: column 'c',
   row r: ...``), the row group for ``impressions/`` and the ID for a side table:
   every row is trained or refused, never trained on NaN.
7. IDs of ``identity`` tables at or beyond their table's rows
   (``table_sizes``, by default the manifest's ranges) are refused
   (``ValueError`` naming file, feature and count) or, with
   ``out_of_range="hash"``, folded in as ``id % rows`` and counted in
   ``out_of_range_counts``. IDs of ``managed`` and ``hash`` tables pass raw:
   the model remaps them (``recsys.models.remap``).
8. A background thread prepares up to ``prefetch`` batches ahead.

Resuming mid-epoch: once every rank has done ``steps`` batches,
``reader.remaining_after(steps)`` is what the epoch has left (global
intervals, JSON-friendly, the same on every rank); a reader built with
``ReaderConfig(remaining=...)`` on any number of ranks trains exactly those
rows (same ``seed`` and ``set_epoch``).

KJT keys are ``spec.kjt_keys()``: the single-valued features, then the
history and its side features (``history_<feature>``, same lengths). Dense
features are ``spec.dense`` in order, transformed (``log1p``, or
standardised with ``config.dense_stats``); a ``history`` dense feature is the
history's length as written (before truncation). The history keeps its last
(most recent) ``max_history_len`` entries.

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
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data import plan
from recsys.data.batch import Batch
from recsys.data.layout import layout
from recsys.data.prefetch import prefetch
from recsys.data.row_groups import RowGroup, select_row_groups
from recsys.data.schema import Manifest, table_files
from recsys.data.side import SideTable, dense_fault, label_fault, read_column as _column
from recsys.data.spec import FeatureSpec

OUT_OF_RANGE: tuple[str, ...] = ("refuse", "hash")


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
    table_sizes: dict[str, int] | None = None  # rows per table; None = spec.table_rows(manifest's id_ranges)
    out_of_range: str = "refuse"  # identity-table IDs >= their table's rows: "refuse" (ValueError) or "hash" (id % rows)
    # (mean, std) per dense feature whose transform standardises (training days' statistics, `dense_moments`)
    dense_stats: dict[str, tuple[float, float]] | None = None

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
class _Block:
    """Selected rows of one row group, joined and truncated, columnar (n rows)."""

    single: np.ndarray  # int64 (S, n): rows as spec.sparse_keys()
    dense: np.ndarray  # float32 (n, F): columns as spec.dense_names()
    labels: np.ndarray  # float32 (n,)
    hist_offsets: np.ndarray  # int64 (n + 1,), hist_offsets[0] == 0
    hist_values: tuple[np.ndarray, ...]  # int64 (hist_offsets[-1],) per spec.history_keys()
    users: np.ndarray  # int64 (n,) raw user IDs (GAUC groups by them, whatever the table does)
    items: np.ndarray  # int64 (n,) raw item IDs (evaluation's item buckets)
    weights: np.ndarray | None = None  # float32 (n,) loss weights; None: all 1 (impressions)


class ImpressionReader(IterableDataset[Batch]):
    """Impressions of a dataset directory as an iterable of ``Batch`` (see module doc).

    Use directly (``for batch in reader``) or through
    ``DataLoader(reader, batch_size=None, num_workers=K)``; either way each
    epoch yields ``num_batches()`` batches on every rank.

    Args:
        root (Path): dataset directory in the format of ``recsys.data.schema``.
        config (ReaderConfig): batch size, days, sharding, shuffle, prefetch, resume point.

    Raises:
        ValueError: when built, an impressions column of a type ``mmctr
            validate`` refuses (naming file and column, in validate's words:
            ``side.type_fault``); a side table's fault (``SideTable.read``: a
            null, a dense value not finite as float32 or outside its
            transform's domain, naming file, column, row and ID; an ID
            listed twice); while iterating, an impressions row group's
            fault: a missing column, a null, a label not exactly 0 or 1, a
            dense value not finite as float32 or outside its transform's
            domain (naming file, row group, column and row), an unknown user
            or item, an ID a table refuses.
    """

    def __init__(self, root: Path, config: ReaderConfig = ReaderConfig()) -> None:
        super().__init__()
        self.root = Path(root)
        self.config = config
        self.manifest = Manifest.read(self.root)
        self.max_history_len = (
            self.manifest.max_history_len if config.max_history_len is None else config.max_history_len
        )
        self.spec: FeatureSpec = self.manifest.features
        spec = self.spec
        self._columns = tuple(dict.fromkeys(
            (spec.day, spec.user_key, spec.item_key, *(() if spec.history is None else (spec.history,)),
             *spec.sources("impressions"), *spec.dense_from("impressions"), spec.label)
        ))
        self._days = None if config.days is None else np.unique(np.asarray(list(config.days), dtype=np.int64))
        self._files = table_files(self.root, "impressions")
        # the footers' types checked as validate checks them, in the one pass over the footers that plans the epoch
        self._groups = select_row_groups(self._files, self.spec.day, self._days, self._columns,
                                         typed=layout(self.spec, ("impressions",))["impressions"])
        self.total_rows = sum(rg.rows for rg in self._groups)  # N
        whole = plan.whole(self.total_rows)
        self._remaining = whole if config.remaining is None else plan.normalize(config.remaining, self.total_rows)
        self._shares = plan.split(self._remaining, config.world_size)
        self._num_batches = plan.num_batches(self._remaining, config.world_size, config.batch_size)
        self._table_rows = _table_rows(self.spec, self.manifest.id_ranges, config.table_sizes)
        self._ranges = self._identity_ranges()
        item_side = tuple(dict.fromkeys(spec.sources("items") + spec.history_side))
        self._users = self._side("users", spec.user_key, spec.sources("users"))
        self._items = self._side("items", spec.item_key, item_side)
        self._item_side = item_side
        self._users_dense = self._side("users", spec.user_key, spec.dense_from("users"), floats=True)
        self._items_dense = self._side("items", spec.item_key, spec.dense_from("items"), floats=True)
        self._stats = _dense_stats(spec, config.dense_stats)
        self._epoch = 0
        # IDs hashed per KJT key, counted as rows are read (each pass counts again).
        self.out_of_range_counts: dict[str, int] = {k: 0 for k in spec.kjt_keys()}
        # IDs with no side-table row that batch_of(lenient=True) scored with default side features.
        self.unknown_counts: dict[str, int] = {"users": 0, "items": 0, "history_items": 0}

    def _identity_ranges(self) -> dict[str, int | None]:
        """The ID range of each sparse column (and key) whose table is identity; raw-ID columns get None."""
        rows = self.spec.table_rows(self.manifest.id_ranges)  # uncapped: IDs are checked against the range
        tables = {f.name: self.spec.table(self.spec.table_of(f.name)) for f in self.spec.sparse}
        return {name: rows[t.name] if t.ids == "identity" else None for name, t in tables.items()}

    def _side(self, name: str, key: str, columns: tuple[str, ...], floats: bool = False) -> SideTable | None:
        """A side table's lookup of ``columns``; None when no feature comes from it."""
        if not columns:
            return None
        ranges = {key: self._ranges.get(key)} | ({} if floats else {c: self._ranges.get(c) for c in columns})
        transforms = {f.name: f.transform for f in self.spec.dense if f.source == name} if floats else None
        return SideTable.read(self.root, name, key, columns, ranges, floats=floats, transforms=transforms)

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

    def _order(self) -> tuple[list[RowGroup], np.ndarray]:
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
        step = first  # the epoch's step index of the batch being filled
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
                    yield self._assemble(pieces)
                    pieces, filled, step = [], 0, step + 1
        if pieces:
            yield self._assemble(self._padded(pieces, filled, self._step_rows(step)))
            step += 1
        for j in range(max(real, step), last):
            yield self._assemble(self._padded([], 0, self._step_rows(j)))

    def _step_rows(self, step: int) -> int:
        """Rows every rank's batch holds at ``step`` of the epoch: the most any rank has real (at least 1).

        Ranks' shares differ by at most one row, so only the last steps differ; padding the
        shorter batches to the same size keeps every collective of a sharded model (a
        row-wise table's reduce-scatter and its backward all-gather) equal-sized across ranks.
        """
        B = self.config.batch_size
        rows = [min(B, max(0, plan.count(share) - step * B)) for share in self._shares]
        return max(1, max(rows))

    def _padded(self, pieces: list[tuple[_Block, int, int]], filled: int, rows: int) -> list[tuple[_Block, int, int]]:
        """``pieces`` plus padding rows up to ``rows``: every ID 0 (a row of every identity table), no history, weight 0."""
        n = rows - filled
        if n <= 0:
            return pieces
        spec = self.spec
        pad = _Block(single=np.zeros((len(spec.sparse), n), dtype=np.int64), dense=np.zeros((n, len(spec.dense)), dtype=np.float32),
                     labels=np.zeros(n, dtype=np.float32), hist_offsets=np.zeros(n + 1, dtype=np.int64),
                     hist_values=tuple(np.zeros(0, dtype=np.int64) for _ in spec.history_keys()),
                     users=np.zeros(n, dtype=np.int64), items=np.zeros(n, dtype=np.int64), weights=np.zeros(n, dtype=np.float32))  # fmt: skip
        return [*pieces, (pad, 0, n)]

    def _load(self, file: pq.ParquetFile, rg: RowGroup, lo: int, hi: int) -> _Block:
        """Rows ``[lo, hi)`` of row group ``rg`` in the epoch's order (day-filtered, shuffled), joined."""
        where = rg.where(self._files)
        spec = self.spec
        try:
            table = file.read_row_group(rg.index, columns=list(self._columns))
        except (KeyError, pa.ArrowInvalid) as e:
            raise ValueError(f"{where}: {e}; the feature spec needs impressions columns {list(self._columns)}") from e
        rows: np.ndarray | None = None  # selected row indices; None = all, in order
        if not rg.whole:
            rows = np.flatnonzero(np.isin(_column(table, spec.day, where, rg.first), self._days))
        if self.config.shuffle:
            rng = np.random.default_rng((self.config.seed, self._epoch, rg.file, rg.index))
            perm = rng.permutation(rg.rows)
            rows = perm if rows is None else rows[perm]
        first = rg.first  # the file row of the table's first row
        if rows is not None:
            rows = rows[lo:hi]
        elif (lo, hi) != (0, table.num_rows):
            table = table.slice(lo, hi - lo)  # zero-copy; rows stay in order
            first += lo
        return self._block(table, rows, where, first_row=first)

    def batch_of(self, table: pa.Table, where: str = "request", lenient: bool = False) -> Batch:
        """One Batch of every row of an in-memory impressions table, in its order, joined as the files are.

        The online ranker's path (``serving.ranker``): the same side-table joins,
        dense transforms and ID checks as an impressions file gets, so a row scores
        as it does offline.

        Args:
            table (pa.Table): impressions-shaped rows (M >= 1): the columns this
                reader reads from ``impressions`` (day, user, item, history, the
                ``impressions`` features, label).
            where (str): names the rows in errors.
            lenient (bool): the online ranker's policy for unknown IDs instead of refusing them:
                a user or item (target or history) without a row in ``users``/``items`` gets 0
                for each of its side features, and an identity-table ID beyond the table's rows is
                folded in (``id % rows``) whatever ``out_of_range`` says; each counted in
                ``unknown_counts`` (managed and hash tables map unknown IDs as in training).

        Returns:
            Batch: M rows, weights 1.

        Raises:
            ValueError: a missing column, an unknown user or item, an ID a table refuses (naming ``where``);
                a null, a label not exactly 0 or 1, a dense value not finite as float32 (NaN, inf, beyond
                +-3.4e38) or outside its transform's domain (``where: column 'c', row r: ...``, r the
                row of ``table``).
        """
        if table.num_rows < 1:
            raise ValueError(f"{where}: no rows")
        return self._assemble([(self._block(table, None, where, lenient), 0, table.num_rows)])

    def _join(self, side: SideTable, ids: np.ndarray, where: str, lenient: bool, count: str | None, default: float = 0) -> np.ndarray:
        """``side.join``; lenient: IDs with no row get ``default`` and are counted under ``count``."""
        if not lenient:
            return side.join(ids, where)
        if count is not None:
            self.unknown_counts[count] += int(side.missing(ids).sum())
        return side.join(ids, where, default=default)

    def _block(
        self, table: pa.Table, rows: np.ndarray | None, where: str, lenient: bool = False, first_row: int = 0
    ) -> _Block:
        """The rows ``rows`` (None: all, in order) of an impressions table, joined with the side tables.

        Every row of ``table`` (selected or not) is checked: a null, a label not exactly 0 or 1, a dense
        value ``dense_fault`` refuses is a ValueError naming ``where``, the column and the row
        (``first_row`` + its index in ``table``: the file row).
        """
        spec = self.spec
        user = _take(_column(table, spec.user_key, where, first_row), rows).astype(np.int64, copy=False)
        item = _take(_column(table, spec.item_key, where, first_row), rows).astype(np.int64, copy=False)
        labels = _take(_column(table, spec.label, where, first_row, fault=label_fault), rows).astype(np.float32)
        m = len(user)
        full_len = np.zeros(m, dtype=np.int64)
        offsets = np.zeros(m + 1, dtype=np.int64)
        hist_values: tuple[np.ndarray, ...] = ()
        if spec.history is not None:
            hist = table.column(spec.history).combine_chunks()
            if hist.null_count or hist.values.null_count:
                raise ValueError(f"{where}: column {spec.history!r} has nulls; expected lists of item IDs")
            full_len, offsets, values = _jagged_take(hist.offsets.to_numpy(), hist.values.to_numpy(), rows, self.max_history_len)
            side = (self._join(self._items, values, where, lenient, "history_items")  # raw IDs
                    if self._items is not None and spec.history_side else None)
            values = self._fit_table(values, spec.history, where, lenient)
            hist_values = (values,) + tuple(
                self._fit_table(side[self._item_side.index(s)].astype(np.int64), "history_" + s, where, lenient)  # type: ignore[index]
                for s in spec.history_side
            )
        users = self._join(self._users, user, where, lenient, "users") if self._users is not None else None
        items = self._join(self._items, item, where, lenient, "items") if self._items is not None else None
        single = np.empty((len(spec.sparse), m), dtype=np.int64)
        for s, f in enumerate(spec.sparse):
            if f.name == spec.user_key:
                single[s] = user
            elif f.name == spec.item_key:
                single[s] = item
            elif f.source == "users":
                single[s] = users[spec.sources("users").index(f.name)]  # type: ignore[index]
            elif f.source == "items":
                single[s] = items[self._item_side.index(f.name)]  # type: ignore[index]
            else:
                single[s] = _take(_column(table, f.name, where, first_row), rows)
            single[s] = self._fit_table(single[s], f.name, where, lenient)
        dense = np.empty((m, len(spec.dense)), dtype=np.float32)
        for d, f in enumerate(spec.dense):
            if f.source == "history":
                col = full_len
            elif f.source == "impressions":
                fault = partial(dense_fault, transform=f.transform)
                col = _take(_column(table, f.name, where, first_row, fault=fault), rows)
            else:  # checked when the side table was read (SideTable.read)
                side_table, keys = (self._users_dense, user) if f.source == "users" else (self._items_dense, item)
                col = self._join(side_table, keys, where, lenient, None)[spec.dense_from(f.source).index(f.name)]  # type: ignore[arg-type]
            col = np.asarray(col, dtype=np.float64)
            dense[:, d] = _transform(col, f.transform, self._stats.get(f.name))
            if not np.isfinite(dense[:, d]).all():  # the checks above leave only the statistics (a std near 0) to blame
                j = int(np.flatnonzero(~np.isfinite(dense[:, d]))[0])
                row = first_row + int(j if rows is None else rows[j])
                ids = {"users": (spec.user_key, user), "items": (spec.item_key, item)}.get(f.source)
                of = f" ({ids[0]} {int(ids[1][j])})" if ids is not None else ""
                raise ValueError(
                    f"{where}: dense feature {f.name!r} (source {f.source}), row {row}{of}: value {col[j]} is "
                    f"{dense[j, d]} as float32 after transform {f.transform!r} (mean, std: {self._stats.get(f.name)})"
                )
        return _Block(single, dense, labels, offsets, hist_values, user, item)

    def _fit_table(self, ids: np.ndarray, key: str, where: str, lenient: bool = False) -> np.ndarray:
        """IDs of KJT ``key`` as its table takes them: raw IDs (managed, hash tables) pass;
        identity IDs past the table's rows are hashed (``id % rows``, counted) or refused."""
        table = self.spec.table(self.spec.table_of(key))
        if table.ids != "identity":
            return ids
        rows = self._table_rows[table.name]
        if len(ids) and int(ids.min()) < 0:
            raise ValueError(f"{where}: {key} {int(ids[ids < 0][0])} is negative; table {table.name!r} maps IDs to rows (identity)")
        over = ids >= rows
        n = int(over.sum()) if len(ids) and int(ids.max()) >= rows else 0
        if not n:
            return ids
        if self.config.out_of_range == "refuse" and not lenient:
            raise ValueError(
                f"{where}: {n} {key} value(s) >= the table's {rows} rows (e.g. {int(ids[over][0])}); "
                f"set out_of_range='hash' to fold them into the table, or declare table {table.name!r} managed"
            )
        self.out_of_range_counts[key] += n
        return np.where(over, ids % rows, ids)

    def _assemble(self, pieces: list[tuple[_Block, int, int]]) -> Batch:
        """One Batch from row ranges of blocks (copies; no reference to the blocks survives)."""
        spec = self.spec
        S, H = len(spec.sparse), len(spec.history_keys())
        values = [blk.single[s, a:b] for s in range(S) for blk, a, b in pieces]
        values += [v[blk.hist_offsets[a] : blk.hist_offsets[b]] for h in range(H) for blk, a, b in pieces for v in (blk.hist_values[h],)]
        B = sum(b - a for _, a, b in pieces)
        lengths = np.empty((S + H) * B, dtype=np.int32)
        lengths[: S * B] = 1
        if H:
            np.concatenate([np.diff(blk.hist_offsets[a : b + 1]) for blk, a, b in pieces], out=lengths[S * B : (S + 1) * B], casting="unsafe")
            for h in range(1, H):
                lengths[(S + h) * B : (S + h + 1) * B] = lengths[S * B : (S + 1) * B]
        kjt = KeyedJaggedTensor(
            keys=list(spec.kjt_keys()),
            values=torch.from_numpy(np.concatenate(values) if values else np.zeros(0, dtype=np.int64)),
            lengths=torch.from_numpy(lengths),
            stride=B,
        )
        return Batch(
            dense_features=torch.from_numpy(np.concatenate([blk.dense[a:b] for blk, a, b in pieces])),
            sparse_features=kjt,
            labels=torch.from_numpy(np.concatenate([blk.labels[a:b] for blk, a, b in pieces])),
            user_ids=torch.from_numpy(np.concatenate([blk.users[a:b] for blk, a, b in pieces])),
            item_ids=torch.from_numpy(np.concatenate([blk.items[a:b] for blk, a, b in pieces])),
            weights=torch.from_numpy(np.concatenate([blk.weights[a:b] if blk.weights is not None else np.ones(b - a, np.float32)
                                                     for blk, a, b in pieces])),
        )


def dense_moments(root: Path, days: tuple[int, ...] | range, config: ReaderConfig = ReaderConfig()) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of each standardised dense feature over the impressions of ``days``.

    The statistics a ``standardize`` (or ``log1p_standardize``, after the
    log) transform uses (``ReaderConfig.dense_stats``): computed on the
    training days only and recorded in the run, so scoring and retraining see
    the inputs the model was trained on. One pass in this process (every rank
    computes the same numbers); empty when no feature is standardised.

    Returns:
        dict[str, tuple[float, float]]: feature -> (mean, std), float64 sums.
    """
    spec = Manifest.read(root).features
    names = [f.name for f in spec.dense if "standardize" in f.transform]
    if not names:
        return {}
    identity = {n: (0.0, 1.0) for n in names}
    reader = ImpressionReader(root, replace(config, days=days, rank=0, world_size=1, shuffle=False, remaining=None,
                                            prefetch=0, dense_stats=identity))
    cols = [spec.dense_names().index(n) for n in names]
    total, sums, squares = 0, np.zeros(len(names)), np.zeros(len(names))
    for batch in reader:
        x = batch.dense_features[:, cols].double().numpy()
        total += len(x)
        sums += x.sum(axis=0)
        squares += (x * x).sum(axis=0)
    if total == 0:
        raise ValueError(f"{root}: no impressions on days {list(days)} to standardise {names} with")
    mean = sums / total
    std = np.sqrt(np.maximum(squares / total - mean * mean, 0.0))
    return {n: (float(m), float(sd)) for n, m, sd in zip(names, mean, std)}


def _table_rows(spec: FeatureSpec, ranges: dict[str, int], sizes: dict[str, int] | None) -> dict[str, int]:
    """Rows of each table: ``sizes`` where given, else ``spec.table_rows`` (the manifest's ranges)."""
    rows = spec.table_rows(ranges)
    for k, n in (sizes or {}).items():
        if k not in rows:
            raise ValueError(f"table_sizes names unknown table {k!r}; known: {sorted(rows)}")
        if n < 1:
            raise ValueError(f"table_sizes[{k!r}] must be >= 1, got {n}")
        rows[k] = int(n)
    return rows


def _dense_stats(spec: FeatureSpec, stats: dict[str, tuple[float, float]] | None) -> dict[str, tuple[float, float]]:
    """The (mean, std) of each standardised dense feature; ValueError when one is missing."""
    need = [f.name for f in spec.dense if "standardize" in f.transform]
    missing = [n for n in need if not stats or n not in stats]
    if missing:
        raise ValueError(f"dense feature(s) {missing} are standardised: pass ReaderConfig.dense_stats (dense_moments of the training days)")
    return {n: (float(stats[n][0]), float(stats[n][1])) for n in need} if stats else {}


def _transform(col: np.ndarray, transform: str, stats: tuple[float, float] | None) -> np.ndarray:
    """A dense column after its spec transform (``spec.TRANSFORMS``); float64 in, float64 out.

    Its values are in the transform's domain (``side.dense_fault``, checked where they were read).
    """
    if transform.startswith("log1p"):
        col = np.log1p(col)
    if transform.endswith("standardize"):
        mean, std = stats  # type: ignore[misc]
        col = (col - mean) / (std if std > 0 else 1.0)
    return col


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
