"""The frozen multimodal table: item_id -> item vector, a TorchRec embedding table.

Notation:

* ``B``: batch size; ``L``: padded history length.
* ``D``: width of the multimodal item vectors (from the vector table file).
* ``N``: rows of the table, ``Manifest.id_ranges["item_id"]``.

How it stays frozen. The table is its own ``EmbeddingBagCollection``, the
attribute ``mm_table`` of :class:`MultimodalArch`, whose one table is named
``MM_TABLE`` (so its parameter names contain ``"mm_table.embedding_bags.mm_item"``)
and reads the targets and histories as one-ID bags in fixed history slots,
like the ID model's item table (``recsys.models.sequence``):

* every lookup runs under ``no_grad`` in ``forward``, so no gradient ever
  reaches the table, whichever kernel runs it after sharding, and it stays
  bitwise unchanged (``tests/train/test_sharding.py`` reads it back);
* the unsharded weight has ``requires_grad=False``, so plain optimizers and
  ``requires_grad`` filters skip it. Sharding does not keep that flag, so
  ``recsys.train.sharding`` plans it apart (selected by
  :func:`is_mm_table_param`): replicated on every rank (``data_parallel``),
  its lookups send nothing between ranks, and it has no place in any optimizer.

Items without a vector are zero rows; a zero row is unambiguous because every
stored vector is unit norm (``recsys.data.vectors``). :class:`MultimodalArch`
turns it into a "missing" flag feature and masks such history items. It
reads which rows are zero from a per-row flag (the buffer ``row_missing``)
set where the table is filled (:meth:`MultimodalArch.load_rows`,
:meth:`MultimodalArch.load_raw`), not from the looked-up vectors' norms: one
gather of B (1 + L) bools a step instead of a pass over the (B, 1 + L, D)
vectors (0.8 ms against 4 ms at batch 2,048, L = 50, D = 64, one CPU thread).
Fill the table only through those two methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, mark_data_parallel_skip_grad_sync
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.spec import FeatureSpec
from recsys.models.sequence import DEFAULT_HISTORY_SLOTS, ITEM_ROWS, item_rows

# a leaf of torch.fx traces (TorchRec's train pipeline traces the model to find its sharded modules' inputs)
torch.fx.wrap("item_rows")

MM_TABLE = "mm_item"  # table name of the multimodal EmbeddingBagCollection
MM_MODULE = "mm_table"  # attribute of MultimodalArch holding that EmbeddingBagCollection
_EMPTY = torch.iinfo(torch.int64).max  # an unused slot of MultimodalArch.vector_ids


def is_mm_table_param(name: str) -> bool:
    """Whether a parameter (fully qualified name) belongs to the frozen multimodal table.

    Example::

        >>> is_mm_table_param("mm_arch.mm_table.embedding_bags.mm_item.weight")
        True
        >>> is_mm_table_param("id_model.sparse_arch.item_table.embedding_bags.item_id.weight")
        False
    """
    return f"{MM_MODULE}.embedding_bags.{MM_TABLE}." in f"{name}"


def load_item_vectors_into(
    table_weight: torch.Tensor, item_ids: np.ndarray | torch.Tensor, vectors: np.ndarray | torch.Tensor
) -> torch.Tensor:
    """Fills a table weight from the vector table; rows without a vector become zeros.

    Args:
        table_weight (torch.Tensor): the (N, D) weight to overwrite in place.
        item_ids (np.ndarray | torch.Tensor): int IDs of shape (M,), each in [0, N).
        vectors (np.ndarray | torch.Tensor): float vectors of shape (M, D).

    Returns:
        torch.Tensor: bool tensor of shape (N,), True = the item has no vector.

    Example::

        >>> w = torch.empty(4, 2)
        >>> missing = load_item_vectors_into(w, np.array([0, 2]), np.array([[1.0, 0.0], [0.0, 1.0]]))
        >>> w.tolist(), missing.tolist()
        ([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [False, True, False, True])
    """
    ids = torch.as_tensor(item_ids, dtype=torch.long).reshape(-1)
    vecs = torch.as_tensor(vectors, dtype=table_weight.dtype)
    N, D = table_weight.shape
    if vecs.shape != (len(ids), D):
        raise ValueError(f"vectors have shape {tuple(vecs.shape)}, expected ({len(ids)}, {D}) for a table of width D={D}")
    out_of_range = (ids < 0) | (ids >= N)
    if out_of_range.any():
        raise ValueError(
            f"{int(out_of_range.sum())} item IDs outside [0, {N}) (e.g. {int(ids[out_of_range][0])}); "
            f"vectors and manifest disagree on the item range"
        )
    missing = torch.ones(N, dtype=torch.bool)
    missing[ids] = False
    with torch.no_grad():
        table_weight.zero_()
        table_weight[ids.to(table_weight.device)] = vecs.to(table_weight.device)
    return missing


@dataclass
class MultimodalFeatures:
    """The frozen multimodal vectors of one batch (all detached).

    Args:
        target (torch.Tensor): target item vectors, tensor of shape (B, D);
            zeros for items without a vector.
        history (torch.Tensor): history item vectors, tensor of shape (B, L, D).
        history_mask (torch.Tensor): bool tensor of shape (B, L), True = a real
            history item that has a vector.
        target_missing (torch.Tensor): float tensor of shape (B, 1), 1.0 = the
            target item has no vector (the "missing" flag feature).
    """

    target: torch.Tensor
    history: torch.Tensor
    history_mask: torch.Tensor
    target_missing: torch.Tensor


class MultimodalArch(nn.Module):
    """Looks up target and history items in the frozen multimodal table.

    Reads the ``item_id`` and ``history_item_ids`` keys of the batch KJT
    (other keys are ignored)::

        #                 impression 0   impression 1
        # item_id           [i0]           [i1]
        # history_item_ids  [h00, h01]     []

    Args:
        num_items (int): N, table rows: the item table's rows when item IDs are
            rows (identity), else the number of item vectors + 1.
        dim (int): D, width of the item vectors.
        device (torch.device | None): where to create the table (``meta`` works).
        history_slots (int): the most history items an impression holds (the
            world's ``max_history_len``); a longer history is refused.
        item_key (str): the KJT key of the target item (``spec.item_key``).
        history_key (str | None): the KJT key of the history (``spec.history``).
        raw_ids (bool): item IDs are raw platform IDs: row ``r < N - 1`` holds
            the vector of the ``r``-th smallest item ID given to
            :meth:`load_raw` (a sorted lookup, ``vector_ids``, not a trained
            remap: the table is frozen), and every other ID reads row ``N - 1``,
            all zeros (missing).

    Example::

        >>> arch = MultimodalArch(num_items=3, dim=2)
        >>> arch.load_rows(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]))
        1
        >>> kjt = KeyedJaggedTensor(keys=["item_id", "history_item_ids"],
        ...     values=torch.tensor([2, 0, 1, 0]), lengths=torch.tensor([1, 1, 2, 0]))
        >>> mm = arch(kjt)
        >>> mm.target_missing.tolist(), mm.history_mask.tolist()
        ([[1.0], [0.0]], [[True, True], [False, False]])
    """

    def __init__(
        self,
        num_items: int,
        dim: int,
        device: torch.device | None = None,
        history_slots: int = DEFAULT_HISTORY_SLOTS,
        item_key: str = "item_id",
        history_key: str | None = "history_item_ids",
        raw_ids: bool = False,
    ) -> None:
        super().__init__()
        if history_slots < 1:
            raise ValueError(f"history_slots must be >= 1, got {history_slots}")
        self._dim = dim
        self._slots = history_slots
        self._keys = (item_key, history_key)
        self._raw = raw_ids
        if raw_ids:  # not persistent: refilled with the vectors (load_raw), like the table (module docstring)
            self.register_buffer("vector_ids", torch.full((num_items - 1,), _EMPTY, dtype=torch.int64, device=device), persistent=False)
        table = EmbeddingBagConfig(
            name=MM_TABLE,
            embedding_dim=dim,
            num_embeddings=num_items,
            feature_names=[ITEM_ROWS],
            pooling=PoolingType.SUM,
            init_fn=nn.init.zeros_,  # never loaded = every item missing
        )
        self.mm_table = EmbeddingBagCollection(tables=[table], device=device)
        # True = the row holds no vector (zeros); not persistent, like the table: set where it is filled
        self.register_buffer("row_missing", torch.ones(num_items, dtype=torch.bool, device=device), persistent=False)
        # replicated (data_parallel) once sharded: no DDP reducer (its gradient bucket would be table-sized)
        mark_data_parallel_skip_grad_sync(self.mm_table)
        self.mm_table.requires_grad_(False)

    def output_dim(self) -> int:
        return self._dim

    @property
    def raw_ids(self) -> bool:
        """Whether item IDs are raw (a sorted lookup of the vectors' IDs) rather than rows."""
        return self._raw

    def table_weight(self) -> torch.Tensor:
        """The unsharded table's weight (N, D), to read (fill it with :meth:`load_rows` or :meth:`load_raw`)."""
        return self.mm_table.embedding_bags[MM_TABLE].weight

    def load_rows(self, rows: np.ndarray | torch.Tensor, vectors: np.ndarray | torch.Tensor) -> int:
        """Fills a table whose item IDs are rows (before sharding): ``vectors[i]`` into row ``rows[i]``, every
        other row zeros (missing), as :func:`load_item_vectors_into`, and the rows' missing flags.

        Args:
            rows (np.ndarray | torch.Tensor): int rows of shape (M,), each in [0, N).
            vectors (np.ndarray | torch.Tensor): float vectors of shape (M, D).

        Returns:
            int: the rows left without a vector.

        Raises:
            ValueError: a raw-ID table (:meth:`load_raw`), a row outside [0, N), or vectors not (M, D).
        """
        if self._raw:
            raise ValueError("load_rows fills a table whose item IDs are rows; this one reads raw IDs (load_raw)")
        missing = load_item_vectors_into(self.table_weight(), rows, vectors)
        self.row_missing.copy_(missing.to(self.row_missing.device))
        return int(missing.sum())

    def load_raw(self, item_ids: np.ndarray, vectors: np.ndarray) -> int:
        """Fills a ``raw_ids`` table (before sharding): the vectors by sorted raw item ID.

        Args:
            item_ids (np.ndarray): int64 raw IDs of shape (M,), unique, M <= N - 1.
            vectors (np.ndarray): float vectors of shape (M, D).

        Returns:
            int: M, the items with a vector.

        Raises:
            ValueError: more vectors than rows, or an ID listed twice.
        """
        if not self._raw:
            raise ValueError("load_raw fills a raw_ids table; this one maps item IDs to rows (load_item_vectors_into)")
        ids = torch.as_tensor(np.asarray(item_ids), dtype=torch.int64)
        n = self.vector_ids.shape[0]
        if len(ids) > n:
            raise ValueError(f"{len(ids)} item vectors for a table of {n} vector rows (+1 missing row)")
        order = torch.argsort(ids)
        ids = ids[order]
        if len(ids) > 1 and bool((ids[1:] == ids[:-1]).any()):
            raise ValueError(f"item_id {int(ids[1:][ids[1:] == ids[:-1]][0])} has two vectors")
        with torch.no_grad():
            self.vector_ids.fill_(_EMPTY)
            self.vector_ids[: len(ids)] = ids.to(self.vector_ids.device)
        missing = load_item_vectors_into(self.table_weight(), order.new_tensor(range(len(ids))),
                                         np.asarray(vectors)[order.numpy()])
        self.row_missing.copy_(missing.to(self.row_missing.device))
        return len(ids)

    def _vector_rows(self, values: torch.Tensor) -> torch.Tensor:
        """Raw item IDs (any shape) to their vector rows (missing: the last, zero row)."""
        at = torch.searchsorted(self.vector_ids, values.reshape(-1)).clamp_(max=max(self.vector_ids.shape[0] - 1, 0))
        flat = values.reshape(-1)
        found = self.vector_ids[at] == flat if self.vector_ids.numel() else torch.zeros_like(flat, dtype=torch.bool)
        return torch.where(found, at, torch.full_like(flat, self.vector_ids.shape[0])).view(values.shape)

    def _rows(self, bags: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """Raw item IDs of ``bags`` to their vector rows (missing: the last, zero row)."""
        return KeyedJaggedTensor(keys=bags.keys(), values=self._vector_rows(bags.values()), lengths=bags.lengths(),
                                 stride=bags.stride())

    @torch.no_grad()
    def vectors_of(self, item_ids: torch.Tensor) -> torch.Tensor:
        """The unsharded table's vectors of item IDs (as the batch KJT holds them: rows, or raw IDs).

        Args:
            item_ids (torch.Tensor): int64 tensor of any shape (...,).

        Returns:
            torch.Tensor: tensor of shape (..., D); zeros for items without a vector.

        Example::

            >>> arch = MultimodalArch(num_items=3, dim=2)
            >>> _ = load_item_vectors_into(arch.table_weight(), np.array([1]), np.array([[0.6, 0.8]]))
            >>> arch.vectors_of(torch.tensor([[1, 2]])).tolist()
            [[[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]]
        """
        rows = self._vector_rows(item_ids) if self._raw else item_ids
        return self.table_weight()[rows]

    def forward(self, features: KeyedJaggedTensor, history_of: torch.Tensor | None = None) -> MultimodalFeatures:
        """
        Args:
            features (KeyedJaggedTensor): the batch KJT (``Batch.sparse_features``).
            history_of (torch.Tensor | None): (B,) shared histories, looked up once each
                (``recsys.models.sequence.item_rows``); None: one per impression.

        Returns:
            MultimodalFeatures: target (B, D), history (B, L, D), masks and flag.
        """
        rows = item_rows(features, self._slots, *self._keys, history_of=history_of)
        bags = self._rows(rows.features) if self._raw else rows.features
        with torch.no_grad():  # frozen: no autograd record of the lookup at all
            pooled = self.mm_table(bags).values().detach()  # (B * (1 + S), D), empty slots zeros
            # a bag holds one row or none (an empty slot): has a vector = holds a row that is not missing
            filled = (bags.lengths() > 0).unsqueeze(1)  # (B * (1 + S), 1)
            has_vector = filled.masked_scatter(filled, (~self.row_missing[bags.values()]).unsqueeze(1))
        target, history = rows.split(pooled)  # (B, D), (B, L, D)
        target_has, history_has = rows.split(has_vector)  # (B, 1), (B, L, 1)
        return MultimodalFeatures(
            target=target,
            history=history,
            history_mask=rows.mask & history_has.squeeze(-1),
            target_missing=(~target_has).to(target.dtype),
        )


def multimodal_arch(
    spec: FeatureSpec, num_items: int, dim: int, device: torch.device | None = None, history_slots: int = DEFAULT_HISTORY_SLOTS
) -> MultimodalArch:
    """The :class:`MultimodalArch` of a dataset: its item and history keys, raw IDs when the item table is not identity.

    Example::

        >>> from recsys.data.spec import world_spec
        >>> multimodal_arch(world_spec(), num_items=5, dim=2).output_dim()
        2
    """
    raw = spec.table(spec.table_of(spec.item_key)).ids != "identity"
    return MultimodalArch(num_items, dim, device, history_slots, spec.item_key, spec.history, raw_ids=raw)
