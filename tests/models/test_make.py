"""MAKE: output shapes, stage-1 model, stage-2 wiring (frozen or fine-tuned)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from recsys.data.spec import world_spec
from recsys.data.batch import Batch
from recsys.models.config import ModelConfig
from recsys.models.ctr_model import CtrModel, CtrTrain
from recsys.models.make import Make, MakeConfig, MakeModel, make_config

WORLD = world_spec()  # the world generator's feature spec

CFG = dict(embedding_dim=4, mlp_hidden=(8,), attention_hidden=(4,), make_hidden=(6,))


def load_vectors(model: torch.nn.Module) -> None:
    v = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    model.mm_arch.load_rows(np.arange(20), v)


def test_stage1_model_trains_make(make_batch: Callable[..., Batch]) -> None:
    stage1 = MakeModel(ModelConfig(**CFG), WORLD, num_items=20, mm_dim=4)
    load_vectors(stage1)
    batch = make_batch([2, 0, 3])
    mm = stage1.mm_arch(batch.sparse_features)
    out = stage1.make(mm, batch.dense_features)
    assert (out.attention.shape, out.hidden.shape, out.logit.shape) == ((3, 4), (3, 6), (3,))
    assert sum(t.shape[1] for t in out.mlp_inputs()) == stage1.make.output_dim()
    loss, _ = CtrTrain(stage1)(batch)
    loss.backward()
    assert all(p.grad is not None for p in stage1.make.parameters())


@pytest.mark.parametrize("variant", ["make", "simtier_make"])
@pytest.mark.parametrize("frozen", [True, False, "attention"])
@pytest.mark.parametrize("attention", ["din", "bilinear"])
def test_stage2_gradients_reach_make_only_when_not_frozen(
    make_batch: Callable[..., Batch], sizes: dict[str, int], variant: str, frozen: bool | str, attention: str
) -> None:
    cfg = ModelConfig(variant=variant, make_frozen=frozen is True, make_attention_frozen=frozen == "attention",
                      make_attention=attention, **CFG)
    stage1 = MakeModel(cfg, WORLD, num_items=20, mm_dim=4)
    model = CtrModel(cfg, WORLD, sizes, mm_dim=4)
    model.make.load_state_dict(stage1.make.state_dict())  # stage-1 weights carry over
    load_vectors(model)
    loss, _ = CtrTrain(model)(make_batch([2, 0, 3, 1]))
    loss.backward()
    make_grads = [p.grad for p in model.make.parameters()]
    if frozen == "attention":  # the MLP and logit layer train, the attention keeps its stage-1 weights
        for name, p in model.make.named_parameters():
            trains = not name.startswith("attention.")
            assert p.requires_grad == trains and (p.grad is not None and p.grad.abs().sum() > 0) == trains, name
    elif frozen:
        assert all(g is None for g in make_grads)
        assert not any(p.requires_grad for p in model.make.parameters())
    else:
        assert all(g is not None and g.abs().sum() > 0 for g in make_grads)
    assert all(p.grad is not None for p in model.id_model.parameters())


def test_make_reads_only_its_config() -> None:
    config = ModelConfig(make_attention_hidden=(8,), attention_softmax=True, make_hidden=(6,), fused_kernels=False)
    assert make_config(config) == MakeConfig(attention="din", attention_hidden=(8,), attention_softmax=True, hidden=(6,),
                                             fused_kernels=False)
    make = Make(make_config(config), mm_dim=4, dense_dim=len(WORLD.dense))
    stage1 = MakeModel(config, WORLD, num_items=20, mm_dim=4)
    assert make.output_dim() == 4 + 6 + 1
    assert list(make.state_dict()) == list(stage1.make.state_dict())


def test_bilinear_attention_replaces_the_activation_unit() -> None:
    config = ModelConfig(make_attention="bilinear", make_hidden=(6,), fused_kernels=False)
    stage1 = MakeModel(config, WORLD, num_items=20, mm_dim=4)
    assert {n for n, _ in stage1.make.attention.named_parameters()} == {"weight", "bias"}
    torch.testing.assert_close(stage1.make.attention.weight.detach(), torch.eye(4))  # starts from the dot product
    make = Make(make_config(config), mm_dim=4, dense_dim=len(WORLD.dense))
    make.load_state_dict(stage1.make.state_dict())  # stage 1's weights carry over to stage 2
    din = Make(make_config(ModelConfig(make_hidden=(6,))), mm_dim=4, dense_dim=len(WORLD.dense))
    with pytest.raises(RuntimeError, match="attention.weight"):  # a stage 1 of the other form does not load
        din.load_state_dict(stage1.make.state_dict())
    with pytest.raises(ValueError, match="make_attention must be one of"):
        ModelConfig(make_attention="dot")
