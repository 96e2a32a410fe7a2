"""Worker function for the 2-rank gloo pre-training test; imported by name in spawned processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

import pretrain.train as train
from pretrain.config import SclConfig


def pretrain_worker(rank: int, world_size: int, port: int, world: str, out: str, report: str, cfg: SclConfig) -> None:
    """One DDP rank of ``run_pretrain`` (SCL), set up as torchrun would.

    Writes ``report/rank{rank}.json`` (its stats and how many times it wrote
    the vector table) and ``report/rank{rank}.pt`` (its encoder after training).
    """
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    writes = []
    real_write = train.write_item_vectors

    def counting_write(*args: object, **kwargs: object) -> None:
        writes.append(1)
        real_write(*args, **kwargs)

    real_export = train.Pretrainer.export

    def export_and_record(self: train.Pretrainer, stats: dict[str, float], progress: bool = True) -> None:
        torch.save(self.encoder.state_dict(), Path(report) / f"rank{rank}.pt")
        real_export(self, stats, progress)

    train.write_item_vectors = counting_write
    train.Pretrainer.export = export_and_record
    try:
        stats = train.run_pretrain(Path(world), Path(out), "scl", cfg, checkpoint_every=1, progress=False)
        (Path(report) / f"rank{rank}.json").write_text(json.dumps({"stats": stats, "writes": len(writes)}))
    finally:
        train.write_item_vectors = real_write
        train.Pretrainer.export = real_export
        if dist.is_initialized():
            dist.destroy_process_group()


def content_cache_worker(rank: int, world_size: int, port: int, world: str, out: str, cache: str, report: str,
                         cfg: SclConfig) -> None:
    """One rank building a ``Pretrainer`` on a content cache, as torchrun would set it up.

    Writes ``report/rank{rank}.json``: how many times this rank decoded and
    tokenized the items itself (``content_cache._computed``), and its content's
    item IDs, image and token sums; or the exception it raised.
    """
    import pretrain.content_cache as content_cache
    from recsys.distributed import init_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    computed = []
    real_computed = content_cache._computed

    def counting(*args: object, **kwargs: object) -> object:
        computed.append(1)
        return real_computed(*args, **kwargs)

    content_cache._computed = counting
    try:
        trainer = train.Pretrainer(cfg, "clip", Path(world), Path(out), init_distributed(), Path(cache))
        items = trainer.items
        record = {"computed": len(computed), "item_ids": items.item_ids.tolist(),
                  "image_sum": int(items.images.sum(dtype="int64")), "token_sum": int(trainer.item_tokens.sum())}
    except Exception as e:  # noqa: BLE001 (reported to the test)
        record = {"computed": len(computed), "raised": type(e).__name__, "message": str(e)}
    finally:
        content_cache._computed = real_computed
        if dist.is_initialized():
            dist.destroy_process_group()
    (Path(report) / f"rank{rank}.json").write_text(json.dumps(record))
