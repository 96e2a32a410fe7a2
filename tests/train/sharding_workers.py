"""Worker functions for the 2-rank gloo sharding tests; imported by name in spawned processes."""

from __future__ import annotations

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.distributed import DistContext
from recsys.models.mm_table import MultimodalArch
from recsys.train.sharding import FusedOptimConfig, make_optimizer, shard_model

N_ITEMS, N_USERS, D, LR, B = 10, 6, 4, 0.5, 4


class TinyCtr(nn.Module):
    """The CtrModel table layout in small: a user EBC, an item EC, the frozen mm EBC; returns the loss."""

    def __init__(self, device: torch.device | None = None) -> None:
        super().__init__()
        user = EmbeddingBagConfig(name="user_id", embedding_dim=D, num_embeddings=N_USERS, feature_names=["user_id"])
        self.ebc = EmbeddingBagCollection(tables=[user], device=device)
        item = EmbeddingConfig(name="item_id", embedding_dim=D, num_embeddings=N_ITEMS, feature_names=["item_id"])
        self.item_table = EmbeddingCollection(tables=[item], device=device)
        self.mm_arch = MultimodalArch(num_items=N_ITEMS, dim=D, device=device)
        self.bias = nn.Parameter(torch.full((1,), 0.1, device=device))  # a dense parameter

    def forward(self, kjt: KeyedJaggedTensor, label: torch.Tensor) -> torch.Tensor:
        user = self.ebc(kjt)["user_id"]  # (B, D)
        item = self.item_table(kjt)["item_id"].values()  # (B, D)
        mm = self.mm_arch(kjt).target  # (B, D), detached
        logit = (user * item).sum(-1) + (item * mm).sum(-1) + self.bias
        return nn.functional.binary_cross_entropy_with_logits(logit, label)


def global_batch(seed: int = 0) -> tuple[KeyedJaggedTensor, torch.Tensor]:
    """2 * B impressions: user_id (bag of 1-2), item_id (1), history (0-2); rank r takes rows r*B..(r+1)*B."""
    g = torch.Generator().manual_seed(seed)
    n = 2 * B
    user_len = torch.randint(1, 3, (n,), generator=g)
    hist_len = torch.randint(0, 3, (n,), generator=g)
    return _kjt(g, user_len, hist_len), torch.randint(0, 2, (n,), generator=g).float()


def _kjt(g: torch.Generator, user_len: torch.Tensor, hist_len: torch.Tensor) -> KeyedJaggedTensor:
    n = len(user_len)
    users = torch.randint(0, N_USERS, (int(user_len.sum()),), generator=g)
    items = torch.randint(0, N_ITEMS, (n,), generator=g)
    hist = torch.randint(0, N_ITEMS, (int(hist_len.sum()),), generator=g)
    return KeyedJaggedTensor(
        keys=["user_id", "item_id", "history_item_ids"],
        values=torch.cat([users, items, hist]),
        lengths=torch.cat([user_len, torch.ones(n, dtype=torch.long), hist_len]),
    )


def local_batch(rank: int) -> tuple[KeyedJaggedTensor, torch.Tensor]:
    kjt, label = global_batch()
    d = kjt.to_dict()
    rows = slice(rank * B, (rank + 1) * B)
    lengths = {k: d[k].lengths()[rows] for k in kjt.keys()}
    values = []
    for k in kjt.keys():
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), d[k].lengths().cumsum(0)])
        values.append(d[k].values()[offsets[rows.start] : offsets[rows.stop]])
    all_lengths = torch.cat([lengths[k] for k in kjt.keys()])
    local = KeyedJaggedTensor(keys=kjt.keys(), values=torch.cat(values), lengths=all_lengths)
    return local, label[rows]


def initial_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyCtr()
    with torch.no_grad():
        model.mm_arch.table_weight().copy_(torch.randn(N_ITEMS, D))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _full(t: object, rank: int) -> torch.Tensor | None:
    """A state_dict entry as one full tensor on rank 0 (ShardedTensor, DTensor or plain)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    if isinstance(t, ShardedTensor):
        out = torch.empty(t.size()) if rank == 0 else None
        t.gather(dst=0, out=out)
        return out
    if isinstance(t, DTensor):
        return t.full_tensor()
    return t.detach().clone()


def shard_worker(
    rank: int, world_size: int, init_method: str, out_dir: str, sharding: str, on_meta: bool, adagrad: bool
) -> None:
    """Shards TinyCtr, loads the reference initial state, runs one SGD step (tables fused EXACT_SGD, or
    EXACT_ROWWISE_ADAGRAD if ``adagrad``; dense plain SGD); saves loss, weights and optimizer state."""
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = TinyCtr(device=torch.device("meta") if on_meta else None)
        opt = EmbOptimType.EXACT_ROWWISE_ADAGRAD if adagrad else EmbOptimType.EXACT_SGD
        ctx = DistContext(rank=rank, world_size=world_size, device=torch.device("cpu"))
        dmp = shard_model(model, ctx, sharding, FusedOptimConfig(optimizer=opt, learning_rate=LR))
        optim = make_optimizer(dmp, lambda params: torch.optim.SGD(params, lr=LR))
        state = initial_state()
        dmp.load_state_dict(state)
        kjt, label = local_batch(rank)
        loss = dmp(kjt, label)
        loss.backward()
        optim.step()
        optim.zero_grad()
        losses = [torch.zeros(()) for _ in range(world_size)]
        dist.all_gather(losses, loss.detach())
        weights = {k: _full(v, rank) for k, v in dmp.state_dict().items()}
        if rank == 0:
            torch.save(
                {
                    "loss": torch.stack(losses).mean(),
                    "weights": weights,
                    "fused_state": {k: sorted(v) for k, v in dmp.fused_optimizer.state_dict()["state"].items()},
                    "mm_lookup_ddp": [type(lookup).__name__ for name, m in dmp.named_modules()
                                      if name.endswith("mm_arch.mm_table") for lookup in getattr(m, "_lookups", [])
                                      if isinstance(lookup, nn.parallel.DistributedDataParallel)],
                    "mm_lookups": [type(lookup).__name__ for name, m in dmp.named_modules()
                                   if name.endswith("mm_arch.mm_table") for lookup in getattr(m, "_lookups", [])],
                    "sharding_types": {t: s.sharding_type for m in dmp.plan.plan.values() for t, s in m.items()},
                    "dense_params": sorted(n for g in optim.param_groups for p in g["params"]
                                           for n, q in dmp.named_parameters() if q is p),
                },
                f"{out_dir}/result.pt",
            )
    finally:
        dist.destroy_process_group()


def _pipelined(model: nn.Module) -> bool:
    """Whether a module of ``model`` runs TorchRec's train-pipeline forward (attached to a pipeline)."""
    from torchrec.distributed.train_pipeline.runtime_forwards import PipelinedForward

    return any(isinstance(m.forward, PipelinedForward) for m in model.modules())


def pipeline_worker(rank: int, world_size: int, init_method: str, world: str, vectors: str | None, out_dir: str,
                    sharding: str, steps: int) -> None:
    """Trains ``steps`` steps of ``simtier`` (``id_only`` without ``vectors``) on ``world`` with each train
    pipeline from the same start, then predicts the test day; rank 0 saves each pipeline's losses, rows per step
    (every rank's), predictions."""
    import itertools
    import tempfile
    from contextlib import closing
    from pathlib import Path

    from recsys.data.reader import ImpressionReader, ReaderConfig
    from recsys.models.config import ModelConfig
    from recsys.train.config import TRAIN_PIPELINES, TrainConfig
    from recsys.train.loop import predict, training_steps
    from recsys.train.trainer import TrainJob, build

    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        ctx = DistContext(rank=rank, world_size=world_size, device=torch.device("cpu"))
        for pipeline in TRAIN_PIPELINES:
            with tempfile.TemporaryDirectory() as tmp:
                job = TrainJob(world=Path(world), out=Path(tmp), model=ModelConfig(variant="simtier" if vectors else "id_only"),
                               train=TrainConfig(batch_size=64), vectors=Path(vectors) if vectors else None,
                               sharding=sharding, quiet=True)
                built = build(job, ctx)
                config = ReaderConfig(batch_size=64, days=built.split.train, rank=rank, world_size=world_size,
                                      shuffle=True, table_sizes=built.sizes, dense_stats=built.dense_stats or None)
                expected = [int((b.weights > 0).sum()) for b in itertools.islice(ImpressionReader(Path(world), config), steps)]
                losses, rows, attached = [], [], False
                with closing(training_steps(built.model, built.optimizer, ImpressionReader(Path(world), config),
                                            ctx.device, pipeline)) as it:
                    for loss, n in itertools.islice(it, steps):
                        losses.append(float(loss))
                        rows.append(int(n))
                        attached = attached or _pipelined(built.model)
                after = _pipelined(built.model)
                scored = predict(built.model, Path(world), built.split.test, ctx,
                                 ReaderConfig(batch_size=100, table_sizes=built.sizes,
                                              dense_stats=built.dense_stats or None), quiet=True)
                every = [None] * world_size
                dist.all_gather_object(every, (rows, expected))
                if rank == 0:
                    torch.save({"losses": losses, "rows": [r for r, _ in every], "expected_rows": [e for _, e in every],
                                "pipelined_while_open": attached, "pipelined_after": after,
                                "predictions": scored.predictions, "test_rows": len(scored.labels)},
                               f"{out_dir}/{pipeline}.pt")
    finally:
        dist.destroy_process_group()
