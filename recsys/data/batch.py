"""One training batch of impressions, in TorchRec's layout.

Notation:

* ``B``: batch size (impressions).
* ``F``: number of dense features, ``len(DENSE_FEATURES)``.
* ``K``: number of sparse features, ``len(SPARSE_FEATURES)``.
* ``L_i``: history length of impression ``i`` (at most ``max_history_len``).

The sparse features form one ``KeyedJaggedTensor`` with keys ordered as
``SPARSE_FEATURES``: nine single-valued features (length 1 per impression)
and the jagged ``history_item_ids`` (most recent clicks, oldest first). For
B = 2 impressions, one with a history of 2 items and one with none::

    #                 impression 0     impression 1
    # user_id           [u0]             [u1]
    # age_bucket        [a0]             [a1]
    # ...               ...              ...
    # price_bucket      [p0]             [p1]
    # history_item_ids  [h00, h01]       []

    values  = [u0, u1, a0, a1, ..., p0, p1, h00, h01]
    lengths = [1, 1, 1, 1, ..., 1, 1, 2, 0]      # K * B entries, key-major

``FEATURE_ID_KIND`` names the manifest ID range (``Manifest.id_ranges``) that
bounds each sparse feature, so embedding table sizes come from the manifest;
``history_item_ids`` holds item IDs and shares the ``item_id`` table.

Example::

    >>> import torch
    >>> from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    >>> B = 2
    >>> kjt = KeyedJaggedTensor(
    ...     keys=list(SPARSE_FEATURES),
    ...     values=torch.arange(9 * B + 2),
    ...     lengths=torch.tensor([1] * (9 * B) + [2, 0], dtype=torch.int32),
    ... )
    >>> batch = Batch(
    ...     dense_features=torch.zeros(B, len(DENSE_FEATURES)),
    ...     sparse_features=kjt,
    ...     labels=torch.tensor([1.0, 0.0]),
    ...     user_ids=torch.tensor([0, 1]),
    ...     item_ids=torch.tensor([8, 9]),
    ...     weights=torch.tensor([1.0, 0.0]),  # impression 1 pads the batch
    ... )
    >>> batch.batch_size, batch.num_real
    (2, 1)
    >>> batch.to(torch.device("cpu")).sparse_features["history_item_ids"].to_dense()
    [tensor([18, 19]), tensor([], dtype=torch.int64)]
    >>> FEATURE_ID_KIND["history_item_ids"]
    'item_id'
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

# Dense features, in column order of `Batch.dense_features`.
DENSE_FEATURES: tuple[str, ...] = ("position", "log_history_len")

# Sparse features, in key order of `Batch.sparse_features`.
SPARSE_FEATURES: tuple[str, ...] = (
    "user_id",
    "age_bucket",
    "gender",
    "city_id",
    "item_id",
    "shop_id",
    "brand_id",
    "category_id",
    "price_bucket",
    "history_item_ids",
)

# The single-valued sparse features (one ID per impression).
SINGLE_FEATURES: tuple[str, ...] = SPARSE_FEATURES[:-1]

# The manifest ID range (`Manifest.id_ranges` key) bounding each sparse feature.
FEATURE_ID_KIND: dict[str, str] = {name: name for name in SINGLE_FEATURES} | {
    "history_item_ids": "item_id"
}


@dataclass
class Batch(Pipelineable):
    """A batch of impressions (TorchRec ``Pipelineable``, like ``torchrec.datasets.utils.Batch``).

    Args:
        dense_features (torch.Tensor): float32 tensor of shape (B, F), columns
            as ``DENSE_FEATURES``.
        sparse_features (KeyedJaggedTensor): keys as ``SPARSE_FEATURES``,
            stride B (layout in the module docstring).
        labels (torch.Tensor): float32 tensor of shape (B,), 1.0 = click.
        user_ids (torch.Tensor): int64 tensor of shape (B,), for GAUC grouping.
        item_ids (torch.Tensor): int64 tensor of shape (B,), the shown items.
        weights (torch.Tensor): float32 tensor of shape (B,), each row's loss
            weight: 1.0 for an impression, 0.0 for a padding row (it moves no
            gradient and no metric; readers pad so every rank steps together).
            Omitted: every row 1.0.
    """

    dense_features: torch.Tensor
    sparse_features: KeyedJaggedTensor
    labels: torch.Tensor
    user_ids: torch.Tensor
    item_ids: torch.Tensor
    weights: torch.Tensor = None  # type: ignore[assignment]  # None: filled with 1.0 (every row real)

    def __post_init__(self) -> None:
        if self.weights is None:
            self.weights = torch.ones(self.labels.shape, dtype=torch.float32, device=self.labels.device)
        if self.weights.shape != self.labels.shape:
            raise ValueError(f"weights of shape {tuple(self.weights.shape)}, expected {tuple(self.labels.shape)} (B,)")

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_real(self) -> int:
        """Rows of weight > 0 (impressions, not padding)."""
        return int((self.weights > 0).sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        device = torch.device(device)
        return Batch(
            dense_features=self.dense_features.to(device=device, non_blocking=non_blocking),
            sparse_features=self.sparse_features.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
            user_ids=self.user_ids.to(device=device, non_blocking=non_blocking),
            item_ids=self.item_ids.to(device=device, non_blocking=non_blocking),
            weights=self.weights.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense_features.record_stream(stream)
        self.sparse_features.record_stream(stream)
        self.labels.record_stream(stream)
        self.user_ids.record_stream(stream)
        self.item_ids.record_stream(stream)
        self.weights.record_stream(stream)

    def pin_memory(self) -> "Batch":
        return Batch(
            dense_features=self.dense_features.pin_memory(),
            sparse_features=self.sparse_features.pin_memory(),
            labels=self.labels.pin_memory(),
            user_ids=self.user_ids.pin_memory(),
            item_ids=self.item_ids.pin_memory(),
            weights=self.weights.pin_memory(),
        )
