"""The CTR model of every variant, and its training wrapper.

Notation:

* ``B``: batch size; ``L``: padded history length; ``F``: dense features.
* ``D``: multimodal vector width; ``T``: SimTier tiers.

What each variant adds to the DIN-style ID model (``recsys.models.id_model``);
every variant but ``id_only`` also feeds the target's "missing vector" flag
(B, 1) to the MLP:

==============  ================================================================
variant         added inputs
==============  ================================================================
id_only         none
simtier         SimTier histogram (B, T) -> MLP
make            MAKE attention (B, D), hidden (B, H), logit (B, 1) -> MLP
simtier_make    both of the above
vector          raw multimodal vectors appended to the target (B, D) and history
                (B, L, D) ID embeddings before target attention (and the target
                one also to the MLP input)
simscore        cosine similarity of the target's and each history item's vector
                (B, L, 1) as an extra input of the attention unit, so it can
                weight the history by it
==============  ================================================================

SimTier counts only history items that have a vector, and gives an all-zero
row when the target has none. In ``simscore`` a missing vector gives
similarity 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import Batch
from recsys.data.spec import FeatureSpec
from recsys.models.config import ModelConfig
from recsys.models.id_model import ExtraInputs, ExtraWidths, IdModel, id_model_config
from recsys.models.make import Make, make_config
from recsys.models.mm_table import multimodal_arch
from recsys.models.sequence import DEFAULT_HISTORY_SLOTS
from recsys.models.simtier import SimTier


@dataclass(frozen=True)
class VariantSpec:
    """Which multimodal inputs a variant uses."""

    simtier: bool = False  # SimTier histogram into the MLP
    make: bool = False  # MAKE outputs into the MLP
    vector: bool = False  # raw vectors inside target attention
    simscore: bool = False  # per-item similarity as attention input

    def uses_vectors(self) -> bool:
        return self.simtier or self.make or self.vector or self.simscore


# One entry per ``config.VARIANTS`` name (a test keeps them in step).
VARIANT_SPECS: dict[str, VariantSpec] = {
    "id_only": VariantSpec(),
    "simtier": VariantSpec(simtier=True),
    "make": VariantSpec(make=True),
    "simtier_make": VariantSpec(simtier=True, make=True),
    "vector": VariantSpec(vector=True),
    "simscore": VariantSpec(simscore=True),
}


def id_remapper(spec: FeatureSpec, device: torch.device | None = None) -> nn.Module | None:
    """The :class:`recsys.models.remap.IdRemapper` of the spec's raw-ID tables; ``None`` when every table is identity."""
    raw = spec.managed_tables()
    if not raw:
        return None
    from recsys.models.remap import IdRemapper  # only datasets with raw IDs need TorchRec's managed-collision modules

    names = {t.name for t in raw}
    keys = {k: spec.table_of(k) for k in spec.kjt_keys() if spec.table_of(k) in names}
    return IdRemapper(raw, keys, device=device)


class CtrModel(nn.Module):
    """The ID model plus the multimodal inputs of ``config.variant``; returns logits.

    Sub-modules (``None`` where the variant does not use them): ``id_model``
    (all ID tables, attention, MLP tower), ``mm_arch`` (the frozen
    multimodal table), ``simtier``, ``make``. With ``make_frozen`` MAKE's
    parameters have ``requires_grad=False`` and it runs under
    ``torch.no_grad()``, so stage-2 gradients never reach it; with
    ``make_attention_frozen`` only its target attention's parameters do not
    train (so its fused kernel runs forward only). Load MAKE's
    stage-1 weights with ``model.make.load_state_dict(stage1.make.state_dict())``.

    Args:
        config (ModelConfig): the variant and all widths.
        spec (FeatureSpec): the dataset's features (``Manifest.features``).
        table_sizes (dict[str, int]): rows per table (``spec.table_rows``).
        mm_dim (int): D, width of the item vectors (unused by ``id_only``).
        device (torch.device | None): where to create parameters (``meta`` works).
        history_slots (int): the most history items an impression holds (the
            world's ``max_history_len``; see ``recsys.models.sequence``).
        mm_rows (int | None): rows of the multimodal table; ``None`` = the item
            table's rows (item IDs are rows); raw item IDs: vectors + 1.

    The batch KJT holds raw IDs for the spec's ``managed`` and ``hash``
    tables: ``remap`` (``recsys.models.remap.IdRemapper``, ``None`` when every
    table is identity) turns them into rows before the ID tables; the
    multimodal table reads the raw item IDs (``MultimodalArch(raw_ids=True)``).

    Example::

        >>> from recsys.data.spec import world_spec
        >>> spec = world_spec()
        >>> model = CtrModel(ModelConfig(variant="simtier_make"), spec, {t.name: 10 for t in spec.tables}, mm_dim=8)
        >>> B = 2
        >>> kjt = KeyedJaggedTensor(keys=list(spec.kjt_keys()), values=torch.arange(9 * B + 3) % 10,
        ...     lengths=torch.tensor([1] * (9 * B) + [3, 0]))
        >>> model(torch.zeros(B, len(spec.dense)), kjt).shape
        torch.Size([2])
    """

    def __init__(
        self,
        config: ModelConfig,
        features: FeatureSpec,
        table_sizes: dict[str, int],
        mm_dim: int,
        device: torch.device | None = None,
        history_slots: int = DEFAULT_HISTORY_SLOTS,
        mm_rows: int | None = None,
    ) -> None:
        super().__init__()
        spec = VARIANT_SPECS[config.variant]
        self._spec = spec
        self.remap = id_remapper(features, device)
        self._make_frozen = config.make_frozen
        uses_vectors = spec.uses_vectors()
        if uses_vectors and mm_dim < 1:
            raise ValueError(f"variant {config.variant!r} needs item vectors; got mm_dim={mm_dim}")
        item_rows = table_sizes[features.table_of(features.item_key)]
        self.mm_arch = (
            multimodal_arch(features, item_rows if mm_rows is None else mm_rows, mm_dim, device, history_slots)
            if uses_vectors
            else None
        )
        self.simtier = (
            SimTier(
                config.simtier_tiers,
                soft=config.simtier_soft,
                unit_vectors=True,  # the table's rows: unit or zero, or a run's projection (dots ~ input cosines)
                metric_dim=mm_dim if config.simtier_learned_metric else 0,
                fused=config.fused_kernels,
                device=device,
            )
            if spec.simtier
            else None
        )
        self.make = Make(make_config(config), mm_dim, len(features.dense), device=device) if spec.make else None
        if self.make is not None and config.make_frozen:
            self.make.requires_grad_(False)
        elif self.make is not None and config.make_attention_frozen:  # no gradient: the attention runs forward only
            self.make.attention.requires_grad_(False)
        mlp_dim = 1 if uses_vectors else 0  # the target's missing flag
        mlp_dim += self.simtier.output_dim() if self.simtier is not None else 0
        mlp_dim += self.make.output_dim() if self.make is not None else 0
        widths = ExtraWidths(
            vector_dim=mm_dim if spec.vector else 0,
            attention_dim=1 if spec.simscore else 0,
            mlp_dim=mlp_dim,
        )
        self.id_model = IdModel(
            id_model_config(config), features, table_sizes, widths, device=device, history_slots=history_slots
        )

    def forward(self, dense: torch.Tensor, features: KeyedJaggedTensor, real: torch.Tensor | None = None,
                history_of: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            dense (torch.Tensor): dense features, tensor of shape (B, F).
            features (KeyedJaggedTensor): the batch KJT (keys ``spec.kjt_keys()``), stride B, raw IDs.
            real (torch.Tensor | None): bool tensor of shape (B,), the impressions
                (not padding) whose raw IDs the managed tables may admit; ``None``: all.
            history_of (torch.Tensor | None): int64 tensor of shape (B,): impression ``b``
                reads the history sequences of impression ``history_of[b]``, which alone
                hold them in ``features`` (the online ranker's candidates of one request:
                the history looked up once per request; ``recsys.models.sequence.item_rows``).
                ``None``: every impression its own.

        Returns:
            torch.Tensor: logits, tensor of shape (B,).
        """
        rows = features if self.remap is None else self.remap(features, real)
        if self.mm_arch is None:
            return self.id_model(dense, rows, history_of=history_of)
        mm = self.mm_arch(features, history_of)
        extra = ExtraInputs(mlp_inputs=(mm.target_missing,))
        if self.simtier is not None:
            counted = mm.history_mask & (mm.target_missing == 0)  # (B, L)
            extra.mlp_inputs += (self.simtier(mm.target, mm.history, counted),)
        if self.make is not None:
            if self._make_frozen:
                with torch.no_grad():
                    make_out = self.make(mm, dense)
            else:
                make_out = self.make(mm, dense)
            # MakeOutput.mlp_inputs() by field: under torch.fx (TorchRec's train pipeline) make_out is a Proxy
            extra.mlp_inputs += (make_out.attention, make_out.hidden, make_out.logit.unsqueeze(-1))
        if self._spec.vector:
            extra.target_vector, extra.history_vectors = mm.target, mm.history
        if self._spec.simscore:
            sims = torch.einsum("bd,bld->bl", F.normalize(mm.target, dim=-1), F.normalize(mm.history, dim=-1))
            extra.attention_features = sims.unsqueeze(-1)  # (B, L, 1); 0 where a vector is missing
        return self.id_model(dense, rows, extra, history_of)


class CtrTrain(nn.Module):
    """Adds the binary cross-entropy loss to a logits model (as torchrec's ``DLRMTrain``).

    Args:
        model (nn.Module): maps (dense (B, F), KJT, real rows (B,)) to logits
            (B,): a :class:`CtrModel` or a ``MakeModel``.

    Example::

        >>> from recsys.data.spec import world_spec
        >>> spec = world_spec()
        >>> train = CtrTrain(CtrModel(ModelConfig(), spec, {t.name: 10 for t in spec.tables}, mm_dim=0))
        >>> B = 2
        >>> kjt = KeyedJaggedTensor(keys=list(spec.kjt_keys()), values=torch.arange(9 * B + 1) % 10,
        ...     lengths=torch.tensor([1] * (9 * B) + [1, 0]))
        >>> batch = Batch(dense_features=torch.zeros(B, len(spec.dense)), sparse_features=kjt,
        ...     labels=torch.tensor([1.0, 0.0]), user_ids=torch.tensor([0, 1]), item_ids=torch.tensor([4, 5]))
        >>> loss, (loss_d, logits, labels) = train(batch)
        >>> loss.shape, logits.shape, labels.tolist()
        (torch.Size([]), torch.Size([2]), [1.0, 0.0])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = nn.BCEWithLogitsLoss(reduction="none")

    def forward(self, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """
        Args:
            batch (Batch): dense (B, F), KJT, labels (B,), weights (B,).

        Returns:
            tuple: the loss (scalar, with gradient) and, detached, (loss,
            logits (B,), labels (B,)) for metrics. The loss is the
            ``batch.weights``-weighted mean of the rows' binary cross-entropy,
            ``sum(w * bce) / max(sum(w), 1)``: a padding batch (all weights 0)
            gives loss 0 and zero gradients.
        """
        # the rows of weight > 0: padding rows never admit IDs into managed tables (CtrModel.forward)
        logits = self.model(batch.dense_features, batch.sparse_features, batch.weights > 0)
        weights = batch.weights.to(logits.dtype)
        loss = (self.loss_fn(logits, batch.labels) * weights).sum() / weights.sum().clamp(min=1.0)
        return loss, (loss.detach(), logits.detach(), batch.labels)
