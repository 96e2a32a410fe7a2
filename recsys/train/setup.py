"""What every training stage sets up: the day split, table sizes, item vectors, the sharded model.

The day split (:func:`split_days`, in ``recsys.data.days`` so the torch-free
commands read the same days): the ID model trains on ``first_day .. until``
and is tested on ``until + 1``; MAKE's stage 1 fits on ``first_day .. until -
1`` and is validated on ``until``, where its AUC decides when to stop (a
``until`` without impressions, or with one label only, is refused:
:func:`check_validation_day`).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.keyed import CombinedOptimizer

from recsys.data.days import DaySplit, split_days  # noqa: F401  (re-exported: the training stages' day split)
from recsys.data.row_groups import select_row_groups
from recsys.data.schema import Manifest, table_files
from recsys.data.side import label_fault, read_column
from recsys.data.stats import item_index
from recsys.data.projection import PROJECTION_FILE, fit_projection, load_projection, project_rows, save_projection
from recsys.data.vectors import ItemVectors
from recsys.distributed import DistContext, on_main
from recsys.models.mm_table import MultimodalArch
from recsys.train.config import TrainConfig
from recsys.train.run_folder import RunFolder
from recsys.train.sharding import FusedOptimConfig, make_optimizer, shard_model


def check_validation_day(world: Path, manifest: Manifest, day: int) -> int:
    """Refuses MAKE stage 1's validation ``day`` when its AUC is undefined: no impressions, or one label only.

    Stage 1 keeps the epoch of the best validation AUC (``make_stage``); on a
    day without impressions, or whose impressions are all clicks or all
    non-clicks, there is no (click, non-click) pair and the AUC is undefined,
    so stage 1 would pick its weights on nothing. The day's label column is
    read once, file by file (row groups whose day statistics exclude the day
    are skipped): its rows and both classes come from that one pass.

    Args:
        world (Path): the dataset directory.
        manifest (Manifest): its manifest.
        day (int): the validation day (``DaySplit.validation``).

    Returns:
        int: the impressions of ``day``.

    Raises:
        ValueError: ``day`` holds no impressions, or only clicks or only
            non-clicks (naming the day and the world, and what to do); an
            impressions file without the day or label column, or unreadable
            (naming the file).
    """
    spec = manifest.features
    labels = []
    for path in table_files(Path(world), "impressions"):
        try:  # partitioning=None: a folder such as day=6/ above the file is not a column
            part = pq.read_table(path, columns=[spec.label], filters=[(spec.day, "=", day)], partitioning=None)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path}: cannot read columns {spec.day!r}, {spec.label!r} of day {day} ({e})") from e
        labels.append(part.column(0).to_numpy(zero_copy_only=False))
    y = np.concatenate(labels) if labels else np.zeros(0)
    clicks, non_clicks = int((y == 1).sum()), int((y == 0).sum())
    if clicks and non_clicks:
        return len(y)
    held = ("no impressions" if not len(y) else
            f"{len(y)} impressions, all {'clicks' if clicks else 'non-clicks'} ({spec.label} = {1 if clicks else 0})")
    before = f", the day before the test day {day + 1}" if day < manifest.last_day else ""
    raise ValueError(
        f"{Path(world) / 'impressions'}: MAKE stage 1 validates on day {day} (the ID model's last training day{before}), "
        f"which holds {held}: its validation AUC, which picks MAKE's best epoch, is undefined. Use a world whose "
        f"day {day} holds both clicks and non-clicks (at least one labelled day before the test day with both "
        "classes): `mmctr train --train-until D` with an earlier day D that does (the test day becomes D + 1); "
        "`mmctr retrain` without --retrain-make (MAKE kept from the parent); or a variant without MAKE (id_only, simtier)"
    )


def check_day_labels(world: Path, manifest: Manifest, day: int) -> int:
    """Refuses a label the reader would refuse in the row groups holding ``day``, before any training.

    The test day is read only when the trained model is scored, so a null or
    a label not exactly 0 or 1 there would stop a finished training job at its
    last step. The reader checks every row of each row group it reads
    (``ImpressionReader``); this reads the same row groups (the row-group plan
    of ``select_row_groups``: only those holding ``day``) and checks their day
    and label columns with the same rule (``side.label_fault``) and words.

    Args:
        world (Path): the dataset directory.
        manifest (Manifest): its manifest.
        day (int): the day (a job's test day).

    Returns:
        int: the impressions of ``day``.

    Raises:
        ValueError: a null day or label, or a label not exactly 0 or 1, naming
            the file, its row group and row, and the column; a file without the
            columns (naming it).
    """
    spec = manifest.features
    files = table_files(Path(world), "impressions")
    columns = [spec.day, spec.label]
    rows = 0
    for rg in select_row_groups(files, spec.day, np.array([day], dtype=np.int64), columns):
        where = rg.where(files)
        try:
            table = pq.ParquetFile(files[rg.file]).read_row_group(rg.index, columns=columns)
        except (KeyError, pa.ArrowInvalid) as e:
            raise ValueError(f"{where}: {e}; the feature spec needs impressions columns {columns}") from e
        read_column(table, spec.day, where, rg.first)
        read_column(table, spec.label, where, rg.first, fault=label_fault)
        rows += rg.rows
    return rows


def capped_table_sizes(manifest: Manifest, config: TrainConfig) -> dict[str, int]:
    """Rows per table (``FeatureSpec.table_rows``): identity tables capped at ``config.max_table_rows``."""
    return manifest.features.table_rows(manifest.id_ranges, cap=config.max_table_rows)


def mm_rows(manifest: Manifest, sizes: dict[str, int], vectors: ItemVectors) -> int:
    """Rows of the frozen multimodal table: the item table's when item IDs are rows, else vectors + 1."""
    spec = manifest.features
    item_table = spec.table(spec.table_of(spec.item_key))
    return sizes[item_table.name] if item_table.ids == "identity" else len(vectors.item_ids) + 1


# A basis keeping under this share of what it kept of its own table marks vectors of another encoder: a retrain's
# new items from the same encoder keep about the same share (MiniLM titles at K = 64: 63%; a random 768-d table: 8%).
ENERGY_DROP = 0.5
# Fitted on under this many items per kept dimension, the share a basis keeps of its own table overstates what it keeps
# of new items from the same encoder (384-d, K = 64: 0.30-0.53 of it from 70-150 items, >= 0.94 from 1,000): no check.
ENERGY_MIN_ITEMS_PER_DIM = 10


def _logged_projection(out: Path) -> Path | None:
    """The basis file ``out``'s train log records (``vectors.projection.file``), if it records one."""
    try:
        vectors = RunFolder(Path(out)).read_train_log().vectors or {}
    except (FileNotFoundError, ValueError):  # no log yet, or one this run cannot read: no basis named
        return None
    file = (vectors.get("projection") or {}).get("file")
    return Path(file) if file else None


def run_started(out: Path) -> bool:
    """Whether the run folder ``out`` has begun training: a train log, a checkpoint or MAKE stage 1's output in it.

    Example::

        >>> import tempfile
        >>> run_started(Path(tempfile.mkdtemp()))
        False
    """
    folder = RunFolder(Path(out))
    return folder.train_log_file.is_file() or any(
        d.is_dir() and any(d.iterdir()) for d in (folder.checkpoints, folder.make_stage1)
    )


def projected_vectors(vectors: ItemVectors, width: int, out: Path, saved: Path | None, ctx: DistContext) -> ItemVectors:
    """The item vectors as the frozen table holds them: K = ``width`` wide when they are wider.

    A run projects its vectors onto a basis of K principal directions
    (``recsys.data.projection.project_rows``), so that every multimodal part
    of the model passes over (B, L, K) histories whatever width D the user's
    encoder gives. The rows are kept as they fall, not re-normalised: their
    dot products approximate the input cosines, which SimTier reads.

    The basis lives in the run folder, ``out/projection.npz``. A run that has
    not begun training (:func:`run_started`) gets its own: ``saved`` (a
    retrain's: the parent's basis) copied in, else one fitted by rank 0 on
    the table it loads; a file left there by a run refused before training
    is replaced, never reused. A run that has begun (a resume, its
    evaluation, its ranker) reuses its own (or, a retrain from before runs
    kept a copy, the one its train log names, copied in), so new items'
    vectors go through the basis its weights were trained against. Vectors no wider than
    ``width`` (or ``width`` 0) are used as given when no basis applies.
    ``manifest["projection"]`` records what the basis was fitted on and
    kept (``ProjectionInfo``), its file, and the share of this table's
    energy it keeps (``energy_kept_here``). A table of which it keeps under
    ``ENERGY_DROP`` times the share it kept of its own is refused (when fitted
    on at least ``ENERGY_MIN_ITEMS_PER_DIM`` items per kept dimension): most
    likely vectors of another encoder, which the basis would turn to noise.

    Args:
        vectors (ItemVectors): the table as loaded and checked (D wide).
        width (int): K, ``ModelConfig.mm_width``; 0 = never project.
        out (Path): the run folder.
        saved (Path | None): a ``projection.npz`` a new run is to use (a retrain's parent's).
        ctx (DistContext): this rank.

    Returns:
        ItemVectors: (M, K) rows of norm <= 1 (zero only where a vector lies
        orthogonal to the basis: then the item counts as without one), same
        item IDs and path.

    Raises:
        ValueError: a basis fitted on vectors of another width than D, or
            keeping too little of this table's energy; a run that has begun
            without the basis its vectors need (its file gone).
    """
    out = Path(out)
    file = out / PROJECTION_FILE
    if not run_started(out):
        project = saved is not None or (width != 0 and vectors.dim > width)
        def prepare() -> None:
            file.unlink(missing_ok=True)  # a refused run's basis, fitted on a table this run may not load
            if project:
                out.mkdir(parents=True, exist_ok=True)
                if saved is not None:
                    shutil.copyfile(saved, file)
                else:
                    save_projection(file, *fit_projection(vectors.vectors, width, str(Path(vectors.path).resolve())))

        on_main(ctx, prepare)  # a failure there stops every rank, none is left waiting
        if not project:
            return vectors
    elif not file.is_file():
        logged = _logged_projection(out)
        if logged is not None and logged.is_file():  # a retrain from before runs kept their own copy: take it now
            on_main(ctx, lambda: shutil.copyfile(logged, file))
        elif width == 0 or vectors.dim <= width:
            return vectors
        else:
            raise ValueError(f"{file}: missing, but {out} has begun training and its {vectors.dim}-d vectors "
                             f"({vectors.path}) are wider than mm_width={width}: its weights were trained on their "
                             "projection through that basis; restore the file, or train a new run")  # fmt: skip
    basis, info = load_projection(file)
    if info.source_dim != vectors.dim:
        raise ValueError(f"{file}: a basis for {info.source_dim}-d vectors, but {vectors.path} holds {vectors.dim}-d ones; "
                         "project the vectors the run was trained with, or train a new run")  # fmt: skip
    projected = project_rows(vectors.vectors, basis)
    total = float(np.square(vectors.vectors, dtype=np.float64).sum())
    kept = float(np.square(projected, dtype=np.float64).sum()) / total if total > 0 else 1.0
    # a table this basis was not fitted for (another encoder's); fitted on few items, the share it kept is inflated
    if info.items >= ENERGY_MIN_ITEMS_PER_DIM * info.dim and kept < ENERGY_DROP * info.retained_energy:
        raise ValueError(f"{file}: this basis keeps {kept:.1%} of the energy of {vectors.path}, against "
                         f"{info.retained_energy:.1%} of the table it was fitted on ({info.source}): these vectors "
                         "are not from the encoder the run was trained with; use that encoder's, or train a new run")
    return replace(vectors, vectors=projected,
                   manifest={**vectors.manifest, "projection": {**asdict(info), "file": str(file.resolve()),
                                                                 "energy_kept_here": kept}})


def vectors_without_item(vectors: ItemVectors, manifest: Manifest, world: Path) -> int:
    """How many of the vector table's items ``world/items/`` does not list.

    Such vectors are loaded (raw item IDs: each takes a row of the frozen
    table; identity IDs: rows of the ID range no item uses) and, with a
    projection, are part of the table its basis is fitted on, but no
    impression reads them: counted so a run says so (``train_log.json``:
    ``vectors_without_item``), not refused (a catalogue's vectors may cover
    items beyond one log).

    Args:
        vectors (ItemVectors): the vectors the run loads, item IDs (M,).
        manifest (Manifest): the world's (its item key).
        world (Path): the dataset directory.

    Returns:
        int: vectors whose item ID is not in ``items/``, 0 <= count <= M.

    Raises:
        ValueError: an item listed twice in ``items/`` (``recsys.data.stats.item_index``).
    """
    return int(np.count_nonzero(~np.isin(vectors.item_ids, item_index(Path(world), manifest))))


def vectors_sharing_rows(item_ids: np.ndarray, rows: int) -> int:
    """How many items of a vector table lose their frozen-table row to another item's vector (item IDs as rows).

    With item IDs as rows (``identity``) and an item table of fewer rows than
    the vectors' IDs reach (``max_table_rows``, or a retrain keeping its
    parent's table sizes while the catalogue grew), item ``i`` goes to row
    ``i % rows`` as the reader hashes its ID, and the larger ID's vector
    holds the row (:func:`fill_mm_table`): the other items of that row are
    scored with it. Counted so a run says so (``train_log.json``:
    ``vectors_sharing_rows``). Raw item IDs give every vector its own row.

    Args:
        item_ids (np.ndarray): the vectors' item IDs (M,), non-negative.
        rows (int): rows of the frozen table (``mm_rows``), >= 1.

    Returns:
        int: items whose row holds another item's vector, 0 <= count < M (0 for M = 0).

    Example::

        >>> vectors_sharing_rows(np.arange(5), rows=3)  # items 0 and 1 give way to 3 and 4
        2
    """
    return int(len(item_ids) - len(np.unique(np.asarray(item_ids) % rows)))


def fill_mm_table(arch: MultimodalArch, vectors: ItemVectors, manifest: Manifest, world: Path | None = None) -> int:
    """Loads the vectors into the (unsharded) frozen table; returns how many of the item table's items lack one.

    Args:
        arch (MultimodalArch): holds the table (built with ``mm_rows`` rows).
        vectors (ItemVectors): the item vectors.
        manifest (Manifest): the world's; with item IDs as rows (identity), a
            vector of an item outside its ID range means the vectors belong to
            another world (ValueError).
        world (Path | None): the dataset directory; with raw item IDs its
            ``items/`` lists the items counted. ``None``: not counted (0), for
            a caller that only fills the table.

    Returns:
        int: with item IDs as rows, the rows of the item table (its ID range,
        or ``max_table_rows`` when capped) left without a vector; with raw
        item IDs, the items ``world/items/`` lists that have no vector (its
        IDs absent from ``vectors.item_ids``; vectors of items it does not
        list take rows but count for nothing).

    Raises:
        ValueError: (identity) a vector's item ID outside the world's range;
            (raw IDs) more vectors than rows or an item ID with two vectors
            (``MultimodalArch.load_raw``), an item listed twice in ``items/``
            (``recsys.data.stats.item_index``).

    With a capped item table (``max_table_rows`` < the item range) item ``i``
    goes to row ``i % rows``, as the reader hashes IDs; on a collision the
    larger ID wins. With raw item IDs every vector has its own row
    (``MultimodalArch.load_raw``).
    """
    if arch.raw_ids:
        arch.load_raw(vectors.item_ids, vectors.vectors)
        if world is None:
            return 0
        items = item_index(Path(world), manifest)
        return int(np.count_nonzero(~np.isin(items, vectors.item_ids)))
    spec = manifest.features
    num_items = spec.table_rows(manifest.id_ranges)[spec.table_of(spec.item_key)]  # the ID range, uncapped
    weight = arch.table_weight()
    rows = weight.shape[0]
    outside = (vectors.item_ids < 0) | (vectors.item_ids >= num_items)
    if outside.any():
        raise ValueError(
            f"{vectors.path}: {int(outside.sum())} item IDs outside the world's range [0, {num_items}) "
            f"(e.g. item_id {int(vectors.item_ids[outside][0])}); the vectors belong to another world"
        )
    order = np.argsort(vectors.item_ids, kind="stable")
    ids = vectors.item_ids[order] % rows
    keep = np.unique(ids[::-1], return_index=True)[1]  # last occurrence of each row
    keep = len(ids) - 1 - keep
    return arch.load_rows(ids[keep], vectors.vectors[order][keep])


def shard_and_optimize(
    model: nn.Module, ctx: DistContext, sharding: str, sparse_lr: float, dense_lr: float
) -> tuple[DistributedModelParallel, CombinedOptimizer]:
    """Shards a plain model built identically on every rank, keeping its initial weights.

    The ID tables get fused row-wise Adagrad at ``sparse_lr``; the dense
    parameters Adam at ``dense_lr``; the frozen table nothing.
    """
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dmp = shard_model(model, ctx, sharding, FusedOptimConfig(learning_rate=sparse_lr))
    dmp.load_state_dict(initial)
    optimizer = make_optimizer(dmp, lambda params: torch.optim.Adam(params, lr=dense_lr))
    return dmp, optimizer
