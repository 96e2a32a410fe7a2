"""The training epoch and batch prediction of a sharded CTR model, shared by every stage.

Notation: ``B``: batch size per rank; ``W``: world size; ``N``: impressions
of the predicted day (over all ranks).

:func:`train_epoch` runs one epoch of a ``DistributedModelParallel``-wrapped
``CtrTrain`` from a given batch on (resume), calling back for checkpoints;
rank 0 shows a tqdm bar with global samples/s and the running loss, and the
loss curve (mean over ranks every ``log_every`` steps) is returned.
:func:`predict` scores one day on every rank and gathers the predictions on
all ranks, each impression once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer
from tqdm import tqdm

from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.distributed import DistContext
from recsys.train.checkpoint import Progress


@dataclass
class EpochResult:
    """What one (possibly partial) epoch did."""

    progress: Progress  # where training stands after it
    curve: list[dict[str, float]]  # {"step", "epoch", "loss"} points, loss averaged over ranks
    samples: int  # impressions trained on, over all ranks
    seconds: float  # wall time of the epoch's steps
    stopped: bool  # ended early by `stop_after_steps`


def _mean_over_ranks(value: float, ctx: DistContext) -> float:
    if ctx.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)  # NCCL reduces CUDA tensors only
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def train_epoch(
    model: nn.Module,
    optimizer: CombinedOptimizer,
    reader: ImpressionReader,
    ctx: DistContext,
    progress: Progress,
    log_every: int,
    on_step: Callable[[Progress], None] | None = None,
    stop_after_steps: int | None = None,
    desc: str = "train",
    quiet: bool = False,
) -> EpochResult:
    """Trains from batch ``progress.batch`` of epoch ``progress.epoch`` to the epoch's end.

    Args:
        model (nn.Module): the sharded ``CtrTrain`` (returns loss, (loss, logits, labels)).
        optimizer (CombinedOptimizer): fused table and dense optimizers.
        reader (ImpressionReader): this rank's reader; ``config.start_batch``
            must equal ``progress.batch`` (it yields the remaining batches).
        ctx (DistContext): rank, world size, device.
        progress (Progress): where training stands before this call.
        log_every (int): steps between loss-curve points.
        on_step (Callable | None): called with the new progress after every
            step (e.g. to checkpoint every N steps).
        stop_after_steps (int | None): stop once ``progress.step`` reaches it.
        desc (str): progress-bar label.
        quiet (bool): no progress bar.

    Returns:
        EpochResult: the new progress, loss curve, samples and time.
    """
    if reader.config.start_batch != progress.batch:
        raise ValueError(f"reader starts at batch {reader.config.start_batch}, progress is at {progress.batch}")
    model.train()
    total = reader.num_batches()
    bar = tqdm(total=total, initial=progress.batch, desc=desc, disable=quiet or not ctx.is_main, unit="batch")
    curve: list[dict[str, float]] = []
    running, counted, samples = 0.0, 0, 0
    start = time.perf_counter()
    stopped = False
    for batch in reader:
        if stop_after_steps is not None and progress.step >= stop_after_steps:
            stopped = True
            break
        batch = batch.to(ctx.device)
        loss, _ = model(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        progress = replace(progress, batch=progress.batch + 1, step=progress.step + 1)
        running += float(loss.detach())
        counted += 1
        samples += batch.batch_size * ctx.world_size
        if counted == log_every or progress.batch == total:
            mean = _mean_over_ranks(running / counted, ctx)
            curve.append({"step": progress.step, "epoch": progress.epoch, "loss": mean})
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{mean:.4f}", samples_s=f"{samples / max(elapsed, 1e-9):,.0f}")
            running, counted = 0.0, 0
        bar.update(1)
        if on_step is not None:
            on_step(progress)
    bar.close()
    seconds = time.perf_counter() - start
    if not stopped and progress.batch >= total:
        progress = replace(progress, epoch=progress.epoch + 1, batch=0)
    if stopped and ctx.world_size > 1:
        dist.barrier()
    return EpochResult(progress=progress, curve=curve, samples=samples, seconds=seconds, stopped=stopped)


@dataclass
class Predictions:
    """Scores of every impression of a day, gathered from all ranks (numpy, length N)."""

    predictions: np.ndarray  # float64, click probability
    labels: np.ndarray  # float64, 0/1
    user_ids: np.ndarray  # int64
    item_ids: np.ndarray  # int64 (as the model saw them: hashed if the reader hashed)


@torch.no_grad()
def predict(
    model: nn.Module, root: Path, day: int, ctx: DistContext, reader_config: ReaderConfig, quiet: bool = False
) -> Predictions:
    """Scores every impression of ``day`` once, on all ranks together.

    Each rank reads its own row groups (``drop_last=False``); the batches past
    a rank's own rows repeat rows for collective lock-step and are cut off.

    Args:
        model (nn.Module): the sharded ``CtrTrain``.
        root (Path): the dataset directory.
        day (int): the day to score.
        ctx (DistContext): rank, world size, device.
        reader_config (ReaderConfig): batch size, table sizes, out-of-range
            policy; days, rank, shuffle and drop_last are set here.

    Returns:
        Predictions: every impression of the day, on every rank.
    """
    config = replace(
        reader_config, days=(day,), rank=ctx.rank, world_size=ctx.world_size, shuffle=False, drop_last=False, start_batch=0
    )
    reader = ImpressionReader(root, config)
    own = reader.rank_rows[ctx.rank]
    model.eval()
    parts: list[tuple[np.ndarray, ...]] = []
    for batch in tqdm(reader, total=reader.num_batches(), desc=f"predict day {day}", disable=quiet or not ctx.is_main):
        _, (_, logits, labels) = model(batch.to(ctx.device))
        parts.append(
            (
                torch.sigmoid(logits.double()).cpu().numpy(),
                labels.double().cpu().numpy(),
                batch.user_ids.numpy(),
                batch.item_ids.numpy(),
            )
        )
    model.train()
    local = tuple(np.concatenate([p[i] for p in parts])[:own] if parts else np.zeros(0) for i in range(4))
    gathered: list[tuple[np.ndarray, ...]] = [local]
    if ctx.world_size > 1:
        gathered = [None] * ctx.world_size  # type: ignore[list-item]
        dist.all_gather_object(gathered, local)
    cols = [np.concatenate([g[i] for g in gathered]) for i in range(4)]
    return Predictions(
        predictions=cols[0],
        labels=cols[1],
        user_ids=cols[2].astype(np.int64),
        item_ids=cols[3].astype(np.int64),
    )
