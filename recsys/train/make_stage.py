"""MAKE stage 1: the multimodal knowledge extractor trained for several epochs on the CTR task.

``MakeModel`` (the frozen multimodal table and MAKE's attention and shallow
MLP) trains on ``DaySplit.make_fit`` through ``DistributedModelParallel``
like every model here. After each epoch its AUC on ``DaySplit.validation``
is measured; training stops after ``make_patience`` epochs without a better
one (or at ``make_max_epochs``), and the best epoch's weights are kept.

Output folder::

    make.pt          # {"state_dict": MAKE's weights (best epoch), "mm_dim": D}; torch.load(weights_only=True)
    make.json        # per-epoch validation AUC and loss, the best epoch, the stop reason
    checkpoints/     # a DCP checkpoint after every epoch (resume continues at the next epoch)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import torch

from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.data.schema import Manifest
from recsys.distributed import DistContext, barrier
from recsys.models.config import ModelConfig
from recsys.models.ctr_model import CtrTrain
from recsys.models.make import MakeModel
from recsys.train.checkpoint import Progress, latest_checkpoint, load_checkpoint, save_checkpoint
from recsys.train.config import TrainConfig
from recsys.train.loop import predict, train_epoch
from recsys.train.metrics import ranking_metrics
from recsys.train.setup import ItemVectors, capped_table_sizes, fill_mm_table, shard_and_optimize, split_days

MAKE_FILE = "make.pt"
MAKE_LOG = "make.json"


def load_make_state(folder: Path, mm_dim: int) -> dict[str, torch.Tensor]:
    """MAKE's stage-1 weights from a stage-1 folder, checked against the vector width D."""
    file = Path(folder) / MAKE_FILE
    if not file.exists():
        raise FileNotFoundError(f"{file}: no MAKE stage-1 weights; run stage 1 (mmctr train --variant make) first")
    saved = torch.load(file, weights_only=True, map_location="cpu")
    if int(saved["mm_dim"]) != mm_dim:
        raise ValueError(f"{file}: MAKE was trained on D={int(saved['mm_dim'])} vectors, these vectors have D={mm_dim}")
    return saved["state_dict"]


def train_make(
    world: Path,
    vectors: ItemVectors,
    out: Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    ctx: DistContext,
    sharding: str,
    quiet: bool = False,
    until: int | None = None,
) -> Path:
    """Runs (or resumes, or skips when done) MAKE stage 1 into ``out``; returns ``out``.

    Args:
        world (Path): the dataset directory.
        vectors (ItemVectors): the frozen item vectors.
        out (Path): the stage-1 folder (module docstring).
        model_config (ModelConfig): MAKE's widths (``attention_*``, ``make_hidden``).
        train_config (TrainConfig): ``make_*`` epochs, patience and learning rate,
            batch size, seed.
        ctx (DistContext): rank, world size, device.
        sharding (str): how the frozen table is sharded.
        quiet (bool): no progress bars.
        until (int | None): the ID model's last training day (``setup.split_days``):
            stage 1 fits on the days before it and is validated on it.
    """
    out = Path(out)
    if (out / MAKE_FILE).exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.read(world)
    split = split_days(manifest, until)
    sizes = capped_table_sizes(manifest, train_config)
    torch.manual_seed(train_config.seed)
    plain = CtrTrain(MakeModel(model_config, sizes["item_id"], vectors.dim, history_slots=manifest.max_history_len))
    fill_mm_table(plain.model.mm_arch, vectors, manifest.id_ranges["item_id"])
    dmp, optimizer = shard_and_optimize(plain, ctx, sharding, train_config.sparse_lr, train_config.make_lr)
    log_file, best_file = out / MAKE_LOG, out / f".{MAKE_FILE}.best"
    progress = Progress(epoch=0, step=0, world_size=ctx.world_size)
    log: dict = {"epochs": [], "best_epoch": None, "best_val_auc": None, "stopped": None}
    found = latest_checkpoint(out / "checkpoints")
    if found is not None:
        load_checkpoint(found[0], dmp, optimizer)
        progress = replace(found[1], world_size=ctx.world_size)
        log = json.loads(log_file.read_text())
    reader_base = ReaderConfig(
        batch_size=train_config.batch_size,
        rank=ctx.rank,
        world_size=ctx.world_size,
        seed=train_config.seed,
        prefetch=train_config.prefetch,
        table_sizes=sizes,
        out_of_range=train_config.out_of_range,
    )
    while progress.epoch < train_config.make_max_epochs and log["stopped"] is None:
        reader = ImpressionReader(world, replace(reader_base, days=split.make_fit, shuffle=True, remaining=progress.remaining))
        reader.set_epoch(progress.epoch)
        epoch = progress.epoch
        result = train_epoch(
            dmp, optimizer, reader, ctx, progress, train_config.log_every,
            desc=f"MAKE stage 1, epoch {epoch}", quiet=quiet,
        )
        progress = result.progress
        val = predict(dmp, world, split.validation, ctx, replace(reader_base, batch_size=train_config.eval_batch_size), quiet=True)
        auc = ranking_metrics(torch.from_numpy(val.predictions), torch.from_numpy(val.labels), torch.from_numpy(val.user_ids))["auc"]
        log["epochs"].append({"epoch": epoch, "val_auc": auc, "loss": result.curve[-1]["loss"] if result.curve else None,
                              "samples_per_s": result.samples / max(result.seconds, 1e-9)})
        if log["best_val_auc"] is None or auc > log["best_val_auc"]:
            log["best_epoch"], log["best_val_auc"] = epoch, auc
            if ctx.is_main:
                state = {k: v.detach().cpu().clone() for k, v in dmp.module.model.make.state_dict().items()}
                torch.save({"state_dict": state, "mm_dim": vectors.dim}, best_file)
        if epoch - log["best_epoch"] >= train_config.make_patience:
            log["stopped"] = f"validation AUC did not improve for {train_config.make_patience} epoch(s)"
        elif progress.epoch >= train_config.make_max_epochs:
            log["stopped"] = f"reached make_max_epochs={train_config.make_max_epochs}"
        if ctx.is_main:
            log["config"] = {"model": asdict(model_config), "train": asdict(train_config)}
            log_file.write_text(json.dumps(log, indent=2))
        save_checkpoint(out / "checkpoints", dmp, optimizer, progress, ctx)
        if not quiet and ctx.is_main:
            print(f"MAKE stage 1: epoch {epoch} validation AUC {auc:.4f} (best {log['best_val_auc']:.4f}, epoch {log['best_epoch']})")
    if ctx.is_main:
        os.replace(best_file, out / MAKE_FILE)
    barrier()
    return out
