"""The ``mmctr evaluate`` job's settings, in a module light enough for ``--help`` (no torch, no torchrec)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recsys.eval import RESAMPLES
from recsys.settings import setting
from recsys.train.config import TrainConfig


@dataclass(frozen=True)
class EvalJob:
    """One ``mmctr evaluate`` job (each field carries its help: the command's flags derive from them)."""

    world: Path = setting(help="dataset directory the runs were trained on")
    models: tuple[Path, ...] = setting(help="finished `mmctr train` run folders", metavar="RUN")
    day: int | None = setting(None, "day to score (default: the manifest's test_day, its last day unless declared)")
    baseline: str | None = setting(
        None, "baseline run name (folder name) or variant (default: the first id_only run, else the first)")
    out: Path | None = setting(None, "report folder (default: eval-day-D next to the first run folder)")
    resamples: int = setting(RESAMPLES, "bootstrap resamples of users", flag="--bootstrap", metavar="N")
    seed: int = setting(0, "bootstrap seed")
    batch_size: int = setting(TrainConfig.eval_batch_size, "impressions per scoring batch per rank")
    quiet: bool = setting(False, "no progress bars")
    store: Path | None = setting(
        None, "vector store (`mmctr embed-new`) adding vectors of items the runs' tables lack (new items)")

    def out_dir(self, day: int) -> Path:
        return Path(self.out) if self.out is not None else Path(self.models[0]).parent / f"eval-day-{day}"
