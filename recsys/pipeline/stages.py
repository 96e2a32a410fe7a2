"""The stages of ``mmctr pipeline``, in order, each a list of TorchX apps or an in-process step.

=================  ======================================================  =========
stage              what runs                                               ranks
=================  ======================================================  =========
world              ``mmctr world --validate`` (the preset's world)         1
validate           ``mmctr validate DIR`` (``--world DIR``: in its place)  1
pretrain_clip      ``mmctr pretrain --method clip`` (the generic CLIP)     nproc
pretrain_scl       ``mmctr pretrain --method scl`` fine-tuned from it      nproc
pretrain_random    ``mmctr pretrain --method random`` (one modality, no    nproc
                   search log: untrained towers)
catalogue          item vectors of items created before the test day       in-process
                   (every item's when ``embed`` is skipped)
train_VARIANT      ``mmctr train --train-until T-1`` per variant, up to    train
                   ``training.parallel`` at once (``make`` first: its      slots
                   MAKE stage 1 is shared with ``simtier_make``, which
                   starts once that has finished; the others start
                   meanwhile, ``id_only``, the shortest, last)
export             ``mmctr export``: Triton repositories of the encoder;   1
                   in a training slot, beside the training stages
                   (Triton starts once it is done)
pretrain_eval      ``mmctr pretrain-eval``: SCL vs CLIP recall; in a       1
                   training slot, beside the training stages
embed              ``mmctr feed`` (test-day items at ``feed_rate``/s) and  1 + 1
                   ``mmctr embed-new`` on the running Triton server
evaluate           ``mmctr evaluate --day T [--store]``: the test day,     nproc
                   tables + the store's served vectors of new items
retrain            ``mmctr retrain`` of the plan's retrain variant on the  train
                   test day T (tomorrow's model), vectors from table + store
rank_online        ``mmctr export-ranker`` of the retrained run (with the  1 + 1
                   store; in-process), a Triton server on it, ``mmctr
                   online-eval``: a sample of T's impressions ranked
                   online vs offline
report             the pipeline's sections added to the report, the        in-process
                   final table printed and written to ``summary.json``
=================  ======================================================  =========

Which of them run on a dataset, and with which inputs (the test day ``T``,
the source of the item vectors, the variants), is the plan's
(``recsys.pipeline.plan``); :func:`stages` builds the ones it runs.
Triton (``mmctr serve``, a TorchX app too) runs while a stage that needs it
(``embed``) is pending, on free ports on 127.0.0.1, and is stopped at the end.

Example::

    >>> from pathlib import Path
    >>> from recsys.data.schema import Manifest
    >>> from recsys.pipeline.config import PRESETS
    >>> from recsys.pipeline.plan import DataFacts, plan_stages
    >>> m = Manifest(format_version=2, first_day=10, last_day=14)
    >>> plan = plan_stages(m, DataFacts(900, 200, 60), PRESETS["tiny"])
    >>> [s.name for s in stages(plan)][:7]
    ['world', 'pretrain_clip', 'pretrain_scl', 'catalogue', 'train_make', 'train_simtier_make', 'train_simtier']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torchx import specs
from torchx.runner import Runner

import torchx_components.evaluate as evaluate_components
import torchx_components.pipeline as components
import torchx_components.serving as serving_components
from recsys.pipeline.config import Layout, PipelineConfig, TrainingSlots
from recsys.pipeline.jobs import PipelineError, Server
from recsys.pipeline.plan import Plan, vectors_source

EMBED_TIMEOUT_S = 600.0  # the embedder must have handled the whole feed this long after the feed ends


@dataclass(frozen=True)
class Context:
    """What a stage's apps are built from."""

    cfg: PipelineConfig
    layout: Layout
    configs: dict[str, Path]  # clip, scl, train config files (config.write_configs)
    plan: Plan | None  # what runs on this dataset (None only while the world is generated)
    server: Server | None  # the running Triton app (handle, gRPC HOST:PORT), while a stage needs it
    runner: Runner  # TorchX runner of the pipeline (for steps that start apps themselves)
    training: TrainingSlots = TrainingSlots(nproc=1, parallel=1, threads=1, why="")  # config.training_slots


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: TorchX apps run together (``apps``) or an in-process step (``local``)."""

    name: str
    apps: Callable[[Context], list[specs.AppDef]] | None = None
    local: Callable[[Context], None] | None = None
    needs_server: bool = False  # Triton must be up (Context.server set)
    # runs beside the concurrent stages next to it, up to Context.training.parallel at once, once ``ready`` says so
    concurrent: bool = False
    ready: Callable[[Context], bool] | None = None  # None: at once


def _threads(app: specs.AppDef, threads: int) -> specs.AppDef:
    """Every rank of ``app`` with ``threads`` OpenMP threads (torchrun's own default is 1 only above one rank)."""
    for role in app.roles:
        role.env["OMP_NUM_THREADS"] = str(threads)
    return app


def _shared_stage1(c: Context, variant: str) -> Path | None:
    """The ``make`` run's MAKE stage-1 folder, which ``simtier_make`` reuses when both are trained; else None."""
    from recsys.train.run_folder import RunFolder  # lazy: torch stays out of the pipeline's start-up

    shares = variant == "simtier_make" and "make" in _plan(c).variants
    return RunFolder(c.layout.ctr("make")).make_stage1 if shares else None


def _train_stage(name: str) -> Stage:
    variant = name.removeprefix("train_")

    def apps(c: Context) -> list[specs.AppDef]:
        shared = _shared_stage1(c, variant)
        app = components.train(
            world=str(c.layout.world), out=str(c.layout.ctr(variant)), variant=variant,
            vectors=None if variant == "id_only" else str(c.layout.catalogue), nproc=c.training.nproc,
            config=str(c.configs["train"]), make_from=None if shared is None else str(shared), seed=c.cfg.seed,
            train_until=_plan(c).train_until)
        return [_threads(app, c.training.threads)]

    def ready(c: Context) -> bool:  # a shared MAKE stage 1 must have finished (its make.pt written last)
        from recsys.train.make_stage import MAKE_FILE

        shared = _shared_stage1(c, variant)
        return shared is None or (shared / MAKE_FILE).exists()

    return Stage(name, apps=apps, concurrent=True, ready=ready)


def _plan(c: Context) -> Plan:
    if c.plan is None:
        raise PipelineError(f"{c.layout.world / 'manifest.json'}: no plan yet; the world stage has not produced the world")
    return c.plan


def _test_day(c: Context) -> int:
    return _plan(c).test_day


def _catalogue(c: Context) -> None:
    from recsys.pipeline.catalogue import write_catalogue

    plan = _plan(c)
    try:
        write_catalogue(c.layout.world, vectors_source(plan, c.layout), plan.catalogue_before, c.layout.catalogue)
    except (ValueError, FileNotFoundError) as e:  # a --vectors file refused at the door: one line naming it
        raise PipelineError(f"stage catalogue: {e}") from None


def _embed(c: Context) -> None:
    """The embedder up first, then the test day's items published at ``feed_rate``; stop once all are handled."""
    from recsys.pipeline import jobs
    from serving.feed import list_files
    from serving.store import VectorStore

    if c.server is None:
        raise PipelineError("stage embed: Triton is not running")
    ready = c.layout.out / "embedder.ready"
    ready.unlink(missing_ok=True)
    c.layout.embed_report.unlink(missing_ok=True)  # a killed attempt's report must not pass for this one's
    app = serving_components.embed_new(feed=str(c.layout.feed), store=str(c.layout.store), url=c.server.url,
                                       report=str(c.layout.embed_report), ready_file=str(ready))
    embedder = jobs.submit(c.runner, app, c.layout.logs)
    watched = (embedder, c.server.handle)  # either ending early fails the stage with its log

    def handled() -> bool:
        with VectorStore(c.layout.store, readonly=True) as db:
            return {p.name for p in list_files(c.layout.feed)} <= db.handled_files()

    try:
        jobs.wait_until(ready.exists, c.runner, watched, c.layout.logs, "stage embed (embedder start)", jobs.SERVER_READY_TIMEOUT_S)
        feed = serving_components.feed(world=str(c.layout.world), feed=str(c.layout.feed), day=_test_day(c), rate=c.cfg.feed_rate)
        jobs.run_apps(c.runner, [feed], c.layout.logs, "stage embed (feed)")
        jobs.wait_until(handled, c.runner, watched, c.layout.logs, "stage embed (embedder)", EMBED_TIMEOUT_S)
    finally:
        jobs.stop(c.runner, embedder)  # SIGTERM: the embedder writes its report and exits
    if not c.layout.embed_report.exists():
        raise PipelineError(f"stage embed: the embedder wrote no report at {c.layout.embed_report}\n"
                            f"{jobs.log_tail(c.layout.logs, embedder)}")


def _rank_online(c: Context) -> None:
    """The retrained run exported and served on its own Triton server; a sample of the test day ranked on it."""
    import shutil

    from recsys.eval.runs import RunError
    from recsys.pipeline import jobs
    from serving.ranker_export import export_ranker

    plan, run = _plan(c), str(_retrained(c))
    store = str(c.layout.store) if plan.runs("embed") and plan.retrain_variant != "id_only" else None
    shutil.rmtree(c.layout.ranker, ignore_errors=True)  # a killed attempt's repository is redone whole
    c.layout.online.unlink(missing_ok=True)
    try:  # in-process: it checks the run and writes a few files (the TorchX component does the same as a job)
        export_ranker(Path(run), c.layout.world, c.layout.ranker, store=None if store is None else Path(store))
    except (RunError, ValueError) as e:
        raise PipelineError(f"stage rank_online: {e}") from None
    server = jobs.start_server(c.runner, c.layout.ranker, c.layout.logs)
    try:
        app = serving_components.online_eval(url=server.url, run=run, out=str(c.layout.online), world=str(c.layout.world),
                                             day=plan.test_day, store=store, users=c.cfg.online_users, seed=c.cfg.seed)
        jobs.run_apps(c.runner, [app], c.layout.logs, "stage rank_online (online-eval)")
    finally:
        jobs.stop(c.runner, server.handle)


def _report(c: Context) -> None:
    from recsys.pipeline.summary import finish_report

    finish_report(c.cfg, c.layout, _plan(c))


def _pretrain(stage: str, method: str, config: str) -> Stage:
    return Stage(stage, apps=lambda c: [components.pretrain(
        world=str(c.layout.world), out=str(c.layout.pretrain(stage)), method=method, nproc=c.cfg.nproc,
        config=str(c.configs[config]), content_cache=str(c.layout.content_cache))])


def _evaluate(c: Context) -> list[specs.AppDef]:
    plan = _plan(c)
    return [evaluate_components.evaluate(
        world=str(c.layout.world), models=[str(c.layout.ctr(v)) for v in plan.variants], day=plan.test_day,
        out=str(c.layout.report), bootstrap=c.cfg.bootstrap, store=str(c.layout.store) if plan.runs("embed") else None,
        nproc=c.cfg.nproc)]


def _retrained(c: Context) -> Path:
    """The retrain stage's run folder."""
    plan = _plan(c)
    return c.layout.retrain / f"{plan.retrain_variant}-day-{plan.test_day}"


def _retrain(c: Context) -> list[specs.AppDef]:
    plan = _plan(c)
    variant, uses_vectors = plan.retrain_variant, plan.retrain_variant != "id_only"
    return [_threads(components.retrain(
        from_run=str(c.layout.ctr(variant)), day=plan.test_day, out=str(_retrained(c)),
        vectors=str(c.layout.catalogue) if uses_vectors else None,
        store=str(c.layout.store) if uses_vectors and plan.runs("embed") else None, nproc=c.training.nproc),
        c.training.threads * c.training.parallel)]


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("world", apps=lambda c: [components.world(out=str(c.layout.world), preset=c.cfg.world_preset, seed=c.cfg.seed)]),
    Stage("validate", apps=lambda c: [components.validate(directory=str(c.layout.world))]),
    _pretrain("pretrain_clip", "clip", "clip"),
    _pretrain("pretrain_scl", "scl", "scl"),
    _pretrain("pretrain_random", "random", "clip"),  # the CLIP config's towers and seed; nothing trains
    # beside the training stages (it reads only the pre-training runs), one rank of their threads
    Stage("pretrain_eval", apps=lambda c: [_threads(components.pretrain_eval(
        world=str(c.layout.world), runs=[str(c.layout.pretrain_clip), str(c.layout.pretrain_scl)],
        out_json=str(c.layout.pretrain_eval)), c.training.threads)], concurrent=True),
    Stage("catalogue", local=_catalogue),
    Stage("export", apps=lambda c: [_threads(serving_components.export(
        encoder=str(vectors_source(_plan(c), c.layout) / "encoder.pt"), out=str(c.layout.triton)), c.training.threads)],
        concurrent=True),  # reads only the encoder: beside the training stages too
    Stage("embed", needs_server=True, local=_embed),
    Stage("evaluate", apps=_evaluate),
    Stage("retrain", apps=_retrain),
    Stage("rank_online", local=_rank_online),
    Stage("report", local=_report),
)}


def stage(name: str) -> Stage:
    """The stage of a name (``train_VARIANT`` for any variant).

    Raises:
        KeyError: no such stage.
    """
    if name.startswith("train_"):
        return _train_stage(name)
    if name not in STAGES:
        raise KeyError(f"no pipeline stage {name!r}; stages are {sorted(STAGES)} and train_VARIANT")
    return STAGES[name]


def stages(plan: Plan) -> list[Stage]:
    """The stages the plan runs, in the order they run."""
    return [stage(name) for name in plan.run_names()]
