"""shard_model: 2-rank gloo sharded training equals an unsharded reference after one fused SGD step."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

from recsys.models.config import ModelConfig
from recsys.data.spec import world_spec
from recsys.models.ctr_model import CtrModel, CtrTrain

WORLD = world_spec()
from recsys.train.sharding import CpuCapableEmbeddingBagCollectionSharder, plan_model, sharders


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharders_offer_row_wise_on_cpu() -> None:
    assert {"table_wise", "row_wise", "column_wise", "table_row_wise"} <= set(
        CpuCapableEmbeddingBagCollectionSharder().sharding_types("cpu"))
    assert "row_wise" in EmbeddingCollectionSharder().sharding_types("cpu")


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
@pytest.mark.parametrize("world_size", [1, 2])
def test_auto_plan_gives_each_table_a_type_its_module_builds(
    device_type: str, world_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full model (all EBCs) and a model with an item EC planned for CPU and for GPU ranks.

    On a GPU the planner once chose table_row_wise for an EmbeddingCollection
    table, which ShardedEmbeddingCollection cannot build.
    """
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import sharding_workers

    sizes = {t.name: 1000 for t in WORLD.tables}
    meta = torch.device("meta")
    builds = {"EmbeddingCollection": set(EmbeddingCollectionSharder().sharding_types(device_type)),
              "EmbeddingBagCollection": set(EmbeddingBagCollectionSharder().sharding_types("cuda"))}
    seen = set()
    for model in (CtrTrain(CtrModel(ModelConfig(variant="simtier_make"), WORLD, sizes, mm_dim=16, device=meta)),
                  sharding_workers.TinyCtr(device=meta)):
        plan = plan_model(model, sharders({}), world_size, device_type, "auto")
        for path, module_plan in plan.plan.items():
            kind = type(model.get_submodule(path)).__name__
            for table, option in module_plan.items():
                assert option.sharding_type in builds[kind], (path, table, option.sharding_type)
                seen.add(kind)
    assert seen == set(builds)


def _reference(workers: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Unsharded loss on the global batch and the weights after one plain SGD step on the tables."""
    model = workers.TinyCtr()
    model.load_state_dict(workers.initial_state())
    kjt, label = workers.global_batch()
    # Mean over the global batch = mean of the two ranks' local means, i.e. TorchRec's grads / world size.
    loss = model(kjt, label)
    loss.backward()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.grad is not None:
                p -= workers.LR * p.grad
    return loss.detach(), {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("sharding", "on_meta"), [("table_wise", False), ("row_wise", True), ("column_wise", False), ("auto", True)]
)
def test_sharded_equals_unsharded_after_one_step(
    sharding: str, on_meta: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import sharding_workers as workers

    init = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(workers.shard_worker, args=(2, init, str(tmp_path), sharding, on_meta, False), nprocs=2, join=True)
    got = torch.load(tmp_path / "result.pt", weights_only=False)
    ref_loss, ref_weights = _reference(workers)
    initial = workers.initial_state()

    torch.testing.assert_close(got["loss"], ref_loss)
    assert set(got["weights"]) == set(ref_weights), got["weights"].keys()
    for name, ref in ref_weights.items():
        torch.testing.assert_close(got["weights"][name], ref, msg=lambda m: f"{name}: {m}")
    for name in ("ebc.embedding_bags.user_id.weight", "item_table.embeddings.item_id.weight", "bias"):
        assert not torch.equal(ref_weights[name], initial[name])  # the step did move the ID tables
    mm = "mm_arch.mm_table.embedding_bags.mm_item.weight"
    assert torch.equal(got["weights"][mm], initial[mm])  # bitwise unchanged
    assert not any("mm_item" in k for k in got["fused_state"]), got["fused_state"]  # replicated, never stepped
    sys.modules.pop("sharding_workers", None)


def test_frozen_table_holds_no_state_beside_adagrad_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import sharding_workers as workers

    init = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(workers.shard_worker, args=(2, init, str(tmp_path), "row_wise", False, True), nprocs=2, join=True)
    got = torch.load(tmp_path / "result.pt", weights_only=False)
    mm = "mm_arch.mm_table.embedding_bags.mm_item.weight"
    assert torch.equal(got["weights"][mm], workers.initial_state()[mm])  # bitwise unchanged
    # held whole on every rank (data_parallel): no fused state, no dense optimizer entry, sends nothing
    assert got["sharding_types"]["mm_item"] == "data_parallel", got["sharding_types"]
    assert got["mm_lookups"] and got["mm_lookup_ddp"] == [], got  # no DDP reducer (nor bucket) for the frozen table
    assert got["sharding_types"]["user_id"] == "row_wise", got["sharding_types"]
    state = got["fused_state"]  # row_wise: rank 0 holds a shard of every ID table
    assert mm not in state, state
    assert not any("mm_item" in n for n in got["dense_params"]), got["dense_params"]
    assert got["dense_params"], got["dense_params"]
    assert state["ebc.embedding_bags.user_id.weight"] and state["item_table.embeddings.item_id.weight"], state
    sys.modules.pop("sharding_workers", None)
