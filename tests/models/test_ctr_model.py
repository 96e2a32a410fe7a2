"""CtrModel: every variant builds (also on meta), runs finite, trains its ID tables."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys.data.spec import world_spec
from recsys.data.batch import Batch
from recsys.models.config import VARIANTS, ModelConfig
from recsys.models.ctr_model import VARIANT_SPECS, CtrModel, CtrTrain
from recsys.models.mm_table import is_mm_table_param, load_item_vectors_into

WORLD = world_spec()  # the world generator's feature spec

CFG = dict(embedding_dim=4, mlp_hidden=(8,), attention_hidden=(4,), make_hidden=(6,), simtier_tiers=5)
MM_DIM = 4


def build(variant: str, sizes: dict[str, int], make_frozen: bool = True) -> CtrModel:
    torch.manual_seed(0)
    model = CtrModel(ModelConfig(variant=variant, make_frozen=make_frozen, **CFG), WORLD, sizes, mm_dim=MM_DIM)
    if model.mm_arch is not None:
        v = np.random.default_rng(0).normal(size=(15, MM_DIM)).astype(np.float32)
        load_item_vectors_into(model.mm_arch.table_weight(), np.arange(15), v)  # 15..19 missing
    return model


def test_variant_specs_cover_variants() -> None:
    assert tuple(VARIANT_SPECS) == VARIANTS


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_finite_logits_and_id_table_gradients(
    make_batch: Callable[..., Batch], sizes: dict[str, int], variant: str
) -> None:
    model = build(variant, sizes)
    batch = make_batch([3, 0, 1, 6, 2])
    loss, (loss_d, logits, labels) = CtrTrain(model)(batch)
    assert logits.shape == (5,) and torch.isfinite(logits).all() and torch.isfinite(loss)
    torch.testing.assert_close(loss_d, F.binary_cross_entropy_with_logits(logits, labels))
    loss.backward()
    sparse = model.id_model.sparse_arch
    tables = [p for _, p in sparse.named_parameters()]
    assert len(tables) == 9  # 8 pooled tables + the shared item table
    for p in tables:
        assert p.grad is not None and p.grad.abs().sum() > 0 and torch.isfinite(p.grad).all()
    assert (model.mm_arch is None) == (variant == "id_only")


@pytest.mark.parametrize("variant", VARIANTS)
def test_builds_on_meta(sizes: dict[str, int], variant: str) -> None:
    model = CtrModel(ModelConfig(variant=variant), WORLD, sizes, mm_dim=64, device=torch.device("meta"))
    params = dict(model.named_parameters())
    assert all(p.is_meta for p in params.values())
    frozen = [n for n in params if is_mm_table_param(n)]
    assert frozen == ([] if variant == "id_only" else ["mm_arch.mm_table.embedding_bags.mm_item.weight"])


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "id_only"])
def test_vectors_change_the_logits(make_batch: Callable[..., Batch], sizes: dict[str, int], variant: str) -> None:
    model = build(variant, sizes)
    batch = make_batch([3, 2, 4], seed=1)
    before = model(batch.dense_features, batch.sparse_features)
    v = np.random.default_rng(1).normal(size=(15, MM_DIM)).astype(np.float32)  # other vectors
    load_item_vectors_into(model.mm_arch.table_weight(), np.arange(15), v)
    after = model(batch.dense_features, batch.sparse_features)
    assert not torch.allclose(before, after)


def test_simtier_row_is_zero_when_target_has_no_vector(
    make_batch: Callable[..., Batch], sizes: dict[str, int]
) -> None:
    model = build("simtier", sizes)
    seen: list[torch.Tensor] = []
    model.simtier.register_forward_hook(lambda m, args, out: seen.append(out))
    batch = make_batch([3, 2, 4, 5, 1, 2], seed=2)
    model(batch.dense_features, batch.sparse_features)
    missing = batch.sparse_features["item_id"].values() >= 15
    assert missing.any() and (~missing).any()
    assert seen[0][missing].eq(0).all()
    torch.testing.assert_close(seen[0][~missing].sum(1), torch.ones(int((~missing).sum())))


def test_id_only_needs_no_vectors(make_batch: Callable[..., Batch], sizes: dict[str, int]) -> None:
    model = CtrModel(ModelConfig(**CFG), WORLD, sizes, mm_dim=0)
    assert model.mm_arch is None and model.simtier is None and model.make is None
    with pytest.raises(ValueError, match="needs item vectors"):
        CtrModel(ModelConfig(variant="simtier"), WORLD, sizes, mm_dim=0)


def test_weighted_loss_is_the_mean_over_real_rows(make_batch: Callable[..., Batch], sizes: dict[str, int]) -> None:
    model = build("id_only", sizes)
    batch = make_batch([3, 0, 1, 6, 2])
    keep = torch.tensor([True, False, True, True, False])
    weighted = dataclasses.replace(batch, weights=keep.float())
    loss, (_, logits, labels) = CtrTrain(model)(weighted)
    assert logits.shape == labels.shape == (5,)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits[keep], labels[keep]))
    padding = dataclasses.replace(batch, weights=torch.zeros(5))
    model.zero_grad()
    loss, _ = CtrTrain(model)(padding)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
