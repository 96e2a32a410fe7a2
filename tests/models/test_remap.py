"""IdRemapper: identity, hash and managed (real TorchRec MCH) tables, counters, state dict, DCP, 2 gloo ranks."""

from __future__ import annotations

import socket
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.spec import Table
from recsys.models.remap import SENTINEL, IdRemapper

SHARED = {"item_id": "item_id", "history_item_ids": "item_id"}


def kjt(values: dict[str, list[int]], weights: bool = False) -> KeyedJaggedTensor:
    """One ID per impression per key (a batch of len(values[k]) impressions; all keys the same length)."""
    keys = list(values)
    flat = torch.tensor([v for k in keys for v in values[k]], dtype=torch.int64)
    return KeyedJaggedTensor(keys=keys, values=flat, lengths=torch.ones(len(flat), dtype=torch.int32),
                             weights=torch.rand(len(flat)) if weights else None)


def raw_by_row(remapper: IdRemapper, table: str) -> torch.Tensor:
    """Row -> raw ID held (SENTINEL: empty), from the MCH's sorted buffers."""
    mch = remapper.mch[table]
    out = torch.empty_like(mch._mch_sorted_raw_ids)
    out[mch._mch_remapped_ids_mapping] = mch._mch_sorted_raw_ids
    return out


def admitted_ids(remapper: IdRemapper, table: str) -> dict[int, int]:
    """Admitted raw ID -> its LFU count."""
    mch = remapper.mch[table]
    return {int(i): int(c) for i, c in zip(mch._mch_sorted_raw_ids, mch._mch_counts) if i != SENTINEL}


def ids(n: int, seed: int) -> list[int]:
    """``n`` distinct raw IDs at the 2**62 scale, negatives included."""
    g = torch.Generator().manual_seed(seed)
    return torch.unique(torch.randint(-(2**62), 2**62, (2 * n,), generator=g))[:n].tolist()


def test_identity_keys_and_kjt_fields_pass_through() -> None:
    remapper = IdRemapper([Table("gender"), Table("shop_id", ids="hash", rows=7)], {"gender": "gender", "shop_id": "shop_id"})
    features = kjt({"gender": [1, 0, 5], "city_id": [2**40, -1, 3], "shop_id": [10, 11, 12]}, weights=True)
    out = remapper(features)
    assert out.keys() == features.keys() and out.stride() == 3
    assert torch.equal(out.lengths(), features.lengths()) and torch.equal(out.weights(), features.weights())
    assert torch.equal(out["gender"].values(), features["gender"].values())  # identity table
    assert torch.equal(out["city_id"].values(), features["city_id"].values())  # no table given
    assert out["shop_id"].values().tolist() == [3, 4, 5]
    assert remapper.counts() == {} and remapper.state_dict() == {}


def test_hash_is_remainder_non_negative() -> None:
    raw = torch.tensor([0, 1, -1, -13, 2**62 + 5, -(2**62) - 5, 2**63 - 1, -(2**63)] + ids(50, 0))
    remapper = IdRemapper([Table("item_id", ids="hash", rows=13)], SHARED)
    out = remapper(KeyedJaggedTensor(keys=["item_id"], values=raw, lengths=torch.ones(len(raw), dtype=torch.long)))
    assert torch.equal(out.values(), torch.remainder(raw, 13))
    assert out.values().tolist() == [r % 13 for r in raw.tolist()]  # Python's mod: non-negative
    assert torch.equal(remapper.rows_of("item_id", raw), out.values())


def test_managed_within_capacity_gives_distinct_rows_and_unseen_the_last() -> None:
    rows, seen = 10, ids(9, 1)
    remapper = IdRemapper([Table("item_id", ids="managed", rows=rows)], SHARED)
    out = remapper(kjt({"item_id": seen + seen[:3]})).values()
    assert sorted(out[:9].tolist()) == list(range(rows - 1))  # 9 IDs, 9 distinct rows of [0, rows - 1)
    assert torch.equal(out[9:], out[:3])
    assert torch.equal(remapper.rows_of("item_id", torch.tensor(seen)), out[:9])
    assert remapper.rows_of("item_id", torch.tensor(ids(20, 2))).tolist() == [rows - 1] * 20
    assert remapper.counts() == {"item_id": {"admitted": 9, "evicted": 0}}


def test_average_admission_takes_only_ids_seen_more_than_the_mean() -> None:
    rows, seen = 50, ids(6, 3)
    counts = [1, 1, 2, 5, 9, 1]  # mean 19/6: only the IDs seen 5 and 9 times pass
    remapper = IdRemapper([Table("item_id", ids="managed", rows=rows, admission="average")], SHARED)
    remapper(kjt({"item_id": [i for i, c in zip(seen, counts) for _ in range(c)]}))
    mean = sum(counts) / len(counts)
    assert set(admitted_ids(remapper, "item_id")) == {i for i, c in zip(seen, counts) if c > mean}
    assert remapper.counts()["item_id"]["admitted"] == 2


def test_shared_table_keys_map_one_raw_id_to_one_row() -> None:
    a, b, c = ids(3, 3)
    remapper = IdRemapper([Table("item_id", ids="managed", rows=5)], SHARED)
    out = remapper(kjt({"item_id": [a, b], "history_item_ids": [b, c]}))
    assert out["item_id"].values()[1] == out["history_item_ids"].values()[0]
    assert len(set(out.values().tolist())) == 3 and max(out.values().tolist()) < 4  # c came from the history only
    assert remapper.counts()["item_id"]["admitted"] == 3


def lfu_reference(batches: list[list[int]], capacity: int) -> list[dict[int, int]]:
    """Plain LFU: resident IDs add this round's counts; the ``capacity`` highest counts stay (no ties allowed)."""
    resident: dict[int, int] = {}
    out = []
    for ids_ in batches:
        seen = Counter(ids_)
        scores = {i: resident.get(i, 0) + seen.get(i, 0) for i in set(resident) | set(seen)}
        ranked = sorted(scores.values(), reverse=True)
        assert len(ranked) <= capacity or ranked[capacity - 1] > ranked[capacity], "tie at the boundary: change the data"
        resident = {i: s for i, s in scores.items() if len(ranked) <= capacity or s > ranked[capacity]}
        out.append(dict(resident))
    return out


def test_lfu_keeps_the_most_frequent_ids() -> None:
    pool = ids(12, 4)
    weights = [12, 10, 9, 7, 5, 4, 3, 2, 1, 1, 1, 1]
    batches = [[pool[i] for i, w in enumerate(weights) for _ in range(w)],  # 8 distinct counts, then singletons
               [pool[9]] * 20 + [pool[10]] * 2 + [pool[0]],  # 9 enters with 20; 10 (2 here) stays out
               [pool[11]] * 8 + [pool[10]] * 3]
    remapper = IdRemapper([Table("item_id", ids="managed", rows=6)], SHARED)  # capacity 5
    for got, want in zip(batches, lfu_reference(batches, capacity=5)):
        remapper(kjt({"item_id": got}))
        assert admitted_ids(remapper, "item_id") == want


@pytest.mark.parametrize("eviction", ["lfu", "distance_lfu"])
def test_counts_equal_buffer_diffs(eviction: str) -> None:
    pool = ids(30, 5)
    remapper = IdRemapper([Table("item_id", ids="managed", rows=8, eviction=eviction, eviction_interval=2)], SHARED)
    g = torch.Generator().manual_seed(0)
    want = {"admitted": 0, "evicted": 0}
    for step in range(12):
        if step == 6:
            remapper.reset_counts()
            want = {"admitted": 0, "evicted": 0}
        before = raw_by_row(remapper, "item_id")
        picks = torch.randint(0, 10, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g) + 5 * (step % 4)
        remapper(kjt({"item_id": [pool[i] for i in picks.tolist()] * (step + 1)}))  # later IDs outnumber earlier
        after = raw_by_row(remapper, "item_id")
        changed = before != after
        assert torch.equal(remapper.reassigned_rows()["item_id"].sort().values, changed.nonzero().flatten())
        want["admitted"] += int((changed & (after != SENTINEL)).sum())
        want["evicted"] += int((changed & (before != SENTINEL)).sum())
        assert remapper.counts() == {"item_id": want}
    assert want["evicted"] > 0, want  # the data did evict


def test_history_buffer_grows_past_the_first_batch() -> None:
    """TorchRec sizes its history buffer on the first batch (2 IDs here); the 40 later IDs all count."""
    pool = ids(42, 6)
    remapper = IdRemapper([Table("item_id", ids="managed", rows=64)], SHARED)
    remapper(kjt({"item_id": pool[:2]}))
    remapper(kjt({"item_id": pool[2:]}))
    assert set(admitted_ids(remapper, "item_id")) == set(pool)


def test_eval_mode_changes_no_state() -> None:
    pool = ids(10, 7)
    remapper = IdRemapper([Table("item_id", ids="managed", rows=4)], SHARED)
    remapper(kjt({"item_id": pool[:3]}))
    before, counts = {k: v.clone() for k, v in remapper.state_dict().items()}, remapper.counts()
    remapper.eval()
    out = remapper(kjt({"item_id": pool * 3})).values()
    assert out[3:10].tolist() == [3] * 7  # unseen: the last row
    assert counts == remapper.counts()
    assert all(torch.equal(v, remapper.state_dict()[k]) for k, v in before.items())


def test_sentinel_refused_naming_the_key() -> None:
    tables = [Table("item_id", ids="managed", rows=4), Table("shop_id", ids="hash", rows=4)]
    remapper = IdRemapper(tables, {**SHARED, "shop_id": "shop_id"})
    bad = kjt({"item_id": [1, 2], "history_item_ids": [3, SENTINEL], "shop_id": [SENTINEL, 1]})
    with pytest.raises(ValueError, match="key 'history_item_ids' holds raw ID 2\\*\\*63-1"):
        remapper(bad)
    assert remapper.mch["item_id"]._current_iter_tensor.item() == 0  # refused before profiling
    remapper.eval()
    with pytest.raises(ValueError, match="history_item_ids"):
        remapper(bad)
    with pytest.raises(ValueError, match="table 'item_id'"):
        remapper.rows_of("item_id", torch.tensor([SENTINEL]))
    assert remapper.rows_of("shop_id", torch.tensor([SENTINEL])).item() == SENTINEL % 4


def test_bad_arguments_refused() -> None:
    with pytest.raises(ValueError, match="names table 'item_id'"):
        IdRemapper([Table("user_id")], SHARED)
    with pytest.raises(ValueError, match="rows must be an integer >= 2"):
        IdRemapper([Table("item_id", ids="managed", rows=1)], SHARED)


def trained(steps: int, seed: int = 0) -> IdRemapper:
    tables = [Table("item_id", ids="managed", rows=6, eviction="distance_lfu", eviction_interval=3),
              Table("user_id", ids="managed", rows=5)]
    remapper = IdRemapper(tables, {**SHARED, "user_id": "user_id"})
    for step in range(steps):
        remapper(batch(step + seed))
    return remapper


def batch(seed: int) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    pool = ids(15, 8)
    pick = lambda: [pool[i] for i in torch.randint(0, 15, (6,), generator=g).tolist()]  # noqa: E731
    return kjt({"item_id": pick(), "history_item_ids": pick(), "user_id": pick()})


def assert_same_state(a: IdRemapper, b: IdRemapper) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_state_dict_round_trip_remaps_and_trains_on_identically() -> None:
    old = trained(steps=4)  # mid-interval for item_id (3): profiled IDs pending
    assert {"mch.item_id._mch_sorted_raw_ids", "mch.item_id._mch_remapped_ids_mapping", "mch.item_id._mch_counts",
            "mch.item_id._mch_last_access_iter", "mch.item_id._current_iter_tensor"} <= set(old.state_dict())
    fresh, used = trained(steps=0), trained(steps=7, seed=50)
    fresh.load_state_dict(old.state_dict())
    used.load_state_dict(old.state_dict())
    probe = batch(99)
    old.eval(), fresh.eval()
    assert torch.equal(old(probe).values(), fresh(probe).values())
    fresh.train()
    for step in range(5):  # a loaded remapper continues as a fresh one loaded with the same state
        assert torch.equal(fresh(batch(20 + step)).values(), used(batch(20 + step)).values())
    assert_same_state(fresh, used)


def test_dcp_round_trip(tmp_path: Path) -> None:
    old = trained(steps=5)
    dcp.save(old.state_dict(), checkpoint_id=tmp_path)
    new = trained(steps=0)
    state = new.state_dict()
    dcp.load(state, checkpoint_id=tmp_path)
    new.load_state_dict(state)
    assert_same_state(old, new)
    assert torch.equal(old.rows_of("item_id", batch(7).values()), new.rows_of("item_id", batch(7).values()))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_hold_the_state_of_one_process_on_all_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ranks end bitwise equal to one process profiled on rank 0's then rank 1's IDs each step;
    a sentinel on one rank is refused on both; DCP: 2 ranks -> 1 and 1 -> 2."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import remap_workers as w

    ref, expected = IdRemapper(w.TABLES, w.FEATURES), []
    for step in range(w.STEPS):
        ref(w.concat([w.batch(0, step), w.batch(1, step)]))
        ref.eval()
        expected.append([ref(w.batch(r, step)).values() for r in range(2)])
        ref.train()
    ref(w.no_managed_ids())
    assert all(c["evicted"] > 0 for c in ref.counts().values()), ref.counts()  # the data did evict
    other = IdRemapper(w.TABLES, w.FEATURES)
    other(w.batch(0, 40))
    dcp.save(other.state_dict(), checkpoint_id=tmp_path / "one")

    init = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(w.remap_worker, args=(2, init, str(tmp_path), str(tmp_path / "one")), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in range(2):
        assert set(got[r]["state"]) == set(ref.state_dict())
        for k, v in ref.state_dict().items():
            assert torch.equal(got[r]["state"][k], v), (r, k)
            assert torch.equal(got[r]["loaded"][k], other.state_dict()[k]), (r, k)
        assert got[r]["counts"] == ref.counts()
        for step in range(w.STEPS):
            assert torch.equal(got[r]["outputs"][step], expected[step][r]), (r, step)
        assert "key 'item_id' (rank 1) holds raw ID 2**63-1" in got[r]["refused"]
    from_two = IdRemapper(w.TABLES, w.FEATURES)
    state = from_two.state_dict()
    dcp.load(state, checkpoint_id=tmp_path / "dcp")
    from_two.load_state_dict(state)
    assert_same_state(from_two, ref)
    sys.modules.pop("remap_workers", None)


def test_rows_outside_real_are_remapped_but_never_admitted() -> None:
    seen = ids(4, 5)
    remapper = IdRemapper([Table("item_id", ids="managed", rows=10)], SHARED)
    batch = KeyedJaggedTensor(keys=["item_id", "history_item_ids"], values=torch.tensor(seen[:3] + [0, 0, seen[3]]),
                              lengths=torch.tensor([1, 1, 1, 0, 2, 1], dtype=torch.int32))  # row 1 pads: item 0, history [0, 0]
    out = remapper(batch, real=torch.tensor([True, False, True]))
    assert set(admitted_ids(remapper, "item_id")) == {seen[0], seen[2], seen[3]}  # neither 0 nor the padding's item
    assert out.values()[1].item() == out.values()[3].item() == 9  # remapped all the same: to the unseen row
