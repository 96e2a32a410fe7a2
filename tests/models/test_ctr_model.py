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
from recsys.models.mm_table import is_mm_table_param

WORLD = world_spec()  # the world generator's feature spec

CFG = dict(embedding_dim=4, mlp_hidden=(8,), attention_hidden=(4,), make_hidden=(6,), simtier_tiers=5)
MM_DIM = 4


def build(variant: str, sizes: dict[str, int], make_frozen: bool = True) -> CtrModel:
    torch.manual_seed(0)
    model = CtrModel(ModelConfig(variant=variant, make_frozen=make_frozen, **CFG), WORLD, sizes, mm_dim=MM_DIM)
    if model.mm_arch is not None:
        v = np.random.default_rng(0).normal(size=(15, MM_DIM)).astype(np.float32)
        model.mm_arch.load_rows(np.arange(15), v)  # 15..19 missing
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
    model.mm_arch.load_rows(np.arange(15), v)
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


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_history_shared_by_a_requests_candidates_scores_as_one_per_candidate(sizes: dict[str, int], variant: str) -> None:
    """Requests of 3, 1 and 2 candidates (histories of 4, 0 and 6 items) with `history_of`: the history
    looked up once per request gives the logits of the same rows each carrying its own copy of it."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from serving.ranker import share_history

    model = build(variant, sizes).eval()
    g = torch.Generator().manual_seed(5)
    request_sizes, history_lengths = [3, 1, 2], [4, 0, 6]
    B = sum(request_sizes)
    singles = {k: torch.randint(0, 20, (B,), generator=g) for k in WORLD.sparse_keys()}
    per_request = {k: [torch.randint(0, 20, (n,), generator=g) for n in history_lengths] for k in WORLD.history_keys()}
    values, lengths = [singles[k] for k in WORLD.sparse_keys()], [torch.ones(B, dtype=torch.int64)] * len(singles)
    for k in WORLD.history_keys():  # each row a copy of its request's history
        rows = [h for h, n in zip(per_request[k], request_sizes) for _ in range(n)]
        values.append(torch.cat(rows))
        lengths.append(torch.tensor([len(h) for h in rows]))
    kjt = KeyedJaggedTensor(keys=list(WORLD.kjt_keys()), values=torch.cat(values), lengths=torch.cat(lengths))
    dense = torch.rand(B, len(WORLD.dense_names()), generator=g)
    shared, history_of = share_history(kjt, WORLD.history_keys(), request_sizes)
    assert history_of.tolist() == [0, 0, 0, 3, 4, 4]
    assert shared[WORLD.history].values().numel() == sum(history_lengths) < kjt[WORLD.history].values().numel()
    with torch.no_grad():
        torch.testing.assert_close(model(dense, shared, history_of=history_of), model(dense, kjt), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="only the impressions it names"):  # a history on a row no other reads
        model(dense, kjt, history_of=history_of)
