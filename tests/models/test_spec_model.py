"""The ID model built from specs unlike the world's: side features sharing a table, no history."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.spec import FeatureSpec, Sparse, Table
from recsys.models.id_model import IdModel, IdModelConfig, IdSparseArch

SMALL = IdModelConfig(embedding_dim=4, attention_hidden=(4,), attention_softmax=False, mlp_hidden=(8,), fused_kernels=False)


def test_two_side_features_of_one_table_read_their_own_rows() -> None:
    spec = FeatureSpec(user_key="uid", item_key="iid", history="hist", history_side=("cat1", "cat2"), content=(),
                       sparse=(Sparse("uid", "impressions"), Sparse("iid", "impressions"), Sparse("cat1", "items", "cat"),
                               Sparse("cat2", "items", "cat")),
                       tables=(Table("uid", rows=10), Table("iid", rows=10), Table("cat", rows=10, dim=2)))  # fmt: skip
    arch = IdSparseArch(spec, {"uid": 10, "iid": 10, "cat": 10}, 4, history_slots=3)
    assert arch.item_dim() == 4 + 2 + 2
    with torch.no_grad():
        arch.item_table.embedding_bags["cat"].weight.copy_(torch.arange(20.0).view(10, 2))  # row r = [2r, 2r + 1]
    # uid 0, iid 1, cat1 2, cat2 7; history [3] with cat1 [4], cat2 [8]
    kjt = KeyedJaggedTensor(keys=list(spec.kjt_keys()), values=torch.tensor([0, 1, 2, 7, 3, 4, 8]),
                            lengths=torch.ones(7, dtype=torch.int32))
    out = arch(kjt)
    assert out.target[0, 4:].tolist() == [4.0, 5.0, 14.0, 15.0]  # cat1 row 2, then cat2 row 7
    assert out.history[0, 0, 4:].tolist() == [8.0, 9.0, 16.0, 17.0]


def test_a_spec_without_history_builds_and_scores() -> None:
    spec = FeatureSpec(user_key="u", item_key="i", history=None, content=(),
                       sparse=(Sparse("u", "impressions"), Sparse("i", "impressions"), Sparse("slot", "impressions")),
                       tables=(Table("u", ids="hash", rows=7), Table("i", rows=5), Table("slot", rows=3)))  # fmt: skip
    assert spec.kjt_keys() == ("u", "i", "slot") and spec.pooled() == ("u", "slot")
    model = IdModel(SMALL, spec, {"u": 7, "i": 5, "slot": 3}, history_slots=1)
    kjt = KeyedJaggedTensor(keys=list(spec.kjt_keys()), values=torch.tensor([1, 2, 3, 4, 0, 2]),
                            lengths=torch.ones(6, dtype=torch.int32))
    assert model(torch.zeros(2, 0), kjt).shape == (2,)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"history_side": ("cat", "cat")}, "history_side lists 'cat' twice"),
        ({"item_key": "uid"}, "user_key and item_key are both 'uid'"),
        ({"history": None}, "history_side needs a history"),
        ({"sparse": (Sparse("uid", "impressions"), Sparse("iid", "impressions"), Sparse("cat", "items"),
                     Sparse("history_cat", "impressions", "cat"))}, "name both a sparse feature and a history key"),
    ],
)
def test_inconsistent_specs_are_refused(change: dict, message: str) -> None:
    base = dict(user_key="uid", item_key="iid", history="hist", history_side=("cat",), content=(),
                sparse=(Sparse("uid", "impressions"), Sparse("iid", "impressions"), Sparse("cat", "items")),
                tables=(Table("uid"), Table("iid"), Table("cat")))  # fmt: skip
    with pytest.raises(ValueError, match=message):
        FeatureSpec(**{**base, **change})
