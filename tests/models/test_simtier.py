"""SimTier against a plain per-row Python reference."""

from __future__ import annotations

import math

import torch

from recsys.models.simtier import SimTier


def reference(target: torch.Tensor, history: torch.Tensor, mask: torch.Tensor, T: int) -> torch.Tensor:
    """Per row, per item: cosine in float64, tier = floor((s + 1) / (2 / T)), 1.0 -> last tier."""
    B, L, _ = history.shape
    out = torch.zeros(B, T)
    for b in range(B):
        t = target[b].tolist()
        counted = 0
        for l in range(L):
            if not mask[b, l]:
                continue
            h = history[b, l].tolist()
            dot = sum(x * y for x, y in zip(t, h))
            s = dot / (math.sqrt(sum(x * x for x in t)) * math.sqrt(sum(y * y for y in h)))
            s = min(1.0, max(-1.0, s))
            out[b, min(int((s + 1.0) / (2.0 / T)), T - 1)] += 1.0
            counted += 1
        if counted:
            out[b] /= counted
    return out


def test_equals_per_row_reference() -> None:
    g = torch.Generator().manual_seed(0)
    B, L, D = 6, 9, 8
    target, history = torch.randn(B, D, generator=g), torch.randn(B, L, D, generator=g)
    mask = torch.rand(B, L, generator=g) < 0.7
    mask[2] = False  # an empty history
    for T in (20, 7, 1):
        got = SimTier(T)(target, history, mask)
        assert got.shape == (B, T)
        torch.testing.assert_close(got, reference(target, history, mask, T))
    assert SimTier(20)(target, history, mask)[2].eq(0).all()


def test_edges_and_padding() -> None:
    t = torch.tensor([[0.6, 0.8, 0.0]])
    # cos = 1, -1, 0 (the edge between tiers 9 and 10 of 20), then padding.
    history = torch.stack([t[0], -t[0], torch.tensor([0.8, -0.6, 0.0]), torch.randn(3)]).unsqueeze(0)
    mask = torch.tensor([[True, True, True, False]])
    got = SimTier(20)(t, history, mask)
    expected = torch.zeros(1, 20)
    expected[0, [19, 0, 10]] = 1 / 3
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, reference(t, history, mask, 20))
    history[0, 3] = 5.0  # changing a padded item changes nothing
    torch.testing.assert_close(SimTier(20)(t, history, mask), got)


def test_rows_sum_to_one_and_no_grad() -> None:
    target = torch.randn(4, 5, requires_grad=True)
    out = SimTier(20)(target, torch.randn(4, 3, 5), torch.ones(4, 3, dtype=torch.bool))
    torch.testing.assert_close(out.sum(1), torch.ones(4))
    assert not out.requires_grad and torch.isfinite(out).all()


def soft_reference(
    target: torch.Tensor, history: torch.Tensor, mask: torch.Tensor, T: int, metric: torch.Tensor | None = None
) -> torch.Tensor:
    """Per item: weight to the two tier centres -1 + (t + 0.5) * 2 / T around the similarity, by distance.

    The similarity is the cosine, or with ``metric`` W the bilinear h^T W t of the given (unit) vectors,
    clipped to [-1, 1].
    """
    B, L, _ = history.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    w = 2.0 / T
    centres = [-1.0 + (t + 0.5) * w for t in range(T)]
    for b in range(B):
        counted = 0
        for l in range(L):
            if not mask[b, l]:
                continue
            if metric is None:
                s = float(torch.nn.functional.cosine_similarity(target[b].double(), history[b, l].double(), dim=0))
            else:
                s = min(1.0, max(-1.0, float(history[b, l].double() @ metric.double() @ target[b].double())))
            if s <= centres[0]:
                out[b, 0] += 1.0
            elif s >= centres[-1]:
                out[b, T - 1] += 1.0
            else:
                t = next(i for i in range(T - 1) if centres[i] <= s < centres[i + 1])
                out[b, t] += (centres[t + 1] - s) / w
                out[b, t + 1] += (s - centres[t]) / w
            counted += 1
        if counted:
            out[b] /= counted
    return out.float()


def test_soft_equals_per_row_reference_and_keeps_the_mean() -> None:
    g = torch.Generator().manual_seed(3)
    B, L, D = 5, 7, 6
    target, history = torch.randn(B, D, generator=g), torch.randn(B, L, D, generator=g)
    mask = torch.rand(B, L, generator=g) < 0.8
    mask[1] = False
    for T in (20, 5, 1):
        got = SimTier(T, soft=True)(target, history, mask)
        torch.testing.assert_close(got, soft_reference(target, history, mask, T))
    # inside the outer centres the soft histogram's mean tier centre is the mean cosine
    T = 20
    got = SimTier(T, soft=True)(target, history, mask)
    centres = -1.0 + (torch.arange(T) + 0.5) * 2.0 / T
    cos = torch.nn.functional.cosine_similarity(target.unsqueeze(1), history, dim=-1)
    for b in (0, 2, 3, 4):
        m = mask[b]
        if m.any() and cos[b][m].abs().max() < 1 - 1 / T:
            torch.testing.assert_close((got[b] * centres).sum(), cos[b][m].mean())
    assert got[1].eq(0).all()


def test_unit_vectors_path_equals_normalising_path() -> None:
    g = torch.Generator().manual_seed(4)
    target = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    history = torch.nn.functional.normalize(torch.randn(3, 4, 8, generator=g), dim=-1)
    history[0, 1] = 0.0  # an item without a vector: a zero row
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0, 1] = False
    for soft in (False, True):
        torch.testing.assert_close(
            SimTier(10, soft=soft, unit_vectors=True)(target, history, mask), SimTier(10, soft=soft)(target, history, mask)
        )


def unit(*shape: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_learned_metric_starts_as_cosine_and_equals_bilinear_reference() -> None:
    target, history = unit(4, 6, seed=5), unit(4, 5, 6, seed=6)
    mask = torch.rand(4, 5, generator=torch.Generator().manual_seed(7)) < 0.8
    learned = SimTier(10, soft=True, unit_vectors=True, metric_dim=6)
    torch.testing.assert_close(learned(target, history, mask), SimTier(10, soft=True)(target, history, mask))
    with torch.no_grad():
        learned.metric.copy_(torch.eye(6) + 0.3 * torch.randn(6, 6, generator=torch.Generator().manual_seed(8)))
    got = learned(target, history, mask)
    torch.testing.assert_close(got, soft_reference(target, history, mask, 10, learned.metric.detach()))


def test_learned_metric_gradient_matches_finite_differences() -> None:
    target, history = unit(3, 4, seed=9).double(), unit(3, 6, 4, seed=10).double()
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    learned = SimTier(8, soft=True, unit_vectors=True, metric_dim=4).double()
    probe = torch.randn(3, 8, generator=torch.Generator().manual_seed(11), dtype=torch.float64)

    def loss(w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            learned.metric.copy_(w)
        return (learned(target, history, mask) * probe).sum()

    w0 = torch.eye(4, dtype=torch.float64) * 0.9
    learned.zero_grad()
    loss(w0).backward()
    numeric = torch.zeros(4, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            step = torch.zeros(4, 4, dtype=torch.float64)
            step[i, j] = 1e-6
            numeric[i, j] = (loss(w0 + step) - loss(w0 - step)) / 2e-6
    torch.testing.assert_close(learned.metric.grad, numeric, rtol=1e-4, atol=1e-6)


def test_learned_metric_needs_soft_tiers() -> None:
    import pytest

    with pytest.raises(ValueError, match="needs soft=True"):
        SimTier(10, metric_dim=4)


def test_flags_are_keywords() -> None:
    import pytest

    with pytest.raises(TypeError):
        SimTier(10, True)  # type: ignore[misc]
