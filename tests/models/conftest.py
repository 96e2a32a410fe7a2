"""Small random batches for the model tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import Batch
from recsys.data.spec import world_spec

WORLD = world_spec()  # the feature spec of the world generator's datasets
SPARSE_FEATURES = WORLD.kjt_keys()
SINGLE_FEATURES = WORLD.sparse_keys()
DENSE_FEATURES = WORLD.dense_names()

TABLE_SIZE = 20  # rows of every ID table in these tests


@pytest.fixture
def sizes() -> dict[str, int]:
    return {k: TABLE_SIZE for k in SINGLE_FEATURES}


@pytest.fixture
def make_batch() -> Callable[..., Batch]:
    """``make_batch(lengths, seed=0)``: one impression per history length, random IDs < TABLE_SIZE."""

    def build(lengths: list[int], seed: int = 0) -> Batch:
        g = torch.Generator().manual_seed(seed)
        B = len(lengths)
        n = len(SINGLE_FEATURES) * B + sum(lengths)
        kjt = KeyedJaggedTensor(
            keys=list(SPARSE_FEATURES),
            values=torch.randint(0, TABLE_SIZE, (n,), generator=g),
            lengths=torch.tensor([1] * (len(SINGLE_FEATURES) * B) + list(lengths), dtype=torch.int32),
        )
        return Batch(
            dense_features=torch.rand(B, len(DENSE_FEATURES), generator=g),
            sparse_features=kjt,
            labels=torch.randint(0, 2, (B,), generator=g).float(),
            user_ids=torch.arange(B),
            item_ids=kjt["item_id"].values(),
        )

    return build
