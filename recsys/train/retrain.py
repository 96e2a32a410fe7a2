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
``lineage.json``, ``recsys.data.stats.unseen_item_ids``) rather than refused, so the daily job never stops on them;
once their count matters, train from scratch with larger tables. Hashing was
chosen over TorchRec's managed-collision modules because IDs here are dense
and grow by creation order, so identity rows plus a modulo fallback need no
extra remapping state to checkpoint, and they shard like any table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from recsys.data.projection import PROJECTION_FILE
from recsys.data.schema import Manifest
from recsys.data.stats import check_day_has_impressions, day_rows, unseen_item_ids
from recsys.train.config import SHARDING
from recsys.train.run_folder import Lineage, RetrainNote, RunFolder, RunMetrics
from recsys.train.setup import capped_table_sizes, run_started
from recsys.train.trainer import TrainJob, run_train
from recsys.train.world_check import check_run_world


@dataclass(frozen=True)
class RetrainJob:
    """One ``mmctr retrain`` (fields documented inline)."""

    parent: Path  # yesterday's run folder (of `mmctr train` or `mmctr retrain`; or one of its JSON files), finished
    day: int  # the day to train on
    out: Path  # the new run folder; an existing one is resumed
    vectors: Path | None = None  # item vectors to load (parquet or store); None = the parent's
    store: Path | None = None  # a vector store adding vectors of new items to `vectors`; None = the parent's
    retrain_make: bool = False  # run MAKE stage 1 again (days up to `day`) instead of keeping the parent's MAKE
    skip_days: bool = False  # accept days with impressions between the parent's last and `day`, left out (lineage)
    world: Path | None = None  # dataset directory; None = the parent's
    sharding: str = SHARDING  # ID table sharding of this job
    quiet: bool = False  # no progress bars


def check_ancestors_world(lineage: Lineage, world: Path) -> None:
    """Refuses a world whose days trained by the parent's ancestors no longer hold the rows they trained on.

    The parent's own days are checked with its log (``recsys.train.world_check``);
    rows appended since to an older day of the lineage (a late-arriving batch
    of yesterday's-but-one impressions) would be in no model of it and said
    nowhere. Each ancestor whose folder and log remain is checked the same
    way, back to the first run; a missing one ends the walk (its days cannot
    be checked without its log).

    Raises:
        ValueError: naming the ancestor's log and what differs (``check_run_world``).
    """
    seen: set[str] = set()
    parent = lineage.parent
    while parent is not None and parent not in seen:
        seen.add(parent)
        folder = RunFolder.at(Path(parent))
        if not (folder.train_log_file.is_file() and folder.lineage_file.is_file()):
            return
        log = folder.read_train_log()
        if log.world_schema_sha is not None:
            check_run_world(log, world, f"{folder.train_log_file} (an ancestor of this retrain's parent)")
        parent = folder.read_lineage().parent


def retrain_train_job(job: RetrainJob) -> TrainJob:
    """The :class:`TrainJob` that performs a retrain (module docstring); checks the parent first.

    Raises:
        FileNotFoundError: the parent has no training log or no lineage (not a finished run).
        ValueError: the parent, or an ancestor whose log remains, does not belong to the world
            (``recsys.train.world_check``: another schema, or its days' rows changed; :func:`check_ancestors_world`); ``job.day`` is not a day after the parent's last, inside the world; the world has no
            impressions on ``job.day`` (``recsys.data.stats.check_day_has_impressions``); the parent's
            projection basis (``projection.npz``) is gone while its log records one; days with impressions
            between the parent's last and ``job.day`` without ``job.skip_days`` (naming them and their rows).
    """
    folder = RunFolder.at(job.parent)
    try:
        log = folder.read_train_log()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; --from must name a finished `mmctr train`/`retrain` run") from e
    lineage = folder.read_lineage()
    world = Path(job.world) if job.world is not None else Path(log.world)
    if log.world_schema_sha is not None:  # a parent logged before it: retrained on any world, as then
        check_run_world(log, world, str(folder.train_log_file))
    check_ancestors_world(lineage, world)
    manifest = Manifest.read(world)
    if not manifest.first_day < job.day <= manifest.last_day:
        raise ValueError(f"--day {job.day} is outside the retrainable days {manifest.first_day + 1}..{manifest.last_day} of {world}")
    if job.day <= max(lineage.all_days):
        raise ValueError(
            f"{folder.path} already trained up to day {max(lineage.all_days)} (its days: {lineage.all_days[0]}.."
            f"{lineage.all_days[-1]}); a retrain trains one pass over a later day than its parent's last, got --day {job.day}"
        )
    check_day_has_impressions(world, job.day, manifest, "retrain on")
    last = max(lineage.all_days)
    gap = {d: day_rows(world, d, manifest) for d in range(last + 1, job.day)}
    skipped = tuple(d for d, rows in gap.items() if rows)
    if skipped and not job.skip_days:  # their rows would be in no model of the lineage, with no word
        raise ValueError(
            f"--day {job.day} skips day(s) {', '.join(map(str, skipped))} of {world / 'impressions'} "
            f"({sum(gap.values())} impressions) after {folder.path}'s last trained day {last}: retrain on each day in "
            "turn, or pass --skip-days to leave them out (lineage.json records skipped_days)"
        )
    train = replace(log.train, epochs=1, out_of_range="hash", stop_after_steps=None)
    sizes = log.table_sizes or capped_table_sizes(manifest if Path(log.world) == world else Manifest.read(log.world), train)
    spec = manifest.features
    new, hashed = unseen_item_ids(world, job.day, lineage.all_days, int(sizes[spec.table_of(spec.item_key)]), manifest)
    parent_projection = folder.path / PROJECTION_FILE
    # a retrain resumed holds its own copy (a file in a folder that never began training is not one: setup.run_started)
    resumed_copy = run_started(Path(job.out)) and (Path(job.out) / PROJECTION_FILE).is_file()
    if log.vectors and log.vectors.get("projection") and not parent_projection.is_file() and not resumed_copy:
        raise ValueError(f"{parent_projection}: missing, but {folder.train_log_file} records that the run's vectors went "
                         "through it (vectors.projection); restore it: without it the vectors cannot be projected as "
                         "the parent's weights expect")
    return TrainJob(
        world=world,
        out=Path(job.out),
        model=log.model,
        train=train,
        vectors=Path(job.vectors) if job.vectors is not None else log.vectors_path,
        store=job.store if job.store is not None else log.vectors_store,
        sharding=job.sharding,
        make_from=None if job.retrain_make or not log.make_from else Path(log.make_from),
        quiet=job.quiet,
        train_until=job.day,
        days=(job.day,),
        warm_start=folder.path,
        warm_start_make=not job.retrain_make,
        table_sizes={k: int(v) for k, v in sizes.items()},
        dense_stats=dict(log.dense_stats),  # the parent's inputs' scale, so its weights keep their meaning
        projection=parent_projection if parent_projection.is_file() else None,  # the parent's basis for wide vectors
        parent=lineage,
        retrain=RetrainNote(new_item_ids=new, new_item_ids_hashed=hashed, make_retrained=job.retrain_make,
                            skipped_days=skipped),
    )


def run_retrain(job: RetrainJob) -> RunMetrics | None:
    """Runs the retrain on this process's rank; returns its metrics (None if stopped early).

    ``metrics.json`` gains ``warm_start_metrics`` (the stale model on day + 1) and
    ``lineage.json`` the admission counts of new item IDs.
    """
    return run_train(retrain_train_job(job))


def retrain_summary(metrics: RunMetrics) -> str:
    """One line: the retrained vs the stale model on the next day."""
    if metrics.metrics is None or metrics.warm_start_metrics is None:
        return f"trained through day {metrics.train_days[1]}: no next day with impressions in this world to score"
    new, stale = metrics.metrics["all"], metrics.warm_start_metrics["all"]
    return (
        f"day {metrics.test_day}: retrained GAUC {new['gauc']:.4f} AUC {new['auc']:.4f} vs stale GAUC "
        f"{stale['gauc']:.4f} AUC {stale['auc']:.4f} ({(new['gauc'] / stale['gauc'] - 1) * 100:+.2f}% GAUC)"
    )
