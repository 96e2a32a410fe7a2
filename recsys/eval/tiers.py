"""SimTier histograms of a day's impressions, clicked vs not clicked, from a run's item vectors.

Notation: ``B`` batch size, ``L`` padded history length, ``D`` vector
width, ``T`` tiers.

For every impression of the day, the run's frozen multimodal table (the
same ``MultimodalArch`` filled by ``recsys.train.setup.fill_mm_table``)
looks up the target's and the history's vectors, and the run's ``SimTier``
module turns them into a tier-share row (B, T), counting only history
items with a vector and no row for a target without one, exactly as in
``CtrModel``. The report shows the **mean tier share** over clicked and
over non-clicked impressions; impressions with nothing counted (empty
history, or a target without a vector) are left out of both means. If the
vectors carry the semantics that drive clicks, clicked impressions put
more of their mass in the high-similarity tiers.
"""

from __future__ import annotations

import copy

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.data.schema import Manifest
from recsys.data.vectors import ItemVectors
from recsys.models.config import table_sizes
from recsys.models.mm_table import multimodal_arch
from recsys.models.simtier import SimTier
from recsys.train.setup import fill_mm_table, mm_rows


@dataclass(frozen=True)
class TierHistogram:
    """Mean SimTier tier shares of clicked and non-clicked impressions (fields documented inline)."""

    clicked: np.ndarray  # (T,) mean tier share of clicked impressions; sums to 1 (nan if none)
    not_clicked: np.ndarray  # (T,) the same over non-clicked impressions
    counted_clicked: int  # clicked impressions with at least one counted history item
    counted_not_clicked: int  # non-clicked ones

    def mean_similarity(self) -> tuple[float, float]:
        """Mean tier centre (a similarity in [-1, 1]) of clicked and of non-clicked impressions."""
        T = len(self.clicked)
        centres = -1 + (np.arange(T) + 0.5) * 2 / T
        return float(self.clicked @ centres), float(self.not_clicked @ centres)


@torch.no_grad()
def tier_histograms(
    world: Path, day: int, vectors: ItemVectors, simtier: SimTier, reader_config: ReaderConfig,
    manifest: Manifest | None = None,
) -> TierHistogram:
    """Mean SimTier rows of the day's clicked and non-clicked impressions (module docstring).

    Args:
        world (Path): the dataset directory.
        day (int): the day to read.
        vectors (ItemVectors): the run's item vectors.
        simtier (SimTier): the run's module (or one with the run's tier count).
        reader_config (ReaderConfig): batch size, table sizes, out-of-range
            policy of the run; days, rank and order are set here (one process).
        manifest (Manifest | None): the world's manifest when the caller has it; ``None`` reads it.

    Returns:
        TierHistogram: two (T,) mean tier shares and the impressions behind them.
    """
    config = replace(reader_config, days=(day,), rank=0, world_size=1, shuffle=False, remaining=None)
    reader = ImpressionReader(world, config)
    manifest = manifest if manifest is not None else Manifest.read(world)
    sizes = config.table_sizes or table_sizes(manifest)  # the run's tables (a capped item table hashes IDs)
    arch = multimodal_arch(manifest.features, mm_rows(manifest, sizes, vectors), vectors.dim, history_slots=manifest.max_history_len)
    fill_mm_table(arch, vectors, manifest)
    simtier = copy.deepcopy(simtier).cpu()  # the run's module may sit on a GPU; the reader's batches are on CPU
    T = simtier.output_dim()
    sums = torch.zeros(2, T, dtype=torch.float64)  # row 0: not clicked, row 1: clicked
    counts = torch.zeros(2, dtype=torch.float64)
    for batch in reader:
        mm = arch(batch.sparse_features)
        counted = mm.history_mask & (mm.target_missing == 0)  # (B, L), as CtrModel counts
        shares = simtier(mm.target, mm.history, counted).double()  # (B, T)
        keep = counted.any(dim=1)
        label = batch.labels[keep].long()
        sums.index_add_(0, label, shares[keep])
        counts += torch.bincount(label, minlength=2).double()
    means = (sums / counts.clamp(min=1)[:, None]).numpy()
    means[counts.numpy() == 0] = np.nan
    return TierHistogram(clicked=means[1], not_clicked=means[0],
                         counted_clicked=int(counts[1]), counted_not_clicked=int(counts[0]))
