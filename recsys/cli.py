"""The ``mmctr`` console script: one subcommand per stage of the pipeline.

Example::

    >>> main(["--help"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    SystemExit: 0
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.settings import add_settings, settings_from_args

if TYPE_CHECKING:  # imported where used: the CLI starts without torch
    from recsys.models.config import ModelConfig
    from recsys.train.config import TrainConfig


def _cmd_world(args: argparse.Namespace) -> int:
    from recsys.data.validate import check
    from recsys.world.config import WorldFormat, WorldJob
    from recsys.world.generate import generate_world
    from recsys.world.summary import format_summary, summarize

    job = settings_from_args(WorldJob, args)
    t = time.perf_counter()
    generate_world(job.out, job.preset, job.seed, progress=not job.quiet, fmt=settings_from_args(WorldFormat, args))
    print(f"wrote {job.out} ({job.preset}, seed {job.seed}) in {time.perf_counter() - t:.1f} s")
    print(format_summary(summarize(job.out)))
    return check(job.out, job.quiet) if job.validate else 0


def _cmd_import_ml100k(args: argparse.Namespace) -> int:
    from recsys.world.ml100k import Ml100kJob, convert_ml100k, format_conversion

    job = settings_from_args(Ml100kJob, args)
    t = time.perf_counter()
    try:
        convert_ml100k(job.out, job.source, job.days)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # a malformed row: file, row and column named
        print(f"mmctr import-ml100k: {e}", file=sys.stderr)
        return 1
    print(f"wrote {job.out} in {time.perf_counter() - t:.1f} s")
    print(format_conversion(job.out))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from recsys.data.validate import check

    return check(args.directory, args.quiet)


def _cmd_summary(args: argparse.Namespace) -> int:
    from recsys.world.summary import format_summary, summarize

    try:
        summary = summarize(args.directory)
    except (ValueError, FileNotFoundError) as e:  # a refused file or column (a DATE day, an unknown item), named
        print(f"mmctr summary: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from pretrain.config import PretrainJob, SclConfig, load_config
    from pretrain.train import run_pretrain

    cfg = settings_from_args(SclConfig, args, base=load_config(args.config) if args.config else SclConfig())
    job = settings_from_args(PretrainJob, args)
    try:
        stats = run_pretrain(args.world, args.out, job.method, cfg, job.checkpoint_every, progress=not args.quiet,
                             content_cache=job.content_cache)
    except (ValueError, FileNotFoundError) as e:  # e.g. SCL without a search log: one line naming what can run
        print(f"mmctr pretrain: {e}", file=sys.stderr)
        return 1
    print(f"pretrain {job.method}: {stats}")
    return 0


def _cmd_embed_text(args: argparse.Namespace) -> int:
    import os

    from pretrain.sentence import SentenceJob, run_embed_text

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # process-wide, so here: the model is a local folder, never the hub
    job = settings_from_args(SentenceJob, args)
    try:
        meta = run_embed_text(job)
    except (ValueError, FileNotFoundError, ImportError) as e:  # no model, no titles, a blank title: named
        print(f"mmctr embed-text: {e}", file=sys.stderr)
        return 1
    print(f"wrote {job.out}: {meta['items']} item vectors, D={meta['dim']}, model {meta['model']} "
          f"(loaded in {meta['load_seconds']:.1f} s, titles embedded in {meta['embed_seconds']:.1f} s)")  # fmt: skip
    return 0


def _cmd_pretrain_eval(args: argparse.Namespace) -> int:
    from pretrain.evaluate import evaluate_runs, format_table

    results = evaluate_runs(args.world, args.runs)
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _cmd_reduce_vectors(args: argparse.Namespace) -> int:
    from pretrain.reduce import reduce_run

    try:
        meta = reduce_run(args.run, args.dim, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"mmctr reduce-vectors: {e}", file=sys.stderr)
        return 1
    kept = meta["reduced_from"]["retained_energy"]
    print(f"wrote {args.out}: {meta['items']} item vectors, D={meta['reduced_from']['dim']} -> {args.dim}, "
          f"{kept:.1%} of the energy kept")  # fmt: skip
    return 0


def train_configs(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """``mmctr train``'s model and train configs: the job file's, the flags given over them.

    ``--variant`` is applied as the file is read, so the fields the file leaves
    unset take that variant's values (SimTier's form:
    ``recsys.models.config.SIMTIER_FORMS``), not the file's variant's.

    Raises:
        ValueError: a bad job file, naming it and the key.
    """
    from recsys.models.config import ModelConfig
    from recsys.train.config import TrainConfig, load_job_config

    model, train = load_job_config(args.config, variant=vars(args).get("variant"))
    # the flags given override the job file
    return settings_from_args(ModelConfig, args, base=model), settings_from_args(TrainConfig, args, base=train)


def _cmd_train(args: argparse.Namespace) -> int:
    from recsys.distributed import MainRankError
    from recsys.train.loop import RowCountError
    from recsys.train.trainer import TrainJob, run_train

    try:
        model, train = train_configs(args)
        job = TrainJob(
            world=args.world,
            out=args.out,
            model=model,
            train=train,
            vectors=args.vectors,
            store=args.store,
            sharding=args.sharding,
            make_from=args.make_from,
            quiet=args.quiet,
            train_until=args.train_until,
        )
        run_train(job)
    except (ValueError, OSError, RowCountError, MainRankError) as e:  # a refused input or run (or job file), named in the message
        print(f"mmctr train: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    import os

    from recsys.train.loop import RowCountError
    from recsys.train.retrain import RetrainJob, retrain_summary, run_retrain

    job = RetrainJob(parent=args.from_run, day=args.day, out=args.out, vectors=args.vectors, store=args.store,
                     retrain_make=args.retrain_make, skip_days=args.skip_days, world=args.world,
                     sharding=args.sharding, quiet=args.quiet)
    try:
        metrics = run_retrain(job)
    except (ValueError, FileNotFoundError, RowCountError) as e:
        print(f"mmctr retrain: {e}", file=sys.stderr)
        return 1
    if metrics is not None and os.environ.get("RANK", "0") == "0":
        print(f"retrain {args.out}: {retrain_summary(metrics)}")
    return 0


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (the long-running commands stop cleanly on either)."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _cmd_export(args: argparse.Namespace) -> int:
    from serving.export import ExportConfig, export_repository

    cfg = settings_from_args(ExportConfig, args)
    spec = export_repository(args.encoder, args.out, cfg.max_batch_size, cfg.queue_delay_us, cfg.torch_threads)
    print(f"wrote {args.out}/embedded (for `mmctr serve`) and {args.out}/production (libtorch): "
          f"image {spec.image_shape}, context {spec.context_length} tokens, D={spec.dim}, "
          f"max batch {spec.max_batch_size}")  # fmt: skip
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from serving.export import embedded_repository
    from serving.server import ServerConfig, TritonServer

    stop = _stop_on_signals()
    config = settings_from_args(ServerConfig, args, repository=embedded_repository(args.repository))
    server = TritonServer(config, log=args.log)
    rc = 0
    try:
        server.start()
        print(f"ready: {', '.join(server.models)} on gRPC {server.grpc_url}, HTTP {server.http_url} "
              f"(pid {server.pid}, {server.ready_seconds:.1f} s to ready)", flush=True)  # fmt: skip
        while not stop.wait(0.5):
            if not server.running():
                print(f"mmctr serve: tritonserver exited:\n{server.log_tail()}", file=sys.stderr)
                rc = 1
                break
    except RuntimeError as e:
        print(f"mmctr serve: {e}", file=sys.stderr)
        rc = 1
    finally:
        server.stop()
    print("stopped", flush=True)
    return rc


def _cmd_embed_new(args: argparse.Namespace) -> int:
    import logging

    from serving.client import ClientConfig, EncoderClient
    from serving.embedder import Embedder, EmbedderConfig
    from serving.store import VectorStore

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = _stop_on_signals()
    config = settings_from_args(EmbedderConfig, args)
    with EncoderClient(settings_from_args(ClientConfig, args)) as client, VectorStore(args.store) as store:
        embedder = Embedder(args.feed, store, client, config)
        if args.ready_file is not None:
            client.model()  # the served model's metadata: Triton answers (retried while it starts)
            args.ready_file.touch()
        report = embedder.run(stop)
    print(report.summary(), flush=True)
    if args.report:
        args.report.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0


def _cmd_feed(args: argparse.Namespace) -> int:
    from serving.feed import PublishConfig, publish_world_items

    c = settings_from_args(PublishConfig, args)
    n = publish_world_items(args.world, args.feed, c.day, c.rate, c.per_file, c.limit)
    print(f"published {n} items to {args.feed}")
    return 0


def _cmd_export_ranker(args: argparse.Namespace) -> int:
    try:
        return _export_ranker(args)
    except (ValueError, FileNotFoundError) as e:  # a config, run, world or store refused (RunError is a ValueError)
        print(f"mmctr export-ranker: {e}", file=sys.stderr)
        return 1


def _export_ranker(args: argparse.Namespace) -> int:
    from serving.ranker_export import RankerExportConfig, export_ranker

    config = settings_from_args(RankerExportConfig, args)
    if args.torchscript:
        from serving.ranker_production import export_torchscript_ranker

        done = export_torchscript_ranker(args.run, _run_world(args), args.out, args.version or 1, config, args.store,
                                         config.precision)
        print(f"wrote {done['repositories']} ({done['variant']} version {done['version']}, {done['precision']} tables; "
              f"TorchScript = eager to {done['artifact_max_abs_diff']:.1e}); serve the embedded one with "
              f"`mmctr serve --repository {done['repositories']['embedded']}`")  # fmt: skip
    else:
        entry = export_ranker(args.run, _run_world(args), args.out, args.version or 1, config, store=args.store)
        print(f"wrote {args.out}/{args.name}/{entry.version} ({entry.variant}, run {entry.run}); serve it with "
              f"`mmctr serve --repository {args.out}`")  # fmt: skip
    if args.load:
        from serving.client import ClientConfig
        from serving.ranker_client import RankerClient

        with RankerClient(ClientConfig(url=args.url, model=args.name)) as client:
            client.load()
            print(f"{args.url}: {args.name} versions {client.versions()}")
    return 0


def _run_world(args: argparse.Namespace) -> Path:
    """``--world``, else the dataset the run's ``train_log.json`` names."""
    if args.world is not None:
        return args.world
    from recsys.train.run_folder import RunFolder

    return Path(RunFolder.at(args.run).read_train_log().world)


def rank_context(items: list[str], sparse: Collection[str] | None = None) -> dict[str, "np.ndarray"]:
    """``mmctr rank --context NAME=V1,V2,...`` values: each feature's per-candidate values.

    A categorical (sparse) feature's values are IDs, kept exactly as int64 (a raw 64-bit ID would lose its
    low bits through a float); a dense feature's are float64. ``sparse``: the categorical features' names
    (the run's spec); None (a served ranker, which types its own inputs): a feature whose values are all
    integers is int64, else float64.

    Raises:
        ValueError: an item without ``NAME=``, a value that is not a number (not an integer ID for a
            feature in ``sparse``), or a feature given twice.

    Example::

        >>> {k: v.tolist() for k, v in rank_context(["position=0.5,1"], sparse=("slot",)).items()}
        {'position': [0.5, 1.0]}
        >>> rank_context(["slot=1152921504606846977"], sparse=("slot",))["slot"].tolist()
        [1152921504606846977]
        >>> rank_context(["position"])
        Traceback (most recent call last):
            ...
        ValueError: --context 'position': expected NAME=V1,V2,... (e.g. position=0,1,2)
        >>> rank_context(["slot=1.5"], sparse=("slot",))
        Traceback (most recent call last):
            ...
        ValueError: --context 'slot=1.5': slot is a categorical feature; every value must be an integer ID (int64)
    """
    import numpy as np

    context = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise ValueError(f"--context {item!r}: expected NAME=V1,V2,... (e.g. position=0,1,2)")
        if name in context:
            raise ValueError(f"--context {name!r} is given twice")
        strings = values.split(",")
        try:  # int() of a decimal string is exact at any width; int64 refuses what it cannot hold (OverflowError)
            ids = np.array([int(v) for v in strings], dtype=np.int64)
        except (ValueError, OverflowError):
            ids = None
        if sparse is not None and name in sparse and ids is None:
            raise ValueError(f"--context {item!r}: {name} is a categorical feature; every value must be an "
                             f"integer ID (int64)")
        if ids is not None and (sparse is None or name in sparse):
            context[name] = ids
            continue
        try:
            context[name] = np.array([float(v) for v in strings])
        except ValueError:
            raise ValueError(f"--context {item!r}: every value must be a number") from None
    return context


def _cmd_rank(args: argparse.Namespace) -> int:
    from serving.client import ClientConfig
    from serving.ranker_export import RankerExportConfig

    # options of the other path: refused, not ignored (a given default cannot be told from an omitted one)
    if args.run is not None and args.url != ClientConfig.url:
        print("mmctr rank: --url and --run: score on a server (--url) or in-process (--run), not both", file=sys.stderr)
        return 2
    if args.run is None and (args.precision != RankerExportConfig.precision or args.store or args.world):
        print("mmctr rank: --precision, --store and --world apply with --run; a served ranker's are set at export",
              file=sys.stderr)
        return 2
    from serving.ranker_client import RankerError

    try:
        return _rank(args)
    except (ValueError, FileNotFoundError, RankerError) as e:  # a refused request or run, an unreachable server
        print(f"mmctr rank: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def _rank(args: argparse.Namespace) -> int:
    from serving.ranker import item_ids, user_id

    history, candidates = item_ids("--history", args.history or []), item_ids("--candidates", args.candidates)
    user_id(args.user)  # a uint64 platform ID past int64 is refused here, never wrapped into another user
    if args.run is not None:
        from recsys.data.schema import Manifest
        from serving.ranker import Ranker, RankRequest

        world = _run_world(args)
        context = rank_context(args.context or [], sparse={f.name for f in Manifest.read(world).features.sparse})
        ranker = Ranker.load(args.run, world, store=args.store, precision=args.precision)
        scores = ranker.score(RankRequest(args.user, history, candidates, context))
        print(f"run {args.run}")
    else:
        from serving.client import ClientConfig
        from serving.ranker_client import RankerClient

        context = rank_context(args.context or [])  # integers stay exact; the client types them as the server does
        with RankerClient(ClientConfig(url=args.url, model=args.name, timeout_s=args.timeout_s)) as client:
            ranked = client.rank(args.user, history, candidates, context)
        scores = ranked.scores
        print(f"{args.name} version {ranked.version} at {args.url}")
    for item, score in zip(candidates, scores):
        print(f"{item} {score:.7f}")
    return 0


def _cmd_online_eval(args: argparse.Namespace) -> int:
    from serving.ranker_client import RankerError

    try:
        return _online_eval(args)
    except (ValueError, FileNotFoundError, RankerError) as e:  # a day outside the world or without impressions,
        # a run or world refused (runs.RunError is a ValueError), a server down (naming its URL) or refusing
        print(f"mmctr online-eval: {e}", file=sys.stderr)
        return 1


def _online_eval(args: argparse.Namespace) -> int:
    from recsys.data.schema import Manifest
    from recsys.eval.evaluate import check_day
    from serving.ranker_online import OnlineEvalConfig, online_eval

    world = _run_world(args)
    day = check_day(Manifest.read(world), args.day, world)  # --day, else the test day; refused as `mmctr evaluate` does
    report = online_eval(args.url, args.run, world, day, settings_from_args(OnlineEvalConfig, args), store=args.store,
                         model=args.name, max_candidates=args.max_candidates)
    on, off = report.online, report.offline
    print(f"{report.impressions} impressions of {report.users} users on day {day}, {report.requests} requests, "
          f"version {report.version}: online AUC {on['auc']:.5f} GAUC {on['gauc']:.5f}, offline AUC {off['auc']:.5f} "
          f"GAUC {off['gauc']:.5f}, max |online - offline| {report.max_abs_diff:.1e}; latency p50 "
          f"{report.latency_p50_ms:.1f} ms, p99 {report.latency_p99_ms:.1f} ms; {report.new_items_served_vector} of "
          f"{report.new_items} new items scored with a served vector")
    if args.out is not None:
        args.out.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from recsys.eval.evaluate import EvalJob, run_evaluate

    try:
        run_evaluate(settings_from_args(EvalJob, args))
    except (ValueError, FileNotFoundError) as e:  # a run, day or world refused (runs.RunError is a ValueError)
        print(f"mmctr evaluate: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    """The main job: every stage through TorchX, resumable (``recsys.pipeline.run``)."""
    from recsys.pipeline.config import PipelineJob
    from recsys.pipeline.run import PipelineError, run_pipeline

    job = settings_from_args(PipelineJob, args)
    try:
        run_pipeline(job.preset, job.out, quiet=job.quiet, world=job.world, vectors=job.vectors)
    except PipelineError as e:
        print(f"mmctr pipeline: {e}", file=sys.stderr)
        return 1
    return 0


# Each subcommand's flags are added only when it runs (main) or when every one is asked for (build_parser()):
# a flag's default lives in a dataclass beside the code it configures, and some of those modules load torch.


def _quiet(p: argparse.ArgumentParser, help: str = "no progress bars") -> None:
    p.add_argument("--quiet", action="store_true", help=help)


def _sharding(p: argparse.ArgumentParser, about: str) -> None:
    from recsys.train.config import SHARDING, SHARDINGS

    p.add_argument("--sharding", choices=SHARDINGS, default=SHARDING, help=f"ID table sharding (default: {SHARDING}{about})")


def _add_world(p: argparse.ArgumentParser) -> None:
    from recsys.world.config import WorldFormat, WorldJob

    add_settings(p, WorldJob, only=("preset", "seed", "out"))
    add_settings(p, WorldFormat)
    add_settings(p, WorldJob, only=("validate", "quiet"))


def _add_import_ml100k(p: argparse.ArgumentParser) -> None:
    from recsys.world.ml100k import Ml100kJob

    add_settings(p, Ml100kJob)


def _add_validate(p: argparse.ArgumentParser) -> None:
    from recsys.data.validate import add_arguments

    add_arguments(p)


def _add_summary(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", type=Path, help="dataset directory")


def _add_pretrain(p: argparse.ArgumentParser) -> None:
    from pretrain.config import PretrainJob, SclConfig

    add_settings(p, PretrainJob, only=("method",))
    p.add_argument("--world", type=Path, required=True, help="dataset directory")
    p.add_argument("--out", type=Path, required=True, help="run directory (resumes from its checkpoint)")
    p.add_argument("--config", type=Path, help="YAML/TOML file of SclConfig values")
    add_settings(p, SclConfig, only=("max_steps", "init_from"), override=True)
    add_settings(p, PretrainJob, only=("checkpoint_every", "content_cache"))
    _quiet(p, "no progress bar")


def _add_embed_text(p: argparse.ArgumentParser) -> None:
    from pretrain.sentence import SentenceJob

    add_settings(p, SentenceJob)


def _add_pretrain_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world", type=Path, required=True, help="dataset directory")
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="pretrain run directories")
    p.add_argument("--json", type=Path, help="also write the table as JSON here")


def _add_reduce_vectors(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, required=True, help="pretrain run directory (encoder.pt, item_vectors.parquet)")
    p.add_argument("--dim", type=int, required=True, help="K, the reduced width")
    p.add_argument("--out", type=Path, required=True, help="new run directory, usable wherever a pretrain run is")


def _add_train(p: argparse.ArgumentParser) -> None:
    from recsys.models.config import ModelConfig
    from recsys.train.config import TrainConfig

    p.add_argument("--world", type=Path, required=True, help="dataset directory")
    p.add_argument("--vectors", type=Path, help="item_vectors.parquet (or its run folder); every variant but id_only")
    p.add_argument("--store", type=Path, help="vector store (`mmctr embed-new`) adding the vectors of items --vectors lacks")
    add_settings(p, ModelConfig, only=("variant",), override=True)
    p.add_argument("--out", type=Path, required=True, help="run directory (resumes from its newest checkpoint)")
    p.add_argument("--config", type=Path, help="YAML/TOML job file with 'model' and 'train' sections")
    _sharding(p, ", the planner's")
    p.add_argument("--make-from", type=Path, help="finished MAKE stage-1 folder (default: run stage 1 into OUT/make_stage1)")
    add_settings(p, TrainConfig, override=True,
                 only=("seed", "epochs", "batch_size", "checkpoint_every", "stop_after_steps", "renormalize_vectors",
                       "train_pipeline"))
    p.add_argument("--train-until", type=int, help="last training day (default: the day before the manifest's test_day); "
                   "the next day is the test day")
    _quiet(p)


def _add_retrain(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="from_run", type=Path, required=True, help="yesterday's finished run folder")
    p.add_argument("--day", type=int, required=True, help="the day to train on (the next day, if any, is scored)")
    p.add_argument("--out", type=Path, required=True, help="new run folder (resumes from its newest checkpoint)")
    p.add_argument("--vectors", type=Path, help="item vectors to load: item_vectors.parquet, its folder, or a vector "
                   "store (default: the parent's)")
    p.add_argument("--store", type=Path, help="vector store adding vectors of items --vectors lacks (default: the parent's)")
    p.add_argument("--retrain-make", action="store_true", help="run MAKE stage 1 again instead of keeping the parent's")
    p.add_argument("--skip-days", action="store_true", help="accept days with impressions between the parent's last "
                   "trained day and --day, left out (lineage.json: skipped_days); refused without it")
    p.add_argument("--world", type=Path, help="dataset directory (default: the parent's)")
    _sharding(p, "")
    _quiet(p)


def _add_export(p: argparse.ArgumentParser) -> None:
    from serving.constants import ExportConfig

    p.add_argument("--encoder", type=Path, required=True, help="encoder.pt from `mmctr pretrain`, or the run folder holding it")
    p.add_argument("--out", type=Path, required=True, help="export folder: OUT/embedded, OUT/production, OUT/export.json")
    add_settings(p, ExportConfig)


def _add_serve(p: argparse.ArgumentParser) -> None:
    from serving.server import GRPC_PORT, HTTP_PORT, ServerConfig

    p.add_argument("--repository", type=Path, required=True, help="`mmctr export` folder (its embedded/) or a model repository")
    # a served Triton listens on its own default ports; a library TritonServer picks free ones
    add_settings(p, ServerConfig, only=("grpc_port", "http_port", "host", "ready_timeout_s", "model_control"),
                 defaults={"grpc_port": GRPC_PORT, "http_port": HTTP_PORT})  # fmt: skip
    p.add_argument("--log", type=Path, help="write the server's log here (default: a temporary file, removed)")


def _add_embed_new(p: argparse.ArgumentParser) -> None:
    from serving.client import ClientConfig
    from serving.embedder import EmbedderConfig

    p.add_argument("--feed", type=Path, required=True, help="feed directory (append-only Parquet files)")
    p.add_argument("--store", type=Path, required=True, help="vector store (SQLite file, created if missing)")
    add_settings(p, ClientConfig, only=("url",))
    add_settings(p, EmbedderConfig, only=("batch_size", "poll_interval_s"))
    add_settings(p, ClientConfig, only=("timeout_s",))
    add_settings(p, EmbedderConfig, only=("exit_when_idle_s",))
    p.add_argument("--report", type=Path, help="also write the run's report as JSON here")
    p.add_argument("--ready-file", type=Path, help="create this file once connected to Triton and the store is open")


def _add_feed(p: argparse.ArgumentParser) -> None:
    from serving.feed import PublishConfig

    p.add_argument("--world", type=Path, required=True, help="dataset directory")
    p.add_argument("--feed", type=Path, required=True, help="feed directory")
    add_settings(p, PublishConfig)


def _add_export_ranker(p: argparse.ArgumentParser) -> None:
    from serving.client import ClientConfig
    from serving.ranker_export import RankerExportConfig

    p.add_argument("--run", type=Path, required=True, help="a finished `mmctr train` or `mmctr retrain` run folder")
    p.add_argument("--world", type=Path, help="the dataset it was trained on (default: the one its train_log.json names)")
    p.add_argument("--out", type=Path, required=True, help="the model repository (created, or a version added)")
    p.add_argument("--version", type=int, help="the version folder to write (default 1; a retrain: the next number)")
    p.add_argument("--store", type=Path, help="a vector store (mmctr embed-new's): new items are scored with their "
                   "vectors as soon as it holds them")
    add_settings(p, RankerExportConfig)
    p.add_argument("--torchscript", action="store_true", help="write OUT/embedded and OUT/production instead: the "
                   "model as a TorchScript artefact (libtorch in NVIDIA's Triton container) behind a Python feature "
                   "step, in an ensemble (serving.ranker_production); fp32 or fp16 tables")
    p.add_argument("--load", action="store_true", help="then ask the server at --url to load it (hot update; "
                   "the server runs with --model-control explicit)")
    add_settings(p, ClientConfig, only=("url",))


def _add_rank(p: argparse.ArgumentParser) -> None:
    from serving.client import ClientConfig
    from serving.ranker_export import RankerExportConfig

    p.add_argument("--run", type=Path, help="score in-process with this finished run (the reference) instead of --url")
    p.add_argument("--world", type=Path, help="with --run: its dataset (default: the one its train_log.json names)")
    p.add_argument("--store", type=Path, help="with --run: a vector store whose new items' vectors join the table")
    add_settings(p, ClientConfig, only=("url",))
    add_settings(p, RankerExportConfig, only=("name", "precision"))
    add_settings(p, ClientConfig, only=("timeout_s",))
    p.add_argument("--user", type=int, required=True, help="the user ID")
    p.add_argument("--history", type=int, nargs="*", help="the user's behaviour history, oldest first")
    p.add_argument("--candidates", type=int, nargs="+", required=True, help="the item IDs to rank")
    p.add_argument("--context", action="append", metavar="NAME=V1,V2,...",
                   help="per-candidate values of a context feature (e.g. position=0,1,2); repeatable")


def _add_online_eval(p: argparse.ArgumentParser) -> None:
    from serving.client import ClientConfig
    from serving.ranker_export import RankerExportConfig
    from serving.ranker_online import OnlineEvalConfig

    p.add_argument("--run", type=Path, required=True, help="the served run folder (the one `mmctr export-ranker` exported)")
    p.add_argument("--world", type=Path, help="its dataset (default: the one its train_log.json names)")
    p.add_argument("--day", type=int, help="the day whose impressions are sampled (default: the manifest's test_day)")
    p.add_argument("--store", type=Path, help="the vector store the server reads (counts the new items scored with it)")
    add_settings(p, ClientConfig, only=("url",))
    add_settings(p, RankerExportConfig, only=("name", "max_candidates"))
    add_settings(p, OnlineEvalConfig)
    p.add_argument("--out", type=Path, help="also write the report as JSON here")


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    from recsys.eval.job import EvalJob

    add_settings(p, EvalJob)


def _add_pipeline(p: argparse.ArgumentParser) -> None:
    from recsys.pipeline.config import PipelineJob

    add_settings(p, PipelineJob, required=("out",))


def _add_demo(p: argparse.ArgumentParser) -> None:
    from recsys.pipeline.config import PipelineJob

    add_settings(p, PipelineJob)


# name -> (help, flags, run)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "world": ("generate a synthetic Taobao-like world (public Parquet format)", _add_world, _cmd_world),
    "import-ml100k": ("write MovieLens-100k (RecBole's atomic files) as a dataset: ratings as impressions, "
                      "a per-user time split", _add_import_ml100k, _cmd_import_ml100k),
    "validate": ("check a dataset against the public format", _add_validate, _cmd_validate),
    "summary": ("counts, click rate, cold-start share of a dataset", _add_summary, _cmd_summary),
    "pretrain": ("SCL (or CLIP-style) pre-training; exports the item vector table", _add_pretrain, _cmd_pretrain),
    "embed-text": ("item vectors from the titles with a local sentence-transformers model", _add_embed_text,
                   _cmd_embed_text),
    "pretrain-eval": ("query->purchase recall and neighbour purity of pre-trained runs", _add_pretrain_eval,
                      _cmd_pretrain_eval),
    "reduce-vectors": ("narrower item vectors: a run's table and encoder projected on its top principal directions",
                       _add_reduce_vectors, _cmd_reduce_vectors),
    "train": ("train a CTR variant with TorchRec (DMP) and evaluate it on the test day", _add_train, _cmd_train),
    "retrain": ("daily retrain: warm-start a run, reload vectors, train one pass over a day", _add_retrain, _cmd_retrain),
    "export": ("write Triton model repositories of an encoder (embedded and production)", _add_export, _cmd_export),
    "serve": ("run Triton Inference Server on an exported repository until SIGTERM", _add_serve, _cmd_serve),
    "embed-new": ("embed new items from a feed on Triton into the vector store", _add_embed_new, _cmd_embed_new),
    "export-ranker": ("write (or add a version to) a Triton repository serving a finished CTR run",
                      _add_export_ranker, _cmd_export_ranker),
    "rank": ("score one user's candidates: on a served ranker (--url) or in-process (--run)", _add_rank, _cmd_rank),
    "online-eval": ("rank a sample of a day's impressions on a served ranker; online vs offline AUC/GAUC",
                    _add_online_eval, _cmd_online_eval),
    "feed": ("publish a world's items created on a day into a feed, as new items", _add_feed, _cmd_feed),
    "evaluate": ("score a day with finished CTR runs; AUC/GAUC/NE vs a baseline with bootstrap CIs, JSON + HTML",
                 _add_evaluate, _cmd_evaluate),
    "pipeline": ("the main job: world (generated, or --world DIR) -> pre-training -> CTR variants -> Triton -> "
                 "evaluation -> retrain",
                 _add_pipeline, _cmd_pipeline),
    "demo": ("the main job (`make demo`): `mmctr pipeline`, small preset into runs/demo", _add_demo, _cmd_pipeline),
}


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``mmctr`` parser; ``commands``: the subcommands whose flags are added (None: all of them)."""
    parser = argparse.ArgumentParser(prog="mmctr", description="Multimodal CTR ranking on TorchRec.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (about, add_flags, run) in COMMANDS.items():
        p = sub.add_parser(name, help=about)
        if commands is None or name in commands:
            add_flags(p)
        p.set_defaults(fn=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from recsys.allocator import pin_malloc_thresholds

    pin_malloc_thresholds()  # process-wide, so here at the entry point (steady step times; recsys.allocator)
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)  # the top level has no option taking a value
    args = build_parser({command} if command else set()).parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
