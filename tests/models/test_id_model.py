"""IdModel: shapes, the shared item table, gradients, width checks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from recsys.data.spec import world_spec
from recsys.data.batch import Batch
from recsys.models.config import ModelConfig
from recsys.models.id_model import (
    ExtraInputs,
    ExtraWidths,
    IdModel,
    IdModelConfig,
    IdSparseArch,
    id_model_config,
)

WORLD = world_spec()  # the world generator's feature spec
POOLED_FEATURES = WORLD.pooled()

SMALL = IdModelConfig(embedding_dim=4, attention_hidden=(4,), attention_softmax=False, mlp_hidden=(8,), fused_kernels=False)


def test_sparse_arch_shapes_and_shared_item_table(make_batch: Callable[..., Batch], sizes: dict[str, int]) -> None:
    arch = IdSparseArch(WORLD, sizes, embedding_dim=4)
    batch = make_batch([3, 0, 1])
    ids = arch(batch.sparse_features)
    assert ids.pooled.shape == (3, len(POOLED_FEATURES) * 4)
    assert ids.target.shape == (3, 4) and ids.history.shape == (3, 3, 4)
    assert ids.mask.tolist() == [[True, True, True], [False, False, False], [True, False, False]]
    weight = arch.item_table.embedding_bags["item_id"].weight  # the one table of both features
    kjt = batch.sparse_features
    torch.testing.assert_close(ids.target, weight[kjt["item_id"].values()])
    torch.testing.assert_close(ids.history[ids.mask], weight[kjt["history_item_ids"].values()])
    assert ids.history[~ids.mask].eq(0).all()
    user = arch.ebc.embedding_bags["user_id"].weight
    torch.testing.assert_close(ids.pooled[:, :4], user[kjt["user_id"].values()])


def test_forward_shape_and_gradients(make_batch: Callable[..., Batch], sizes: dict[str, int]) -> None:
    model = IdModel(SMALL, WORLD, sizes)
    batch = make_batch([2, 5, 0, 1])
    logits = model(batch.dense_features, batch.sparse_features)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    logits.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_extra_inputs_join_and_are_checked(make_batch: Callable[..., Batch], sizes: dict[str, int]) -> None:
    model = IdModel(SMALL, WORLD, sizes, ExtraWidths(vector_dim=3, attention_dim=1, mlp_dim=5))
    batch = make_batch([2, 0])
    L = 2
    extra = ExtraInputs(
        target_vector=torch.randn(2, 3),
        history_vectors=torch.randn(2, L, 3),
        attention_features=torch.randn(2, L, 1),
        mlp_inputs=(torch.randn(2, 2), torch.randn(2, 3)),
    )
    assert model(batch.dense_features, batch.sparse_features, extra).shape == (2,)
    extra.mlp_inputs = (torch.randn(2, 2),)
    with pytest.raises(ValueError, match="mlp_dim=5"):
        model(batch.dense_features, batch.sparse_features, extra)
    with pytest.raises(ValueError, match="vector_dim=3"):
        model(batch.dense_features, batch.sparse_features)


def test_builds_on_meta(sizes: dict[str, int]) -> None:
    model = IdModel(id_model_config(ModelConfig()), WORLD, sizes, device=torch.device("meta"))
    assert all(p.is_meta for p in model.parameters())


def test_config_takes_the_model_configs_fields() -> None:
    config = ModelConfig(embedding_dim=8, attention_hidden=(16,), attention_softmax=True, mlp_hidden=(4,), fused_kernels=False)
    assert id_model_config(config) == IdModelConfig(
        embedding_dim=8, attention_hidden=(16,), attention_softmax=True, mlp_hidden=(4,), fused_kernels=False
    )


def test_history_longer_than_its_slots_is_refused(make_batch: Callable[..., Batch], sizes: dict[str, int]) -> None:
    arch = IdSparseArch(WORLD, sizes, embedding_dim=4, history_slots=2)
    ok = arch(make_batch([2, 0]).sparse_features)
    assert ok.history.shape == (2, 2, 4) and ok.mask.tolist() == [[True, True], [False, False]]
    with pytest.raises(ValueError, match="history_item_ids: an impression holds 3 items, more than history_slots=2"):
        arch(make_batch([3, 1]).sparse_features)
