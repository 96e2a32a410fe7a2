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
    assert arch.load_rows(ids, vectors) == 20 - len(ids)
    missing = arch.row_missing
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


def _reference_masks(mm, kjt) -> tuple[list[float], list[list[bool]]]:
    """The missing flag and history mask computed another way: a vector's norm, and the history's lengths."""
    target_missing = [float(torch.linalg.vector_norm(v) == 0) for v in mm.target]
    lengths = kjt["history_item_ids"].lengths().tolist()
    mask = [[bool(l < n and torch.linalg.vector_norm(mm.history[b, l]) > 0) for l in range(mm.history.shape[1])]
            for b, n in enumerate(lengths)]
    return target_missing, mask


def test_missing_flags_follow_every_fill_identity_and_raw_ids() -> None:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    # identity rows: filled twice with different items; the flags follow the second fill
    arch = MultimodalArch(num_items=12, dim=3)
    kjt = KeyedJaggedTensor(keys=["item_id", "history_item_ids"], values=torch.tensor([1, 2, 11, 0, 2, 3, 4, 5]),
                            lengths=torch.tensor([1, 1, 1, 0, 2, 3]))  # 3 impressions: histories of 0, 2, 3
    for ids in (np.arange(0, 12, 2), np.arange(1, 12, 3)):
        assert arch.load_rows(ids, unit_vectors(len(ids), 3)) == 12 - len(ids)
        mm = arch(kjt)
        target_missing, mask = _reference_masks(mm, kjt)
        assert mm.target_missing.squeeze(1).tolist() == target_missing
        assert mm.history_mask.tolist() == mask
        assert 0 < sum(target_missing) < 3 and any(map(any, mask)) and not all(map(all, mask))
    with pytest.raises(ValueError, match="raw IDs"):
        MultimodalArch(num_items=4, dim=3, raw_ids=True).load_rows(np.array([0]), unit_vectors(1, 3))

    # raw 64-bit IDs: only the vectors' IDs have a row; any other ID reads the missing row
    big = 2**62
    raw = MultimodalArch(num_items=5, dim=3, raw_ids=True)
    assert raw.load_raw(np.array([big + 7, 3, big]), unit_vectors(3, 3)) == 3
    kjt = KeyedJaggedTensor(keys=["item_id", "history_item_ids"],
                            values=torch.tensor([big + 7, 5, 3, big + 1, big, 9], dtype=torch.int64),
                            lengths=torch.tensor([1, 1, 3, 1]))
    mm = raw(kjt)
    target_missing, mask = _reference_masks(mm, kjt)
    assert mm.target_missing.squeeze(1).tolist() == target_missing == [0.0, 1.0]
    assert mm.history_mask.tolist() == mask == [[True, False, True], [False, False, False]]


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
    model.mm_arch.load_rows(np.arange(0, 20, 2), unit_vectors(10, 4))
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
