"""Distributed checkpoints of a sharded model and its optimizer, with the data position.

Layout under a run's ``checkpoints/`` folder::

    checkpoints/
      step-00000120/        # torch.distributed.checkpoint (DCP) files of
        .metadata           #   {"model": DMP state_dict, "optim": optimizer state_dict}
        __0_0.distcp ...
        progress.json       # Progress: where training stands (written last)
      LATEST                # name of the newest complete checkpoint folder

A checkpoint counts only once ``LATEST`` names it (written by rank 0 after
every rank has saved, by an atomic rename), so a job killed mid-save resumes
from the previous one. Only the newest ``keep`` checkpoints stay.

Loading goes through DCP's resharding: the ID tables' ``ShardedTensor``s and
the fused optimizer's row-wise state are read into whatever sharding plan
and world size the resuming job has, so a 2-rank checkpoint loads on 1 rank.

Data position. ``Progress.remaining`` is what the current epoch has left:
intervals of the epoch's global row order (``recsys.data.plan``), which does
not depend on the world size. A job resumed on any number of ranks reads
exactly those rows (``ReaderConfig(remaining=...)``), so every impression is
trained once per epoch across stops and world-size changes.

:class:`TrainState` ties a sharded model and its optimizer to their
checkpoint folder: it resumes from the newest checkpoint and remembers the
last step saved, so a trainer saves at the end only what is not saved yet.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch import nn
from torchrec.optim.keyed import CombinedOptimizer

from recsys.data.plan import normalize as normalize_rows
from recsys.distributed import DistContext, barrier, on_main
from recsys.train.sharding import DENSE_OPTIMIZER

PROGRESS_FILE = "progress.json"
LATEST_FILE = "LATEST"


@dataclass(frozen=True)
class Progress:
    """Where training stands when a checkpoint is taken.

    Example::

        >>> p = Progress(epoch=0, step=30, world_size=2, remaining=[[4096, 8000], [12096, 16000]])
        >>> p.remaining, Progress.from_json(json.loads(json.dumps(dataclasses.asdict(p)))) == p
        (((4096, 8000), (12096, 16000)), True)
    """

    epoch: int  # current epoch (0-based)
    step: int  # optimizer steps done in all
    world_size: int  # ranks of the job that saved it
    # rows of `epoch` still to train: global [start, end) intervals (recsys.data.plan); None = all
    remaining: tuple[tuple[int, int], ...] | None = None
    finished: bool = False  # every epoch done
    # impressions these weights were trained on, counted by the loop over all ranks and jobs of the run, and the
    # seconds of those steps (rank 0's): what a resumed run's log holds, whatever its killed jobs left unwritten.
    # None: a checkpoint written before they were recorded
    trained: int | None = 0
    seconds: float = dataclasses.field(default=0.0, compare=False)  # rank 0's clock; ranks differ: not compared

    def __post_init__(self) -> None:
        if self.remaining is not None:  # lists (from JSON) become the canonical tuple
            object.__setattr__(self, "remaining", normalize_rows(self.remaining))

    @staticmethod
    def from_json(raw: dict) -> "Progress":
        """A ``Progress`` from its JSON object; refuses a pre-``remaining`` one stopped mid-epoch."""
        raw = dict(raw)
        batch = raw.pop("batch", None)
        if batch:
            raise ValueError(
                f"progress records batch {batch} of epoch {raw.get('epoch')} (a batch count, before row "
                f"positions were recorded); it cannot be resumed exactly, start the run again"
            )
        raw.setdefault("trained", None)  # older checkpoints did not count: unknown, not zero
        return Progress(**raw)


def save_checkpoint(
    root: Path, model: nn.Module, optimizer: CombinedOptimizer, progress: Progress, ctx: DistContext, keep: int = 2
) -> Path:
    """Saves model and optimizer state on every rank, then marks the checkpoint complete.

    Returns:
        Path: the checkpoint folder.
    """
    path = Path(root) / f"step-{progress.step:08d}"
    dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=path)
    barrier()

    def mark_complete() -> None:
        (path / PROGRESS_FILE).write_text(json.dumps(dataclasses.asdict(progress), indent=2))
        tmp = Path(root) / f".{LATEST_FILE}.tmp"
        tmp.write_text(path.name)
        os.replace(tmp, Path(root) / LATEST_FILE)
        old = sorted(p for p in Path(root).glob("step-*") if p.is_dir() and p.name != path.name)
        for stale in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)

    on_main(ctx, mark_complete)
    return path


def latest_checkpoint(root: Path) -> tuple[Path, Progress] | None:
    """The newest complete checkpoint under ``root`` and its progress, or ``None``."""
    marker = Path(root) / LATEST_FILE
    if not marker.exists():
        return None
    path = Path(root) / marker.read_text().strip()
    try:
        raw = json.loads((path / PROGRESS_FILE).read_text())
        return path, Progress.from_json(raw)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: checkpoint named by {marker} is unreadable ({e}); remove {marker} to start over") from e


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: CombinedOptimizer, skip: Callable[[str], bool] | None = None
) -> None:
    """Loads a checkpoint in place into a sharded model and its optimizer (any world size).

    The dense optimizer's state is lazy; it is initialised first (a zero-gradient
    step that leaves the weights unchanged) so DCP has tensors to load into.

    Args:
        path (Path): a checkpoint folder (``step-NNNNNNNN``).
        model (nn.Module): the sharded model.
        optimizer (CombinedOptimizer): its optimizer.
        skip (Callable[[str], bool] | None): parameter names (fully qualified,
            as in ``model.state_dict()``) whose weights and optimizer state keep
            their current values: a warm start that reloads the frozen
            multimodal table, or retrains MAKE, skips them.
    """
    for name, opt in optimizer.optimizers:
        if name == DENSE_OPTIMIZER and not any(opt.state.values()):
            opt.init_state()
    full = {"model": model.state_dict(), "optim": optimizer.state_dict()}
    wanted = full
    if skip is not None:  # load the rest in place; the skipped entries keep the current tensors
        wanted = {
            "model": {k: v for k, v in full["model"].items() if not skip(k)},
            "optim": {**full["optim"], "state": {k: v for k, v in full["optim"]["state"].items() if not skip(k)}},
        }
    dcp.load(wanted, checkpoint_id=Path(path))
    if skip is not None:
        full["model"].update(wanted["model"])
        full["optim"]["state"].update(wanted["optim"]["state"])
    model.load_state_dict(full["model"])
    optimizer.load_state_dict(full["optim"])


def load_model_weights(path: Path, model: nn.Module, skip: Callable[[str], bool] | None = None) -> int:
    """Loads a checkpoint's model weights in place into an unsharded model (no process group needed).

    DCP reads every table's shards (from any world size and sharding) into the
    plain module's full tensors; the optimizer state is not read. The online
    ranker's load (``serving.ranker``).

    Args:
        path (Path): a checkpoint folder (``step-NNNNNNNN``).
        model (nn.Module): the plain model the checkpoint's ``model`` entry was saved from (``CtrTrain``).
        skip (Callable[[str], bool] | None): state entries that keep their current values (the frozen table).

    Returns:
        int: the number of state entries loaded.

    Raises:
        RuntimeError: the checkpoint lacks an entry of ``model`` or has another shape (DCP's error).
    """
    state = {k: v for k, v in model.state_dict().items() if skip is None or not skip(k)}
    dcp.load({"model": state}, checkpoint_id=Path(path), no_dist=True)
    model.load_state_dict(state, strict=False)
    return len(state)


class TrainState:
    """A sharded model, its optimizer and the checkpoint folder they are saved to and resumed from.

    Args:
        root (Path): the checkpoints folder (module docstring).
        model (nn.Module): the sharded model.
        optimizer (CombinedOptimizer): its optimizer.
        ctx (DistContext): rank, world size, device.
    """

    def __init__(self, root: Path, model: nn.Module, optimizer: CombinedOptimizer, ctx: DistContext) -> None:
        self.root = Path(root)
        self.model = model
        self.optimizer = optimizer
        self.ctx = ctx
        self.last_saved: tuple[Path, Progress] | None = None  # the newest checkpoint this job saved or resumed from

    def resume(self, skip: Callable[[str], bool] | None = None) -> tuple[Path, Progress] | None:
        """Loads the newest complete checkpoint under ``root`` (``skip`` as for :func:`load_checkpoint`).

        Returns:
            tuple[Path, Progress] | None: the checkpoint folder and its progress, or ``None`` when there is none.
        """
        found = latest_checkpoint(self.root)
        if found is not None:
            load_checkpoint(found[0], self.model, self.optimizer, skip=skip)
            self.last_saved = found
        return found

    def save(self, progress: Progress) -> None:
        """Saves a checkpoint at ``progress`` on every rank (:func:`save_checkpoint`)."""
        self.last_saved = (save_checkpoint(self.root, self.model, self.optimizer, progress, self.ctx), progress)

    def save_if_new(self, progress: Progress) -> None:
        """Saves a checkpoint unless the newest one holds these weights (same step) and this progress.

        At the same step with another progress (the last step's checkpoint, now
        ``finished``), only that checkpoint's ``progress.json`` is replaced,
        atomically: the weights are the same, and a run whose last step was
        checkpointed by ``checkpoint_every`` still ends marked finished.
        """
        if self.last_saved is None or self.last_saved[1].step != progress.step:
            self.save(progress)
            return
        if self.last_saved[1] != progress:
            path = self.last_saved[0]
            def mark() -> None:
                tmp = path / f".{PROGRESS_FILE}.tmp"
                tmp.write_text(json.dumps(dataclasses.asdict(progress), indent=2))
                os.replace(tmp, path / PROGRESS_FILE)

            on_main(self.ctx, mark)
            self.last_saved = (path, progress)
