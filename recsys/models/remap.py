"""Raw 64-bit IDs to embedding rows: TorchRec managed collisions (sorted ZCH) or hashing, replicated.

Notation:

* ``R``: rows of a table (``spec.Table.rows``; TorchRec's ``zch_size``).
* ``N``: IDs of one table in a local batch, all its KJT keys together
  (``item_id`` and ``history_item_ids`` share table ``item_id``).
* ``W``: world size; ``T``: managed tables.
* ``SENTINEL = 2**63 - 1``: the mark of an empty slot in the MCH buffers.

Where it sits. :class:`IdRemapper` runs on the batch's ``KeyedJaggedTensor``
before the sharded embedding tables: it rewrites the values of the keys of
``managed`` and ``hash`` tables into rows ``[0, R)`` and leaves every other
key (``identity`` tables) untouched. It is not sharded: every rank holds a
full copy (TorchRec 1.9.2's managed-collision sharder has no CPU sharding
type). The copies stay bitwise identical because, in training, each table's
IDs of all ranks are all-gathered (in rank order) and the same
``profile`` runs on every rank; each rank then remaps only its own IDs.

Tables (``recsys.data.spec.Table.ids``):

* ``hash``: row ``torch.remainder(id, R)`` (non-negative; collisions share a row); no state.
* ``managed``: one ``torchrec.modules.mc_modules.MCHManagedCollisionModule``
  (sorted zero-collision hashing) per table, ``eviction`` ``lfu`` ->
  ``LFU_EvictionPolicy``, ``distance_lfu`` -> ``DistanceLFU_EvictionPolicy``,
  an admission round every ``eviction_interval`` training steps, on the IDs
  profiled since the last round. At most ``R - 1`` IDs hold rows
  ``[0, R - 1)``; an ID not admitted (unseen, evicted, not yet profiled)
  maps to the last row ``R - 1``. ``SENTINEL`` is refused (ValueError).
  Its buffers (``_mch_sorted_raw_ids``, ``_mch_remapped_ids_mapping``,
  ``_mch_counts`` [and ``_mch_last_access_iter``], ``_current_iter_tensor``)
  are this module's ``state_dict()``; IDs profiled since the last round are
  not (loading a state drops them, as a fresh module has none).

Counters (per managed table, Python ints, not in the state dict, cleared by
:meth:`IdRemapper.reset_counts`): ``admitted`` = rows given a new raw ID by an
admission round (``MCH.evict()``'s rows, one per replacement); ``evicted`` =
those of them that held a raw ID before (admitted minus the empty slots filled,
from ``MCH.open_slots()`` before and after). :meth:`IdRemapper.reassigned_rows`
gives the last training step's admitted rows, whose embeddings now serve new IDs.

Cost per training step: two ``all_gather`` calls for all tables together
(sizes: ``W (T + 1)`` int64; IDs: ``W`` times the sum over tables of the
largest rank's ``N``); per managed table one ``profile`` (an append; every
``eviction_interval`` steps ``torch.unique`` over the interval's ``W N`` IDs and
a sort of the ``R`` slots) and one remap (``searchsorted``, ``O(N log R)``).

Example (B = 2; ``gender`` is an identity table's key, not listed, so untouched)::

    #                  impression 0      impression 1
    # item_id          [2**40]           [7]
    # history_item_ids [7, 9]            []
    # shop_id          [-3]              [2**40]
    # gender           [1]               [0]

    >>> from recsys.data.spec import Table
    >>> remap = IdRemapper([Table("item_id", ids="managed", rows=4), Table("shop_id", ids="hash", rows=10)],
    ...                    {"item_id": "item_id", "history_item_ids": "item_id", "shop_id": "shop_id"})
    >>> kjt = KeyedJaggedTensor(keys=["item_id", "history_item_ids", "shop_id", "gender"],
    ...     values=torch.tensor([2**40, 7, 7, 9, -3, 2**40, 1, 0]), lengths=torch.tensor([1, 1, 2, 0, 1, 1, 1, 1]))
    >>> remap(kjt).values()  # training: profile (admit 2**40, 7, 9), then remap
    tensor([2, 0, 0, 1, 7, 6, 1, 0])
    >>> remap.rows_of("item_id", torch.tensor([9, 123])), remap.counts()
    (tensor([1, 3]), {'item_id': {'admitted': 3, 'evicted': 0}})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torchrec.modules.mc_modules import (
    average_threshold_filter,
    dynamic_threshold_filter,
    DistanceLFU_EvictionPolicy,
    LFU_EvictionPolicy,
    MCHEvictionPolicy,
    MCHManagedCollisionModule,
)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recsys.data import spec

SENTINEL = torch.iinfo(torch.int64).max  # MCH's empty slot; refused as an input ID
# spec.ADMISSIONS -> TorchRec's threshold filter: which IDs of an admission round may take a slot
# ("all": every one, by the eviction policy's ranking; "average": those seen more often than the round's mean;
# "dynamic": more than 10x the mean). TorchRec's probabilistic filter draws from the global RNG, which would
# split the ranks' replicated state, so it is not offered.
ADMISSIONS = {"all": None, "average": average_threshold_filter, "dynamic": dynamic_threshold_filter}
EVICTION_POLICIES: dict[str, type[MCHEvictionPolicy]] = {
    "lfu": LFU_EvictionPolicy,
    "distance_lfu": DistanceLFU_EvictionPolicy,
}


class IdRemapper(nn.Module):
    """Maps the raw IDs of ``managed`` and ``hash`` tables to rows (module docstring), replicated.

    Args:
        tables (Sequence[spec.Table]): the embedding tables; ``identity`` ones pass through.
        feature_tables (Mapping[str, str]): KJT key -> table name, for the keys
            whose values go through a table (``spec.FeatureSpec.table_of``).
        device (torch.device | None): where the MCH buffers live; ``None`` = CPU.

    Raises:
        ValueError: a key naming an unknown table, a table listed twice, a
            non-identity table without ``rows`` or a managed one under 2 rows.

    Forward: a ``KeyedJaggedTensor`` of any keys -> one with the same keys,
    lengths, offsets and weights, its values remapped for the keys of
    ``feature_tables`` (one shared MCH per managed table).
    """

    def __init__(
        self, tables: Sequence[spec.Table], feature_tables: Mapping[str, str], device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.tables: dict[str, spec.Table] = {}
        for t in tables:
            if t.name in self.tables:
                raise ValueError(f"IdRemapper: table {t.name!r} is listed twice")
            t.check(f"IdRemapper: table {t.name!r}")
            self.tables[t.name] = t
        for key, name in feature_tables.items():
            if name not in self.tables:
                raise ValueError(f"IdRemapper: key {key!r} names table {name!r}, not one of {list(self.tables)}")
        self.feature_tables = {k: v for k, v in feature_tables.items() if self.tables[v].ids != "identity"}
        self.mch = nn.ModuleDict({
            t.name: MCHManagedCollisionModule(
                zch_size=int(t.rows),  # type: ignore[arg-type]
                device=device or torch.device("cpu"),
                eviction_policy=EVICTION_POLICIES[t.eviction](threshold_filtering_func=ADMISSIONS[t.admission]),
                eviction_interval=t.eviction_interval,
                name=t.name,
            )
            for t in self.tables.values() if t.ids == "managed"
        })
        self._counts = {name: {"admitted": 0, "evicted": 0} for name in self.mch}
        self._reassigned: dict[str, torch.Tensor] = {}
        self._managed = sorted(k for k, t in self.feature_tables.items() if t in self.mch)  # keys of managed tables
        self.register_load_state_dict_post_hook(_restart_profiling)

    def forward(self, features: KeyedJaggedTensor, real: torch.Tensor | None = None) -> KeyedJaggedTensor:
        """Profiles (training mode only, on all ranks' IDs) then remaps.

        Args:
            features (KeyedJaggedTensor): stride B, one stride for every key.
            real (torch.Tensor | None): bool tensor of shape (B,): the rows to
                profile (``Batch.weights > 0``: padding rows are remapped, never
                admitted); ``None``: every row.

        Raises:
            ValueError: a managed key holds ``SENTINEL`` (on every rank when distributed).
        """
        values, bounds = features.values(), features.offset_per_key()
        spans = {k: (bounds[i], bounds[i + 1]) for i, k in enumerate(features.keys()) if k in self.feature_tables}
        bad = next((k for k in self._managed if k in spans and bool((values[slice(*spans[k])] == SENTINEL).any())), None)
        if self.training and len(self.mch) > 0:
            keep = _value_mask(features, real) if real is not None else None
            self._profile({t: torch.cat([values[s:e] if keep is None else values[s:e][keep[s:e]]
                                         for k, (s, e) in spans.items() if self.feature_tables[k] == t]
                                        + [values[:0]]) for t in self.mch}, bad)
        elif bad is not None:
            raise _sentinel_error(f"key {bad!r}")
        out = values.clone()
        for key, (s, e) in spans.items():
            out[s:e] = self.rows_of(self.feature_tables[key], values[s:e]).to(out.dtype)
        return KeyedJaggedTensor(
            keys=features.keys(), values=out, weights=features.weights_or_none(), lengths=features.lengths(),
            offsets=features.offsets_or_none(), stride=features.stride(), stride_per_key=features.stride_per_key(),
            stride_per_key_per_rank=features.stride_per_key_per_rank() if features.variable_stride_per_key() else None,
            inverse_indices=features.inverse_indices_or_none(),
        )

    def rows_of(self, table: str, raw_ids: torch.Tensor) -> torch.Tensor:
        """Rows of ``raw_ids`` (tensor of shape (N,), int64) in ``table``, without profiling.

        Raises:
            KeyError: an unknown table. ValueError: a managed table's ID is ``SENTINEL``.
        """
        t = self.tables[table]
        if t.ids == "hash":
            return torch.remainder(raw_ids, int(t.rows))  # type: ignore[arg-type]
        if t.ids == "identity":
            return raw_ids
        raw_ids = raw_ids.to(torch.int64)
        if bool((raw_ids == SENTINEL).any()):
            raise _sentinel_error(f"table {table!r}")
        jt = JaggedTensor(values=raw_ids, lengths=torch.tensor([raw_ids.numel()], device=raw_ids.device))
        return self.mch[table].remap({table: jt})[table].values()

    def counts(self) -> dict[str, dict[str, int]]:
        """``{table: {"admitted": n, "evicted": m}}`` since construction or :meth:`reset_counts` (module docstring)."""
        return {t: dict(c) for t, c in self._counts.items()}

    def reset_counts(self) -> None:
        for c in self._counts.values():
            c.update(admitted=0, evicted=0)

    def reassigned_rows(self) -> dict[str, torch.Tensor]:
        """Per managed table, the rows given new IDs by the last training forward (empty: no round ran)."""
        return dict(self._reassigned)

    def _profile(self, ids: dict[str, torch.Tensor], bad: str | None) -> None:
        """One ``profile`` per managed table on its IDs of every rank; updates the counters."""
        where = f"key {bad!r}" if bad is not None else None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ids, where = _all_gather(ids, self._managed.index(bad) + 1 if bad is not None else 0, self._managed)
        if where is not None:
            raise _sentinel_error(where)
        for name, mch in self.mch.items():
            x = ids[name].to(torch.int64)
            open_before = int(mch.open_slots())
            _reserve(mch, x.numel())
            mch.profile({name: JaggedTensor(values=x, lengths=torch.tensor([x.numel()], device=x.device))})
            rows = mch.evict()
            rows = rows if rows is not None else x.new_empty(0)
            self._reassigned[name] = rows
            self._counts[name]["admitted"] += rows.numel()
            self._counts[name]["evicted"] += rows.numel() - (open_before - int(mch.open_slots()))


def _value_mask(features: KeyedJaggedTensor, real: torch.Tensor) -> torch.Tensor:
    """Per KJT value, whether its row is in ``real`` (B,): the row mask repeated by each key's lengths."""
    B = features.stride()
    rows = real.to(torch.bool).repeat(len(features.keys()))  # lengths are key-major, B per key
    if rows.numel() != features.lengths().numel():
        raise ValueError(f"real has {real.numel()} rows; the KJT has stride {B} over {len(features.keys())} keys")
    return torch.repeat_interleave(rows, features.lengths().to(torch.int64))


def _all_gather(ids: dict[str, torch.Tensor], flag: int, keys: list[str]) -> tuple[dict[str, torch.Tensor], str | None]:
    """Each table's IDs of every rank, concatenated in rank order, and where a rank's IDs were refused.

    Two collectives whatever the table count: the sizes with ``flag`` (1 + the
    index in ``keys`` of a key holding ``SENTINEL``, 0 = none), then the IDs,
    each table padded to its largest rank's count.
    """
    W, names = dist.get_world_size(), list(ids)
    local = [ids[t].to(torch.int64) for t in names]
    sizes = torch.tensor([x.numel() for x in local] + [flag], dtype=torch.int64, device=local[0].device)
    every = [torch.empty_like(sizes) for _ in range(W)]
    dist.all_gather(every, sizes)
    S = torch.stack(every).tolist()  # (W, T + 1)
    for r, row in enumerate(S):
        if row[-1] > 0:
            return ids, f"key {keys[row[-1] - 1]!r} (rank {r})"
    width = [max(row[i] for row in S) for i in range(len(names))]
    if sum(width) == 0:  # no rank has an ID of a managed table
        return dict(zip(names, local)), None
    packed = torch.cat([nn.functional.pad(x, (0, w - x.numel())) for x, w in zip(local, width)])
    parts = [torch.empty_like(packed) for _ in range(W)]
    dist.all_gather(parts, packed)
    out, start = {}, 0
    for i, (name, w) in enumerate(zip(names, width)):
        out[name] = torch.cat([parts[r][start : start + S[r][i]] for r in range(W)])
        start += w
    return out, None


def _reserve(mch: MCHManagedCollisionModule, n: int) -> None:
    """Grows the MCH's history buffers to take ``n`` more IDs.

    TorchRec 1.9.2 sizes them once, on the first profiled batch (its size
    x 1.25 x ``eviction_interval``), and silently drops what no longer fits;
    gathered batches vary in size, so this grows them (private attributes).
    """
    size, used = mch._input_history_buffer_size, mch._current_history_buffer_offset
    if size == -1 or used + n <= size:  # -1: the first profile sizes them to fit
        return
    new = max(used + n, 2 * size)
    grown = mch._history_accumulator.new_empty(new)
    grown[:used] = mch._history_accumulator[:used]
    mch._history_accumulator = grown
    for name, buf in list(mch._history_metadata.items()):
        meta = buf.new_zeros(new)
        meta[:used] = buf[:used]
        setattr(mch, "_history_" + name, meta)  # a registered (non-persistent) buffer
        mch._history_metadata[name] = meta
    mch._input_history_buffer_size = new


def _restart_profiling(module: nn.Module, incompatible_keys: object) -> None:
    """After ``load_state_dict``: the MCHs continue from the loaded iteration as fresh ones would."""
    for mch in module.mch.values():  # type: ignore[union-attr]
        mch._current_iter = -1  # re-read from _current_iter_tensor on the next profile
        mch._current_history_buffer_offset = 0  # IDs profiled before the load are dropped
        mch.reset_inference_mode()  # the next round comes eviction_interval profiles later
    module._reassigned = {}  # type: ignore[union-attr]


def _sentinel_error(where: str) -> ValueError:
    return ValueError(f"IdRemapper: {where} holds raw ID 2**63-1, the managed-collision empty-slot sentinel; "
                      "managed IDs must be int64 below it")
