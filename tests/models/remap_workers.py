"""Worker function and batches for the 2-rank gloo IdRemapper test; imported by name in spawned processes."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.spec import Table
from recsys.models.remap import IdRemapper

TABLES = (
    Table("user_id", ids="managed", rows=6, eviction="distance_lfu", eviction_interval=2),
    Table("item_id", ids="managed", rows=8),
    Table("shop_id", ids="hash", rows=5),
    Table("gender"),
)
FEATURES = {"user_id": "user_id", "item_id": "item_id", "history_item_ids": "item_id", "shop_id": "shop_id"}
KEYS = ["user_id", "gender", "item_id", "shop_id", "history_item_ids"]
STEPS = 5


def pool(n: int, seed: int) -> torch.Tensor:
    """``n`` distinct raw IDs spread over the int64 range, negatives included."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**62), 2**62, (n,), generator=g) * 2 + 1


def batch(rank: int, step: int) -> KeyedJaggedTensor:
    """Rank ``rank``'s batch at ``step``: B = 2 + rank + step % 3, skewed IDs; rank 1's step-0 history is empty."""
    g = torch.Generator().manual_seed(100 * step + rank)
    B = 2 + rank + step % 3
    hist_len = torch.randint(0, 5, (B,), generator=g) * (0 if (rank, step) == (1, 0) else 1)
    skew = lambda n, size: torch.randint(0, size, (n,), generator=g).pow(2) // size  # noqa: E731 (small indices favoured)
    users, items = pool(12, 1), pool(20, 2)
    values = {
        "user_id": users[skew(B, 12)],
        "gender": torch.randint(0, 2, (B,), generator=g),
        "item_id": items[skew(B, 20)],
        "shop_id": pool(B, 1000 + step),
        "history_item_ids": items[skew(int(hist_len.sum()), 20)],
    }
    lengths = {k: torch.ones(B, dtype=torch.long) for k in KEYS} | {"history_item_ids": hist_len}
    return KeyedJaggedTensor(keys=KEYS, values=torch.cat([values[k] for k in KEYS]),
                             lengths=torch.cat([lengths[k] for k in KEYS]))


def no_managed_ids() -> KeyedJaggedTensor:
    """A batch without a managed key: every table profiles 0 IDs (its iteration still advances)."""
    return KeyedJaggedTensor(keys=["gender"], values=torch.tensor([0, 1]), lengths=torch.ones(2, dtype=torch.long))


def concat(kjts: list[KeyedJaggedTensor]) -> KeyedJaggedTensor:
    """The batches one after the other (impressions of rank 0, then rank 1), same keys."""
    parts = [k.to_dict() for k in kjts]
    keys = kjts[0].keys()
    return KeyedJaggedTensor(keys=keys, values=torch.cat([p[k].values() for k in keys for p in parts]),
                             lengths=torch.cat([p[k].lengths() for k in keys for p in parts]))


def state(remapper: IdRemapper) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in remapper.state_dict().items()}


def remap_worker(rank: int, world_size: int, init_method: str, out_dir: str, checkpoint_in: str) -> None:
    """Trains an IdRemapper on this rank's batches, saves it by DCP (``out_dir/dcp``), loads ``checkpoint_in``;
    writes ``out_dir/rank<r>.pt``: outputs, counts, state, the sentinel refusal, the loaded state."""
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        remapper = IdRemapper(TABLES, FEATURES)
        outputs = [remapper(batch(rank, step)).values() for step in range(STEPS)]
        remapper(no_managed_ids())
        refused = ""
        bad = batch(rank, 0)
        if rank == 1:  # only rank 1 sends the sentinel; both must refuse (and not hang)
            values = bad.values().clone()
            values[bad.offset_per_key()[KEYS.index("item_id")]] = 2**63 - 1  # the first item_id
            bad = KeyedJaggedTensor(keys=KEYS, values=values, lengths=bad.lengths())
        try:
            remapper(bad)
        except ValueError as e:
            refused = str(e)
        dcp.save(remapper.state_dict(), checkpoint_id=f"{out_dir}/dcp")
        fresh = IdRemapper(TABLES, FEATURES)
        loaded = fresh.state_dict()
        dcp.load(loaded, checkpoint_id=checkpoint_in)
        fresh.load_state_dict(loaded)
        torch.save({"outputs": outputs, "counts": remapper.counts(), "state": state(remapper), "refused": refused,
                    "loaded": state(fresh)}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
