"""What ``mmctr pipeline`` runs: one frozen config per preset, and the run folder's layout.

The presets single-source every choice the pipeline makes (recipe, epochs,
batch sizes, rates); the stages' own config files are written from them into
``OUT/configs/`` so each TorchX job reads exactly what the pipeline decided.

Example::

    >>> cfg = PRESETS["tiny"]
    >>> cfg.world_preset, cfg.nproc, cfg.variants[-1]
    ('tiny', 2, 'simtier_make')
    >>> Layout(Path("out")).ctr("make"), Layout(Path("out")).pretrain("pretrain_scl")
    (PosixPath('out/ctr/make'), PosixPath('out/pretrain-scl'))
    >>> Layout(Path("out")).world, Layout(Path("out"), dataset=Path("/data/log")).world
    (PosixPath('out/world'), PosixPath('/data/log'))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from pretrain.config import TowerConfig
from recsys.eval import RESAMPLES
from recsys.settings import setting
from recsys.train.config import TrainConfig
from serving.ranker_online import OnlineEvalConfig


@dataclass(frozen=True)
class PipelineConfig:
    """Every setting of one pipeline run (fields documented inline)."""

    world_preset: str  # recsys.world.config.PRESETS name
    seed: int = 0  # world, pre-training and CTR seed
    nproc: int = 2  # ranks of every distributed stage but training (TorchX, torchrun)
    # Training stages (train_VARIANT, retrain): ranks per job, and train_VARIANT jobs run at once; 0 = by the machine
    # (training_slots): one rank per GPU and one job at a time on a GPU machine, else one rank per job, one job per core
    train_nproc: int = 0
    train_parallel: int = 0
    clip_epochs: int = 1  # CLIP-style pre-training epochs (the generic CLIP that SCL fine-tunes)
    clip_max_steps: int | None = None  # stop CLIP there if it comes before clip_epochs (SclConfig.max_steps)
    scl_epochs: int = 1  # SCL fine-tuning epochs from the CLIP run (the README's recipe)
    scl_queue_size: int = 512  # K of the SCL memory bank (the recipe)
    scl_triplet_weight: float = 0.0  # lambda of the hard-negative triplet loss (the recipe: 0)
    # ViT patch side of the pre-training towers (CLIP's, hence SCL's and the served encoder's); used when it divides
    # the dataset's image side, else TowerConfig's
    patch_size: int = TowerConfig.patch_size
    make_max_epochs: int = TrainConfig.make_max_epochs  # MAKE stage-1 cap
    batch_size: int = TrainConfig.batch_size  # CTR impressions per step and rank
    variants: tuple[str, ...] = ("id_only", "simtier", "make", "simtier_make")  # trained and compared
    bootstrap: int = RESAMPLES  # user resamples of the evaluation's GAUC intervals
    feed_rate: float = 50.0  # new items per second published to the feed (the serving bench's load)
    retrain_variant: str = "simtier_make"  # the production model retrained on the test day
    online_users: int = OnlineEvalConfig.users  # rank_online: test-day users whose impressions are ranked on Triton

    def scl_yaml(self, clip_encoder: Path | None) -> dict:
        """SCL's config; ``clip_encoder`` None: from random towers (no CLIP run to start from)."""
        out = {"epochs": self.scl_epochs, "queue_size": self.scl_queue_size,
               "triplet_weight": self.scl_triplet_weight, "seed": self.seed}
        return out if clip_encoder is None else {**out, "init_from": str(clip_encoder)}

    def clip_yaml(self) -> dict:
        out = {"epochs": self.clip_epochs, "seed": self.seed}
        return out if self.clip_max_steps is None else {**out, "max_steps": self.clip_max_steps}

    def train_yaml(self) -> dict:
        return {"train": {"batch_size": self.batch_size, "make_max_epochs": self.make_max_epochs, "seed": self.seed}}


@dataclass(frozen=True)
class TrainingSlots:
    """How the training stages run: ``parallel`` jobs at once, each ``nproc`` ranks of ``threads`` threads."""

    nproc: int
    parallel: int
    threads: int  # OMP_NUM_THREADS of each rank
    why: str

    def describe(self) -> str:
        return (f"training: up to {self.parallel} stage(s) at a time, {self.nproc} rank(s) each, "
                f"{self.threads} thread(s) per rank ({self.why})")


def training_slots(cfg: PipelineConfig, cpus: int | None = None, gpus: int | None = None) -> TrainingSlots:
    """The training stages' ranks, concurrency and threads: ``cfg``'s where set, else chosen by the machine.

    On CPUs, two single-rank jobs side by side train 2.3x the samples per
    second of one job on two ranks (measured on 2 cores, ``simtier`` on the
    ``small`` world, README "The main job"): the ranks' all-to-alls and
    gradient all-reduce cost more than they share. So with no GPU each
    training job is one rank and as many jobs run as there are cores; on a
    GPU machine one job at a time spans every GPU.

    Args:
        cfg (PipelineConfig): ``train_nproc`` / ``train_parallel`` (0: chosen here).
        cpus (int | None): cores (default ``os.cpu_count()``).
        gpus (int | None): CUDA devices (default ``torch.cuda.device_count()``).

    Example::

        >>> training_slots(PRESETS["small"], cpus=2, gpus=0)
        TrainingSlots(nproc=1, parallel=2, threads=1, why='no GPU, 2 cores: one single-rank job per core')
        >>> training_slots(PRESETS["small"], cpus=16, gpus=4).nproc
        4
    """
    import os

    cpus = cpus or os.cpu_count() or 1
    if gpus is None:
        import torch  # lazy: the pipeline starts without torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        nproc, parallel, why = cfg.train_nproc or gpus, cfg.train_parallel or 1, f"{gpus} GPU(s): one job over all"
    else:
        nproc, parallel = cfg.train_nproc or 1, cfg.train_parallel or max(1, cpus // (cfg.train_nproc or 1))
        why = f"no GPU, {cpus} cores: one single-rank job per core"
    if cfg.train_nproc or cfg.train_parallel:
        why = f"PipelineConfig train_nproc={cfg.train_nproc}, train_parallel={cfg.train_parallel}; {why.split(':')[0]}"
    return TrainingSlots(nproc, parallel, max(1, cpus // (nproc * parallel)), why)


PRESETS: dict[str, PipelineConfig] = {
    # ~3 minutes on 2 cores: every stage at toy size, used in a test
    "tiny": PipelineConfig(world_preset="tiny", make_max_epochs=2, batch_size=256, bootstrap=200, feed_rate=200.0,
                           online_users=40),
    # `make demo`: 14-20 minutes on 2 cores, by the machine (README: measured stage times). CLIP stops at 600 of its
    # epoch's 781 steps at 2 ranks: 269 s against 295-319 s, SCL still ahead of it on every measure (README)
    "small": PipelineConfig(world_preset="small", make_max_epochs=2, patch_size=16, feed_rate=100.0, online_users=1000,
                            clip_max_steps=600),
}


@dataclass(frozen=True)
class PipelineJob:
    """One ``mmctr pipeline`` (or ``mmctr demo``); each field carries its help: the commands' flags derive from them."""

    preset: str = setting("small", "pipeline preset: the recipe (epochs, batch sizes) and, without --world, the world "
                          "generated", choices=sorted(PRESETS))
    out: Path = setting(Path("runs/demo"), "run folder; run again with the same folder to resume")
    world: Path | None = setting(None, "run on this dataset (the public format) instead of generating the preset's "
                                 "world; stages its content does not allow are skipped, each with its reason", metavar="DIR")
    vectors: Path | None = setting(None, "item vectors (a Parquet table as `mmctr train --vectors` reads, e.g. another "
                                   "encoder's) used instead of pre-training; export and the new-item embedder are skipped",
                                   metavar="FILE")
    quiet: bool = setting(False, "no stage messages")


@dataclass(frozen=True)
class Layout:
    """Where each stage writes, under the pipeline's ``--out`` folder::

        pipeline.json      stage states and timings (what a restart resumes from)
        configs/           clip.yaml, scl.yaml, train.yaml: written from the PipelineConfig
        logs/              every TorchX job's stdout/stderr
        world/             the dataset generated from the preset (with --world: that folder instead)
        pretrain-clip/  pretrain-scl/  pretrain-random/  pretrain-eval.json   (the plan's pre-training runs)
        cache/content/     the items' decoded images and title tokens, made by the first pre-training run
        catalogue/         item vectors of the items created before the test day (every item's without the embedder)
        ctr/VARIANT/       mmctr train runs
        triton/            mmctr export (embedded/ and production/ repositories)
        feed/  vectors.sqlite  embed.json     test-day new items, their served vectors, the embedder's report
        report/            mmctr evaluate: report.json, report.html (updated with the pipeline's sections)
        retrain/           the production model retrained on the test day
        ranker/  online.json   its Triton repository (mmctr export-ranker), the test day's sample ranked online
        summary.json       the final table
    """

    out: Path  # the pipeline's --out folder
    dataset: Path | None = None  # --world DIR; None: the world generated into OUT/world

    @property
    def state(self) -> Path:
        return self.out / "pipeline.json"

    @property
    def configs(self) -> Path:
        return self.out / "configs"

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    @property
    def content_cache(self) -> Path:
        """``mmctr pretrain --content-cache``: decoded once, read by the later pre-training runs."""
        return self.out / "cache" / "content"

    @property
    def world(self) -> Path:
        return self.dataset if self.dataset is not None else self.out / "world"

    def pretrain(self, stage: str) -> Path:
        """The run folder of a pre-training stage (``pretrain_clip`` -> ``OUT/pretrain-clip``)."""
        return self.out / stage.replace("_", "-")

    @property
    def pretrain_clip(self) -> Path:
        return self.out / "pretrain-clip"

    @property
    def pretrain_scl(self) -> Path:
        return self.out / "pretrain-scl"

    @property
    def pretrain_eval(self) -> Path:
        return self.out / "pretrain-eval.json"

    @property
    def catalogue(self) -> Path:
        return self.out / "catalogue"

    @property
    def triton(self) -> Path:
        return self.out / "triton"

    @property
    def feed(self) -> Path:
        return self.out / "feed"

    @property
    def store(self) -> Path:
        return self.out / "vectors.sqlite"

    @property
    def embed_report(self) -> Path:
        return self.out / "embed.json"

    @property
    def report(self) -> Path:
        return self.out / "report"

    @property
    def retrain(self) -> Path:
        return self.out / "retrain"

    @property
    def ranker(self) -> Path:
        return self.out / "ranker"

    @property
    def online(self) -> Path:
        return self.out / "online.json"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"

    def ctr(self, variant: str) -> Path:
        return self.out / "ctr" / variant


def write_configs(
    cfg: PipelineConfig, layout: Layout, scl_from_clip: bool = True, image_size: int | None = None
) -> dict[str, Path]:
    """Writes the stages' config files from ``cfg``; returns their paths by name.

    Args:
        cfg (PipelineConfig): the recipe.
        layout (Layout): the run folder.
        scl_from_clip (bool): SCL starts from the CLIP run's encoder (else from random towers).
        image_size (int | None): the dataset's image side, when it has images: the towers' ``image_size``
            if it differs from ``TowerConfig``'s (a user's dataset; the presets' worlds match it), and
            ``cfg.patch_size`` if it divides it (else ``TowerConfig``'s patch).
    """
    layout.configs.mkdir(parents=True, exist_ok=True)
    sizes = {}  # the tower section: what differs from TowerConfig (no image tower: nothing)
    if image_size is not None:
        patch = cfg.patch_size if image_size % cfg.patch_size == 0 else TowerConfig.patch_size
        sizes = {k: v for k, v in (("image_size", image_size), ("patch_size", patch)) if v != getattr(TowerConfig, k)}
    tower = {"tower": sizes} if sizes else {}
    files = {"clip": {**cfg.clip_yaml(), **tower},
             "scl": {**cfg.scl_yaml(layout.pretrain_clip / "encoder.pt" if scl_from_clip else None), **tower},
             "train": cfg.train_yaml()}
    paths = {}
    for name, content in files.items():
        paths[name] = layout.configs / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(content, sort_keys=True))
    return paths


def config_dict(cfg: PipelineConfig) -> dict:
    """The config as JSON-ready data (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
