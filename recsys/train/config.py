"""Configuration of a CTR training job: one frozen dataclass, and the job file with a model section.

A job file (YAML or TOML) has up to two sections, ``model`` (keys of
``recsys.models.config.ModelConfig``) and ``train`` (keys of
:class:`TrainConfig`); missing keys keep their defaults.

Example::

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "job.yaml"
    >>> _ = path.write_text("model:\\n  simtier_tiers: 10\\ntrain:\\n  batch_size: 512\\n")
    >>> model, train = load_job_config(path)
    >>> model.simtier_tiers, train.batch_size, train.epochs
    (10, 512, 1)
    >>> _ = path.write_text("train:\\n  batchsize: 512\\n")
    >>> load_job_config(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: ...: unknown key(s) ['batchsize'] in section 'train'; known keys: [...]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.config_file import check_positive, config_from_dict, read_config_file
from recsys.models.config import ModelConfig
from recsys.settings import setting

# How the ID tables are sharded (``recsys.train.sharding.shard_model``); "auto" is the planner's choice
# (table_wise on one rank).
SHARDINGS: tuple[str, ...] = ("table_wise", "row_wise", "column_wise", "auto")
SHARDING = "auto"  # the default of every job (TrainJob, RetrainJob, `mmctr train/retrain --sharding`)
# How a step runs (``recsys.train.loop.training_steps``): "sparse_dist" is TorchRec's
# ``TrainPipelineSparseDist`` (the next batch's input all-to-all started before this step's
# forward); "plain" is forward, backward, optimizer step, one batch at a time; "auto" is
# sparse_dist where there is something to overlap (several ranks, or a GPU's copies), plain
# on one CPU rank, where it only adds bookkeeping. On 2 CPU ranks bench.train's scaling table
# measured it within the run-to-run spread of the plain loop (README, issue 20).
TRAIN_PIPELINES: tuple[str, ...] = ("sparse_dist", "plain")
TRAIN_PIPELINE_CHOICES: tuple[str, ...] = ("auto", *TRAIN_PIPELINES)


def resolve_train_pipeline(choice: str, world_size: int, device_type: str) -> str:
    """The train pipeline a job runs: ``choice``, or for "auto" sparse_dist on several ranks or a GPU, else plain.

    Example::

        >>> resolve_train_pipeline("auto", 1, "cpu"), resolve_train_pipeline("auto", 2, "cpu")
        ('plain', 'sparse_dist')
        >>> resolve_train_pipeline("plain", 8, "cuda")
        'plain'
    """
    if choice not in TRAIN_PIPELINE_CHOICES:
        raise ValueError(f"train pipeline must be one of {TRAIN_PIPELINE_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice
    return "sparse_dist" if world_size > 1 or device_type == "cuda" else "plain"


@dataclass(frozen=True)
class TrainConfig:
    """How the CTR model trains (fields documented inline).

    The ID model trains ``epochs`` (one: ID models overfit on a second
    epoch). MAKE's stage 1 trains up to ``make_max_epochs`` and stops when
    its validation AUC has not improved for ``make_patience`` epochs; the
    best epoch's weights are kept.
    """

    batch_size: int = setting(2048, "impressions per step per rank")
    dense_lr: float = setting(1e-3, "Adam learning rate of the dense (MLP, attention) parameters")
    sparse_lr: float = setting(0.05, "fused row-wise Adagrad learning rate of the ID tables")
    epochs: int = setting(1, "passes of the ID model over the training days")
    # small world: MAKE stage 1 is still gaining at epoch 6
    make_max_epochs: int = setting(8, "MAKE stage 1: at most this many epochs")
    make_patience: int = setting(1, "MAKE stage 1: stop after this many epochs without a better validation AUC")
    make_lr: float = setting(2e-3, "MAKE stage 1: Adam learning rate")
    make_max_seconds: float | None = setting(
        None, "MAKE stage 1: start no epoch that would end past this many seconds of training; None: no limit")
    seed: int = setting(0, "model initialisation and data shuffle")
    checkpoint_every: int = setting(0, "steps between distributed checkpoints; 0: only at the end")
    stop_after_steps: int | None = setting(
        None, "stop after N steps as if preempted (checkpoint, no evaluation; a rerun resumes)")
    eval_batch_size: int = setting(8192, "impressions per evaluation batch per rank")
    prefetch: int = setting(2, "batches the reader prepares ahead")
    train_pipeline: str = setting("auto", "how a step runs: sparse_dist (TorchRec's TrainPipelineSparseDist), "
                                  "plain (one batch at a time) or auto (sparse_dist on several ranks or a GPU)")
    log_every: int = setting(20, "steps between loss-curve points (and progress-bar refreshes)")
    max_table_rows: int | None = setting(None, "cap on every ID table's rows; None: the manifest's ID ranges")
    out_of_range: str = setting("refuse", "IDs beyond a table's rows: refuse or hash (reader.OUT_OF_RANGE)")
    renormalize_vectors: bool = setting(
        False, "scale item vectors that are finite and non-zero but not unit norm to unit norm instead of "
        "refusing them (logged; counted in train_log.json vectors.renormalized)")

    def __post_init__(self) -> None:
        check_positive(self, ("batch_size", "epochs", "make_max_epochs", "make_patience", "eval_batch_size", "log_every"))
        check_positive(self, ("checkpoint_every", "prefetch", "seed"), zero=True)
        check_positive(self, ("dense_lr", "sparse_lr", "make_lr"), integer=False)
        check_positive(self, ("stop_after_steps", "max_table_rows"), optional=True)
        check_positive(self, ("make_max_seconds",), integer=False, optional=True)
        from recsys.data.reader import OUT_OF_RANGE  # here: the CLI imports this module without torchrec

        if self.train_pipeline not in TRAIN_PIPELINE_CHOICES:
            raise ValueError(f"TrainConfig.train_pipeline must be one of {TRAIN_PIPELINE_CHOICES}, "
                             f"got {self.train_pipeline!r}")
        if self.out_of_range not in OUT_OF_RANGE:
            raise ValueError(f"TrainConfig.out_of_range must be one of {OUT_OF_RANGE}, got {self.out_of_range!r}")


def load_job_config(path: str | Path | None, variant: str | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Read the ``model`` and ``train`` sections of a job file (``None``: all defaults).

    Args:
        path (str | Path | None): a ``.yaml``/``.yml``/``.toml`` file, or ``None``.
        variant (str | None): overrides the model section's ``variant``.

    Returns:
        tuple[ModelConfig, TrainConfig]: the two configurations.
    """
    raw: Any = {} if path is None else read_config_file(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with 'model' and/or 'train' sections")
    unknown = sorted(set(raw) - {"model", "train"})
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; expected 'model' and/or 'train'")
    for section in ("model", "train"):
        if not isinstance(raw.get(section) or {}, dict):
            raise ValueError(f"{path}: section {section!r} must be a mapping, got {type(raw[section]).__name__}")
    model_raw = dict(raw.get("model") or {})
    if variant is not None:
        model_raw["variant"] = variant
    model = config_from_dict(ModelConfig, model_raw, source=str(path), section="model")
    from recsys.models.fused import config_override  # here: the CLI imports this module without torch

    model = config_override(model)  # MMCTR_FUSED, read once where the job's config is built
    return model, config_from_dict(TrainConfig, dict(raw.get("train") or {}), source=str(path), section="train")
