"""Finished ``mmctr train`` runs as the evaluation reads them: checked, named, rebuilt into a ``TrainJob``.

A run folder (``recsys.train.run_folder.RunFolder``) holds ``train_log.json``
(``TrainLog``: the job's model and train configs, the world's manifest hash,
the vectors, the loss curve) and ``checkpoints/`` with ``LATEST``. :func:`load_run` refuses,
naming the run and the field, a run that

* has no ``train_log.json`` or one without a field the evaluation needs;
* has no complete checkpoint, or one whose ``progress.json`` says training
  has not finished (``finished: false``: stopped early, resume it first);
* was trained on another world: another schema, or the days it trained on
  no longer hold the rows it trained on (``recsys.train.world_check``; a
  log grown by later days is the same world);
* names item vectors or a MAKE stage-1 folder that no longer exist, or a vector
  table whose bytes changed since it trained (``vectors.table_sha256``).
  ``mmctr train`` logs paths as given; a relative one is looked up from the
  current directory, then from the directory the run was trained from
  (inferred from the logged ``world`` path, :func:`training_dir`).

A run's **name** is its folder name; where two runs share a folder name,
``parent/folder``. The **baseline** is ``--baseline NAME`` (a run name or a
variant), else the first ``id_only`` run, else the first run.

Example::

    >>> runs = [RunSpec(name="a", path=Path("x/a"), variant="simtier"),
    ...     RunSpec(name="b", path=Path("x/b"), variant="id_only")]
    >>> choose_baseline(runs, None), choose_baseline(runs, "simtier"), choose_baseline(runs, "b")
    (1, 0, 1)
    >>> run_names([Path("x/run"), Path("y/run"), Path("y/other")])
    ['x/run', 'y/run', 'other']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recsys.data.vectors import table_sha256
from recsys.models.config import ModelConfig
from recsys.models.ctr_model import VARIANT_SPECS
from recsys.train.checkpoint import Progress
from recsys.train.config import SHARDING, TrainConfig
from recsys.train.run_folder import RunFolder, TrainLog
from recsys.train.trainer import TrainJob
from recsys.train.world_check import check_run_world


class RunError(ValueError):
    """A run folder the evaluation cannot use; the message names the run and the field."""


@dataclass(frozen=True)
class RunSpec:
    """A finished run, checked against the evaluated world (fields documented inline)."""

    name: str  # the run's name in the report (module docstring)
    path: Path  # the run folder
    variant: str  # ModelConfig.variant
    model: ModelConfig | None = None  # TrainLog.model ("config.model")
    train: TrainConfig | None = None  # TrainLog.train ("config.train")
    checkpoint: Path | None = None  # the newest complete checkpoint folder
    progress: Progress | None = None  # its progress.json
    vectors: Path | None = None  # item_vectors.parquet (or a vector store), None for id_only
    store: Path | None = None  # the vector store merged into `vectors`, if the run used one
    table_sizes: dict[str, int] | None = None  # rows per ID table as trained (a retrain keeps its parent's)
    dense_stats: dict[str, tuple[float, float]] | None = None  # standardised dense features as trained
    make_from: Path | None = None  # MAKE stage-1 folder, None without MAKE
    sharding: str = SHARDING  # how the run was sharded (any sharding loads its checkpoint)
    curve: tuple[dict, ...] = ()  # the loss curve: {"step", "epoch", "loss"} points

    def job(self, world: Path, quiet: bool = True) -> TrainJob:
        """The ``TrainJob`` that rebuilds this run's model (``trainer.build``) on ``world``."""
        if self.model is None or self.train is None:
            raise RunError(f"run {self.name} ({self.path}): no model/train config loaded")
        return TrainJob(world=Path(world), out=self.path, model=self.model, train=self.train, vectors=self.vectors,
                        store=self.store, sharding=self.sharding, make_from=self.make_from, quiet=quiet,
                        table_sizes=self.table_sizes, dense_stats=self.dense_stats)


def training_dir(logged_world: str, world: Path) -> Path | None:
    """The directory a run was trained from, if its logged (relative) world path names ``world`` from there.

    Example::

        >>> training_dir("data/w", Path("/runs/x/data/w")), training_dir("/abs/w", Path("/abs/w"))
        (PosixPath('/runs/x'), None)
    """
    logged = Path(logged_world)
    here = Path(world).resolve().parts
    n = len(logged.parts)
    if logged.is_absolute() or n == 0 or n >= len(here) or here[-n:] != logged.parts:
        return None
    return Path(*here[:-n])


def _existing(value: str | Path | None, dotted: str, where: str, base: Path | None) -> Path:
    """A path the run's log names: as written (absolute, or relative to the current directory), else under ``base``."""
    if value is None:
        raise RunError(f"{where}: no field {dotted!r}; is this a run folder of `mmctr train`?")
    path = Path(value)
    tried = [path]
    if not path.is_absolute() and base is not None:
        tried.append(base / path)
    for candidate in tried:
        if candidate.exists():
            return candidate
    raise RunError(f"{where}: field {dotted!r} names {path}, which does not exist "
                   f"(looked for {' and '.join(str(t.absolute()) for t in tried)})")


def _check_table(log: TrainLog, vectors: Path, where: str) -> None:
    """Refuses a vector table whose bytes are not those the run trained on (``vectors.table_sha256``, logged since
    it exists): its frozen rows would not be the model's, and nothing else would say so."""
    logged = (log.vectors or {}).get("table_sha256")
    now = table_sha256(vectors) if logged is not None else None
    if now is not None and now != logged:
        raise RunError(f"{where}: field 'vectors.table_sha256': {vectors} has changed since the run trained on it "
                       f"(sha256 {logged[:12]}... then, {now[:12]}... now), so its scores would not be the model's; "
                       f"put back the table it trained on, or retrain on this one "
                       f"(`mmctr retrain --from RUN --day D --vectors {vectors}`)")


def load_run(path: Path, name: str, world: Path) -> RunSpec:
    """Reads and checks one finished run folder against ``world`` (module docstring).

    Args:
        path (Path): the run folder (or one of its JSON files).
        name (str): its name in the report.
        world (Path): the evaluated dataset directory.

    Returns:
        RunSpec: everything needed to rebuild and score it.

    Raises:
        RunError: the run cannot be used; the message names the run, the file and the field.
    """
    folder = RunFolder.at(path)
    try:
        log = folder.read_train_log()
    except (OSError, ValueError) as e:
        raise RunError(f"run {name}: {e}") from e
    where = f"run {name}: {folder.train_log_file}"
    try:
        check_run_world(log, world, where)
    except ValueError as e:
        raise RunError(str(e)) from e
    try:
        found = folder.latest_checkpoint()
    except ValueError as e:
        raise RunError(f"run {name}: {e}") from e
    if found is None:
        raise RunError(f"run {name}: no complete checkpoint under {folder.checkpoints} (no LATEST file); train it first")
    checkpoint, progress = found
    if not progress.finished:
        again = (f"mmctr retrain --from {log.warm_start} --day {log.days[-1]} --out {folder.path}"
                 if log.warm_start is not None and len(log.days) == 1 else f"mmctr train --out {folder.path} ...")
        raise RunError(f"run {name}: checkpoint {checkpoint} has field 'finished' false in progress.json "
                       f"(stopped at step {progress.step}); run the job that started it again to finish it "
                       f"(`{again}`, with its other options as before)")
    spec = VARIANT_SPECS[log.model.variant]
    base = training_dir(log.world, world)
    vectors = store = make_from = None
    if spec.uses_vectors():
        vectors = _existing(log.vectors_path, "vectors.path", where, base)
        store = _existing(log.vectors_store, "vectors.store", where, base) if log.vectors_store else None
        _check_table(log, vectors, where)
    if spec.make:
        make_from = _existing(log.make_from, "make_from", where, base)
    return RunSpec(name=name, path=folder.path, variant=log.model.variant, model=log.model, train=log.train,
                   checkpoint=checkpoint, progress=progress, vectors=vectors, store=store, make_from=make_from,
                   sharding=log.sharding, curve=log.curve, table_sizes=log.table_sizes,
                   dense_stats=log.dense_stats)


def run_names(paths: list[Path]) -> list[str]:
    """Report names of run folders: the folder name, or ``parent/folder`` where folder names repeat."""
    names = [Path(p).name for p in paths]
    out = [f"{Path(p).parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]
    repeated = sorted({n for n in out if out.count(n) > 1})
    if repeated:
        raise RunError(f"runs {repeated} are given more than once (or their folders and parents share names)")
    return out


def choose_baseline(runs: list[RunSpec], baseline: str | None) -> int:
    """Index of the baseline run: ``baseline`` as a run name or a variant, else the first ``id_only``, else 0."""
    if baseline is None:
        return next((i for i, r in enumerate(runs) if r.variant == "id_only"), 0)
    for key in ("name", "variant"):
        hits = [i for i, r in enumerate(runs) if getattr(r, key) == baseline]
        if hits:
            return hits[0]
    raise RunError(f"--baseline {baseline!r} is neither a run name nor a variant of the runs; names: {[r.name for r in runs]}")
