"""The DIN-style ID model: ID embeddings, target attention over the history, MLP tower.

Notation:

* ``B``: batch size; ``L``: padded history length; ``F``: dense features.
* ``E``: ID embedding width (``ModelConfig.embedding_dim``; a table may declare its own).
* ``P``: width of the pooled single-valued features side by side (the
  features outside the target group; 8 * E for the world's spec).
* ``I``: width of the target group (the item's table, then its
  ``history_side`` features' tables; E for the world's spec).
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
target is the row read in histories. The item's side features that the
spec lets history positions carry (``history_side``, e.g. the category) are
read the same way from their own tables. The other single-valued features
are pooled by an ``EmbeddingBagCollection`` (``IdSparseArch.ebc``), one
table per spec table (features naming one table share it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.spec import FeatureSpec
from recsys.models.attention import TargetAttention
from recsys.models.config import ModelConfig
from recsys.models.sequence import DEFAULT_HISTORY_SLOTS, ITEM_ROWS, item_rows

# a leaf of torch.fx traces (TorchRec's train pipeline traces the model to find its sharded modules' inputs)
torch.fx.wrap("item_rows")

ROWS_SUFFIX = "_rows"  # a target-group side feature's bag feature: <feature>_rows

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
    """All ID tables: an ``EmbeddingBagCollection`` of the pooled features and one of the target group.

    The feature spec (``recsys.data.spec``) splits the sparse features into
    the target group (the item key and its ``history_side`` features, each
    read with its history as one-ID bags, ``recsys.models.sequence``) and the
    pooled rest. For the world's spec (no side features)::

        #                 impression 0   impression 1
        # user_id           [u0]           [u1]       -> ebc (pooled, B rows)
        # ...               ...            ...
        # item_id           [i0]           [i1]       \
        # ...               ...            ...         > item_rows [i0] [i1] [h00] [h01] -> item_table
        # history_item_ids  [h00, h01]     []         /  -> target (B, E), history (B, L, E)

    With side features (e.g. ``category_id``) the target is the item's and its
    category's embeddings side by side, and each history position too.

    Args:
        spec (FeatureSpec): the dataset's features (KJT keys, tables).
        table_sizes (dict[str, int]): rows per table (``spec.table_rows``).
        embedding_dim (int): E, width of tables that declare none.
        device (torch.device | None): where to create the tables (``meta`` works).
        history_slots (int): the most history items an impression holds (the
            world's ``max_history_len``); a longer history is refused.

    Raises:
        ValueError: a table without a size, or a table read both by a pooled
            feature and by the target group (they differ in stride).
    """

    def __init__(
        self,
        spec: FeatureSpec,
        table_sizes: dict[str, int],
        embedding_dim: int,
        device: torch.device | None = None,
        history_slots: int = DEFAULT_HISTORY_SLOTS,
    ) -> None:
        super().__init__()
        if history_slots < 1:
            raise ValueError(f"history_slots must be >= 1, got {history_slots}")
        self._slots = history_slots
        self._spec = spec
        missing = sorted({t.name for t in spec.tables} - set(table_sizes))
        if missing:
            raise ValueError(f"table_sizes lacks {missing}; expected a size for each of {sorted(t.name for t in spec.tables)}")
        dims = {t.name: t.dim or embedding_dim for t in spec.tables}
        pooled = {f: spec.table_of(f) for f in spec.pooled()}
        group = spec.target_group()
        grouped = {spec.table_of(f) for f in group}
        shared = sorted(grouped & set(pooled.values()))
        if shared:
            raise ValueError(f"table(s) {shared} are read by pooled features and by the target group; give them separate tables")
        self._pooled_dim = sum(dims[t] for t in pooled.values())
        self._group = tuple(  # (target key, history key, bag key): one bag feature per group feature
            (f, h, f + ROWS_SUFFIX if f != spec.item_key else ITEM_ROWS)
            for f, h in zip(group, spec.history_keys() or (None,))
        )
        keys = [key for _, _, key in self._group]
        if len(set(keys)) < len(keys) or set(keys) & set(spec.kjt_keys()):
            raise ValueError(f"the target group's bag keys {keys} collide (with each other or a KJT key); rename the feature")
        self._item_dim = sum(dims[spec.table_of(f)] for f in group)
        self.ebc = EmbeddingBagCollection(tables=_bag_configs(pooled, table_sizes, dims), device=device)
        rows = {key: spec.table_of(f) for f, _, key in self._group}
        self.item_table = EmbeddingBagCollection(tables=_bag_configs(rows, table_sizes, dims), device=device)

    def pooled_dim(self) -> int:
        """P: width of the pooled features' embeddings side by side."""
        return self._pooled_dim

    def item_dim(self) -> int:
        """Width of the target (and each history position): the target group's tables side by side."""
        return self._item_dim

    def forward(self, features: KeyedJaggedTensor, history_of: torch.Tensor | None = None) -> IdEmbeddings:
        """
        Args:
            features (KeyedJaggedTensor): the batch KJT, stride B, IDs already rows (``recsys.models.remap``).
            history_of (torch.Tensor | None): (B,) shared histories, looked up once each
                (``recsys.models.sequence.item_rows``); None: one per impression.

        Returns:
            IdEmbeddings: pooled (B, P), target (B, I), history (B, L, I), mask (B, L).
        """
        pooled = self.ebc(features).values()  # (B, P)
        bags = [item_rows(features, self._slots, f, h, key, history_of) for f, h, key in self._group]
        rows = bags[0]
        merged = KeyedJaggedTensor.concat([b.features for b in bags]) if len(bags) > 1 else rows.features
        out = self.item_table(merged)
        width = out.values()  # (B * (1 + S), I): the group's tables side by side, in group order
        target, history = rows.split(torch.cat([out[key] for _, _, key in self._group], dim=-1) if len(bags) > 1 else width)
        return IdEmbeddings(pooled=pooled, target=target, history=history, mask=rows.mask)


def _bag_configs(features: dict[str, str], sizes: dict[str, int], dims: dict[str, int]) -> list[EmbeddingBagConfig]:
    """One sum-pooled ``EmbeddingBagConfig`` per table, listing the features (keys) that read it, in first-use order."""
    tables: dict[str, list[str]] = {}
    for feature, table in features.items():
        tables.setdefault(table, []).append(feature)
    return [
        EmbeddingBagConfig(name=t, embedding_dim=dims[t], num_embeddings=sizes[t], feature_names=names, pooling=PoolingType.SUM)
        for t, names in tables.items()
    ]


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

    MLP input, in order: pooled embeddings (B, P), target group (B, I + V),
    attention output (B, I + V), dense features (B, F), extra MLP inputs (B, M).

    Args:
        config (IdModelConfig): widths of the tables, the attention unit and the MLP.
        spec (FeatureSpec): the dataset's features (``Manifest.features``).
        table_sizes (dict[str, int]): rows per table (``spec.table_rows``).
        extra (ExtraWidths): widths of the inputs a variant adds.
        device (torch.device | None): where to create parameters (``meta`` works).
        history_slots (int): the most history items an impression holds (``IdSparseArch``).

    Example::

        >>> from recsys.data.spec import world_spec
        >>> spec = world_spec()
        >>> config = IdModelConfig(embedding_dim=4, attention_hidden=(8,), attention_softmax=False,
        ...     mlp_hidden=(16,), fused_kernels=False)
        >>> model = IdModel(config, spec, {t.name: 10 for t in spec.tables})
        >>> B = 2
        >>> kjt = KeyedJaggedTensor(keys=list(spec.kjt_keys()), values=torch.arange(9 * B + 3) % 10,
        ...     lengths=torch.tensor([1] * (9 * B) + [3, 0]))
        >>> model(torch.zeros(B, len(spec.dense)), kjt).shape
        torch.Size([2])
    """

    def __init__(
        self,
        config: IdModelConfig,
        spec: FeatureSpec,
        table_sizes: dict[str, int],
        extra: ExtraWidths = ExtraWidths(),
        device: torch.device | None = None,
        history_slots: int = DEFAULT_HISTORY_SLOTS,
    ) -> None:
        super().__init__()
        E = config.embedding_dim
        self._extra = extra
        self.sparse_arch = IdSparseArch(spec, table_sizes, E, device=device, history_slots=history_slots)
        item_dim = self.sparse_arch.item_dim() + extra.vector_dim
        self.attention = TargetAttention(
            item_dim,
            config.attention_hidden,
            extra_dim=extra.attention_dim,
            softmax=config.attention_softmax,
            fused=config.fused_kernels,
            device=device,
        )
        in_dim = self.sparse_arch.pooled_dim() + item_dim + self.attention.output_dim()
        in_dim += len(spec.dense) + extra.mlp_dim
        self._in_dim = in_dim
        self.over_arch = nn.Sequential(
            MLP(in_dim, list(config.mlp_hidden), device=device),
            nn.Linear(config.mlp_hidden[-1], 1, device=device),
        )

    def forward(
        self, dense: torch.Tensor, features: KeyedJaggedTensor, extra: ExtraInputs | None = None,
        history_of: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            dense (torch.Tensor): dense features, tensor of shape (B, F).
            features (KeyedJaggedTensor): the batch KJT, stride B.
            extra (ExtraInputs | None): the variant's inputs (``None``: none).
            history_of (torch.Tensor | None): (B,) shared histories (``IdSparseArch.forward``).

        Returns:
            torch.Tensor: logits, tensor of shape (B,).
        """
        extra = ExtraInputs() if extra is None else extra
        ids = self.sparse_arch(features) if history_of is None else self.sparse_arch(features, history_of)
        target, history = ids.target, ids.history
        if self._extra.vector_dim:
            if extra.target_vector is None or extra.history_vectors is None:
                raise ValueError(f"IdModel built with vector_dim={self._extra.vector_dim} needs target and history vectors")
            target = torch.cat([target, extra.target_vector], dim=-1)  # (B, E + V)
            history = torch.cat([history, extra.history_vectors], dim=-1)  # (B, L, E + V)
        pooled_history = self.attention(target, history, ids.mask, extra.attention_features)
        mlp_in = torch.cat([ids.pooled, target, pooled_history, dense, *extra.mlp_inputs], dim=-1)
        if not is_fx_symbolic_tracing() and mlp_in.shape[1] != self._in_dim:  # traced: widths are proxies
            raise ValueError(
                f"IdModel MLP input is {mlp_in.shape[1]} wide, expected {self._in_dim} "
                f"(extra MLP inputs must total mlp_dim={self._extra.mlp_dim})"
            )
        return self.over_arch(mlp_in).squeeze(-1)
