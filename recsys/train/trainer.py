"""``mmctr train``: one CTR variant trained through DistributedModelParallel and evaluated on the test day.

The job, on every rank (``torchrun``/TorchX) or in one process, in named steps:

1. :func:`build`: MAKE variants (``make``, ``simtier_make``) first need MAKE
   stage 1: read from ``--make-from`` (the folder or its ``make.pt``), or run
   into ``OUT/make_stage1`` (``make_stage``). The variant's ``CtrModel`` is
   built on CPU with the same seed on every rank, the frozen multimodal
   table filled from the item vectors and MAKE's stage-1 weights loaded;
   then it is sharded (``sharding.shard_model``) with fused row-wise Adagrad
   on the ID tables and Adam on the dense part.
2. :func:`_resume_or_warm_start`: a job started again with the same
   ``--out`` resumes from the newest checkpoint (``checkpoint``), at any
   world size; a retrain instead warm-starts from its parent's and scores
   the stale model on the test day.
3. ``loop.run_epochs``: ``TrainConfig.epochs`` over ``DaySplit.train``,
   distributed checkpoints to ``OUT/checkpoints`` every ``checkpoint_every``
   steps and at the end; :class:`_Tally` keeps the loss curve and counts.
4. :func:`_score` and :func:`_write_records`: the test day is scored and
   ``metrics.json``, ``train_log.json`` and ``lineage.json`` written (rank 0).

Output folder (``run_folder.RunFolder``)::

    metrics.json       # RunMetrics: test-day AUC/GAUC/NE...: all, head/torso/tail, new items
    train_log.json     # TrainLog: loss curve, samples/s, out-of-range ID counts, configs, inputs
    lineage.json       # Lineage: version, parent, days and vectors behind the weights
    checkpoints/       # DCP checkpoints (checkpoint.py)
    make_stage1/       # MAKE stage 1, when run here (make_stage.py)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torchrec.optim.keyed import CombinedOptimizer

from recsys.allocator import pinned
from recsys.data.plan import count as count_rows
from recsys.data.reader import ImpressionReader, ReaderConfig, dense_moments
from recsys.data.schema import Manifest, manifest_sha, schema_sha
from recsys.data.stats import day_rows, item_index, item_positions, new_item_mask, train_item_counts, unseen_items
from recsys.data.vectors import ItemVectors, load_vectors, table_sha256
from recsys.distributed import DistContext, init_distributed
from recsys.eval.metrics import evaluation_report, item_buckets
from recsys.models.config import ModelConfig, differing_fields
from recsys.models.ctr_model import VARIANT_SPECS, CtrModel, CtrTrain
from recsys.models.make import is_make_param
from recsys.models.mm_table import is_mm_table_param
from recsys.train.checkpoint import Progress, TrainState, load_checkpoint
from recsys.train.config import SHARDING, TrainConfig, resolve_train_pipeline
from recsys.train.loop import EpochPlan, EpochResult, RowCountError, predict, run_epochs
from recsys.train.make_stage import Stage1Job, load_make_state, stage1_table_sha256, train_make
from recsys.train.run_folder import Lineage, Report, RetrainNote, RunFolder, RunMetrics, Segment, TrainLog
from recsys.models.remap import IdRemapper
from recsys.train.setup import (
    DaySplit,
    capped_table_sizes,
    check_day_labels,
    fill_mm_table,
    mm_rows,
    projected_vectors,
    shard_and_optimize,
    split_days,
    vectors_sharing_rows,
    vectors_without_item,
)


@dataclass(frozen=True)
class TrainJob:
    """One ``mmctr train`` job (fields documented inline)."""

    world: Path  # dataset directory (recsys.data.schema format)
    out: Path  # run folder (module docstring); an existing one is resumed
    model: ModelConfig  # the variant and its widths
    train: TrainConfig = TrainConfig()  # optimisation, checkpoints, ID policy
    vectors: Path | None = None  # item_vectors.parquet (or its folder) or a vector store; every variant but id_only
    store: Path | None = None  # a vector store (`mmctr embed-new`) adding vectors of items the table lacks
    sharding: str = SHARDING  # sharding.SHARDINGS
    make_from: Path | None = None  # a finished MAKE stage-1 folder or its make.pt; None = run stage 1 into OUT/make_stage1
    quiet: bool = False  # no progress bars
    train_until: int | None = None  # last training day (setup.split_days); None = the day before the last
    days: tuple[int, ...] | None = None  # days the ID model trains on; None = every day up to train_until
    warm_start: Path | None = None  # a finished run (folder or one of its JSON files) whose newest checkpoint starts model and optimizer
    warm_start_make: bool = True  # with warm_start: MAKE's weights from it too (else from make_from/stage 1)
    table_sizes: dict[str, int] | None = None  # rows per ID table; None = the manifest's ranges, capped
    parent: Lineage | None = None  # lineage of the warm-start run, for this run's lineage
    retrain: RetrainNote | None = None  # a retrain's new-ID admission, for this run's lineage
    # (mean, std) of standardised dense features; None = computed on the training days (reader.dense_moments)
    dense_stats: dict[str, tuple[float, float]] | None = None
    projection: Path | None = None  # a new run's basis for wide vectors, copied in (a retrain's parent's); None: fitted


def run_train(job: TrainJob) -> RunMetrics | None:
    """Runs the job on this process's rank; returns the metrics (every rank), or ``None`` if stopped early.

    Makes a one-rank process group when run plainly, and destroys a group it made: after a barrier when the
    job succeeded, so no rank tears the group down (rank 0 its store) while another still uses it.
    """
    created = not dist.is_initialized()
    ctx = init_distributed(always=True)
    try:
        metrics = _run(job, ctx)
    except BaseException:
        if created and dist.is_initialized():
            dist.destroy_process_group()
        raise
    if created and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return metrics


@dataclass
class Plain:
    """A job's unsharded model and what it was built from (``build_plain``)."""

    model: torch.nn.Module  # the plain CtrTrain (initial weights, frozen table filled, MAKE's stage-1 weights); Built: sharded
    split: DaySplit
    sizes: dict[str, int]  # rows per ID table
    vectors: ItemVectors | None
    missing_vectors: int  # item rows without a vector
    manifest: Manifest  # the world's manifest
    dense_stats: dict[str, tuple[float, float]]  # standardised dense features' (mean, std), training days only


@dataclass
class Built(Plain):
    """A job's sharded model (``model``: the DMP-wrapped ``CtrTrain``), its optimizer and what they were built from."""

    optimizer: CombinedOptimizer  # fused tables + dense Adam


def build_plain(job: TrainJob, ctx: DistContext) -> Plain:
    """The variant's unsharded model, as every rank builds it before sharding (MAKE stage 1 runs first if needed).

    Also what the online ranker loads a finished run into (``serving.ranker``).
    """
    manifest = Manifest.read(job.world)
    split = split_days(manifest, job.train_until)
    if split.test is not None and day_rows(Path(job.world), split.test, manifest) == 0:  # nothing to score: not NaNs
        print(f"{job.model.variant}: day {split.test} has no impressions in {Path(job.world) / 'impressions'}: "
              "the run is not scored on it", file=sys.stderr)
        split = replace(split, test=None)
    sizes = dict(job.table_sizes) if job.table_sizes is not None else capped_table_sizes(manifest, job.train)
    days = tuple(job.days) if job.days is not None else split.train  # the days this job trains on
    stats = dict(job.dense_stats) if job.dense_stats is not None else dense_moments(Path(job.world), days)
    spec = VARIANT_SPECS[job.model.variant]
    vectors: ItemVectors | None = None
    if spec.uses_vectors():
        if job.vectors is None:
            raise ValueError(f"variant {job.model.variant!r} needs item vectors: pass --vectors FILE")
        vectors = load_vectors(job.vectors, store=job.store, renormalize=job.train.renormalize_vectors)
        vectors = projected_vectors(vectors, job.model.mm_width, job.out, job.projection, ctx)
    mm_dim = vectors.dim if vectors is not None else 0
    make_state = None
    if spec.make and not (job.warm_start is not None and job.warm_start_make):  # else the warm start brings MAKE
        assert vectors is not None
        make_dir = job.make_from
        if make_dir is None:
            stage1 = Stage1Job(world=job.world, out=RunFolder(job.out).make_stage1, model=job.model, train=job.train,
                               sharding=job.sharding, until=job.train_until, quiet=job.quiet, dense_stats=stats)
            make_dir = train_make(stage1, vectors, manifest, ctx)
        make_state = load_make_state(make_dir, mm_dim, job.model)
    torch.manual_seed(job.train.seed)
    rows = mm_rows(manifest, sizes, vectors) if vectors is not None else None
    plain = CtrTrain(CtrModel(job.model, manifest.features, sizes, mm_dim, history_slots=manifest.max_history_len, mm_rows=rows))
    missing = 0
    if vectors is not None:
        missing = fill_mm_table(plain.model.mm_arch, vectors, manifest, Path(job.world))
    if make_state is not None:
        plain.model.make.load_state_dict(make_state)
    return Plain(plain, split, sizes, vectors, missing, manifest, stats)


def build(job: TrainJob, ctx: DistContext) -> Built:
    """Builds the variant's model on every rank (``build_plain``) and shards it."""
    p = build_plain(job, ctx)
    dmp, optimizer = shard_and_optimize(p.model, ctx, job.sharding, job.train.sparse_lr, job.train.dense_lr)
    return Built(dmp, p.split, p.sizes, p.vectors, p.missing_vectors, p.manifest, p.dense_stats, optimizer)


@dataclass
class _Tally:
    """The ID model's ``loop.EpochHook``: loss curve, segments and out-of-range ID counts, carried over a resume."""

    world_size: int  # ranks of this job
    curve: list[dict[str, float]] = field(default_factory=list)  # every job's points so far
    segments: list[Segment] = field(default_factory=list)  # one per job so far
    logged_out_of_range: dict[str, int] = field(default_factory=dict)  # counts of earlier jobs (train_log.json)
    counts: dict[str, int] = field(default_factory=dict)  # this job's counts on this rank
    warm_start_metrics: Report | None = None  # the stale model's test-day scores (a warm start)
    rows_in_days: int | None = None  # impressions of the training days (the reader's N)
    managed_before: dict[str, dict[str, int]] = field(default_factory=dict)  # admitted/evicted of earlier jobs
    vectors_without_item: int = 0  # this job's vectors of items items/ does not list (setup.vectors_without_item)
    vectors_sharing_rows: int = 0  # this job's vectors that lose their frozen-table row (setup.vectors_sharing_rows)

    @staticmethod
    def resumed(log: TrainLog, world_size: int) -> _Tally:
        return _Tally(world_size, list(log.curve), list(log.segments), dict(log.out_of_range_ids),
                      warm_start_metrics=log.warm_start_metrics, rows_in_days=log.rows_in_days,
                      managed_before=log.managed_ids)

    def managed_ids(self, model: torch.nn.Module) -> dict[str, dict[str, int]]:
        """Admitted and evicted raw IDs per managed table: earlier jobs' plus this job's (the same on every rank)."""
        remap = next((m for m in model.modules() if isinstance(m, IdRemapper)), None)
        now = remap.counts() if remap is not None else {}
        tables = sorted(set(now) | set(self.managed_before))
        return {t: {k: self.managed_before.get(t, {}).get(k, 0) + now.get(t, {}).get(k, 0) for k in ("admitted", "evicted")}
                for t in tables}

    def done(self) -> bool:
        return False

    def after_epoch(self, epoch: int, result: EpochResult, reader: ImpressionReader) -> None:
        self.rows_in_days = reader.total_rows
        for k, v in reader.out_of_range_counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        self.curve += result.curve
        self.segments.append(Segment(world_size=self.world_size, samples=result.samples, seconds=result.seconds))


def _reader_config(job: TrainJob, built: Built, ctx: DistContext) -> ReaderConfig:
    """This rank's reader settings of the job (days, order and remaining rows are set per use)."""
    return ReaderConfig(batch_size=job.train.batch_size, rank=ctx.rank, world_size=ctx.world_size, seed=job.train.seed,
                        prefetch=job.train.prefetch, table_sizes=built.sizes, out_of_range=job.train.out_of_range,
                        dense_stats=built.dense_stats or None)


def _warm_start(job: TrainJob, built: Built) -> None:
    """Loads the newest checkpoint of ``job.warm_start``, but the frozen table (and MAKE, unless kept)."""
    assert job.warm_start is not None
    found = RunFolder.at(job.warm_start).latest_checkpoint()
    if found is None or not found[1].finished:
        raise ValueError(f"{job.warm_start}: no finished checkpoint to warm-start from (its training did not end)")

    def skip(name: str) -> bool:
        return is_mm_table_param(name) or (not job.warm_start_make and is_make_param(name))

    load_checkpoint(found[0], built.model, built.optimizer, skip=skip)


def _score(job: TrainJob, built: Built, day: int, reader: ReaderConfig, ctx: DistContext) -> Report:
    """Test-day metrics of the model as it stands: all impressions, item buckets, new items."""
    preds = predict(built.model, job.world, day, ctx, replace(reader, batch_size=job.train.eval_batch_size), quiet=job.quiet)
    world = Path(job.world)
    positions = item_positions(item_index(world, built.manifest), preds.item_ids, f"{world} day {day}")
    return evaluation_report(
        torch.from_numpy(preds.predictions),
        torch.from_numpy(preds.labels),
        torch.from_numpy(preds.user_ids),
        torch.from_numpy(positions),
        item_buckets(train_item_counts(world, built.split.train, built.manifest)),
        new_item_mask(world, day, built.manifest),
    )


def _resume_or_warm_start(
    job: TrainJob, built: Built, state: TrainState, reader: ReaderConfig, ctx: DistContext, vectors_without_item: int,
    vectors_sharing_rows: int = 0,
) -> tuple[Progress, _Tally]:
    """Where training starts: this run's newest checkpoint and log, a warm start (scored stale), or zeros."""
    folder = RunFolder(job.out)
    progress = Progress(epoch=0, step=0, world_size=ctx.world_size)
    tally = _Tally(ctx.world_size, vectors_without_item=vectors_without_item, vectors_sharing_rows=vectors_sharing_rows)
    found = state.resume(skip=is_mm_table_param)  # the frozen table keeps this job's vectors (the ones its log records)
    if found is not None:
        progress = found[1]
        if folder.train_log_file.exists():
            tally = replace(_Tally.resumed(folder.read_train_log(), ctx.world_size), vectors_without_item=vectors_without_item,
                            vectors_sharing_rows=vectors_sharing_rows)
        tally.segments, tally.curve = segments_at(tally.segments, progress), [
            point for point in tally.curve if point["step"] <= progress.step]
        if ctx.is_main and not job.quiet:
            left = "all" if progress.remaining is None else f"{count_rows(progress.remaining)} rows"
            print(f"resuming {folder.path} from {found[0].name} (epoch {progress.epoch}, {left} left, "
                  f"saved by {progress.world_size} rank(s), now {ctx.world_size})")
    elif job.warm_start is not None:
        _warm_start(job, built)
        if built.split.test is not None:  # the stale model (yesterday's weights, today's vectors) on the test day
            tally.warm_start_metrics = _score(job, built, built.split.test, reader, ctx)
            _write_train_log(job, built, tally, progress, ctx)  # kept if the job is stopped and resumed
    return progress, tally


def segments_at(segments: list[Segment], progress: Progress) -> list[Segment]:
    """A run's logged segments made to hold the impressions its checkpoint's weights were trained on.

    A job killed after a checkpoint (SIGKILL, a lost machine) never wrote the
    segment of the steps it saved, and a job that wrote its log past its last
    checkpoint (a finished run whose row check failed, killed before its
    final checkpoint) logged steps the resumed weights do not hold. So on a
    resume the log's segments are kept while they fit in ``progress.trained``
    (counted by the loop and saved with the weights), and the rest is one
    segment at the checkpoint's world size. Unchanged where the checkpoint
    does not record ``trained`` (written before it was counted). The log's
    other counts (``out_of_range_ids``, managed-ID admissions) are not cut
    back: a log written past its checkpoint keeps those steps' counts, and the
    resumed job counts them again.

    Example::

        >>> log = [Segment(1, 100, 1.0), Segment(2, 50, 1.0)]
        >>> segments_at(log, Progress(epoch=0, step=9, world_size=2, trained=180, seconds=2.5))[-1]
        Segment(world_size=2, samples=30, seconds=0.5)
        >>> segments_at(log, Progress(epoch=0, step=9, world_size=1, trained=120, seconds=1.5))
        [Segment(world_size=1, samples=100, seconds=1.0), Segment(world_size=1, samples=20, seconds=0.5)]
    """
    if progress.trained is None:
        return list(segments)
    kept: list[Segment] = []
    rows, seconds = 0, 0.0
    for segment in segments:
        if rows + segment.samples > progress.trained:
            break
        kept.append(segment)
        rows, seconds = rows + segment.samples, seconds + segment.seconds
    if rows < progress.trained:
        kept.append(Segment(world_size=progress.world_size, samples=progress.trained - rows,
                            seconds=max(progress.seconds - seconds, 0.0)))
    return kept


def _check_resumed_model(logged: ModelConfig, given: ModelConfig, run: Path) -> None:
    """Refuses to resume a run with another model config than the one its checkpoints were trained with.

    Without it a resume could load weights of one shape into another model, or
    silently train on with, say, other SimTier tiers or MAKE frozen where it was
    fine-tuned. The runtime switches (``fused_kernels``: the same values) may differ.

    Raises:
        ValueError: naming the run and every field that differs.
    """
    differ = differing_fields(logged, given, there="in its train log")
    if differ:
        raise ValueError(f"{run}: has checkpoints of another model config ({'; '.join(differ)}); resume it with "
                         "the config its train_log.json records, or train into a new --out")


def _check_resumed_inputs(logged: TrainLog, job: TrainJob, run: Path) -> None:
    """Refuses to resume a run on other days or from another warm start than its checkpoints were trained from.

    A resume continues the logged job; with other days it would relabel the
    checkpoint's weights as trained on days they never saw (and leave out the
    ones they did), and with another warm start as another lineage.

    Raises:
        ValueError: naming the run, the logged days or warm start and the new ones.
    """
    days = tuple(job.days) if job.days is not None else tuple(split_days(Manifest.read(job.world), job.train_until).train)
    if logged.days and days != logged.days:
        raise ValueError(f"{run}: has checkpoints trained on days {_span(logged.days)} (its train_log.json), but this "
                         f"job trains on days {_span(days)}; resume it with the days it records, or train into a new --out")
    warm = None if job.warm_start is None else str(Path(job.warm_start).resolve())
    if logged.warm_start != warm:
        raise ValueError(f"{run}: has checkpoints warm-started from {logged.warm_start} (its train_log.json), but this "
                         f"job starts from {warm}; resume it as it began, or train into a new --out")


def _check_resumed_table(logged: TrainLog, built: Built, run: Path) -> None:
    """Refuses to resume a run on a vector table other than the one its checkpoints were trained with.

    The frozen table is filled from the file at each start (its weights are not
    in the checkpoint), so a resume on another table would train the rest of the
    run on other vectors, and its log would record only the new table.

    Raises:
        ValueError: naming the run, both tables and their SHA-256 prefixes.
    """
    was = (logged.vectors or {}).get("table_sha256")
    now = None if built.vectors is None else built.vectors.manifest.get("table_sha256")
    if was is not None and now is not None and was != now:
        raise ValueError(f"{run}: has checkpoints trained on the vector table {logged.vectors_path} "
                         f"(SHA-256 {was[:12]}..., its train_log.json), but {built.vectors.path} now has {now[:12]}...; "
                         "resume it with the table it trained on, or train into a new --out")


def _span(days: tuple[int, ...]) -> str:
    """Days as ``a`` (one), ``a..b`` (a run without a gap) or listed."""
    if len(days) == 1:
        return str(days[0])
    return f"{days[0]}..{days[-1]}" if days == tuple(range(days[0], days[-1] + 1)) else str(list(days))


def _days(job: TrainJob, built: Built) -> tuple[int, ...]:
    return tuple(job.days) if job.days is not None else tuple(built.split.train)


def _write_train_log(job: TrainJob, built: Built, tally: _Tally, progress: Progress, ctx: DistContext) -> TrainLog:
    """The job's training log as it stands (every rank: counts summed over ranks), written by rank 0."""
    # earlier jobs' counts (their log) and this job's so far: recomputed at each write, never added twice
    now = _sum_over_ranks(tally.counts, ctx)
    merged = {k: tally.logged_out_of_range.get(k, 0) + now.get(k, 0) for k in sorted(set(tally.logged_out_of_range) | set(now))}
    spec, vectors = VARIANT_SPECS[job.model.variant], built.vectors
    folder = RunFolder(job.out)
    log = TrainLog(
        curve=tuple(tally.curve),
        segments=tuple(tally.segments),
        out_of_range_ids=merged,
        warm_start_metrics=tally.warm_start_metrics,
        variant=job.model.variant,
        model=job.model,
        train=job.train,
        sharding=job.sharding,
        world=str(Path(job.world).resolve()),
        world_manifest_sha=manifest_sha(job.world),
        world_schema_sha=schema_sha(job.world),
        days=_days(job, built),
        table_sizes=built.sizes,
        warm_start=None if job.warm_start is None else str(Path(job.warm_start).resolve()),
        vectors=None if vectors is None else {**vectors.manifest, "path": str(Path(vectors.path).resolve())},
        items_without_vector=built.missing_vectors,
        vectors_without_item=tally.vectors_without_item,
        vectors_sharing_rows=tally.vectors_sharing_rows,
        make_from=None if not spec.make else str(Path(job.make_from or folder.make_stage1).resolve()),
        progress=progress,
        malloc_pinned=pinned(),
        rows_in_days=tally.rows_in_days,
        managed_ids=tally.managed_ids(built.model),
        dense_stats=built.dense_stats,
    )
    if ctx.is_main:
        folder.write_train_log(log)
    return log


def _run_metrics(job: TrainJob, built: Built, log: TrainLog, report: Report | None, ctx: DistContext) -> RunMetrics:
    days = _days(job, built)
    samples = sum(s.samples for s in log.segments)
    seconds = sum(s.seconds for s in log.segments)
    return RunMetrics(variant=job.model.variant, seed=job.train.seed, test_day=built.split.test,
                      train_days=(min(days), max(days)), train_samples_per_s=samples / max(seconds, 1e-9),
                      world_size=ctx.world_size, metrics=report, warm_start_metrics=log.warm_start_metrics)


def _retrain_note(job: TrainJob, built: Built) -> RetrainNote | None:
    """A retrain's note with, for a managed item table, its new item IDs still on the unseen-ID row once trained.

    A managed table admits IDs in admission rounds (every ``eviction_interval``
    steps, by its eviction policy), so a day's new items may end the retrain
    without a row of their own: until a later round admits them they share
    the unseen-ID row ``R - 1`` (``recsys.models.remap``). Counted here, after
    training, and said, so the lineage does not read as if every new item
    had its own embedding. Unchanged for identity item IDs (hashed ones are
    counted before training) and for jobs that are not retrains.
    """
    if job.retrain is None or job.parent is None or job.days is None:
        return job.retrain
    spec = built.manifest.features
    table = spec.table_of(spec.item_key)
    remap = next((m for m in built.model.modules() if isinstance(m, IdRemapper)), None)
    if remap is None or remap.tables.get(table) is None or remap.tables[table].ids != "managed":
        return job.retrain
    fresh = unseen_items(Path(job.world), job.days[-1], job.parent.all_days, built.manifest)
    rows = int(remap.tables[table].rows)
    device = next((b.device for b in remap.buffers()), torch.device("cpu"))  # DMP moved it to the job's device
    ids = torch.from_numpy(fresh.astype(np.int64)).to(device)
    unseen = int((remap.rows_of(table, ids) == rows - 1).sum()) if len(fresh) else 0
    return replace(job.retrain, new_item_ids_without_row=unseen)


def _write_records(job: TrainJob, built: Built, log: TrainLog, metrics: RunMetrics) -> None:
    """Rank 0: ``lineage.json`` and ``metrics.json`` of the finished run, and the one result line."""
    folder = RunFolder(job.out)
    note = _retrain_note(job, built)
    if note is not None and note.new_item_ids_without_row:
        print(f"{job.model.variant}: {note.new_item_ids_without_row} of the {note.new_item_ids} new item IDs of day "
              f"{job.days[-1]} were not admitted to a row of the managed table by the end of the retrain (its admission "
              "rounds and eviction policy): they share the unseen-ID row until a later round admits them "
              "(lineage.json: new_item_ids_without_row)", file=sys.stderr)
    folder.write_lineage(Lineage.of_run(folder.path.resolve(), log, job.parent, note))
    folder.write_metrics(metrics)
    if metrics.metrics is None:
        last = Manifest.read(job.world).last_day
        why = ("the world's last: no test day" if metrics.train_days[1] >= last else
               f"day {metrics.train_days[1] + 1} has no impressions: not scored")
        print(f"{job.model.variant}: trained through day {metrics.train_days[1]} ({why}) -> {folder.path}")
    else:
        a = metrics.metrics["all"]  # the one result line, also with --quiet (which only hides progress bars)
        print(f"{job.model.variant}: test day {metrics.test_day} AUC {a['auc']:.4f} GAUC {a['gauc']:.4f} "
              f"NE {a['ne']:.4f} -> {folder.metrics_file}")


def _run(job: TrainJob, ctx: DistContext) -> RunMetrics | None:
    Path(job.out).mkdir(parents=True, exist_ok=True)
    folder = RunFolder(job.out)
    logged = None
    if folder.latest_checkpoint() is not None and folder.train_log_file.exists():  # before build: no stage 1, no basis
        logged = folder.read_train_log()
        _check_resumed_model(logged.model, job.model, folder.path)
        _check_resumed_inputs(logged, job, folder.path)
    manifest = Manifest.read(job.world)
    test_day = split_days(manifest, job.train_until).test
    if test_day is not None:  # read only at scoring: a bad label there is refused now, not after training
        check_day_labels(Path(job.world), manifest, test_day)
    built = build(job, ctx)
    extra = _record_vectors(job, built)
    if logged is not None:
        _check_resumed_table(logged, built, folder.path)
    if built.missing_vectors and ctx.is_main:  # zero rows with the missing flag (mm_table), said once, also --quiet
        spec = built.manifest.features
        which = ("item(s) the world's items/ lists" if spec.table(spec.table_of(spec.item_key)).ids != "identity"
                 else "item ID(s) of the item table's range (items not in the vector table, or IDs no item uses)")
        print(f"{job.model.variant}: {built.missing_vectors} {which} have no vector in {job.vectors}: zero rows "
              "with the missing flag (train_log.json: items_without_vector)", file=sys.stderr)
    if extra and ctx.is_main:  # loaded, fitted into a projection's basis, read by no impression
        print(f"{job.model.variant}: {extra} of the {len(built.vectors.item_ids)} vectors in "
              f"{job.vectors} are of items {Path(job.world) / 'items'} does not list: loaded, read by no impression "
              "(train_log.json: vectors_without_item)", file=sys.stderr)
    spec = built.manifest.features
    identity = spec.table(spec.table_of(spec.item_key)).ids == "identity"
    shared = 0 if built.vectors is None or not identity else vectors_sharing_rows(
        built.vectors.item_ids, mm_rows(built.manifest, built.sizes, built.vectors))
    if shared and ctx.is_main:  # the larger ID's vector holds the row; the others are scored with it
        print(f"{job.model.variant}: {shared} of the {len(built.vectors.item_ids)} vectors in {job.vectors} lose their "
              f"frozen-table row to another item's: {spec.item_key} IDs reach past the item table's "
              f"{built.sizes[spec.table_of(spec.item_key)]} rows, so item i takes row i % rows and the larger "
              "ID's vector holds it (train_log.json: vectors_sharing_rows); a table as large as the ID range (a new "
              "run, not a retrain of a smaller one) or managed IDs keeps each item its own", file=sys.stderr)
    if ctx.is_main:
        _say_stage1_table(job, built)
    state = TrainState(RunFolder(job.out).checkpoints, built.model, built.optimizer, ctx)
    reader = _reader_config(job, built, ctx)
    progress, tally = _resume_or_warm_start(job, built, state, reader, ctx, extra, shared)
    plan = EpochPlan(root=Path(job.world), reader=reader, days=_days(job, built), epochs=job.train.epochs,
                     log_every=job.train.log_every, checkpoint_every=job.train.checkpoint_every,
                     stop_after_steps=job.train.stop_after_steps, desc=job.model.variant, quiet=job.quiet,
                     pipeline=resolve_train_pipeline(job.train.train_pipeline, ctx.world_size, ctx.device.type))
    outcome = run_epochs(state, progress, plan, tally)
    if outcome.stopped:
        _write_train_log(job, built, tally, outcome.progress, ctx)
        if ctx.is_main and not job.quiet:
            print(f"stopped after step {outcome.progress.step} (stop_after_steps); run again with the same --out to resume")
        return None
    # the row count first: a run that lost or repeated rows is never marked finished (evaluation refuses it)
    _check_rows(_write_train_log(job, built, tally, outcome.progress, ctx), job.train.epochs, RunFolder(job.out).train_log_file)
    progress = replace(outcome.progress, finished=True)
    state.save_if_new(progress)
    report = _score(job, built, built.split.test, reader, ctx) if built.split.test is not None else None
    log = _write_train_log(job, built, tally, progress, ctx)
    metrics = _run_metrics(job, built, log, report, ctx)
    if ctx.is_main:
        _write_records(job, built, log, metrics)
    return metrics


def _say_stage1_table(job: TrainJob, built: Built) -> None:
    """One line (stderr) where the MAKE stage 1 this job loads was trained on another vector table than the one
    stage 2 trains on (``--make-from`` another run's, or a finished stage 1 kept in ``--out``): allowed, as a
    retrain keeps its parent's MAKE on fresh vectors, but said. Nothing where MAKE comes from a warm start."""
    if not VARIANT_SPECS[job.model.variant].make or built.vectors is None or (
        job.warm_start is not None and job.warm_start_make
    ):
        return
    stage1 = job.make_from or RunFolder(job.out).make_stage1
    was, now = stage1_table_sha256(stage1), built.vectors.manifest.get("table_sha256")
    if was is not None and now is not None and was != now:
        print(f"{job.model.variant}: MAKE stage 1 in {stage1} was trained on another vector table (SHA-256 "
              f"{was[:12]}...) than {built.vectors.path} ({now[:12]}...); stage 2 loads it as trained", file=sys.stderr)


def _record_vectors(job: TrainJob, built: Built) -> int:
    """What a training job's log records of its vector table, found once per job (not in ``build``, which
    evaluation and serving share): the table's SHA-256 into ``built.vectors.manifest`` (``table_sha256``, which
    ``recsys.eval.runs.load_run`` holds the file to; none for a store), and the returned count of its vectors
    of items ``items/`` does not list (``setup.vectors_without_item``; 0 without vectors)."""
    if built.vectors is None:
        return 0
    sha = table_sha256(built.vectors.path)
    if sha is not None:
        built.vectors = replace(built.vectors, manifest={**built.vectors.manifest, "table_sha256": sha})
    return vectors_without_item(built.vectors, built.manifest, Path(job.world))


def _check_rows(log: TrainLog, epochs: int, where: Path) -> None:
    """The finished run trained every impression of its days once per epoch, or ``RowCountError``."""
    expected = (log.rows_in_days or 0) * epochs
    if log.rows_trained != expected:
        raise RowCountError(f"{where}: {log.rows_trained} impressions trained, but the selected days hold "
                            f"{log.rows_in_days} rows x {epochs} epoch(s) = {expected}; rows were lost or trained twice")


def _sum_over_ranks(counts: dict[str, int], ctx: DistContext) -> dict[str, int]:
    keys = sorted(counts)
    if ctx.world_size == 1 or not keys:
        return dict(counts)
    t = torch.tensor([counts[k] for k in keys], dtype=torch.int64, device=ctx.device)  # NCCL: CUDA tensors
    dist.all_reduce(t)
    return dict(zip(keys, (int(x) for x in t.tolist())))
