"""Losses equal plain loop references, forward and gradients."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from pretrain.losses import clip_loss, info_nce_loss, triplet_loss


def _leaf(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sum(a[d] * b[d] for d in range(a.shape[0]))


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _dot(a, b) / (torch.sqrt(_dot(a, a)) * torch.sqrt(_dot(b, b)))


def _info_nce_reference(q: torch.Tensor, k: torch.Tensor, bank: torch.Tensor, tau: float) -> torch.Tensor:
    total = q.new_zeros(())
    for i in range(q.shape[0]):
        pos = torch.exp(_dot(q[i], k[i]) / tau)
        denom = pos + sum((torch.exp(_dot(q[i], bank[j]) / tau) for j in range(bank.shape[0])), q.new_zeros(()))
        total = total - torch.log(pos / denom)
    return total / q.shape[0]


def _triplet_reference(
    a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, mask: torch.Tensor, margin: float
) -> torch.Tensor:
    total, count = a.new_zeros(()), 0
    for i in range(a.shape[0]):
        for j in range(n.shape[1]):
            if mask[i, j]:
                d_pos = 1 - _cos(a[i], p[i])
                d_neg = 1 - _cos(a[i], n[i, j])
                total = total + torch.clamp(d_pos - d_neg + margin, min=0)
                count += 1
    return total / max(count, 1)


def _grads(loss: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, inputs)


def test_info_nce_matches_reference_forward_and_grad() -> None:
    q, k, bank = _leaf(5, 6, seed=0), _leaf(5, 6, seed=1), _leaf(7, 6, seed=2)
    got = info_nce_loss(q, k, bank, temperature=0.07)
    want = _info_nce_reference(q, k, bank, 0.07)
    torch.testing.assert_close(got, want)
    for g, w in zip(_grads(got, [q, k, bank]), _grads(want, [q, k, bank])):
        torch.testing.assert_close(g, w)


def test_info_nce_empty_bank_is_zero_and_float32_finite() -> None:
    q, k = _leaf(4, 3, seed=0), _leaf(4, 3, seed=1)
    assert info_nce_loss(q, k, q.new_zeros(0, 3), temperature=0.1).item() == 0.0
    q32 = F.normalize(torch.randn(64, 16), dim=-1).requires_grad_(True)
    loss = info_nce_loss(q32, q32.detach().flip(0), F.normalize(torch.randn(8192, 16), dim=-1), 0.07)
    loss.backward()
    assert loss.isfinite() and q32.grad.isfinite().all()
    assert math.isclose(  # all-equal logits: log(1 + K)
        info_nce_loss(torch.ones(2, 1), torch.ones(2, 1), torch.ones(3, 1), 1.0).item(), math.log(4), rel_tol=1e-6
    )


def test_triplet_matches_reference_forward_and_grad() -> None:
    a, p = _leaf(6, 5, seed=3), _leaf(6, 5, seed=4)
    n = (torch.randn(6, 3, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2).requires_grad_(True)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    got = triplet_loss(a, p, n, mask, margin=0.5)
    want = _triplet_reference(a, p, n, mask, 0.5)
    assert got.item() > 0
    torch.testing.assert_close(got, want)
    for g, w in zip(_grads(got, [a, p, n]), _grads(want, [a, p, n])):
        torch.testing.assert_close(g, w)


def test_triplet_zero_padding_and_no_valid_triplets() -> None:
    a, p = _leaf(3, 4, seed=0), _leaf(3, 4, seed=1)
    n = torch.zeros(3, 2, 4, dtype=torch.float64, requires_grad=True)  # padding is zeros
    with torch.no_grad():
        n[0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    none = torch.zeros(3, 2, dtype=torch.bool)
    loss = triplet_loss(a, p, n, none, margin=0.2)
    loss.backward()
    assert loss.item() == 0.0 and n.grad.abs().sum() == 0 and a.grad.isfinite().all()
    one = none.clone()
    one[0, 0] = True
    a.grad = None
    got = triplet_loss(a, p, n, one, margin=0.2)
    torch.testing.assert_close(got, _triplet_reference(a, p, n, one, 0.2))
    got.backward()
    assert a.grad.isfinite().all() and n.grad.isfinite().all()


def test_clip_loss_matches_reference_forward_and_grad() -> None:
    img, txt = _leaf(5, 4, seed=6), _leaf(5, 4, seed=7)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64, requires_grad=True)
    got = clip_loss(img, txt, scale)
    want = img.new_zeros(())
    for i in range(5):
        row = [scale * _dot(img[i], txt[j]) for j in range(5)]
        col = [scale * _dot(txt[i], img[j]) for j in range(5)]
        want = want - torch.log(torch.exp(row[i]) / sum(torch.exp(x) for x in row)) / 10
        want = want - torch.log(torch.exp(col[i]) / sum(torch.exp(x) for x in col)) / 10
    torch.testing.assert_close(got, want)
    for g, w in zip(_grads(got, [img, txt, scale]), _grads(want, [img, txt, scale])):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda q: info_nce_loss(q, torch.zeros(2, 4), torch.zeros(1, 3), 0.1), "shape"),
        (lambda q: info_nce_loss(q, q, torch.zeros(1, 4), 0.1), "negatives must have shape"),
        (lambda q: info_nce_loss(q, q, torch.zeros(1, 3), 0.0), "temperature"),
        (lambda q: triplet_loss(q, q, torch.zeros(2, 1, 3), torch.ones(2, 1), 0.2), "mask must be bool"),
        (lambda q: triplet_loss(q, q, torch.zeros(2, 3), torch.ones(2, 1, dtype=torch.bool), 0.2), "shape"),
        (lambda q: clip_loss(q, torch.zeros(3, 3), torch.tensor(1.0)), "shape"),
    ],
)
def test_bad_shapes_raise(call: Callable[[torch.Tensor], torch.Tensor], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(torch.zeros(2, 3))


def test_info_nce_ignore_drops_false_negatives_like_a_reference() -> None:
    torch.manual_seed(3)
    q = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1).requires_grad_()
    k = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1)
    bank = F.normalize(torch.randn(6, 8, dtype=torch.float64), dim=-1)
    ignore = torch.zeros(4, 6, dtype=torch.bool)
    ignore[0, [1, 4]] = True
    ignore[2, 0] = True
    got = info_nce_loss(q, k, bank, 0.1, ignore)
    ref = 0.0
    for i in range(4):
        logits = [float(q[i] @ k[i]) / 0.1] + [float(q[i] @ bank[j]) / 0.1 for j in range(6) if not ignore[i, j]]
        ref += -logits[0] + math.log(sum(math.exp(x) for x in logits))
    assert abs(float(got) - ref / 4) < 1e-9
    got.backward()
    assert torch.isfinite(q.grad).all()
    # Ignoring nothing equals passing no mask.
    assert torch.allclose(info_nce_loss(q, k, bank, 0.1, torch.zeros(4, 6, dtype=torch.bool)), info_nce_loss(q, k, bank, 0.1))
