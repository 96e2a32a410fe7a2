"""The run folder of ``mmctr train`` and ``mmctr retrain``: one typed record per JSON file, read and written here.

A run folder holds::

    train_log.json     # TrainLog: loss curve, samples/s, out-of-range ID counts, configs, inputs, progress
    metrics.json       # RunMetrics: test-day AUC/GAUC/NE...: all, head/torso/tail, new items
    lineage.json       # Lineage: version, parent, the days and vectors behind the weights (finished runs)
    checkpoints/       # DCP checkpoints (recsys.train.checkpoint)
    make_stage1/       # MAKE stage 1, when run here (recsys.train.make_stage)

Training writes the records (rank 0); retraining, evaluation and the
pipeline's summary read them through :class:`RunFolder`. The JSON keys and
their order are the public format: the records write exactly what the
trainer wrote as plain dicts before, so older run folders read back.

Example::

    >>> import tempfile
    >>> from recsys.models.config import ModelConfig
    >>> from recsys.train.config import TrainConfig
    >>> folder = RunFolder(Path(tempfile.mkdtemp()))
    >>> log = TrainLog(variant="id_only", model=ModelConfig(), train=TrainConfig(), world="/w",
    ...     world_manifest_sha="ab12", days=(41,))
    >>> folder.write_train_log(log)
    >>> folder.read_train_log() == log, list(json.loads(folder.train_log_file.read_text()))[:4]
    (True, ['curve', 'segments', 'out_of_range_ids', 'variant'])
    >>> first = Lineage.of_run(folder.path, log, parent=None)
    >>> child = Lineage.of_run(folder.path / "next", replace(log, days=(42,)), parent=first)
    >>> child.version, child.all_days, child.parent == str(folder.path)
    (2, (41, 42), True)
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from recsys.config_file import config_from_dict
from recsys.models.config import ModelConfig
from recsys.train.checkpoint import Progress, latest_checkpoint
from recsys.train.config import SHARDING, TrainConfig

TRAIN_LOG = "train_log.json"
METRICS_FILE = "metrics.json"
LINEAGE_FILE = "lineage.json"
CHECKPOINTS = "checkpoints"
MAKE_STAGE1 = "make_stage1"

Report = dict[str, dict[str, float]]  # recsys.eval.metrics.evaluation_report: subset -> metric -> value


def _field(raw: Any, dotted: str, source: str) -> Any:
    """``raw[a][b]...`` for ``dotted = "a.b..."``; ``ValueError`` naming the file and field if absent."""
    value = raw
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise ValueError(f"{source}: no field {dotted!r}; is this a run folder of `mmctr train`?")
        value = value[key]
    return value


def _write_json(path: Path, data: dict) -> None:
    """Writes ``data`` as indented JSON, atomically (a temporary file renamed over ``path``)."""
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {what}")
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return raw


@dataclass(frozen=True)
class Segment:
    """A stretch of training by one job (a resumed run has several)."""

    world_size: int  # ranks of the job
    samples: int  # impressions trained on, over all ranks
    seconds: float  # wall time of its steps (on the rank that logged it)


@dataclass(frozen=True)
class TrainLog:
    """``train_log.json``: what a training job did and what it was built from.

    Written by every ``mmctr train``/``retrain`` job (again on resume, the
    curve and segments extended); read by a resuming job, ``retrain`` (the
    parent's configs and inputs) and evaluation (``recsys.eval.runs``).
    """

    variant: str  # ModelConfig.variant
    model: ModelConfig  # "config.model"
    train: TrainConfig  # "config.train"
    world: str  # the dataset directory, resolved
    world_manifest_sha: str  # recsys.data.schema.manifest_sha of the world
    days: tuple[int, ...] = ()  # the days trained on
    # recsys.data.schema.schema_sha of the world (recsys.train.world_check); None: a run logged before it existed
    world_schema_sha: str | None = None
    curve: tuple[dict[str, float], ...] = ()  # {"step", "epoch", "loss"} points, loss averaged over ranks
    segments: tuple[Segment, ...] = ()  # one per job (resume adds one)
    out_of_range_ids: dict[str, int] = field(default_factory=dict)  # IDs beyond a table's rows, per feature
    warm_start_metrics: Report | None = None  # the stale (warm-started, untrained) model on the test day
    sharding: str = SHARDING  # recsys.train.sharding.SHARDINGS
    table_sizes: dict[str, int] | None = None  # rows per ID table
    warm_start: str | None = None  # the warm-start run folder, resolved
    vectors: dict[str, Any] | None = None  # the item vectors' vectors.json plus "path" (and "store", "store_version")
    items_without_vector: int = 0  # item rows of the frozen table without a vector
    vectors_without_item: int = 0  # vectors of items the world's items/ does not list (loaded, read by no impression)
    vectors_sharing_rows: int = 0  # vectors whose item's frozen-table row holds another item's (setup.vectors_sharing_rows)
    make_from: str | None = None  # the MAKE stage-1 folder, resolved; None without MAKE
    progress: Progress | None = None  # where training stands (the last checkpoint's progress)
    malloc_pinned: bool = False  # glibc malloc thresholds pinned by the entry point (recsys.allocator)
    rows_in_days: int | None = None  # impressions of the selected days (one epoch's rows); None: not read yet
    # per managed table (recsys.models.remap): raw IDs "admitted" into a row and "evicted" from one, over the run's jobs
    managed_ids: dict[str, dict[str, int]] = field(default_factory=dict)
    dense_stats: dict[str, tuple[float, float]] = field(default_factory=dict)  # standardised dense features' (mean, std)

    @property
    def rows_trained(self) -> int:
        """Impressions trained on, over every segment and rank (each epoch counts its rows once)."""
        return sum(s.samples for s in self.segments)

    @property
    def vectors_path(self) -> Path | None:
        """The item vectors the run loaded (``vectors.path``), as logged."""
        return None if not self.vectors or self.vectors.get("path") is None else Path(self.vectors["path"])

    @property
    def vectors_store(self) -> Path | None:
        """The vector store merged into the vectors (``vectors.store``), as logged."""
        return Path(self.vectors["store"]) if self.vectors and self.vectors.get("store") else None

    def to_json(self) -> dict[str, Any]:
        """The JSON object, keys in the order ``mmctr train`` has always written them."""
        out: dict[str, Any] = {
            "curve": [dict(p) for p in self.curve],
            "segments": [asdict(s) for s in self.segments],
            "out_of_range_ids": dict(self.out_of_range_ids),
        }
        if self.warm_start_metrics is not None:
            out["warm_start_metrics"] = self.warm_start_metrics
        out.update(
            variant=self.variant,
            config={"model": asdict(self.model), "train": asdict(self.train)},
            sharding=self.sharding,
            world=self.world,
            world_manifest_sha=self.world_manifest_sha,
            days=list(self.days),
            table_sizes=self.table_sizes,
            warm_start=self.warm_start,
            vectors=self.vectors,
            items_without_vector=self.items_without_vector,
            make_from=self.make_from,
            progress=None if self.progress is None else asdict(self.progress),
            malloc_pinned=self.malloc_pinned,
            rows_in_days=self.rows_in_days,
            rows_trained=self.rows_trained,
        )
        if self.world_schema_sha is not None:  # runs logged since it exists
            out["world_schema_sha"] = self.world_schema_sha
        if self.vectors_without_item:  # only where there are some: every other log keeps its bytes
            out["vectors_without_item"] = self.vectors_without_item
        if self.vectors_sharing_rows:  # the same
            out["vectors_sharing_rows"] = self.vectors_sharing_rows
        if self.managed_ids:  # only runs with managed tables have it (world runs' logs stay as they were)
            out["managed_ids"] = {t: dict(c) for t, c in self.managed_ids.items()}
        if self.dense_stats:  # only datasets with standardised dense features
            out["dense_stats"] = {k: list(v) for k, v in self.dense_stats.items()}
        return out

    @staticmethod
    def from_json(raw: dict[str, Any], source: str) -> TrainLog:
        """Parses a ``train_log.json`` object; ``ValueError`` naming ``source`` and the field on a fault.

        ``world``, ``world_manifest_sha`` and both configs are required; the
        other fields default as for a job that has not logged them yet.
        """
        model = config_from_dict(ModelConfig, _field(raw, "config.model", source), source, section="config.model")
        train = config_from_dict(TrainConfig, _field(raw, "config.train", source), source, section="config.train")
        progress = raw.get("progress")
        sizes = raw.get("table_sizes")
        try:
            return TrainLog(
                variant=str(raw.get("variant", model.variant)),
                model=model,
                train=train,
                world=str(_field(raw, "world", source)),
                world_manifest_sha=str(_field(raw, "world_manifest_sha", source)),
                world_schema_sha=None if raw.get("world_schema_sha") is None else str(raw["world_schema_sha"]),
                days=tuple(int(d) for d in raw.get("days", ())),
                curve=tuple(dict(p) for p in raw.get("curve", ())),
                segments=tuple(Segment(**s) for s in raw.get("segments", ())),
                out_of_range_ids={k: int(v) for k, v in (raw.get("out_of_range_ids") or {}).items()},
                warm_start_metrics=raw.get("warm_start_metrics"),
                sharding=str(raw.get("sharding", SHARDING)),
                table_sizes=None if sizes is None else {k: int(v) for k, v in sizes.items()},
                warm_start=raw.get("warm_start"),
                vectors=raw.get("vectors"),
                items_without_vector=int(raw.get("items_without_vector", 0)),
                vectors_without_item=int(raw.get("vectors_without_item", 0)),
                vectors_sharing_rows=int(raw.get("vectors_sharing_rows", 0)),
                make_from=raw.get("make_from"),
                progress=None if progress is None else Progress.from_json(progress),
                malloc_pinned=bool(raw.get("malloc_pinned", False)),
                rows_in_days=None if raw.get("rows_in_days") is None else int(raw["rows_in_days"]),
                managed_ids={t: {k: int(v) for k, v in c.items()} for t, c in (raw.get("managed_ids") or {}).items()},
                dense_stats={k: (float(v[0]), float(v[1])) for k, v in (raw.get("dense_stats") or {}).items()},
            )
        except (TypeError, AttributeError) as e:
            raise ValueError(f"{source}: a field has the wrong form ({e})") from e


@dataclass(frozen=True)
class RunMetrics:
    """``metrics.json``: a finished run's test-day scores (``mmctr train`` and ``retrain``)."""

    variant: str  # ModelConfig.variant
    seed: int  # TrainConfig.seed
    test_day: int | None  # the scored day; None when training reached the world's last day
    train_days: tuple[int, int]  # first and last day trained on (by this job)
    train_samples_per_s: float  # impressions per second over all of the run's segments
    world_size: int  # ranks of the job that finished it
    metrics: Report | None  # evaluation_report of the test day; None without a test day
    warm_start_metrics: Report | None = None  # the stale model on the test day (a retrain)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "variant": self.variant, "seed": self.seed, "test_day": self.test_day,
            "train_days": list(self.train_days), "train_samples_per_s": self.train_samples_per_s,
            "world_size": self.world_size, "metrics": self.metrics,
        }
        if self.warm_start_metrics is not None:
            out["warm_start_metrics"] = self.warm_start_metrics
        return out

    @staticmethod
    def from_json(raw: dict[str, Any], source: str) -> RunMetrics:
        """Parses a ``metrics.json`` object; ``ValueError`` naming ``source`` and the field on a fault."""
        first, last = _field(raw, "train_days", source)
        test_day = _field(raw, "test_day", source)
        return RunMetrics(
            variant=str(_field(raw, "variant", source)),
            seed=int(_field(raw, "seed", source)),
            test_day=None if test_day is None else int(test_day),
            train_days=(int(first), int(last)),
            train_samples_per_s=float(_field(raw, "train_samples_per_s", source)),
            world_size=int(_field(raw, "world_size", source)),
            metrics=_field(raw, "metrics", source),
            warm_start_metrics=raw.get("warm_start_metrics"),
        )


@dataclass(frozen=True)
class RetrainNote:
    """What a retrain adds to its lineage: the admission of new item IDs."""

    new_item_ids: int  # item IDs of the trained day that no earlier training day showed
    new_item_ids_hashed: int  # of those, IDs beyond the item table's rows (hashed into it)
    make_retrained: bool  # MAKE stage 1 run again instead of kept from the parent
    skipped_days: tuple[int, ...] = ()  # days with impressions between the parent's last and this one, left out (--skip-days)
    # a managed item table: new IDs still on the unseen-ID row after the retrain (not admitted); None: identity IDs
    new_item_ids_without_row: int | None = None


@dataclass(frozen=True)
class Lineage:
    """``lineage.json``: which model a run came from, and what data and vectors made it.

    Every finished run of ``mmctr train`` and ``mmctr retrain`` writes it.
    """

    version: int  # 1 for a model trained from scratch; the parent's version + 1 for a retrain
    run: str  # this run folder, resolved
    parent: str | None  # the warm-start run folder, or None
    parent_version: int | None  # its version, or None
    variant: str  # the model variant
    days: tuple[int, ...]  # the days this run trained on
    all_days: tuple[int, ...]  # the days behind the weights: the parent's all_days plus days
    world: str  # the dataset directory
    world_manifest_sha: str  # recsys.data.schema.manifest_sha of the world
    vectors: dict[str, Any] | None  # the item vectors loaded into the frozen table (TrainLog.vectors)
    make: str | None  # where MAKE's stage-1 weights came from, or None
    created_at: str  # UTC, ISO 8601, seconds
    retrain: RetrainNote | None = None  # a retrain's new-item admission (flat keys in the JSON)

    @staticmethod
    def of_run(run: Path, log: TrainLog, parent: Lineage | None, retrain: RetrainNote | None = None) -> Lineage:
        """The lineage of a run that finished with training log ``log``, warm-started from ``parent``."""
        return Lineage(
            version=1 if parent is None else parent.version + 1,
            run=str(run),
            parent=None if parent is None else parent.run,
            parent_version=None if parent is None else parent.version,
            variant=log.variant,
            days=tuple(log.days),
            all_days=tuple(sorted(set(log.days) | set(parent.all_days if parent else ()))),
            world=log.world,
            world_manifest_sha=log.world_manifest_sha,
            vectors=log.vectors,
            make=log.make_from,
            created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            retrain=retrain,
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(replace(self, retrain=None))
        del out["retrain"]
        out.update(days=list(self.days), all_days=list(self.all_days))
        if self.retrain is not None:
            out.update(asdict(self.retrain))
            if self.retrain.skipped_days:
                out["skipped_days"] = list(self.retrain.skipped_days)
            else:  # only where days were skipped: every other lineage keeps its bytes
                del out["skipped_days"]
            if self.retrain.new_item_ids_without_row is None:  # identity item IDs: hashed ones are counted instead
                del out["new_item_ids_without_row"]
        return out

    @staticmethod
    def from_json(raw: dict[str, Any], source: str) -> Lineage:
        """Parses a ``lineage.json`` object; ``ValueError`` naming ``source`` and the field on a fault."""
        def get(name: str) -> Any:
            return _field(raw, name, source)

        retrain = None
        if "new_item_ids" in raw:
            retrain = RetrainNote(int(raw["new_item_ids"]), int(raw["new_item_ids_hashed"]), bool(raw["make_retrained"]),
                                  tuple(int(d) for d in raw.get("skipped_days", ())),
                                  None if raw.get("new_item_ids_without_row") is None else int(raw["new_item_ids_without_row"]))
        parent_version = get("parent_version")
        return Lineage(
            version=int(get("version")), run=str(get("run")), parent=get("parent"),
            parent_version=None if parent_version is None else int(parent_version), variant=str(get("variant")),
            days=tuple(int(d) for d in get("days")), all_days=tuple(int(d) for d in get("all_days")),
            world=str(get("world")), world_manifest_sha=str(get("world_manifest_sha")), vectors=get("vectors"),
            make=get("make"), created_at=str(get("created_at")), retrain=retrain,
        )


@dataclass(frozen=True)
class RunFolder:
    """A run folder (module docstring): where each of its files lies, and their typed readers and writers.

    Readers raise ``FileNotFoundError`` for a missing file and ``ValueError``
    (naming the file and the field) for a malformed one.
    """

    path: Path  # the run folder

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @staticmethod
    def at(path: Path) -> RunFolder:
        """The run folder named by ``path``: the folder itself, or one of its JSON files."""
        path = Path(path)
        return RunFolder(path.parent if path.is_file() and path.name in (TRAIN_LOG, METRICS_FILE, LINEAGE_FILE) else path)

    @property
    def train_log_file(self) -> Path:
        return self.path / TRAIN_LOG

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def lineage_file(self) -> Path:
        return self.path / LINEAGE_FILE

    @property
    def checkpoints(self) -> Path:
        """The DCP checkpoints folder (``recsys.train.checkpoint``)."""
        return self.path / CHECKPOINTS

    @property
    def make_stage1(self) -> Path:
        """Where a MAKE variant runs its stage 1 when no stage-1 folder is given (``recsys.train.make_stage``)."""
        return self.path / MAKE_STAGE1

    def latest_checkpoint(self) -> tuple[Path, Progress] | None:
        """The newest complete checkpoint and its progress, or ``None`` (``checkpoint.latest_checkpoint``)."""
        return latest_checkpoint(self.checkpoints)

    def read_train_log(self) -> TrainLog:
        raw = _read_json(self.train_log_file, f"no training log; {self.path} is not a `mmctr train`/`retrain` run folder")
        return TrainLog.from_json(raw, source=str(self.train_log_file))

    def write_train_log(self, log: TrainLog) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.train_log_file, log.to_json())

    def read_metrics(self) -> RunMetrics:
        raw = _read_json(self.metrics_file, f"no test-day metrics; {self.path} is not a finished run")
        return RunMetrics.from_json(raw, source=str(self.metrics_file))

    def write_metrics(self, metrics: RunMetrics) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.metrics_file, metrics.to_json())

    def read_lineage(self) -> Lineage:
        """The lineage of a finished run; ``FileNotFoundError`` if it has none (not finished)."""
        if not self.lineage_file.is_file():
            raise FileNotFoundError(
                f"{self.lineage_file}: no lineage; {self.path} is not a finished `mmctr train`/`retrain` run")
        return Lineage.from_json(_read_json(self.lineage_file, "no lineage"), source=str(self.lineage_file))

    def write_lineage(self, lineage: Lineage) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(self.lineage_file, lineage.to_json())
