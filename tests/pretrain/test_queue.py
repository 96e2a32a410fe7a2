"""KeyQueue: size, order, wrap-around, no gradient, and the 2-rank gather."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pretrain.queue import KeyQueue


def _keys(start: int, n: int, dim: int = 3) -> torch.Tensor:
    """Rows numbered start..start+n-1 in every column: (n, dim)."""
    return torch.arange(start, start + n, dtype=torch.float32).unsqueeze(1).expand(n, dim).clone()


def _ids(bank: KeyQueue) -> list[int]:
    return [int(x) for x in bank.keys()[:, 0]]


def test_empty_bank() -> None:
    bank = KeyQueue(capacity=5, dim=3)
    assert bank.filled == 0 and bank.capacity == 5
    assert bank.keys().shape == (0, 3)


def test_fills_in_order_then_wraps_oldest_first() -> None:
    bank = KeyQueue(capacity=5, dim=3)
    bank.enqueue(_keys(0, 2))
    assert bank.filled == 2 and _ids(bank) == [0, 1]
    bank.enqueue(_keys(2, 2))
    assert bank.filled == 4 and _ids(bank) == [0, 1, 2, 3]
    bank.enqueue(_keys(4, 3))  # wraps: 0 and 1 are overwritten
    assert bank.filled == 5 and _ids(bank) == [2, 3, 4, 5, 6]
    assert int(bank.ptr) == 2 and bank.bank[:, 0].tolist() == [5, 6, 2, 3, 4]
    for start in range(7, 30, 3):  # the order invariant holds for every pointer position
        bank.enqueue(_keys(start, 3))
        assert _ids(bank) == list(range(start + 3 - 5, start + 3))
        assert bank.keys().shape == (5, 3)


@pytest.mark.parametrize("before", [0, 3])
def test_batch_larger_than_capacity_keeps_newest(before: int) -> None:
    bank = KeyQueue(capacity=4, dim=3)
    bank.enqueue(_keys(100, before))
    bank.enqueue(_keys(0, 10))
    assert bank.filled == 4 and _ids(bank) == [6, 7, 8, 9]
    assert int(bank.ptr) == (before + 10) % 4  # as if all ten were written
    bank.enqueue(_keys(10, 1))
    assert _ids(bank) == [7, 8, 9, 10]


def test_batch_larger_than_remaining_space() -> None:
    bank = KeyQueue(capacity=6, dim=3)
    bank.enqueue(_keys(0, 4))
    bank.enqueue(_keys(4, 5))  # 2 fit at the end, 3 wrap to the front
    assert _ids(bank) == [3, 4, 5, 6, 7, 8]
    assert bank.bank[:, 0].tolist() == [6, 7, 8, 3, 4, 5]


def test_no_gradient_and_keys_are_copies() -> None:
    bank = KeyQueue(capacity=4, dim=3)
    x = torch.ones(2, 3, requires_grad=True)
    bank.enqueue(x * 2.0)
    assert not bank.bank.requires_grad and bank.bank.grad_fn is None
    stored = bank.keys()
    assert not stored.requires_grad
    # A loss built from keys() survives a later enqueue (no in-place modification error).
    q = torch.ones(1, 3, requires_grad=True)
    loss = (q @ stored.T).sum()
    bank.enqueue(_keys(50, 4))
    loss.backward()
    torch.testing.assert_close(q.grad, torch.full((1, 3), 4.0))
    assert _ids(bank) == [50, 51, 52, 53] and stored[:, 0].tolist() == [2.0, 2.0]


def test_state_dict_round_trip() -> None:
    bank = KeyQueue(capacity=4, dim=3)
    bank.enqueue(_keys(0, 6))
    restored = KeyQueue(capacity=4, dim=3)
    restored.load_state_dict(bank.state_dict())
    assert restored.filled == 4 and _ids(restored) == _ids(bank)
    restored.enqueue(_keys(6, 1))
    bank.enqueue(_keys(6, 1))
    assert _ids(restored) == _ids(bank) == [3, 4, 5, 6]


def test_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="capacity"):
        KeyQueue(capacity=0, dim=3)
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        KeyQueue(capacity=4, dim=3).enqueue(torch.zeros(2, 4))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_store_both_ranks_keys_in_rank_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Spawned children import the worker by module name: put its folder on sys.path (inherited).
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import dist_workers

    init = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(dist_workers.enqueue_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # Per step: rank 0's 3 keys then rank 1's 2 keys; 15 keys in all, the newest 8 kept.
    everything = torch.cat([torch.cat([dist_workers.rank_keys(r, s) for r in range(2)]) for s in range(3)])
    for result in results:
        torch.testing.assert_close(result["keys"], everything[-8:])
        assert result["filled"] == 8 and result["ptr"] == 15 % 8
    torch.testing.assert_close(results[0]["keys"], results[1]["keys"])
    assert set((results[0]["keys"][:, 0] // 100).tolist()) == {0.0, 1.0}  # keys of both ranks
    sys.modules.pop("dist_workers", None)


def test_ids_travel_with_their_keys_through_wrap_around() -> None:
    bank = KeyQueue(capacity=4, dim=1)
    bank.enqueue(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([10, 20, 30]))
    bank.enqueue(torch.tensor([[4.0], [5.0]]), torch.tensor([40, 50]))
    assert bank.keys()[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0]
    assert bank.ids().tolist() == [20, 30, 40, 50]
    bank.enqueue(torch.tensor([[6.0]]))  # no ids given: -1
    assert bank.ids().tolist() == [30, 40, 50, -1]
