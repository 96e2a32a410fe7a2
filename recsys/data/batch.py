"""One training batch of impressions, in TorchRec's layout.

Notation:

* ``B``: batch size (impressions).
* ``F``: number of dense features, ``len(spec.dense)``.
* ``K``: number of KJT keys, ``len(spec.kjt_keys())``.
* ``L_i``: history length of impression ``i`` (at most ``max_history_len``).

The sparse features form one ``KeyedJaggedTensor`` with keys ordered as the
dataset's feature spec says (``recsys.data.spec.FeatureSpec.kjt_keys``): the
single-valued features (length 1 per impression), then the jagged history
(most recent clicks, oldest first) and its side features. For the world's
spec and B = 2 impressions, one with a history of 2 items and one with none::

    #                 impression 0     impression 1
    # user_id           [u0]             [u1]
    # age_bucket        [a0]             [a1]
    # ...               ...              ...
    # price_bucket      [p0]             [p1]
    # history_item_ids  [h00, h01]       []

    values  = [u0, u1, a0, a1, ..., p0, p1, h00, h01]
    lengths = [1, 1, 1, 1, ..., 1, 1, 2, 0]      # K * B entries, key-major

Example::

    >>> import torch
    >>> from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    >>> from recsys.data.spec import world_spec
    >>> B = 2
    >>> kjt = KeyedJaggedTensor(
    ...     keys=list(world_spec().kjt_keys()),
    ...     values=torch.arange(9 * B + 2),
    ...     lengths=torch.tensor([1] * (9 * B) + [2, 0], dtype=torch.int32),
    ... )
    >>> batch = Batch(
    ...     dense_features=torch.zeros(B, 2),
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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

@dataclass
class Batch(Pipelineable):
    """A batch of impressions (TorchRec ``Pipelineable``, like ``torchrec.datasets.utils.Batch``).

    Args:
        dense_features (torch.Tensor): float32 tensor of shape (B, F), columns
            as ``spec.dense_names()``.
        sparse_features (KeyedJaggedTensor): keys as ``spec.kjt_keys()``,
            stride B (layout in the module docstring); IDs of managed and hash
            tables raw.
        labels (torch.Tensor): float32 tensor of shape (B,), 1.0 = click.
        user_ids (torch.Tensor): int64 tensor of shape (B,), raw user IDs, for GAUC grouping.
        item_ids (torch.Tensor): int64 tensor of shape (B,), the shown items' raw IDs.
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
