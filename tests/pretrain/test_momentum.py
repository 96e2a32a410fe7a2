"""Momentum update against a plain reference; the key encoder takes no gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pretrain.momentum import make_key_encoder, momentum_update


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))


def test_update_matches_reference() -> None:
    torch.manual_seed(0)
    query = _net()
    key = make_key_encoder(query)
    with torch.no_grad():  # make key and query differ, buffers included
        for p in query.parameters():
            p.add_(torch.randn_like(p))
        query[1].running_mean.add_(1.0)
        query[1].num_batches_tracked.add_(3)
    before = {n: t.clone() for n, t in key.state_dict().items()}
    m = 0.9
    momentum_update(key, query, m)
    q_params = dict(query.named_parameters())
    for name, p in key.named_parameters():
        want = torch.empty_like(p)
        for i, (k_i, q_i) in enumerate(zip(before[name].reshape(-1).tolist(), q_params[name].reshape(-1).tolist())):
            want.view(-1)[i] = m * k_i + (1 - m) * q_i
        torch.testing.assert_close(p, want)
    for name, b in key.named_buffers():
        torch.testing.assert_close(b, dict(query.named_buffers())[name])
    assert int(key[1].num_batches_tracked) == 3


def test_extremes_and_repeated_updates_converge() -> None:
    query = _net()
    key = make_key_encoder(query)
    with torch.no_grad():
        for p in query.parameters():
            p.add_(1.0)
    frozen = [p.clone() for p in key.parameters()]
    momentum_update(key, query, 1.0)
    for p, f in zip(key.parameters(), frozen):
        torch.testing.assert_close(p, f)
    for _ in range(200):
        momentum_update(key, query, 0.9)  # gap shrinks by 0.9 per step: 0.9**200 ~ 7e-10
    for p, q in zip(key.parameters(), query.parameters()):
        torch.testing.assert_close(p, q)
    momentum_update(key, query, 0.0)
    for p, q in zip(key.parameters(), query.parameters()):
        assert torch.equal(p, q)


def test_key_encoder_is_independent_and_gradient_free() -> None:
    query = _net()
    key = make_key_encoder(query)
    assert all(not p.requires_grad for p in key.parameters())
    assert all(p.requires_grad for p in query.parameters())
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(key.parameters(), query.parameters()))
    out = key(torch.randn(3, 4))
    assert not out.requires_grad
    loss = query(torch.randn(3, 4)).sum()
    loss.backward()
    assert all(p.grad is None for p in key.parameters())


def test_mismatched_encoders_and_bad_momentum_raise() -> None:
    with pytest.raises(ValueError, match=r"momentum m must be in \[0, 1\]"):
        momentum_update(_net(), _net(), 1.5)
    with pytest.raises(ValueError, match="differ in parameters"):
        momentum_update(nn.Linear(4, 5), nn.Linear(4, 5, bias=False), 0.9)
    with pytest.raises(ValueError, match="shape"):
        momentum_update(nn.Linear(4, 5), nn.Linear(4, 6), 0.9)
