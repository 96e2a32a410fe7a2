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
    ValueError: ...[train]: unknown key(s) ['batchsize']; known keys: [...]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.config_file import read_config_file
from recsys.models.config import ModelConfig, model_config_from_dict


# How the ID tables are sharded (``recsys.train.sharding.shard_model``); "auto" is the planner's choice
# (table_wise on one rank).
SHARDINGS: tuple[str, ...] = ("table_wise", "row_wise", "column_wise", "auto")


@dataclass(frozen=True)
class TrainConfig:
    """How the CTR model trains (fields documented inline).

    The ID model trains ``epochs`` (one: ID models overfit on a second
    epoch). MAKE's stage 1 trains up to ``make_max_epochs`` and stops when
    its validation AUC has not improved for ``make_patience`` epochs; the
    best epoch's weights are kept.
    """

    batch_size: int = 2048  # impressions per step per rank
    dense_lr: float = 1e-3  # Adam learning rate of the dense (MLP, attention) parameters
    sparse_lr: float = 0.05  # fused row-wise Adagrad learning rate of the ID tables
    epochs: int = 1  # passes of the ID model over the training days
    make_max_epochs: int = 8  # MAKE stage 1: at most this many epochs (small world: still gaining at 6)
    make_patience: int = 1  # MAKE stage 1: stop after this many epochs without a better validation AUC
    make_lr: float = 2e-3  # MAKE stage 1: Adam learning rate
    seed: int = 0  # model initialisation and data shuffle
    checkpoint_every: int = 0  # steps between distributed checkpoints; 0 = only at the end
    stop_after_steps: int | None = None  # stop (checkpoint, no evaluation) after this many steps, as if preempted
    eval_batch_size: int = 8192  # impressions per evaluation batch per rank
    prefetch: int = 2  # batches the reader prepares ahead
    log_every: int = 20  # steps between loss-curve points (and progress-bar refreshes)
    max_table_rows: int | None = None  # cap on every ID table's rows; None = the manifest's ID ranges
    out_of_range: str = "refuse"  # IDs beyond a table's rows: "refuse" or "hash" (reader.OUT_OF_RANGE)

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "make_max_epochs", "make_patience", "eval_batch_size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        for name in ("checkpoint_every", "prefetch", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be an int >= 0, got {value!r}")
        for name in ("dense_lr", "sparse_lr", "make_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"TrainConfig.{name} must be a positive number, got {value!r}")
        for name in ("stop_after_steps", "max_table_rows"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"TrainConfig.{name} must be a positive int or None, got {value!r}")
        from recsys.data.reader import OUT_OF_RANGE  # here: the CLI imports this module without torchrec

        if self.out_of_range not in OUT_OF_RANGE:
            raise ValueError(f"TrainConfig.out_of_range must be one of {OUT_OF_RANGE}, got {self.out_of_range!r}")


def train_config_from_dict(raw: Any, source: str = "<dict>") -> TrainConfig:
    """Build a :class:`TrainConfig` from a plain mapping; unknown keys raise ``ValueError``.

    Example::

        >>> train_config_from_dict({"epochs": 2}).epochs
        2
    """
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping of TrainConfig keys, got {type(raw).__name__}")
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; known keys: {known}")
    try:
        return TrainConfig(**raw)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


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
    model_raw = dict(raw.get("model") or {})
    if variant is not None:
        model_raw["variant"] = variant
    model = model_config_from_dict(model_raw, source=f"{path}[model]")
    return model, train_config_from_dict(dict(raw.get("train") or {}), source=f"{path}[train]")
