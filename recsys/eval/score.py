"""Scores every impression of one day with finished runs, through the same reader and model code as training.

Notation: ``N`` impressions of the day, ``M`` runs.

Each run is rebuilt as its ``mmctr train`` job built it (``trainer.build``
from the configs in its ``train_log.json``: the variant's ``CtrModel``, the
frozen table filled from the run's vectors, sharded by
``DistributedModelParallel``), its newest checkpoint is loaded
(``checkpoint.load_checkpoint``, any world size), and the day is scored by
``loop.predict``: on every rank of a ``torchrun`` job, each impression once,
the scores gathered on every rank. All runs read the day with one batch size,
so every run scores the impressions in the same order; this is checked.

On rank 0, a run with item vectors also yields its SimTier histograms of
the day (``tiers``), with the run's own ``SimTier`` module where the variant
has one.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.data.reader import ReaderConfig
from recsys.distributed import DistContext
from recsys.eval.runs import RunError, RunSpec
from recsys.eval.tiers import TierHistogram, tier_histograms
from recsys.models.mm_table import is_mm_table_param
from recsys.models.simtier import SimTier
from recsys.train.checkpoint import load_checkpoint
from recsys.train.config import TrainConfig
from recsys.train.loop import predict
from recsys.train.trainer import build

EVAL_BATCH_SIZE = TrainConfig.eval_batch_size  # impressions per batch per rank (the training jobs' own)


@dataclass
class RunScores:
    """One run's scores of the day (fields documented inline)."""

    predictions: np.ndarray  # (N,) float64 click probabilities
    item_ids: np.ndarray  # (N,) int64 item IDs as the run's tables saw them (hashed if capped)
    tiers: TierHistogram | None  # rank 0, runs with item vectors; else None


@dataclass
class ScoredDay:
    """Every impression of a day scored by every run, in one order (fields documented inline)."""

    day: int
    labels: np.ndarray  # (N,) float64 0/1
    user_ids: np.ndarray  # (N,) int64
    runs: list[RunScores]  # one per run, in the order given


def score_run(
    run: RunSpec, world: Path, day: int, ctx: DistContext, batch_size: int = EVAL_BATCH_SIZE, quiet: bool = True
) -> tuple[np.ndarray, np.ndarray, RunScores]:
    """Rebuilds one run, loads its checkpoint and scores ``day`` on every rank.

    Returns:
        tuple[np.ndarray, np.ndarray, RunScores]: labels (N,), user IDs (N,)
        and the run's scores, on every rank.
    """
    if run.checkpoint is None or run.train is None or run.model is None:
        raise RunError(f"run {run.name}: not loaded with load_run (no checkpoint or config)")
    built = build(run.job(world, quiet=True), ctx)
    # the frozen table stays as build() filled it: the run's vectors, plus the store's new items if given
    load_checkpoint(run.checkpoint, built.model, built.optimizer, skip=is_mm_table_param)
    config = ReaderConfig(batch_size=batch_size, seed=run.train.seed, prefetch=run.train.prefetch,
                          table_sizes=built.sizes, out_of_range=run.train.out_of_range,
                          dense_stats=built.dense_stats or None)
    preds = predict(built.model, world, day, ctx, config, quiet=quiet)
    tiers = None
    if built.vectors is not None and ctx.is_main:
        own = getattr(built.model.module.model, "simtier", None)
        simtier = own if isinstance(own, SimTier) else SimTier(run.model.simtier_tiers)
        tiers = tier_histograms(world, day, built.vectors, simtier, config, built.manifest)
    del built
    gc.collect()
    return preds.labels, preds.user_ids, RunScores(preds.predictions, preds.item_ids, tiers)


def score_day(
    runs: list[RunSpec], world: Path, day: int, ctx: DistContext, batch_size: int = EVAL_BATCH_SIZE, quiet: bool = True
) -> ScoredDay:
    """Scores ``day`` with every run (module docstring); the same on every rank.

    Args:
        runs (list[RunSpec]): finished runs (``runs.load_run``), M of them.
        world (Path): the dataset directory.
        day (int): the day to score.
        ctx (DistContext): rank, world size, device.
        batch_size (int): impressions per batch per rank, the same for every run.
        quiet (bool): no progress bars.

    Returns:
        ScoredDay: labels and users (N,) and each run's scores (N,).
    """
    labels: np.ndarray | None = None
    users: np.ndarray | None = None
    scores: list[RunScores] = []
    for run in runs:
        y, u, s = score_run(run, world, day, ctx, batch_size, quiet)
        if labels is None or users is None:
            labels, users = y, u
        elif not (np.array_equal(y, labels) and np.array_equal(u, users)):
            raise RunError(f"run {run.name}: scored the impressions of day {day} in another order or with other "
                           f"user IDs than run {runs[0].name} (different max_table_rows / out_of_range?)")
        scores.append(s)
    if labels is None or users is None:
        raise ValueError("score_day needs at least one run")
    return ScoredDay(day=day, labels=labels, user_ids=users, runs=scores)
