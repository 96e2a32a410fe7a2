"""``mmctr train``: one CTR variant trained through DistributedModelParallel and evaluated on the test day.

The job, on every rank (``torchrun``/TorchX) or in one process:

1. MAKE variants (``make``, ``simtier_make``) first need MAKE stage 1: read
   from ``--make-from``, or run into ``OUT/make_stage1`` (``make_stage``).
2. The variant's ``CtrModel`` is built on CPU with the same seed on every
   rank, the frozen multimodal table filled from the item vectors and MAKE's
   stage-1 weights loaded; then it is sharded (``sharding.shard_model``) and
   trains ``TrainConfig.epochs`` over ``DaySplit.train`` with fused row-wise
   Adagrad on the ID tables and Adam on the dense part.
3. Distributed checkpoints go to ``OUT/checkpoints`` every
   ``checkpoint_every`` steps and at the end; a job started again with the
   same ``--out`` resumes from the newest one (``checkpoint``), at any world size.
4. The test day is scored and ``OUT/metrics.json`` written (rank 0).

Output folder::

    metrics.json       # test-day AUC/GAUC/NE...: all, head/torso/tail, new items (metrics.evaluation_report)
    train_log.json     # loss curve, samples/s, out-of-range ID counts, configs, inputs
    checkpoints/       # DCP checkpoints (checkpoint.py)
    make_stage1/       # MAKE stage 1, when run here (make_stage.py)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.keyed import CombinedOptimizer

from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.data.schema import Manifest
from recsys.distributed import DistContext, init_distributed
from recsys.models.config import ModelConfig
from recsys.models.ctr_model import VARIANT_SPECS, CtrModel, CtrTrain
from recsys.models.make import is_make_param
from recsys.models.mm_table import is_mm_table_param
from recsys.train.checkpoint import Progress, latest_checkpoint, load_checkpoint, save_checkpoint
from recsys.train.config import TrainConfig
from recsys.train.loop import predict, train_epoch
from recsys.train.make_stage import load_make_state, train_make
from recsys.train.lineage import write_lineage
from recsys.train.metrics import evaluation_report, item_buckets, new_item_mask, train_item_counts
from recsys.train.setup import (
    DaySplit,
    ItemVectors,
    capped_table_sizes,
    fill_mm_table,
    load_vectors,
    shard_and_optimize,
    split_days,
)

METRICS_FILE = "metrics.json"
TRAIN_LOG = "train_log.json"
CHECKPOINTS = "checkpoints"
MAKE_STAGE1 = "make_stage1"


@dataclass(frozen=True)
class TrainJob:
    """One ``mmctr train`` job (fields documented inline)."""

    world: Path  # dataset directory (recsys.data.schema format)
    out: Path  # run folder (module docstring); an existing one is resumed
    model: ModelConfig  # the variant and its widths
    train: TrainConfig = TrainConfig()  # optimisation, checkpoints, ID policy
    vectors: Path | None = None  # item_vectors.parquet (or its folder) or a vector store; every variant but id_only
    store: Path | None = None  # a vector store (`mmctr embed-new`) adding vectors of items the table lacks
    sharding: str = "auto"  # sharding.SHARDINGS
    make_from: Path | None = None  # a finished MAKE stage-1 folder; None = run stage 1 into OUT/make_stage1
    quiet: bool = False  # no progress bars
    train_until: int | None = None  # last training day (setup.split_days); None = the day before the last
    days: tuple[int, ...] | None = None  # days the ID model trains on; None = every day up to train_until
    warm_start: Path | None = None  # a finished run whose newest checkpoint starts model and optimizer
    warm_start_make: bool = True  # with warm_start: MAKE's weights from it too (else from make_from/stage 1)
    table_sizes: dict[str, int] | None = None  # rows per ID table; None = the manifest's ranges, capped
    parent: dict | None = None  # lineage of the warm-start run (lineage.json), for this run's lineage
    lineage_extra: dict | None = None  # more fields for this run's lineage.json (a retrain's new-ID counts)


def run_train(job: TrainJob) -> dict | None:
    """Runs the job on this process's rank; returns the metrics (every rank), or ``None`` if stopped early.

    Makes a one-rank process group when run plainly, and destroys a group it made.
    """
    created = not dist.is_initialized()
    ctx = init_distributed(always=True)
    try:
        return _run(job, ctx)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass
class Built:
    """A job's sharded model, its optimizer and what they were built from."""

    model: DistributedModelParallel  # the sharded CtrTrain
    optimizer: CombinedOptimizer  # fused tables + dense Adam
    split: DaySplit
    sizes: dict[str, int]  # rows per ID table
    vectors: ItemVectors | None
    missing_vectors: int  # item rows without a vector


def build(job: TrainJob, ctx: DistContext) -> Built:
    """Builds the variant's model on every rank (running MAKE stage 1 first if needed) and shards it."""
    manifest = Manifest.read(job.world)
    split = split_days(manifest, job.train_until)
    sizes = dict(job.table_sizes) if job.table_sizes is not None else capped_table_sizes(manifest, job.train)
    spec = VARIANT_SPECS[job.model.variant]
    vectors: ItemVectors | None = None
    if spec.uses_vectors():
        if job.vectors is None:
            raise ValueError(f"variant {job.model.variant!r} needs item vectors: pass --vectors FILE")
        vectors = load_vectors(job.vectors, store=job.store)
    mm_dim = vectors.dim if vectors is not None else 0
    make_state = None
    if spec.make and not (job.warm_start is not None and job.warm_start_make):  # else the warm start brings MAKE
        assert vectors is not None
        make_dir = job.make_from
        if make_dir is None:
            make_dir = train_make(
                job.world, vectors, Path(job.out) / MAKE_STAGE1, job.model, job.train, ctx, job.sharding, job.quiet,
                until=job.train_until,
            )
        make_state = load_make_state(make_dir, mm_dim)
    torch.manual_seed(job.train.seed)
    plain = CtrTrain(CtrModel(job.model, sizes, mm_dim, history_slots=manifest.max_history_len))
    missing = 0
    if vectors is not None:
        missing = fill_mm_table(plain.model.mm_arch, vectors, manifest.id_ranges["item_id"])
    if make_state is not None:
        plain.model.make.load_state_dict(make_state)
    dmp, optimizer = shard_and_optimize(plain, ctx, job.sharding, job.train.sparse_lr, job.train.dense_lr)
    return Built(dmp, optimizer, split, sizes, vectors, missing)


def _warm_start(job: TrainJob, built: Built) -> None:
    """Loads the newest checkpoint of ``job.warm_start``, but the frozen table (and MAKE, unless kept)."""
    assert job.warm_start is not None
    found = latest_checkpoint(Path(job.warm_start) / CHECKPOINTS)
    if found is None or not found[1].finished:
        raise ValueError(f"{job.warm_start}: no finished checkpoint to warm-start from (its training did not end)")

    def skip(name: str) -> bool:
        return is_mm_table_param(name) or (not job.warm_start_make and is_make_param(name))

    load_checkpoint(found[0], built.model, built.optimizer, skip=skip)


def _score(job: TrainJob, built: Built, day: int, reader_base: ReaderConfig, ctx: DistContext) -> dict:
    """Test-day metrics of the model as it stands: all impressions, item buckets, new items."""
    preds = predict(built.model, job.world, day, ctx, replace(reader_base, batch_size=job.train.eval_batch_size), quiet=job.quiet)
    return evaluation_report(
        torch.from_numpy(preds.predictions),
        torch.from_numpy(preds.labels),
        torch.from_numpy(preds.user_ids),
        torch.from_numpy(preds.item_ids),
        item_buckets(train_item_counts(Path(job.world), built.split.train)),
        new_item_mask(Path(job.world), day),
    )


def _run(job: TrainJob, ctx: DistContext) -> dict | None:
    out = Path(job.out)
    out.mkdir(parents=True, exist_ok=True)
    built = build(job, ctx)
    dmp, optimizer, split, sizes, vectors = built.model, built.optimizer, built.split, built.sizes, built.vectors
    spec = VARIANT_SPECS[job.model.variant]
    days = tuple(job.days) if job.days is not None else tuple(split.train)

    progress = Progress(epoch=0, step=0, world_size=ctx.world_size)
    log: dict = {"curve": [], "segments": [], "out_of_range_ids": {}}
    reader_base = ReaderConfig(
        batch_size=job.train.batch_size,
        rank=ctx.rank,
        world_size=ctx.world_size,
        seed=job.train.seed,
        prefetch=job.train.prefetch,
        table_sizes=sizes,
        out_of_range=job.train.out_of_range,
    )
    counts: dict[str, int] = {}

    def write_log() -> None:
        merged = {k: log["out_of_range_ids"].get(k, 0) + v for k, v in _sum_over_ranks(counts, ctx).items()}
        if ctx.is_main:
            log.update(
                out_of_range_ids=merged,
                variant=job.model.variant,
                config={"model": asdict(job.model), "train": asdict(job.train)},
                sharding=job.sharding,
                world=str(Path(job.world).resolve()),
                world_manifest_sha=_file_hash(Path(job.world) / "manifest.json"),
                days=list(days),
                table_sizes=sizes,
                warm_start=None if job.warm_start is None else str(Path(job.warm_start).resolve()),
                vectors=None if vectors is None else {**vectors.manifest, "path": str(Path(vectors.path).resolve())},
                items_without_vector=built.missing_vectors,
                make_from=None if not spec.make else str(Path(job.make_from or out / MAKE_STAGE1).resolve()),
                progress=asdict(progress),
            )
            (out / TRAIN_LOG).write_text(json.dumps(log, indent=2))

    found = latest_checkpoint(out / CHECKPOINTS)
    if found is not None:  # resume; the frozen table keeps this job's vectors (the ones its log records)
        load_checkpoint(found[0], dmp, optimizer, skip=is_mm_table_param)
        progress = found[1]
        if (out / TRAIN_LOG).exists():
            log = json.loads((out / TRAIN_LOG).read_text())
        if ctx.is_main and not job.quiet:
            left = "all" if progress.remaining is None else f"{sum(b - a for a, b in progress.remaining)} rows"
            print(f"resuming {out} from {found[0].name} (epoch {progress.epoch}, {left} left, "
                  f"saved by {progress.world_size} rank(s), now {ctx.world_size})")
    elif job.warm_start is not None:
        _warm_start(job, built)
        if split.test is not None:  # the stale model (yesterday's weights, today's vectors) on the test day
            log["warm_start_metrics"] = _score(job, built, split.test, reader_base, ctx)
            write_log()  # kept if the job is stopped and resumed
    last_saved = found[1].step if found is not None else -1

    def checkpoint(p: Progress) -> None:
        nonlocal last_saved
        save_checkpoint(out / CHECKPOINTS, dmp, optimizer, p, ctx)
        last_saved = p.step

    while progress.epoch < job.train.epochs and not progress.finished:
        progress = replace(progress, world_size=ctx.world_size)
        reader = ImpressionReader(job.world, replace(reader_base, days=days, shuffle=True, remaining=progress.remaining))
        reader.set_epoch(progress.epoch)
        every = job.train.checkpoint_every
        result = train_epoch(
            dmp, optimizer, reader, ctx, progress, job.train.log_every,
            on_step=(lambda p: checkpoint(p) if every and p.step % every == 0 else None),
            stop_after_steps=job.train.stop_after_steps,
            desc=f"{job.model.variant}, epoch {progress.epoch}",
            quiet=job.quiet,
        )
        progress = result.progress
        for k, v in reader.out_of_range_counts.items():
            counts[k] = counts.get(k, 0) + v
        log["curve"] += result.curve
        log["segments"].append({"world_size": ctx.world_size, "samples": result.samples, "seconds": result.seconds})
        if result.stopped:
            if last_saved != progress.step:
                checkpoint(progress)
            write_log()
            if ctx.is_main and not job.quiet:
                print(f"stopped after step {progress.step} (stop_after_steps); run again with the same --out to resume")
            return None

    progress = replace(progress, finished=True)
    if last_saved != progress.step:
        checkpoint(progress)
    report = _score(job, built, split.test, reader_base, ctx) if split.test is not None else None
    write_log()
    samples = sum(s["samples"] for s in log["segments"])
    seconds = sum(s["seconds"] for s in log["segments"])
    metrics = {
        "variant": job.model.variant,
        "seed": job.train.seed,
        "test_day": split.test,
        "train_days": [min(days), max(days)],
        "train_samples_per_s": samples / max(seconds, 1e-9),
        "world_size": ctx.world_size,
        "metrics": report,
    }
    if "warm_start_metrics" in log:
        metrics["warm_start_metrics"] = log["warm_start_metrics"]
    if ctx.is_main:
        write_lineage(out.resolve(), Path(job.world).resolve(), days, job.parent, log, job.lineage_extra)
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
        if report is None:
            print(f"{job.model.variant}: trained through day {max(days)} (the world's last: no test day) -> {out}")
        else:
            a = report["all"]  # the one result line, also with --quiet (which only hides progress bars)
            print(f"{job.model.variant}: test day {split.test} AUC {a['auc']:.4f} GAUC {a['gauc']:.4f} NE {a['ne']:.4f} -> {out / METRICS_FILE}")
    return metrics


def _sum_over_ranks(counts: dict[str, int], ctx: DistContext) -> dict[str, int]:
    keys = sorted(counts)
    if ctx.world_size == 1 or not keys:
        return dict(counts)
    t = torch.tensor([counts[k] for k in keys], dtype=torch.int64, device=ctx.device)  # NCCL: CUDA tensors
    dist.all_reduce(t)
    return dict(zip(keys, (int(x) for x in t.tolist())))
