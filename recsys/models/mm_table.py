"""The frozen multimodal table: item_id -> item vector, a TorchRec embedding table.

Notation:

* ``B``: batch size; ``L``: padded history length.
* ``D``: width of the multimodal item vectors (from the vector table file).
* ``N``: rows of the table, ``Manifest.id_ranges["item_id"]``.

How it stays frozen. The table is its own ``EmbeddingCollection``, the
attribute ``mm_table`` of :class:`MultimodalArch`, whose one table is named
``MM_TABLE`` (so its parameter names contain ``"mm_table.embeddings.mm_item"``):

* every lookup is ``detach()``-ed in ``forward``, so no gradient ever reaches
  the table, whichever kernel (plain or fused) runs it after sharding: a
  fused backward never runs for it, so it stays bitwise unchanged (checked
  by hand under ``DistributedModelParallel`` at world size 1, fused kernel);
* the unsharded weight has ``requires_grad=False``, so plain optimizers and
  ``requires_grad`` filters skip it. Sharding does not keep that flag:
  DMP's sharded table has ``requires_grad=True`` and, with a fused kernel,
  an entry in ``fused_optimizer`` state. For "no optimizer state" the
  trainer must plan it apart (select it by :func:`is_mm_table_param` or by
  the table name ``MM_TABLE``), e.g. a non-fused kernel excluded from the
  dense optimizer.

Items without a vector are zero rows; a zero row is unambiguous because every
stored vector is unit norm (``recsys.data.vectors``). :class:`MultimodalArch`
turns it into a "missing" flag feature and masks such history items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recsys.models.sequence import padded_history

MM_TABLE = "mm_item"  # table name of the multimodal EmbeddingCollection
MM_MODULE = "mm_table"  # attribute of MultimodalArch holding that EmbeddingCollection


def is_mm_table_param(name: str) -> bool:
    """Whether a parameter (fully qualified name) belongs to the frozen multimodal table.

    Example::

        >>> is_mm_table_param("mm_arch.mm_table.embeddings.mm_item.weight")
        True
        >>> is_mm_table_param("id_model.sparse_arch.item_table.embeddings.item_id.weight")
        False
    """
    return f"{MM_MODULE}.embeddings.{MM_TABLE}." in f"{name}"


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
        num_items (int): N, table rows (``table_sizes(manifest)["item_id"]``).
        dim (int): D, width of the item vectors.
        device (torch.device | None): where to create the table (``meta`` works).

    Example::

        >>> from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor
        >>> arch = MultimodalArch(num_items=3, dim=2)
        >>> w = arch.mm_table.embeddings[MM_TABLE].weight
        >>> _ = load_item_vectors_into(w, np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]))
        >>> kjt = KeyedJaggedTensor(keys=["item_id", "history_item_ids"],
        ...     values=torch.tensor([2, 0, 1, 0]), lengths=torch.tensor([1, 1, 2, 0]))
        >>> mm = arch(kjt)
        >>> mm.target_missing.tolist(), mm.history_mask.tolist()
        ([[1.0], [0.0]], [[True, True], [False, False]])
    """

    def __init__(self, num_items: int, dim: int, device: torch.device | None = None) -> None:
        super().__init__()
        self._dim = dim
        table = EmbeddingConfig(
            name=MM_TABLE,
            embedding_dim=dim,
            num_embeddings=num_items,
            feature_names=["item_id", "history_item_ids"],
            init_fn=nn.init.zeros_,  # never loaded = every item missing
        )
        self.mm_table = EmbeddingCollection(tables=[table], device=device)
        self.mm_table.requires_grad_(False)

    def output_dim(self) -> int:
        return self._dim

    def forward(self, features: KeyedJaggedTensor) -> MultimodalFeatures:
        """
        Args:
            features (KeyedJaggedTensor): the batch KJT (``Batch.sparse_features``).

        Returns:
            MultimodalFeatures: target (B, D), history (B, L, D), masks and flag.
        """
        with torch.no_grad():  # frozen: no autograd record of the lookup at all
            looked_up = self.mm_table(features)
        target = looked_up["item_id"].values().detach()  # (B, D): one item per impression
        if target.shape[0] != features.stride():
            raise ValueError(f"item_id must hold one ID per impression; got {target.shape[0]} for B={features.stride()}")
        jagged = looked_up["history_item_ids"]
        history, mask = padded_history(jagged)  # (B, L, D), (B, L)
        # zero rows = no vector (stored vectors are unit norm): norms over the jagged rows, padded as a mask
        nonzero = (torch.linalg.vector_norm(jagged.values(), dim=-1, keepdim=True) > 0).to(history.dtype)
        has_vector = JaggedTensor(values=nonzero, lengths=jagged.lengths()).to_padded_dense(desired_length=history.shape[1])
        has_vector = has_vector.squeeze(-1) > 0  # (B, L)
        return MultimodalFeatures(
            target=target,
            history=history.detach(),
            history_mask=mask & has_vector,
            target_missing=(torch.linalg.vector_norm(target, dim=-1, keepdim=True) == 0).to(target.dtype),
        )
