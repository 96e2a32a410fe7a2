"""Shards a plain CTR model with TorchRec's ``DistributedModelParallel``.

Models stay plain (unsharded TorchRec modules, see ``recsys.models``); this is
the one place where they are planned, sharded and given optimizers.

How the frozen multimodal table (``MM_TABLE``) is kept frozen and cheap: it is
planned ``data_parallel`` (TorchRec's replicated sharding type, the ``dense``
kernel) at every world size, so each rank holds it whole and its lookups send
nothing through the all-to-all. Sharded like the ID tables it sent every
sample's 50 history rows (50 x 64 x 4 B = 12.8 KB at 64-d) forward and back,
and a second rank made ``simtier_make`` slower (``bench.step_profile``). Its
lookups run under ``no_grad`` in ``MultimodalArch.forward``, the module is
marked ``mark_data_parallel_skip_grad_sync`` (so TorchRec wraps the
replicated lookup in no DDP: no table-sized gradient bucket, no broadcast), and
:func:`make_optimizer` leaves it out of the dense optimizer
(:func:`~recsys.models.mm_table.is_mm_table_param`): it stays bitwise
unchanged, holds no optimizer state, and its checkpoint entry is one plain
tensor at any world size (the stages refill it from the vector table on load
and skip it on resume). Memory: ``N x D x 4`` bytes on every rank (25.6 MB for
the ``small`` world's 100k items at 64-d).

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
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.types import ModuleSharder, ShardingEnv, ShardingPlan, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsys.distributed import DistContext
from recsys.models.mm_table import MM_TABLE, is_mm_table_param
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
    """EBC sharder offering on CPU what it offers on GPU (row_wise, table_row_wise included).

    TorchRec's EBC sharder offers row-wise types only on GPU, though its
    sharded module builds and trains them on CPU too (gloo). The EC sharder
    needs no such change: it offers row_wise on every device, and only the
    types ``ShardedEmbeddingCollection`` builds (table_row_wise is not one).
    """

    def sharding_types(self, compute_device_type: str) -> list[str]:
        return super().sharding_types("cuda")


class DataParallelBeyondOneRank(DefaultDataParallelWrapper):
    """DDP over the dense parts when there are several ranks; none on one (no hooks, no all-reduce).

    State dict keys do not change: DMP unwraps DDP for them, so a 1-rank
    checkpoint loads on 2 ranks and back. TorchRec's wrapper broadcasts no
    buffers: the managed-collision state (``recsys.models.remap``) stays the
    same on every rank because each rank profiles the all-gathered IDs.
    """

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        if env.world_size > 1:
            super().wrap(dmp, env, device)
        else:
            dmp._dmp_wrapped_module.to(device)


def sharders(fused_params: dict[str, object]) -> list[ModuleSharder[nn.Module]]:
    """The sharders: EBCs (every table of the CTR models) and ECs (sequence tables, e.g. in tests)."""
    return [CpuCapableEmbeddingBagCollectionSharder(fused_params=fused_params),
            EmbeddingCollectionSharder(fused_params=fused_params)]


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


# "auto": the planner's choice among these for the ID tables. data_parallel is left out: a replicated
# trained table is stepped by the dense optimizer, not the fused one, so its optimizer
# state would change keys when another world size plans it otherwise, and
# checkpoints would not reshard.
# table_column_wise and grid_shard add nothing on one host.
AUTO_SHARDING_TYPES: tuple[str, ...] = tuple(
    t.value for t in (ShardingType.TABLE_WISE, ShardingType.ROW_WISE, ShardingType.COLUMN_WISE, ShardingType.TABLE_ROW_WISE)
)


def _constraints(model: nn.Module, sharding: str, world_size: int) -> dict[str, ParameterConstraints]:
    if sharding != "auto":
        types = [ShardingType(sharding).value]
    elif world_size == 1:  # one rank holds every table whole: table_wise skips row_wise's bucketing of IDs
        types = [ShardingType.TABLE_WISE.value]
    else:
        types = list(AUTO_SHARDING_TYPES)
    out = {name: ParameterConstraints(sharding_types=types) for name in _table_names(model)}
    if MM_TABLE in out:  # frozen: replicated, its lookups send nothing (module docstring)
        out[MM_TABLE] = ParameterConstraints(sharding_types=[ShardingType.DATA_PARALLEL.value],
                                             compute_kernels=[EmbeddingComputeKernel.DENSE.value])
    return out


def plan_model(
    model: nn.Module, chosen: list[ModuleSharder[nn.Module]], world_size: int, device_type: str, sharding: str
) -> ShardingPlan:
    """TorchRec's planner over ``world_size`` devices of ``device_type``; collective when a group is up.

    Example::

        >>> from torchrec.modules.embedding_configs import EmbeddingConfig
        >>> ec = EmbeddingCollection(tables=[EmbeddingConfig(name="t", embedding_dim=8, num_embeddings=100,
        ...                                                  feature_names=["f"])], device=torch.device("meta"))
        >>> plan = plan_model(ec, sharders({}), world_size=2, device_type="cuda", sharding="auto")
        >>> plan.plan[""]["t"].sharding_type in ("table_wise", "row_wise", "column_wise")
        True
    """
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding {sharding!r} unknown, expected one of {SHARDINGS}")
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world_size, compute_device=device_type),
        constraints=_constraints(model, sharding, world_size),
    )
    if dist.is_initialized() and dist.get_world_size() == world_size:
        return planner.collective_plan(model, chosen, dist.GroupMember.WORLD)
    return planner.plan(model, chosen)


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
        ID tables; the mm table is replicated and stepped by nothing.
    """
    chosen = sharders(optimizer.fused_params())
    plan = plan_model(model, chosen, ctx.world_size, ctx.device.type, sharding)
    return DistributedModelParallel(module=model, device=ctx.device, plan=plan, sharders=chosen,
                                    data_parallel_wrapper=DataParallelBeyondOneRank())


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
