"""TargetAttention: shapes, masking, a per-row reference, finiteness."""

from __future__ import annotations

import pytest
import torch

from recsys.models.attention import TargetAttention


def inputs(extra_dim: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    B, L, D = 4, 5, 6
    q, k = torch.randn(B, D, generator=g), torch.randn(B, L, D, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    extra = torch.randn(B, L, extra_dim, generator=g)
    return q, k, mask, extra


@pytest.mark.parametrize("softmax", [False, True])
def test_equals_per_row_reference(softmax: bool) -> None:
    torch.manual_seed(0)
    att = TargetAttention(6, [8, 4], extra_dim=2, softmax=softmax)
    q, k, mask, extra = inputs(2)
    got = att(q, k, mask, extra)
    assert got.shape == (4, att.output_dim())
    for b in range(4):
        keep = mask[b]
        kb, xb = k[b][keep], extra[b][keep]
        qb = q[b].expand_as(kb)
        s = att.unit(torch.cat([qb, kb, qb - kb, qb * kb, xb], dim=-1)).squeeze(-1)
        w = torch.softmax(s, 0) if softmax else s
        torch.testing.assert_close(got[b], (w.unsqueeze(-1) * kb).sum(0))


@pytest.mark.parametrize("softmax", [False, True])
def test_padding_does_not_change_output(softmax: bool) -> None:
    att = TargetAttention(6, [8], extra_dim=2, softmax=softmax)
    q, k, mask, extra = inputs(2)
    out = att(q, k, mask, extra)
    k2, extra2 = k.clone(), extra.clone()
    k2[~mask] = 1e3
    extra2[~mask] = -1e3
    torch.testing.assert_close(att(q, k2, mask, extra2), out)
    assert out[2].eq(0).all()  # empty history


def test_gradients_finite_with_empty_rows() -> None:
    att = TargetAttention(6, [8], softmax=True)
    q, k, mask, _ = inputs()
    q.requires_grad_(True)
    att(q, k, mask).sum().backward()
    assert torch.isfinite(q.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in att.parameters())


def test_bad_shapes_raise() -> None:
    att = TargetAttention(6, [8], extra_dim=1)
    q, k, mask, _ = inputs()
    with pytest.raises(ValueError, match="extra of shape"):
        att(q, k, mask)
    with pytest.raises(ValueError, match="expects query"):
        att(q[:, :5], k, mask, torch.zeros(4, 5, 1))


def test_flags_are_keywords() -> None:
    with pytest.raises(TypeError):
        TargetAttention(6, [8], 1, True)  # type: ignore[misc]
