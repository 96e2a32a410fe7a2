"""``mmctr retrain``: the daily production retrain of a CTR model, warm-started from yesterday's.

A retrain of run ``PARENT`` on day ``D``:

1. builds the parent's model (same variant, widths and table sizes) and loads
   its newest checkpoint — sharded ID tables, dense weights and the state of
   both optimizers — at whatever world size this job has (DCP reshards);
2. fills the frozen multimodal table from the current item vectors (``--vectors``:
   an ``item_vectors.parquet`` or the embedder's store, so items created since
   yesterday have their vectors) instead of the checkpoint's copy;
3. keeps MAKE as the parent had it (its multi-epoch stage 1, fine-tuned or
   frozen in stage 2), or with ``retrain_make`` runs stage 1 again on the days
   up to ``D`` and starts MAKE from that;
4. scores day ``D + 1`` with that warm-started, not yet retrained model (the
   *stale* model: yesterday's weights, today's vectors), trains one pass over
   day ``D``, and scores day ``D + 1`` again (none when ``D`` is the world's last day);
5. writes a run folder like ``mmctr train``'s, whose ``lineage.json`` has
   version = parent's + 1, the parent, the days behind the weights and the
   vectors' version; ``metrics.json`` holds both scores.

New item IDs. Tables keep the parent's sizes (a warm start needs the same
shapes). Items are numbered in creation order, and the first training job
sizes every table from the world manifest's ID ranges (capped by
``TrainConfig.max_table_rows``), so an item created later has a row of its
own as long as its ID is below the table's size: it starts from its initial
(untrained) embedding and learns from its first impressions on. IDs beyond a
table's size (a catalogue that outgrew the table) are hashed into it
(``out_of_range: hash``, IDs modulo rows; counted in ``train_log.json`` and
``lineage.json``) rather than refused, so the daily job never stops on them;
once their count matters, train from scratch with larger tables. Hashing was
chosen over TorchRec's managed-collision modules because IDs here are dense
and grow by creation order, so identity rows plus a modulo fallback need no
extra remapping state to checkpoint, and they shard like any table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from recsys.data.schema import Manifest
from recsys.models.config import model_config_from_dict
from recsys.train.config import train_config_from_dict
from recsys.train.lineage import read_lineage
from recsys.train.metrics import train_item_counts
from recsys.train.setup import capped_table_sizes
from recsys.train.trainer import TRAIN_LOG, TrainJob, run_train


@dataclass(frozen=True)
class RetrainJob:
    """One ``mmctr retrain`` (fields documented inline)."""

    parent: Path  # yesterday's run folder (of `mmctr train` or `mmctr retrain`), finished
    day: int  # the day to train on
    out: Path  # the new run folder; an existing one is resumed
    vectors: Path | None = None  # item vectors to load (parquet or store); None = the parent's
    store: Path | None = None  # a vector store adding vectors of new items to `vectors`; None = the parent's
    retrain_make: bool = False  # run MAKE stage 1 again (days up to `day`) instead of keeping the parent's MAKE
    world: Path | None = None  # dataset directory; None = the parent's
    sharding: str = "auto"  # ID table sharding of this job
    quiet: bool = False  # no progress bars


def retrain_train_job(job: RetrainJob) -> TrainJob:
    """The :class:`TrainJob` that performs a retrain (module docstring); checks the parent first."""
    parent = Path(job.parent)
    log_file = parent / TRAIN_LOG
    if not log_file.exists():
        raise FileNotFoundError(f"{log_file}: no training log; --from must name a finished `mmctr train`/`retrain` run")
    log = json.loads(log_file.read_text())
    lineage = read_lineage(parent)
    world = Path(job.world) if job.world is not None else Path(log["world"])
    manifest = Manifest.read(world)
    if not manifest.first_day < job.day <= manifest.last_day:
        raise ValueError(f"--day {job.day} is outside the retrainable days {manifest.first_day + 1}..{manifest.last_day} of {world}")
    if job.day <= max(lineage["all_days"]):
        raise ValueError(
            f"{parent} already trained up to day {max(lineage['all_days'])} (its days: {lineage['all_days'][0]}.."
            f"{lineage['all_days'][-1]}); a retrain trains one pass over a later day than its parent's last, got --day {job.day}"
        )
    model = model_config_from_dict(log["config"]["model"], source=f"{log_file}[config.model]")
    train = train_config_from_dict(log["config"]["train"], source=f"{log_file}[config.train]")
    train = replace(train, epochs=1, out_of_range="hash", stop_after_steps=None)
    sizes = log.get("table_sizes") or capped_table_sizes(Manifest.read(log["world"]), train)
    logged = log.get("vectors") or {}
    vectors = Path(job.vectors) if job.vectors is not None else (Path(logged["path"]) if logged else None)
    store = job.store if job.store is not None else (Path(logged["store"]) if logged.get("store") else None)
    return TrainJob(
        world=world,
        out=Path(job.out),
        model=model,
        train=train,
        vectors=vectors,
        store=store,
        sharding=job.sharding,
        make_from=None if job.retrain_make or not log.get("make_from") else Path(log["make_from"]),
        quiet=job.quiet,
        train_until=job.day,
        days=(job.day,),
        warm_start=parent,
        warm_start_make=not job.retrain_make,
        table_sizes={k: int(v) for k, v in sizes.items()},
        parent=lineage,
        lineage_extra={**new_item_ids(world, job.day, lineage["all_days"], int(sizes["item_id"])),
                       "make_retrained": job.retrain_make},
    )


def new_item_ids(world: Path, day: int, seen_days: list[int], rows: int) -> dict[str, int]:
    """Item IDs of ``day``'s impressions that no earlier training day showed, and how many exceed ``rows``."""
    seen = train_item_counts(world, seen_days) > 0
    today = np.flatnonzero(train_item_counts(world, [day]) > 0)
    fresh = today[(today >= len(seen)) | ~seen[np.minimum(today, len(seen) - 1)]]
    return {"new_item_ids": int(len(fresh)), "new_item_ids_hashed": int((fresh >= rows).sum())}


def run_retrain(job: RetrainJob) -> dict | None:
    """Runs the retrain on this process's rank; returns its metrics (None if stopped early).

    ``metrics.json`` gains ``warm_start_metrics`` (the stale model on day + 1) and
    ``lineage.json`` the admission counts of new item IDs.
    """
    return run_train(retrain_train_job(job))


def retrain_summary(metrics: dict) -> str:
    """One line: the retrained vs the stale model on the next day."""
    if metrics.get("metrics") is None or metrics.get("warm_start_metrics") is None:
        return f"trained through day {metrics['train_days'][1]}: no next day in this world to score"
    new, stale = metrics["metrics"]["all"], metrics["warm_start_metrics"]["all"]
    return (
        f"day {metrics['test_day']}: retrained GAUC {new['gauc']:.4f} AUC {new['auc']:.4f} vs stale GAUC "
        f"{stale['gauc']:.4f} AUC {stale['auc']:.4f} ({(new['gauc'] / stale['gauc'] - 1) * 100:+.2f}% GAUC)"
    )


