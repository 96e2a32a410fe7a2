"""The training epoch, the epoch/checkpoint loop and batch prediction of a sharded CTR model, shared by every stage.

Notation: ``B``: batch size per rank; ``W``: world size; ``N``: impressions
of the predicted day (over all ranks).

:func:`training_steps` takes the steps, through TorchRec's
``TrainPipelineSparseDist`` or one batch at a time (``TrainConfig.train_pipeline``).
:func:`train_epoch` runs one epoch of a ``DistributedModelParallel``-wrapped
``CtrTrain`` over the rows the epoch has left (``Progress.remaining``, so a
resume on any world size trains each row once), calling back for checkpoints;
rank 0 shows a tqdm bar with global samples/s and the running loss, and the
loss curve (mean over ranks every ``log_every`` steps) is returned.
:func:`run_epochs` is the one epoch/checkpoint loop of ``mmctr train`` and
MAKE stage 1: epochs from where a :class:`~recsys.train.checkpoint.TrainState`
resumed, each read in its own shuffled order, checkpoints every
``checkpoint_every`` steps and/or after every epoch, an early stop by
``stop_after_steps`` (checkpointed), and an :class:`EpochHook` after each
epoch for what the stages do differently (tallies of the ID model, MAKE's
validation and early stopping).
:func:`predict` scores one day on every rank and gathers the predictions on
all ranks, each impression once, in the day's row order (padding rows of
weight 0 dropped).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.optim.keyed import CombinedOptimizer
from tqdm import tqdm

from recsys.data.batch import Batch
from recsys.data.plan import count as count_rows
from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.distributed import DistContext
from recsys.train.checkpoint import Progress, TrainState
from recsys.train.config import TRAIN_PIPELINES


@dataclass
class EpochResult:
    """What one (possibly partial) epoch did."""

    progress: Progress  # where training stands after it
    curve: list[dict[str, float]]  # {"step", "epoch", "loss"} points, loss averaged over ranks
    samples: int  # impressions trained on, over all ranks (padding rows not counted)
    seconds: float  # wall time of the epoch's steps
    stopped: bool  # ended early by `stop_after_steps`


class RowCountError(RuntimeError):
    """Training saw another number of impressions than the selected days hold (a row lost or counted twice)."""


def _mean_over_ranks(value: float, ctx: DistContext) -> float:
    if ctx.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)  # NCCL reduces CUDA tensors only
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


class _CountedBatches:
    """The reader's batches; each one's impressions (rows of weight > 0) are queued as it is taken."""

    def __init__(self, reader: Iterable[Batch]) -> None:
        self._batches = iter(reader)
        self.rows: deque[torch.Tensor] = deque()  # int64 scalars, oldest first

    def __iter__(self) -> _CountedBatches:
        return self

    def __next__(self) -> Batch:
        batch = next(self._batches)
        self.rows.append((batch.weights > 0).sum())
        return batch


def training_steps(
    model: nn.Module, optimizer: CombinedOptimizer, batches: Iterable[Batch], device: torch.device, pipeline: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Trains one step per batch, in order; yields each step's detached loss and its impressions (weight > 0).

    ``"sparse_dist"`` runs the steps through TorchRec's ``TrainPipelineSparseDist``
    (``torchrec.distributed.train_pipeline``): it copies batch i+2 to the device and
    starts batch i+1's input (KJT) all-to-all of the sharded modules whose input is
    the batch's own KJT (here the pooled-feature tables) while step i runs its
    forward, backward and optimizer step. On CPU it runs without CUDA streams
    (TorchRec passes none there) and still overlaps the all-to-all, which gloo
    runs on its own threads. Tables whose KJT the model derives from the batch
    (the item table's history slots) keep their input all-to-all inside the
    forward. The model is detached from the pipeline (its sharded modules'
    forwards restored) when the generator closes, so it can predict afterwards.
    The pipeline reads up to 2 batches ahead: when a job stops early
    (``stop_after_steps``) those were read but not trained, so the reader's
    tallies (e.g. out-of-range IDs in the train log) count them, and a resumed
    job counts them again; the rows trained are exact (``Progress.remaining``).
    ``"plain"``: forward, backward, optimizer step, one batch at a time.

    Args:
        model (nn.Module): the sharded ``CtrTrain`` (returns loss, (loss, logits, labels)).
        optimizer (CombinedOptimizer): fused table and dense optimizers.
        batches (Iterable[Batch]): the batches, on the host.
        device (torch.device): where the steps run.
        pipeline (str): one of ``TRAIN_PIPELINES``.

    Yields:
        tuple[torch.Tensor, torch.Tensor]: the loss (scalar) and the impressions the
        step trained on (int64 scalar), per step; steps are taken one per ``next``.

    Raises:
        ValueError: an unknown ``pipeline``.
    """
    if pipeline not in TRAIN_PIPELINES:
        raise ValueError(f"train pipeline {pipeline!r} unknown, expected one of {TRAIN_PIPELINES}")
    if pipeline == "plain":
        for batch in batches:
            batch = batch.to(device)
            loss, _ = model(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            yield loss.detach(), (batch.weights > 0).sum()
        return
    counted = _CountedBatches(batches)
    pipe = TrainPipelineSparseDist(model, optimizer, device, execute_all_batches=True)
    try:
        while True:
            try:
                loss, _, _ = pipe.progress(counted)
            except StopIteration:
                return
            yield loss, counted.rows.popleft()  # the pipeline trains batches in the order it takes them
    finally:
        pipe.detach()
        optimizer.zero_grad()


def train_epoch(
    model: nn.Module,
    optimizer: CombinedOptimizer,
    reader: ImpressionReader,
    ctx: DistContext,
    progress: Progress,
    log_every: int,
    on_step: Callable[[Progress, Callable[[Progress], Progress]], None] | None = None,
    stop_after_steps: int | None = None,
    desc: str = "train",
    quiet: bool = False,
    pipeline: str = "plain",
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
            the epoch has left once every rank has done the steps so far. Its
            second argument stamps a progress with the impressions trained so
            far (``Progress.trained``, ``seconds``): a collective, so every rank
            calls it at the same steps or none does.
        stop_after_steps (int | None): stop once ``progress.step`` reaches it.
        desc (str): progress-bar label.
        quiet (bool): no progress bar.
        pipeline (str): how each step runs, one of ``TRAIN_PIPELINES`` (:func:`training_steps`).

    Returns:
        EpochResult: the new progress, loss curve, samples and time; ``samples``
        counts the impressions the batches held (padding rows excluded), summed
        over ranks.

    Raises:
        RowCountError: the epoch ended with a number of trained impressions
            other than the rows it had left (a row lost or trained twice).
    """
    if reader.config.remaining != progress.remaining:
        raise ValueError(f"reader reads rows {reader.config.remaining}, progress has {progress.remaining} left")
    model.train()
    total = reader.num_batches()
    bar = tqdm(total=total, desc=desc, disable=quiet or not ctx.is_main, unit="batch")
    curve: list[dict[str, float]] = []
    running, counted, done = 0.0, 0, 0
    real = torch.zeros((), dtype=torch.int64, device=ctx.device)  # impressions trained by this rank (no host sync per step)
    start = time.perf_counter()
    stopped = False
    base_trained, base_seconds = progress.trained, progress.seconds

    def stamped(p: Progress) -> Progress:
        """``p`` with the run's impressions so far (this epoch's summed over ranks) and its steps' seconds."""
        if base_trained is None:
            return replace(p, seconds=base_seconds + time.perf_counter() - start)
        now = real.clone()
        if ctx.world_size > 1:
            dist.all_reduce(now)
        return replace(p, trained=base_trained + int(now.item()), seconds=base_seconds + time.perf_counter() - start)

    with closing(training_steps(model, optimizer, reader, ctx.device, pipeline)) as steps:
        while done < total:
            if stop_after_steps is not None and progress.step >= stop_after_steps:
                stopped = True
                break
            step = next(steps, None)
            if step is None:
                break
            loss, rows = step
            real += rows
            done += 1
            progress = replace(progress, step=progress.step + 1, remaining=reader.remaining_after(done))
            running += float(loss)  # a padding batch adds 0
            counted += 1
            if counted == log_every or done == total:
                mean = _mean_over_ranks(running / counted, ctx)
                curve.append({"step": progress.step, "epoch": progress.epoch, "loss": mean})
                elapsed = time.perf_counter() - start
                samples = count_rows(reader.remaining) - count_rows(progress.remaining)
                bar.set_postfix(loss=f"{mean:.4f}", samples_s=f"{samples / max(elapsed, 1e-9):,.0f}")
                running, counted = 0.0, 0
            bar.update(1)
            if on_step is not None:
                on_step(progress, stamped)
    bar.close()
    seconds = time.perf_counter() - start
    if ctx.world_size > 1:
        dist.all_reduce(real)
    samples = int(real.item())  # the rows the batches held, over all ranks
    planned = count_rows(reader.remaining) - count_rows(reader.remaining_after(done))
    if samples != planned:
        raise RowCountError(f"{desc}: trained {samples} impressions where the data plan has {planned} "
                            f"({reader.total_rows} rows in the selected days, {count_rows(reader.remaining)} left "
                            f"at the start of this job); rows were lost or trained twice")
    progress = replace(progress, trained=None if base_trained is None else base_trained + samples,
                       seconds=base_seconds + seconds)
    if not stopped and done >= total:
        progress = replace(progress, epoch=progress.epoch + 1, remaining=None)
    if stopped and ctx.world_size > 1:
        dist.barrier()
    return EpochResult(progress=progress, curve=curve, samples=samples, seconds=seconds, stopped=stopped)


class EpochHook(Protocol):
    """What a stage does around :func:`run_epochs`'s epochs."""

    def done(self) -> bool:
        """True once the stage wants no more epochs (MAKE's early stopping)."""
        ...

    def after_epoch(self, epoch: int, result: EpochResult, reader: ImpressionReader) -> None:
        """Called after each (possibly partial) epoch ``epoch`` with its result and the reader that fed it."""
        ...


@dataclass(frozen=True)
class EpochPlan:
    """What :func:`run_epochs` trains on and when it checkpoints (fields documented inline)."""

    root: Path  # the dataset directory
    reader: ReaderConfig  # batch size, rank, seed, table sizes...; days, shuffle and remaining rows are set per epoch
    days: tuple[int, ...]  # the days each epoch reads
    epochs: int  # train until Progress.epoch reaches it
    log_every: int  # steps between loss-curve points
    checkpoint_every: int = 0  # steps between checkpoints within an epoch; 0: none
    checkpoint_each_epoch: bool = False  # a checkpoint after every whole epoch (after the hook)
    stop_after_steps: int | None = None  # stop (checkpointed) once Progress.step reaches it
    desc: str = "train"  # progress-bar label; ", epoch N" is added
    quiet: bool = False  # no progress bars
    pipeline: str = "plain"  # how each step runs, one of TRAIN_PIPELINES (`training_steps`; resolve_train_pipeline)


@dataclass(frozen=True)
class EpochsOutcome:
    """Where :func:`run_epochs` left training."""

    progress: Progress  # after the last epoch run (not marked finished)
    stopped: bool  # ended by `stop_after_steps`; the last progress is checkpointed


def _step_checkpoints(state: TrainState, every: int) -> Callable[[Progress, Callable[[Progress], Progress]], None] | None:
    """``train_epoch``'s ``on_step``: a checkpoint every ``every`` steps (None when ``every`` is 0), its progress
    stamped with the impressions trained so far."""
    if not every:
        return None

    def on_step(p: Progress, stamped: Callable[[Progress], Progress]) -> None:
        if p.step % every == 0:
            state.save(stamped(p))

    return on_step


def run_epochs(state: TrainState, progress: Progress, plan: EpochPlan, hook: EpochHook) -> EpochsOutcome:
    """Trains epochs from ``progress`` until ``plan.epochs``, a finished progress, or ``hook.done()``.

    Each epoch reads the rows it has left (``progress.remaining``, at any world
    size) of ``plan.days`` shuffled by (seed, epoch), calls ``hook.after_epoch``, then
    checkpoints if ``plan.checkpoint_each_epoch``. An epoch cut by
    ``stop_after_steps`` ends the loop after a checkpoint of where it stood.

    Args:
        state (TrainState): the sharded model, its optimizer and checkpoint folder.
        progress (Progress): where training stands (a resumed checkpoint's, or zeros).
        plan (EpochPlan): days, epochs, checkpoint policy.
        hook (EpochHook): the stage's work after each epoch.

    Returns:
        EpochsOutcome: the progress reached and whether the loop was stopped early.
    """
    ctx = state.ctx
    on_step = _step_checkpoints(state, plan.checkpoint_every)
    while progress.epoch < plan.epochs and not progress.finished and not hook.done():
        progress = replace(progress, world_size=ctx.world_size)
        reader = ImpressionReader(plan.root, replace(plan.reader, days=plan.days, shuffle=True, remaining=progress.remaining))
        reader.set_epoch(progress.epoch)
        epoch = progress.epoch
        result = train_epoch(
            state.model, state.optimizer, reader, ctx, progress, plan.log_every, on_step=on_step,
            stop_after_steps=plan.stop_after_steps, desc=f"{plan.desc}, epoch {epoch}", quiet=plan.quiet,
            pipeline=plan.pipeline,
        )
        progress = result.progress
        hook.after_epoch(epoch, result, reader)
        if result.stopped:
            state.save_if_new(progress)
            return EpochsOutcome(progress=progress, stopped=True)
        if plan.checkpoint_each_epoch:
            state.save(progress)
    return EpochsOutcome(progress=progress, stopped=False)


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
