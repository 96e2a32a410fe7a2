"""MAKE stage 1: the multimodal knowledge extractor trained for several epochs on the CTR task.

``MakeModel`` (the frozen multimodal table and MAKE's attention and shallow
MLP) trains on ``DaySplit.make_fit`` through ``DistributedModelParallel``
like every model here, in the same epoch/checkpoint loop as ``mmctr train``
(``loop.run_epochs``). After each epoch :class:`EarlyStopping` measures its
AUC on ``DaySplit.validation``, a day it does not train on (the ID model's
last training day); training stops after ``make_patience`` epochs without a
better one, at ``make_max_epochs``, or before an epoch that would end past
``make_max_seconds`` of stage-1 training, and the best epoch's weights are kept.

Output folder::

    make.pt          # {"state_dict": MAKE's weights (best epoch), "mm_dim": D}; torch.load(weights_only=True)
    make.json        # MakeLog: per-epoch validation AUC and loss, the best epoch, the stop reason
    checkpoints/     # a DCP checkpoint after every epoch (resume continues at the next epoch)

Example::

    >>> log = MakeLog(epochs=(MakeEpoch(0, 0.61, 0.5, 100.0), MakeEpoch(1, 0.60, 0.4, 100.0)), best_epoch=0,
    ...     best_val_auc=0.61)
    >>> stop_reason(log, epoch=1, epochs_done=2, patience=1, max_epochs=5)
    'validation AUC did not improve for 1 epoch(s)'
    >>> stop_reason(log, epoch=1, epochs_done=2, patience=2, max_epochs=2), stop_reason(log, 1, 2, 2, 5)
    ('reached make_max_epochs=2', None)
    >>> timed = replace(log, epochs=tuple(replace(e, seconds=40.0) for e in log.epochs))  # 80 s in 2 epochs
    >>> stop_reason(timed, 1, 2, 2, 5, max_seconds=100.0), stop_reason(timed, 1, 2, 2, 5, max_seconds=130.0)
    ('another epoch would pass make_max_seconds=100 (80 s spent)', None)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from recsys.config_file import config_from_dict
from recsys.data.paths import artefact_path
from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.data.schema import Manifest
from recsys.data.vectors import ItemVectors, table_sha256
from recsys.distributed import DistContext, on_main
from recsys.eval.metrics import ranking_metrics
from recsys.models.config import ModelConfig, differing_fields
from recsys.models.ctr_model import CtrTrain
from recsys.models.make import MakeModel, make_config
from recsys.train.checkpoint import Progress, TrainState
from recsys.train.config import SHARDING, TrainConfig, resolve_train_pipeline
from recsys.train.loop import EpochPlan, EpochResult, predict, run_epochs
from recsys.train.setup import (capped_table_sizes, check_validation_day, fill_mm_table, mm_rows, shard_and_optimize,
                                 split_days)

MAKE_FILE = "make.pt"
MAKE_LOG = "make.json"


def load_make_state(path: Path, mm_dim: int, config: ModelConfig | None = None) -> dict[str, torch.Tensor]:
    """MAKE's stage-1 weights from a stage-1 folder or its ``make.pt``, checked against the vector width D
    and, with ``config``, against the MAKE part of the model config (``make_config``: the attention's form
    and widths, the softmax, the MLP) that ``make.json`` beside it records.

    Raises:
        FileNotFoundError: no ``make.pt`` there.
        ValueError: MAKE was trained on vectors of another width, or in another form than ``config``'s
            (:func:`check_stage1_form`, naming the file and each field that differs).
    """
    file = artefact_path(Path(path), MAKE_FILE)
    if not file.exists():
        raise FileNotFoundError(f"{file}: no MAKE stage-1 weights; run stage 1 (mmctr train --variant make) first")
    saved = torch.load(file, weights_only=True, map_location="cpu")
    if int(saved["mm_dim"]) != mm_dim:
        raise ValueError(f"{file}: MAKE was trained on D={int(saved['mm_dim'])} vectors, these vectors have D={mm_dim}")
    if config is not None:
        check_stage1_form(file.with_name(MAKE_LOG), config, file)
    return saved["state_dict"]


def check_stage1_form(log_file: Path, config: ModelConfig, what: Path) -> None:
    """Refuses a stage 1 (finished or to be resumed) whose ``make.json`` records MAKE in another form than
    ``config``'s: ``make_config``'s fields but the runtime switches (``differing_fields``). Nothing is compared where
    there is no ``make.json`` (a bare ``make.pt``) or it records no config (written before configs were).

    Raises:
        ValueError: naming ``what`` and each field that differs; ``make.json`` unreadable (naming it).
    """
    if not log_file.exists():
        return
    logged = MakeLog.read(log_file).config
    if not logged or "model" not in logged:
        return
    was = make_config(config_from_dict(ModelConfig, logged["model"], str(log_file), section="config.model"))
    now = make_config(config)
    differ = differing_fields(was, now)
    if differ:
        raise ValueError(f"{what}: MAKE stage 1 was trained in another form ({'; '.join(differ)}); train stage 1 "
                         "again with this config (into a new folder), or give the model config it was trained with")


def check_stage1_table(log_file: Path, sha: str | None, table: Path, what: Path) -> None:
    """Refuses to resume a stopped stage 1 on a vector table other than the one its ``make.json`` records.

    A stage-1 checkpoint holds its frozen table, so a resume on another table
    would finish MAKE on the vectors it began on while stage 2 trains on the
    new ones. Nothing is compared where either SHA-256 is unknown (a vector
    store; a log written before tables were recorded).

    Raises:
        ValueError: naming ``what``, the table and both SHA-256 prefixes.
    """
    if sha is None or not log_file.exists():
        return
    was = MakeLog.read(log_file).table_sha256
    if was is not None and was != sha:
        raise ValueError(f"{what}: MAKE stage 1 began on another vector table (SHA-256 {was[:12]}..., its "
                         f"{log_file.name}), but {table} now has {sha[:12]}...; resume it with the table it began "
                         "on, or remove the stage-1 folder to train stage 1 again")


def stage1_table_sha256(path: Path) -> str | None:
    """The SHA-256 of the vector table a finished stage 1 (a folder or its ``make.pt``) was trained on, as its
    ``make.json`` records it; ``None`` where none is recorded (no log, a store, a log from before)."""
    log_file = artefact_path(Path(path), MAKE_FILE).with_name(MAKE_LOG)
    return MakeLog.read(log_file).table_sha256 if log_file.exists() else None


@dataclass(frozen=True)
class Stage1Job:
    """One MAKE stage 1 (fields documented inline)."""

    world: Path  # the dataset directory
    out: Path  # the stage-1 folder (module docstring)
    model: ModelConfig  # MAKE's widths (attention_*, make_hidden)
    train: TrainConfig  # make_* epochs, patience and learning rate, batch size, seed
    sharding: str = SHARDING  # how the frozen table is sharded
    until: int | None = None  # the ID model's last training day (setup.split_days): fit before it, validate on it
    quiet: bool = False  # no progress bars
    dense_stats: dict[str, tuple[float, float]] | None = None  # standardised dense features (the ID model's job's)


@dataclass(frozen=True)
class MakeEpoch:
    """One epoch of stage 1 in ``make.json``."""

    epoch: int
    val_auc: float  # AUC on the validation day (never NaN: EarlyStopping refuses an undefined one)
    loss: float | None  # the epoch's last loss-curve point (None: none, or not a number)
    samples_per_s: float
    seconds: float = 0.0  # the epoch's training time (0.0 in logs written before it was recorded)
    rows: int = 0  # impressions trained in the epoch, over all ranks: the fit days' rows, checked (loop.RowCountError)
    validation_rows: int = 0  # impressions of the validation day scored for val_auc (0: logs written before)


@dataclass(frozen=True)
class MakeLog:
    """``make.json``: the epochs so far, the best one and why stage 1 stopped (None while it runs)."""

    epochs: tuple[MakeEpoch, ...] = ()
    best_epoch: int | None = None
    best_val_auc: float | None = None
    stopped: str | None = None
    config: dict[str, Any] | None = None  # {"model": ModelConfig, "train": TrainConfig} as dicts
    table_sha256: str | None = None  # the vector table's SHA-256 (data.vectors.table_sha256); None: a store, or older logs

    def write(self, file: Path) -> None:
        """Writes the log as JSON (atomically): a float that is not finite (NaN, inf) as ``null``, never bare;
        ``config`` and ``table_sha256`` only where set."""
        tmp = file.parent / f".{file.name}.tmp"
        raw = {k: v for k, v in asdict(self).items() if v is not None or k not in ("config", "table_sha256")}
        tmp.write_text(json.dumps(_finite(raw), indent=2, allow_nan=False))
        os.replace(tmp, file)

    @staticmethod
    def read(file: Path) -> MakeLog:
        raw = json.loads(Path(file).read_text())
        try:
            return MakeLog(epochs=tuple(MakeEpoch(**e) for e in raw["epochs"]), best_epoch=raw["best_epoch"],
                           best_val_auc=raw["best_val_auc"], stopped=raw["stopped"], config=raw.get("config"),
                           table_sha256=raw.get("table_sha256"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{file}: not a MAKE stage-1 log ({e!r}); remove the stage-1 folder to start over") from e


def _finite(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists, tuples, scalars) with every non-finite float replaced by ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def stop_reason(
    log: MakeLog, epoch: int, epochs_done: int, patience: int, max_epochs: int, max_seconds: float | None = None
) -> str | None:
    """Why stage 1 stops after ``epoch`` (``epochs_done`` epochs complete), or ``None`` to go on.

    With ``max_seconds``, no epoch starts that would end past it: the mean
    epoch time of ``log.epochs`` so far is the next one's estimate.
    """
    if log.best_epoch is not None and epoch - log.best_epoch >= patience:
        return f"validation AUC did not improve for {patience} epoch(s)"
    if epochs_done >= max_epochs:
        return f"reached make_max_epochs={max_epochs}"
    if max_seconds is not None and log.epochs:
        spent = sum(e.seconds for e in log.epochs)
        if spent + spent / len(log.epochs) > max_seconds:
            return f"another epoch would pass make_max_seconds={max_seconds:g} ({spent:.0f} s spent)"
    return None


@dataclass
class EarlyStopping:
    """Stage 1's ``loop.EpochHook``: validation AUC after each epoch, the best weights kept, stop on patience."""

    job: Stage1Job
    state: TrainState  # the sharded CtrTrain(MakeModel) and its checkpoints
    validation: ReaderConfig  # reader of the validation day (eval batch size)
    day: int  # the validation day
    mm_dim: int  # D, saved with the weights
    log: MakeLog = field(default_factory=MakeLog)
    table_sha256: str | None = None  # of the vector table stage 1 trains on, recorded in make.json

    @property
    def best_file(self) -> Path:
        return Path(self.job.out) / f".{MAKE_FILE}.best"

    def done(self) -> bool:
        return self.log.stopped is not None

    def after_epoch(self, epoch: int, result: EpochResult, reader: ImpressionReader) -> None:
        """Scores the validation day, keeps the weights of a better AUC, writes ``make.json`` and decides the stop.

        Raises:
            ValueError: the validation AUC is undefined (NaN: the day holds no
                impressions or one label only; ``setup.check_validation_day``
                refuses such a day before training), naming the day; nothing
                is written for the epoch.
        """
        ctx, cfg = self.state.ctx, self.job.train
        val = predict(self.state.model, self.job.world, self.day, ctx, self.validation, quiet=True)
        auc = ranking_metrics(torch.from_numpy(val.predictions), torch.from_numpy(val.labels),
                              torch.from_numpy(val.user_ids))["auc"]
        if math.isnan(auc):  # NaN compares false with everything: it would neither win nor lose, silently
            raise ValueError(f"{Path(self.job.world) / 'impressions'}: MAKE stage 1 epoch {epoch}: validation AUC on "
                             f"day {self.day} is undefined ({len(val.labels)} impressions, {int(val.labels.sum())} "
                             "clicks): it needs both clicks and non-clicks to pick MAKE's best epoch")
        point = MakeEpoch(epoch=epoch, val_auc=auc, loss=result.curve[-1]["loss"] if result.curve else None,
                          samples_per_s=result.samples / max(result.seconds, 1e-9), seconds=result.seconds,
                          rows=result.samples, validation_rows=len(val.labels))
        log = replace(self.log, epochs=(*self.log.epochs, point))
        if log.best_val_auc is None or auc > log.best_val_auc:
            log = replace(log, best_epoch=epoch, best_val_auc=auc)
            self._save_best()
        stopped = stop_reason(log, epoch, result.progress.epoch, cfg.make_patience, cfg.make_max_epochs,
                              cfg.make_max_seconds)
        self.log = replace(log, stopped=stopped, config={"model": asdict(self.job.model), "train": asdict(cfg)},
                           table_sha256=self.table_sha256)
        if ctx.is_main:
            self.log.write(Path(self.job.out) / MAKE_LOG)
            if not self.job.quiet:
                print(f"MAKE stage 1: epoch {epoch} validation AUC {auc:.4f} "
                      f"(best {self.log.best_val_auc:.4f}, epoch {self.log.best_epoch})")

    def _save_best(self) -> None:
        if self.state.ctx.is_main:
            make = self.state.model.module.model.make
            weights = {k: v.detach().cpu().clone() for k, v in make.state_dict().items()}
            torch.save({"state_dict": weights, "mm_dim": self.mm_dim}, self.best_file)


def train_make(job: Stage1Job, vectors: ItemVectors, manifest: Manifest, ctx: DistContext) -> Path:
    """Runs (or resumes, or skips when done) MAKE stage 1 into ``job.out``; returns ``job.out``.

    Args:
        job (Stage1Job): the world, folder, configs and days.
        vectors (ItemVectors): the frozen item vectors (width D).
        manifest (Manifest): the world's manifest.
        ctx (DistContext): rank, world size, device.

    Returns:
        Path: the stage-1 folder, holding ``make.pt``.

    Raises:
        ValueError: a stopped stage 1 in ``job.out`` of another MAKE form (:func:`check_stage1_form`)
            or begun on another vector table (:func:`check_stage1_table`);
            no fit day before the validation day; a validation day
            without impressions or with one label only
            (``setup.check_validation_day``), before any training; an epoch
            whose validation AUC is undefined (``EarlyStopping.after_epoch``).
    """
    out = Path(job.out)
    if (out / MAKE_FILE).exists():
        return out
    check_stage1_form(out / MAKE_LOG, job.model, out)  # a stopped stage 1 resumes only in its own form
    sha = table_sha256(vectors.path)
    check_stage1_table(out / MAKE_LOG, sha, vectors.path, out)  # and on the table it began on
    out.mkdir(parents=True, exist_ok=True)
    split = split_days(manifest, job.until)
    if not len(split.make_fit):
        raise ValueError(
            f"{job.world}: MAKE stage 1 needs a fit day and a validation day before the test day; "
            f"this split trains on day {split.validation} only (train id_only or simtier, or add a day)"
        )
    check_validation_day(Path(job.world), manifest, split.validation)  # its AUC picks the epoch: refused before training
    sizes = capped_table_sizes(manifest, job.train)
    torch.manual_seed(job.train.seed)
    rows = mm_rows(manifest, sizes, vectors)
    plain = CtrTrain(MakeModel(job.model, manifest.features, rows, vectors.dim, history_slots=manifest.max_history_len))
    fill_mm_table(plain.model.mm_arch, vectors, manifest)
    dmp, optimizer = shard_and_optimize(plain, ctx, job.sharding, job.train.sparse_lr, job.train.make_lr)
    state = TrainState(out / "checkpoints", dmp, optimizer, ctx)
    found = state.resume()
    progress = found[1] if found is not None else Progress(epoch=0, step=0, world_size=ctx.world_size)
    reader = ReaderConfig(batch_size=job.train.batch_size, rank=ctx.rank, world_size=ctx.world_size,
                          seed=job.train.seed, prefetch=job.train.prefetch, table_sizes=sizes,
                          out_of_range=job.train.out_of_range, dense_stats=job.dense_stats or None)
    log = MakeLog.read(out / MAKE_LOG) if found is not None else MakeLog()
    # a stage 1 begun before tables were recorded keeps recording none: the table it began on is unknown
    known = sha if found is None or log.table_sha256 is not None else None
    hook = EarlyStopping(job, state, replace(reader, batch_size=job.train.eval_batch_size), split.validation,
                         vectors.dim, log=log, table_sha256=known)
    plan = EpochPlan(root=Path(job.world), reader=reader, days=tuple(split.make_fit), epochs=job.train.make_max_epochs,
                     log_every=job.train.log_every, checkpoint_each_epoch=True, desc="MAKE stage 1", quiet=job.quiet,
                     pipeline=resolve_train_pipeline(job.train.train_pipeline, ctx.world_size, ctx.device.type))
    run_epochs(state, progress, plan, hook)
    on_main(ctx, lambda: os.replace(hook.best_file, out / MAKE_FILE))
    return out
