"""The DIN-style ID model: ID embeddings, target attention over the history, MLP tower.

Notation:

* ``B``: batch size; ``L``: padded history length; ``F``: dense features.
* ``E``: ID embedding width (``ModelConfig.embedding_dim``).
* ``P``: pooled single-valued features other than ``item_id`` (8).
* ``V``: width of vectors appended to the item embeddings (0, or the
  multimodal width D in the ``vector`` variant).
* ``X``: width of extra per-position attention inputs; ``M``: total width
  of extra MLP inputs.

How the target item and the history share one table: the ``item_id`` of
each impression and its ``history_item_ids`` are looked up in a single
``EmbeddingBagCollection`` table (``IdSparseArch.item_table``, table
``item_id``), as one feature ``ITEM_ROWS`` whose bags each hold one ID or
none: the B targets first, then a fixed number of history slots per
impression (``recsys.models.sequence``). The pooled rows split into the
target embedding (B, E) and the padded history (B, L, E) without a copy.
One bag per ID makes the sum pooling the row itself, and the
lookup and its fused optimizer update run through fbgemm's pooled kernels,
whose CPU backward is ~3x faster than the sequence (``EmbeddingCollection``)
one (``bench/train``). Sharding keeps it one table, so a row trained as a
target is the row read in histories. The other single-valued features are
pooled by an ``EmbeddingBagCollection`` (``IdSparseArch.ebc``), one table
per feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import DENSE_FEATURES, FEATURE_ID_KIND, SINGLE_FEATURES
from recsys.models.attention import TargetAttention
from recsys.models.config import ModelConfig
from recsys.models.sequence import DEFAULT_HISTORY_SLOTS, ITEM_ROWS, item_rows

# Single-valued features pooled by the EmbeddingBagCollection (item_id goes
# through the item table shared with the history).
POOLED_FEATURES: tuple[str, ...] = tuple(f for f in SINGLE_FEATURES if f != "item_id")


@dataclass
class IdEmbeddings:
    """The ID embeddings of one batch.

    Args:
        pooled (torch.Tensor): ``POOLED_FEATURES`` embeddings side by side,
            tensor of shape (B, P * E).
        target (torch.Tensor): target item embeddings, tensor of shape (B, E).
        history (torch.Tensor): history item embeddings, tensor of shape
            (B, L, E), zeros at padding.
        mask (torch.Tensor): bool tensor of shape (B, L), True = real item.
    """

    pooled: torch.Tensor
    target: torch.Tensor
    history: torch.Tensor
    mask: torch.Tensor


class IdSparseArch(nn.Module):
    """All ID tables: an ``EmbeddingBagCollection`` and the shared item table (module docstring).

    Reads the batch KJT (keys as ``SPARSE_FEATURES``)::

        #                 impression 0   impression 1
        # user_id           [u0]           [u1]
        # ...               ...            ...
        # item_id           [i0]           [i1]       \
        # ...               ...            ...         > item_rows [i0] [i1] [h00] [h01] -> item_table
        # history_item_ids  [h00, h01]     []         /  -> target (B, E), history (B, L, E)

    Args:
        table_sizes (dict[str, int]): rows per ID kind (``config.table_sizes``).
        embedding_dim (int): E.
        device (torch.device | None): where to create the tables (``meta`` works).
        history_slots (int): the most history items an impression holds (the
            world's ``max_history_len``); a longer history is refused.
    """

    def __init__(
        self,
        table_sizes: dict[str, int],
        embedding_dim: int,
        device: torch.device | None = None,
        history_slots: int = DEFAULT_HISTORY_SLOTS,
    ) -> None:
        super().__init__()
        if history_slots < 1:
            raise ValueError(f"history_slots must be >= 1, got {history_slots}")
        self._slots = history_slots
        missing = sorted({FEATURE_ID_KIND[f] for f in SINGLE_FEATURES} - set(table_sizes))
        if missing:
            raise ValueError(f"table_sizes lacks {missing}; expected a size for each of {sorted(set(FEATURE_ID_KIND.values()))}")
        self._dim = embedding_dim
        bags = [
            EmbeddingBagConfig(
                name=FEATURE_ID_KIND[f],
                embedding_dim=embedding_dim,
                num_embeddings=table_sizes[FEATURE_ID_KIND[f]],
                feature_names=[f],
                pooling=PoolingType.SUM,
            )
            for f in POOLED_FEATURES
        ]
        self.ebc = EmbeddingBagCollection(tables=bags, device=device)
        item = EmbeddingBagConfig(
            name="item_id",
            embedding_dim=embedding_dim,
            num_embeddings=table_sizes["item_id"],
            feature_names=[ITEM_ROWS],
            pooling=PoolingType.SUM,
        )
        self.item_table = EmbeddingBagCollection(tables=[item], device=device)

    def pooled_dim(self) -> int:
        return len(POOLED_FEATURES) * self._dim

    def forward(self, features: KeyedJaggedTensor) -> IdEmbeddings:
        """
        Args:
            features (KeyedJaggedTensor): the batch KJT, stride B.

        Returns:
            IdEmbeddings: pooled (B, P * E), target (B, E), history (B, L, E), mask (B, L).
        """
        pooled = self.ebc(features).values()  # (B, P * E)
        rows = item_rows(features, self._slots)
        target, history = rows.split(self.item_table(rows.features).values())  # (B, E), (B, L, E)
        return IdEmbeddings(pooled=pooled, target=target, history=history, mask=rows.mask)


@dataclass(frozen=True)
class ExtraWidths:
    """Widths of the inputs a variant adds to the ID model (all 0 for ``id_only``).

    Args:
        vector_dim (int): V, width appended to the target and history item embeddings.
        attention_dim (int): X, extra per-position inputs of the attention unit.
        mlp_dim (int): M, total width of the extra MLP inputs.
    """

    vector_dim: int = 0  # the `vector` variant: multimodal D
    attention_dim: int = 0  # the `simscore` variant: 1 similarity per history item
    mlp_dim: int = 0  # SimTier tiers, MAKE outputs, the missing flag


@dataclass
class ExtraInputs:
    """The inputs a variant adds to the ID model; ``None``/empty where its width is 0.

    Args:
        target_vector (torch.Tensor | None): tensor of shape (B, V), appended
            to the target item embedding (attention query and MLP input).
        history_vectors (torch.Tensor | None): tensor of shape (B, L, V),
            appended to the history item embeddings (attention keys).
        attention_features (torch.Tensor | None): tensor of shape (B, L, X).
        mlp_inputs (tuple[torch.Tensor, ...]): tensors of shape (B, k_i),
            sum of k_i = M, concatenated into the MLP input.
    """

    target_vector: torch.Tensor | None = None
    history_vectors: torch.Tensor | None = None
    attention_features: torch.Tensor | None = None
    mlp_inputs: tuple[torch.Tensor, ...] = ()


@dataclass(frozen=True)
class IdModelConfig:
    """Widths and switches of :class:`IdModel` (from ``ModelConfig`` by :func:`id_model_config`).

    Args:
        embedding_dim (int): E, width of every ID embedding table.
        attention_hidden (tuple[int, ...]): hidden widths of the target attention's unit.
        attention_softmax (bool): normalise the attention weights with a masked softmax.
        mlp_hidden (tuple[int, ...]): hidden widths of the MLP tower.
        fused_kernels (bool): the attention may use ``recsys.models.fused``'s kernel.
    """

    embedding_dim: int  # ModelConfig.embedding_dim
    attention_hidden: tuple[int, ...]  # ModelConfig.attention_hidden
    attention_softmax: bool  # ModelConfig.attention_softmax
    mlp_hidden: tuple[int, ...]  # ModelConfig.mlp_hidden
    fused_kernels: bool  # ModelConfig.fused_kernels


def id_model_config(config: ModelConfig) -> IdModelConfig:
    """The part of the model configuration that :class:`IdModel` reads.

    Example::

        >>> id_model_config(ModelConfig(embedding_dim=8)).embedding_dim
        8
    """
    return IdModelConfig(
        embedding_dim=config.embedding_dim,
        attention_hidden=config.attention_hidden,
        attention_softmax=config.attention_softmax,
        mlp_hidden=config.mlp_hidden,
        fused_kernels=config.fused_kernels,
    )


class IdModel(nn.Module):
    """DIN on ID features: embeddings, target attention, MLP tower -> logit.

    MLP input, in order: pooled embeddings (B, P * E), target item (B, E + V),
    attention output (B, E + V), dense features (B, F), extra MLP inputs (B, M).

    Args:
        config (IdModelConfig): widths of the tables, the attention unit and the MLP.
        table_sizes (dict[str, int]): rows per ID kind (``config.table_sizes``).
        extra (ExtraWidths): widths of the inputs a variant adds.
        device (torch.device | None): where to create parameters (``meta`` works).
        history_slots (int): the most history items an impression holds (``IdSparseArch``).

    Example::

        >>> from recsys.data.batch import SPARSE_FEATURES
        >>> config = IdModelConfig(embedding_dim=4, attention_hidden=(8,), attention_softmax=False,
        ...     mlp_hidden=(16,), fused_kernels=False)
        >>> model = IdModel(config, {k: 10 for k in SINGLE_FEATURES})
        >>> B = 2
        >>> kjt = KeyedJaggedTensor(keys=list(SPARSE_FEATURES), values=torch.arange(9 * B + 3) % 10,
        ...     lengths=torch.tensor([1] * (9 * B) + [3, 0]))
        >>> model(torch.zeros(B, len(DENSE_FEATURES)), kjt).shape
        torch.Size([2])
    """

    def __init__(
        self,
        config: IdModelConfig,
        table_sizes: dict[str, int],
        extra: ExtraWidths = ExtraWidths(),
        device: torch.device | None = None,
        history_slots: int = DEFAULT_HISTORY_SLOTS,
    ) -> None:
        super().__init__()
        E = config.embedding_dim
        self._extra = extra
        self.sparse_arch = IdSparseArch(table_sizes, E, device=device, history_slots=history_slots)
        item_dim = E + extra.vector_dim
        self.attention = TargetAttention(
            item_dim,
            config.attention_hidden,
            extra_dim=extra.attention_dim,
            softmax=config.attention_softmax,
            fused=config.fused_kernels,
            device=device,
        )
        in_dim = self.sparse_arch.pooled_dim() + item_dim + self.attention.output_dim()
        in_dim += len(DENSE_FEATURES) + extra.mlp_dim
        self._in_dim = in_dim
        self.over_arch = nn.Sequential(
            MLP(in_dim, list(config.mlp_hidden), device=device),
            nn.Linear(config.mlp_hidden[-1], 1, device=device),
        )

    def forward(
        self, dense: torch.Tensor, features: KeyedJaggedTensor, extra: ExtraInputs | None = None
    ) -> torch.Tensor:
        """
        Args:
            dense (torch.Tensor): dense features, tensor of shape (B, F).
            features (KeyedJaggedTensor): the batch KJT, stride B.
            extra (ExtraInputs | None): the variant's inputs (``None``: none).

        Returns:
            torch.Tensor: logits, tensor of shape (B,).
        """
        extra = ExtraInputs() if extra is None else extra
        ids = self.sparse_arch(features)
        target, history = ids.target, ids.history
        if self._extra.vector_dim:
            if extra.target_vector is None or extra.history_vectors is None:
                raise ValueError(f"IdModel built with vector_dim={self._extra.vector_dim} needs target and history vectors")
            target = torch.cat([target, extra.target_vector], dim=-1)  # (B, E + V)
            history = torch.cat([history, extra.history_vectors], dim=-1)  # (B, L, E + V)
        pooled_history = self.attention(target, history, ids.mask, extra.attention_features)
        mlp_in = torch.cat([ids.pooled, target, pooled_history, dense, *extra.mlp_inputs], dim=-1)
        if mlp_in.shape[1] != self._in_dim:
            raise ValueError(
                f"IdModel MLP input is {mlp_in.shape[1]} wide, expected {self._in_dim} "
                f"(extra MLP inputs must total mlp_dim={self._extra.mlp_dim})"
            )
        return self.over_arch(mlp_in).squeeze(-1)
