"""Shards a plain CTR model with TorchRec's ``DistributedModelParallel``.

Models stay plain (unsharded TorchRec modules, see ``recsys.models``); this is
the one place where they are planned, sharded and given optimizers.

How the frozen multimodal table (``MM_TABLE``) is kept frozen. Before
planning, :func:`shard_model` gives its weight a per-table optimizer the way
``apply_optimizer_in_backward`` does (``_optimizer_classes`` = SGD,
``_optimizer_kwargs`` = learning rate 0); the sharders merge that over their
``fused_params``, so the table sits in its own fbgemm group running
``EXACT_SGD`` at learning rate 0: stateless, so its ``fused_optimizer`` state
entry is an empty dict (no momentum tensors), and sharded like the ID tables.
Its lookups are ``detach()``-ed in ``MultimodalArch.forward``, so no gradient
reaches it either; it stays bitwise unchanged. :func:`make_optimizer` leaves
it out of the dense optimizer (:func:`~recsys.models.mm_table.is_mm_table_param`).
Tried and refused: the non-fused ``dense`` kernel for it (the planner accepts
``dense`` only with ``data_parallel``, which would replicate the table).

Example::

    >>> from torchrec.distributed.types import ShardingType
    >>> "row_wise" in CpuCapableEmbeddingBagCollectionSharder().sharding_types("cpu")
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ModuleSharder, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsys.distributed import DistContext
from recsys.models.mm_table import is_mm_table_param
from recsys.train.config import SHARDINGS

FUSED_OPTIMIZER = "fused"  # key of the fused table optimizer in make_optimizer's CombinedOptimizer
DENSE_OPTIMIZER = "dense"  # key of the dense optimizer there


@dataclass(frozen=True)
class FusedOptimConfig:
    """The fused fbgemm optimizer of the embedding tables."""

    optimizer: EmbOptimType = EmbOptimType.EXACT_ROWWISE_ADAGRAD  # fbgemm optimizer of the ID tables
    learning_rate: float = 0.01  # its learning rate

    def fused_params(self) -> dict[str, object]:
        return {"optimizer": self.optimizer, "learning_rate": self.learning_rate}


class CpuCapableEmbeddingBagCollectionSharder(EmbeddingBagCollectionSharder):
    """EBC sharder offering every sharding type, row_wise included, on CPU too."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return [t.value for t in ShardingType]


class CpuCapableEmbeddingCollectionSharder(EmbeddingCollectionSharder):
    """EC sharder offering every sharding type, row_wise included, on CPU too."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return [t.value for t in ShardingType]


def _table_names(model: nn.Module) -> list[str]:
    names: list[str] = []
    for module in model.modules():
        if isinstance(module, EmbeddingBagCollection):
            names += [t.name for t in module.embedding_bag_configs()]
        elif isinstance(module, EmbeddingCollection):
            names += [t.name for t in module.embedding_configs()]
    if len(names) != len(set(names)):
        raise ValueError(f"table names must be unique across the model for planning, got {sorted(names)}")
    return names


# "auto": the planner's choice among these. data_parallel is left out: a replicated
# table is stepped by the dense optimizer, not the fused one, so its optimizer
# state would change keys when another world size plans it otherwise, and
# checkpoints would not reshard.
# table_column_wise and grid_shard add nothing on one host.
AUTO_SHARDING_TYPES: tuple[str, ...] = tuple(
    t.value for t in (ShardingType.TABLE_WISE, ShardingType.ROW_WISE, ShardingType.COLUMN_WISE, ShardingType.TABLE_ROW_WISE)
)


def _constraints(model: nn.Module, sharding: str) -> dict[str, ParameterConstraints]:
    types = list(AUTO_SHARDING_TYPES) if sharding == "auto" else [ShardingType(sharding).value]
    return {name: ParameterConstraints(sharding_types=types) for name in _table_names(model)}


def _freeze_mm_table(model: nn.Module) -> None:
    """Gives the frozen mm table its own per-table fused optimizer: stateless EXACT_SGD, learning rate 0.

    The sharders read a table's optimizer from its weight's ``_optimizer_classes``
    and ``_optimizer_kwargs`` (what ``apply_optimizer_in_backward`` sets) and merge
    it over their ``fused_params``; the table lands in its own fbgemm group.
    """
    for name, param in model.named_parameters():
        if is_mm_table_param(name):
            param._optimizer_classes = [torch.optim.SGD]  # -> EmbOptimType.EXACT_SGD
            param._optimizer_kwargs = [{"learning_rate": 0.0}]


def shard_model(
    model: nn.Module, ctx: DistContext, sharding: str, optimizer: FusedOptimConfig
) -> DistributedModelParallel:
    """Plans and shards ``model`` (built on ``meta`` or on cpu) over the process group.

    Args:
        model (nn.Module): the plain model (e.g. ``CtrTrain``); table names unique.
        ctx (DistContext): this process's rank, world size and device.
        sharding (str): one of ``SHARDINGS``; "auto" leaves the choice to the planner.
        optimizer (FusedOptimConfig): the fused optimizer of the ID tables.

    Returns:
        DistributedModelParallel: the sharded model; ``fused_optimizer`` steps the
        ID tables, and holds only an empty (stateless, lr 0) entry for the mm table.
    """
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding {sharding!r} unknown, expected one of {SHARDINGS}")
    _freeze_mm_table(model)
    fused = optimizer.fused_params()
    sharders: list[ModuleSharder[nn.Module]] = [
        CpuCapableEmbeddingBagCollectionSharder(fused_params=fused),
        CpuCapableEmbeddingCollectionSharder(fused_params=fused),
    ]
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=ctx.world_size, compute_device=ctx.device.type),
        constraints=_constraints(model, sharding),
    )
    if dist.is_initialized():
        plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    else:
        plan = planner.plan(model, sharders)
    return DistributedModelParallel(module=model, device=ctx.device, plan=plan, sharders=sharders)


def dense_parameters(model: DistributedModelParallel) -> dict[str, nn.Parameter]:
    """Parameters the dense optimizer steps: not fused, not the frozen mm table."""
    params = dict(in_backward_optimizer_filter(model.named_parameters()))
    return {n: p for n, p in params.items() if not is_mm_table_param(n) and p.requires_grad}


def make_optimizer(
    model: DistributedModelParallel, dense: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
) -> CombinedOptimizer:
    """The fused table optimizer and a dense one (e.g. ``lambda p: torch.optim.Adam(p, lr=1e-3)``)."""
    params = dense_parameters(model)
    if not params:
        raise ValueError("the model has no dense parameters to optimize; step model.fused_optimizer alone")
    wrapped = KeyedOptimizerWrapper(params, dense)
    return CombinedOptimizer([(FUSED_OPTIMIZER, model.fused_optimizer), (DENSE_OPTIMIZER, wrapped)])
