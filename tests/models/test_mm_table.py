"""The frozen multimodal table: loading, missing items, never updated."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from recsys.data.spec import world_spec
from recsys.data.batch import Batch
from recsys.models.config import VARIANTS, ModelConfig
from recsys.models.ctr_model import CtrModel, CtrTrain
from recsys.models.mm_table import MultimodalArch, is_mm_table_param, load_item_vectors_into

WORLD = world_spec()  # the world generator's feature spec


def unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_loaded_table_equals_vectors_missing_zero_with_flag(make_batch: Callable[..., Batch]) -> None:
    arch = MultimodalArch(num_items=20, dim=5)
    weight = arch.table_weight()
    ids = np.array([i for i in range(20) if i % 3])  # every third item has no vector
    vectors = unit_vectors(len(ids), 5)
    missing = load_item_vectors_into(weight, ids, vectors)
    assert torch.equal(weight[torch.as_tensor(ids)], torch.as_tensor(vectors))
    assert missing.tolist() == [i % 3 == 0 for i in range(20)]
    assert weight[missing].eq(0).all()

    batch = make_batch([4, 0, 2], seed=3)
    kjt = batch.sparse_features
    mm = arch(kjt)
    target_ids = kjt["item_id"].values()
    assert torch.equal(mm.target, weight[target_ids])
    assert mm.target_missing.squeeze(1).tolist() == [float(i % 3 == 0) for i in target_ids.tolist()]
    hist_ids = kjt["history_item_ids"].values().tolist()
    assert mm.history_mask.sum().item() == sum(i % 3 != 0 for i in hist_ids)
    assert not mm.target.requires_grad and not mm.history.requires_grad
    # the padded history, per impression: its items' rows in order, then zeros
    lengths, start = kjt["history_item_ids"].lengths().tolist(), 0
    assert mm.history.shape == (3, max(lengths), 5)
    for b, n in enumerate(lengths):
        ids_b = torch.as_tensor(hist_ids[start : start + n], dtype=torch.long)
        assert torch.equal(mm.history[b, :n], weight[ids_b])
        assert mm.history[b, n:].eq(0).all()
        assert mm.history_mask[b].tolist() == [i % 3 != 0 for i in ids_b.tolist()] + [False] * (max(lengths) - n)
        start += n


def test_load_refuses_bad_input() -> None:
    w = torch.empty(4, 2)
    with pytest.raises(ValueError, match="outside"):
        load_item_vectors_into(w, np.array([4]), np.ones((1, 2)))
    with pytest.raises(ValueError, match="D=2"):
        load_item_vectors_into(w, np.array([1]), np.ones((1, 3)))


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "id_only"])
def test_table_unchanged_after_training_steps(
    make_batch: Callable[..., Batch], sizes: dict[str, int], variant: str
) -> None:
    torch.manual_seed(0)
    model = CtrModel(ModelConfig(variant=variant, make_frozen=False), WORLD, sizes, mm_dim=4)
    (table_name,) = [n for n, _ in model.named_parameters() if is_mm_table_param(n)]
    table = dict(model.named_parameters())[table_name]
    load_item_vectors_into(table, np.arange(0, 20, 2), unit_vectors(10, 4))
    before = table.detach().clone()
    train = CtrTrain(model)
    # Even an optimizer over every parameter leaves it alone: no gradient ever reaches it.
    opt = torch.optim.SGD(train.parameters(), lr=0.5, weight_decay=0.1)
    for step in range(3):
        loss, _ = train(make_batch([3, 1, 0, 5], seed=step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not table.requires_grad and table.grad is None
    assert torch.equal(table, before)
