"""The training epoch and batch prediction of a sharded CTR model, shared by every stage.

Notation: ``B``: batch size per rank; ``W``: world size; ``N``: impressions
of the predicted day (over all ranks).

:func:`train_epoch` runs one epoch of a ``DistributedModelParallel``-wrapped
``CtrTrain`` over the rows the epoch has left (``Progress.remaining``, so a
resume on any world size trains each row once), calling back for checkpoints;
rank 0 shows a tqdm bar with global samples/s and the running loss, and the
loss curve (mean over ranks every ``log_every`` steps) is returned.
:func:`predict` scores one day on every rank and gathers the predictions on
all ranks, each impression once, in the day's row order (padding rows of
weight 0 dropped).
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

from recsys.data import plan
from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.distributed import DistContext
from recsys.train.checkpoint import Progress


@dataclass
class EpochResult:
    """What one (possibly partial) epoch did."""

    progress: Progress  # where training stands after it
    curve: list[dict[str, float]]  # {"step", "epoch", "loss"} points, loss averaged over ranks
    samples: int  # impressions trained on, over all ranks (padding rows not counted)
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
    """Trains the rows ``progress.remaining`` of epoch ``progress.epoch`` (all: None) to the epoch's end.

    Args:
        model (nn.Module): the sharded ``CtrTrain`` (returns loss, (loss, logits, labels)).
        optimizer (CombinedOptimizer): fused table and dense optimizers.
        reader (ImpressionReader): this rank's reader; ``config.remaining``
            must equal ``progress.remaining`` (it yields those rows).
        ctx (DistContext): rank, world size, device.
        progress (Progress): where training stands before this call.
        log_every (int): steps between loss-curve points.
        on_step (Callable | None): called with the new progress after every
            step (e.g. to checkpoint every N steps); its ``remaining`` is what
            the epoch has left once every rank has done the steps so far.
        stop_after_steps (int | None): stop once ``progress.step`` reaches it.
        desc (str): progress-bar label.
        quiet (bool): no progress bar.

    Returns:
        EpochResult: the new progress, loss curve, samples and time.
    """
    if reader.config.remaining != progress.remaining:
        raise ValueError(f"reader reads rows {reader.config.remaining}, progress has {progress.remaining} left")
    model.train()
    total = reader.num_batches()
    bar = tqdm(total=total, desc=desc, disable=quiet or not ctx.is_main, unit="batch")
    curve: list[dict[str, float]] = []
    running, counted, done = 0.0, 0, 0
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
        done += 1
        progress = replace(progress, step=progress.step + 1, remaining=reader.remaining_after(done))
        running += float(loss.detach())  # a padding batch adds 0
        counted += 1
        if counted == log_every or done == total:
            mean = _mean_over_ranks(running / counted, ctx)
            curve.append({"step": progress.step, "epoch": progress.epoch, "loss": mean})
            elapsed = time.perf_counter() - start
            samples = plan.count(reader.remaining) - plan.count(progress.remaining)
            bar.set_postfix(loss=f"{mean:.4f}", samples_s=f"{samples / max(elapsed, 1e-9):,.0f}")
            running, counted = 0.0, 0
        bar.update(1)
        if on_step is not None:
            on_step(progress)
    bar.close()
    seconds = time.perf_counter() - start
    samples = plan.count(reader.remaining) - plan.count(reader.remaining_after(done))  # every rank, exactly
    if not stopped and done >= total:
        progress = replace(progress, epoch=progress.epoch + 1, remaining=None)
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

    Each rank scores its contiguous share of the day's rows (the global
    order, unshuffled); padding rows (weight 0) are dropped, and the shares
    are gathered in rank order, which is the day's row order.

    Args:
        model (nn.Module): the sharded ``CtrTrain``.
        root (Path): the dataset directory.
        day (int): the day to score.
        ctx (DistContext): rank, world size, device.
        reader_config (ReaderConfig): batch size, table sizes, out-of-range
            policy; days, rank, shuffle and remaining are set here.

    Returns:
        Predictions: every impression of the day, on every rank.
    """
    config = replace(
        reader_config, days=(day,), rank=ctx.rank, world_size=ctx.world_size, shuffle=False, remaining=None
    )
    reader = ImpressionReader(root, config)
    model.eval()
    parts: list[tuple[np.ndarray, ...]] = []
    for batch in tqdm(reader, total=reader.num_batches(), desc=f"predict day {day}", disable=quiet or not ctx.is_main):
        _, (_, logits, labels) = model(batch.to(ctx.device))
        real = (batch.weights > 0).numpy()
        parts.append(
            (
                torch.sigmoid(logits.double()).cpu().numpy()[real],
                labels.double().cpu().numpy()[real],
                batch.user_ids.numpy()[real],
                batch.item_ids.numpy()[real],
            )
        )
    model.train()
    local = tuple(np.concatenate([p[i] for p in parts]) if parts else np.zeros(0) for i in range(4))
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
