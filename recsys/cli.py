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
from pathlib import Path


def _cmd_world(args: argparse.Namespace) -> int:
    from recsys.world.generate import generate_world
    from recsys.world.summary import format_summary, summarize

    t = time.perf_counter()
    generate_world(args.out, args.preset, args.seed, progress=not args.quiet)
    print(f"wrote {args.out} ({args.preset}, seed {args.seed}) in {time.perf_counter() - t:.1f} s")
    print(format_summary(summarize(args.out)))
    if getattr(args, "validate", False):
        return _cmd_validate(argparse.Namespace(directory=args.out, quiet=args.quiet))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from recsys.data.validate import DatasetError, validate_dataset

    try:
        counts = validate_dataset(args.directory, progress=not args.quiet)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"mmctr validate: {e}", file=sys.stderr)
        return 1
    print(f"OK: {args.directory}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from recsys.world.summary import format_summary, summarize

    print(format_summary(summarize(args.directory)))
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    import dataclasses

    from pretrain.config import SclConfig, load_config
    from pretrain.train import run_pretrain

    cfg = load_config(args.config) if args.config else SclConfig()
    if args.max_steps is not None:
        cfg = dataclasses.replace(cfg, max_steps=args.max_steps)
    if args.init_from is not None:
        cfg = dataclasses.replace(cfg, init_from=str(args.init_from))
    stats = run_pretrain(args.world, args.out, args.method, cfg, args.checkpoint_every, progress=not args.quiet)
    print(f"pretrain {args.method}: {stats}")
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


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from recsys.train.config import load_job_config
    from recsys.train.trainer import TrainJob, run_train

    model, train = load_job_config(args.config, variant=args.variant)
    overrides = {k: getattr(args, k) for k in ("seed", "epochs", "checkpoint_every", "stop_after_steps", "batch_size")}
    train = dataclasses.replace(train, **{k: v for k, v in overrides.items() if v is not None})
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
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    import os

    from recsys.train.retrain import RetrainJob, retrain_summary, run_retrain

    job = RetrainJob(parent=args.from_run, day=args.day, out=args.out, vectors=args.vectors, store=args.store,
                     retrain_make=args.retrain_make, world=args.world, sharding=args.sharding, quiet=args.quiet)
    metrics = run_retrain(job)
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
    from serving.export import export_repository

    spec = export_repository(args.encoder, args.out, args.max_batch_size, args.queue_delay_us, args.torch_threads)
    print(f"wrote {args.out}/embedded (for `mmctr serve`) and {args.out}/production (libtorch): "
          f"image {spec.image_shape}, context {spec.context_length} tokens, D={spec.dim}, "
          f"max batch {spec.max_batch_size}")  # fmt: skip
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from serving.export import embedded_repository
    from serving.server import ServerConfig, TritonServer

    stop = _stop_on_signals()
    config = ServerConfig(repository=embedded_repository(args.repository), host=args.host,
                          grpc_port=args.grpc_port, http_port=args.http_port, ready_timeout_s=args.ready_timeout)  # fmt: skip
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
    config = EmbedderConfig(batch_size=args.batch_size, poll_interval_s=args.poll_interval, exit_when_idle_s=args.exit_when_idle)
    with EncoderClient(ClientConfig(url=args.url, timeout_s=args.timeout)) as client, VectorStore(args.store) as store:
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
    from serving.feed import publish_world_items

    n = publish_world_items(args.world, args.feed, args.day, args.rate, args.per_file, args.limit)
    print(f"published {n} items to {args.feed}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from recsys.eval.evaluate import EvalJob, run_evaluate

    job = EvalJob(
        world=args.world,
        models=tuple(args.models),
        day=args.day,
        baseline=args.baseline,
        out=args.out,
        resamples=args.bootstrap,
        seed=args.seed,
        batch_size=args.batch_size,
        quiet=args.quiet,
        store=args.store,
    )
    try:
        run_evaluate(job)
    except (ValueError, FileNotFoundError) as e:  # a run, day or world refused (runs.RunError is a ValueError)
        print(f"mmctr evaluate: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    """The main job: every stage through TorchX, resumable (``recsys.pipeline.run``)."""
    from recsys.pipeline.run import PipelineError, run_pipeline

    try:
        run_pipeline(args.preset, args.out, quiet=args.quiet)
    except PipelineError as e:
        print(f"mmctr pipeline: {e}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    from recsys.world.config import PRESETS

    parser = argparse.ArgumentParser(prog="mmctr", description="Multimodal CTR ranking on TorchRec.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("world", help="generate a synthetic Taobao-like world (public Parquet format)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small", help="world size (default: small)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same world (default: 0)")
    p.add_argument("--out", type=Path, required=True, help="output dataset directory (replaced)")
    p.add_argument("--validate", action="store_true", help="then check it as `mmctr validate` does")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=_cmd_world)

    p = sub.add_parser("validate", help="check a dataset against the public format")
    p.add_argument("directory", type=Path, help="dataset directory (holds manifest.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=_cmd_validate)

    p = sub.add_parser("summary", help="counts, click rate, cold-start share of a dataset")
    p.add_argument("directory", type=Path, help="dataset directory")
    p.set_defaults(fn=_cmd_summary)

    p = sub.add_parser("pretrain", help="SCL (or CLIP-style) pre-training; exports the item vector table")
    p.add_argument("--method", choices=["scl", "clip", "random"], default="scl", help="training recipe (default: scl)")
    p.add_argument("--world", type=Path, required=True, help="dataset directory")
    p.add_argument("--out", type=Path, required=True, help="run directory (resumes from its checkpoint)")
    p.add_argument("--config", type=Path, help="YAML/TOML file of SclConfig values")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    p.add_argument("--init-from", type=Path, help="encoder.pt to start from (e.g. a clip run's) instead of random towers")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default: 200)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=_cmd_pretrain)

    p = sub.add_parser("pretrain-eval", help="query->purchase recall and neighbour purity of pre-trained runs")
    p.add_argument("--world", type=Path, required=True, help="dataset directory")
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="pretrain run directories")
    p.add_argument("--json", type=Path, help="also write the table as JSON here")
    p.set_defaults(fn=_cmd_pretrain_eval)

    p = sub.add_parser("reduce-vectors", help="narrower item vectors: a run's table and encoder projected on its top principal directions")
    p.add_argument("--run", type=Path, required=True, help="pretrain run directory (encoder.pt, item_vectors.parquet)")
    p.add_argument("--dim", type=int, required=True, help="K, the reduced width")
    p.add_argument("--out", type=Path, required=True, help="new run directory, usable wherever a pretrain run is")
    p.set_defaults(fn=_cmd_reduce_vectors)

    from recsys.models.config import VARIANTS
    from recsys.train.config import SHARDINGS

    p = sub.add_parser("train", help="train a CTR variant with TorchRec (DMP) and evaluate it on the test day")
    p.add_argument("--world", type=Path, required=True, help="dataset directory")
    p.add_argument("--vectors", type=Path, help="item_vectors.parquet (or its run folder); every variant but id_only")
    p.add_argument("--store", type=Path, help="vector store (`mmctr embed-new`) adding the vectors of items --vectors lacks")
    p.add_argument("--variant", choices=VARIANTS, help="model variant (default: the config's, else id_only)")
    p.add_argument("--out", type=Path, required=True, help="run directory (resumes from its newest checkpoint)")
    p.add_argument("--config", type=Path, help="YAML/TOML job file with 'model' and 'train' sections")
    p.add_argument("--sharding", choices=SHARDINGS, default="auto", help="ID table sharding (default: auto, the planner's)")
    p.add_argument("--make-from", type=Path, help="finished MAKE stage-1 folder (default: run stage 1 into OUT/make_stage1)")
    p.add_argument("--seed", type=int, help="overrides train.seed")
    p.add_argument("--epochs", type=int, help="overrides train.epochs")
    p.add_argument("--batch-size", type=int, help="overrides train.batch_size (per rank)")
    p.add_argument("--checkpoint-every", type=int, help="overrides train.checkpoint_every (steps)")
    p.add_argument("--stop-after-steps", type=int, help="stop after N steps as if preempted (checkpoint; rerun resumes)")
    p.add_argument("--train-until", type=int, help="last training day (default: the day before the world's last); "
                   "the next day is the test day")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_cmd_train)

    p = sub.add_parser("retrain", help="daily retrain: warm-start a run, reload vectors, train one pass over a day")
    p.add_argument("--from", dest="from_run", type=Path, required=True, help="yesterday's finished run folder")
    p.add_argument("--day", type=int, required=True, help="the day to train on (the next day, if any, is scored)")
    p.add_argument("--out", type=Path, required=True, help="new run folder (resumes from its newest checkpoint)")
    p.add_argument("--vectors", type=Path, help="item vectors to load: item_vectors.parquet, its folder, or a vector "
                   "store (default: the parent's)")
    p.add_argument("--store", type=Path, help="vector store adding vectors of items --vectors lacks (default: the parent's)")
    p.add_argument("--retrain-make", action="store_true", help="run MAKE stage 1 again instead of keeping the parent's")
    p.add_argument("--world", type=Path, help="dataset directory (default: the parent's)")
    p.add_argument("--sharding", choices=SHARDINGS, default="auto", help="ID table sharding (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_cmd_retrain)

    p = sub.add_parser("export", help="write Triton model repositories of an encoder (embedded and production)")
    p.add_argument("--encoder", type=Path, required=True, help="encoder.pt from `mmctr pretrain`")
    p.add_argument("--out", type=Path, required=True, help="export folder: OUT/embedded, OUT/production, OUT/export.json")
    p.add_argument("--max-batch-size", type=int, default=64, help="items per request and dynamic batch (default: 64)")
    p.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batching delay, microseconds (default: 2000)")
    p.add_argument("--torch-threads", type=int, default=1, help="intra-op threads of the served encoder; 0: torch's default (default: 1)")
    p.set_defaults(fn=_cmd_export)

    p = sub.add_parser("serve", help="run Triton Inference Server on an exported repository until SIGTERM")
    p.add_argument("--repository", type=Path, required=True, help="`mmctr export` folder (its embedded/) or a model repository")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port; 0 picks a free one (default: 8001)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port; 0 picks a free one (default: 8000)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for every model (default: 120)")
    p.add_argument("--log", type=Path, help="write the server's log here (default: a temporary file, removed)")
    p.set_defaults(fn=_cmd_serve)

    p = sub.add_parser("embed-new", help="embed new items from a feed on Triton into the vector store")
    p.add_argument("--feed", type=Path, required=True, help="feed directory (append-only Parquet files)")
    p.add_argument("--store", type=Path, required=True, help="vector store (SQLite file, created if missing)")
    p.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC HOST:PORT (default: 127.0.0.1:8001)")
    p.add_argument("--batch-size", type=int, default=64, help="items per store transaction (default: 64)")
    p.add_argument("--poll-interval", type=float, default=0.05, help="seconds between polls of an idle feed (default: 0.05)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline of one Triton request, seconds (default: 10)")
    p.add_argument("--exit-when-idle", type=float, help="stop after this many seconds without new items (default: run until SIGTERM)")
    p.add_argument("--report", type=Path, help="also write the run's report as JSON here")
    p.add_argument("--ready-file", type=Path, help="create this file once connected to Triton and the store is open")
    p.set_defaults(fn=_cmd_embed_new)

    p = sub.add_parser("feed", help="publish a world's items created on a day into a feed, as new items")
    p.add_argument("--world", type=Path, required=True, help="dataset directory")
    p.add_argument("--feed", type=Path, required=True, help="feed directory")
    p.add_argument("--day", type=int, help="creation day of the items (default: the test day)")
    p.add_argument("--rate", type=float, help="items per second (default: as fast as possible)")
    p.add_argument("--per-file", type=int, default=1, help="items per feed file (default: 1)")
    p.add_argument("--limit", type=int, help="publish at most N items")
    p.set_defaults(fn=_cmd_feed)

    p = sub.add_parser("evaluate", help="score a day with finished CTR runs; AUC/GAUC/NE vs a baseline with bootstrap CIs, JSON + HTML")
    p.add_argument("--world", type=Path, required=True, help="dataset directory the runs were trained on")
    p.add_argument("--models", type=Path, nargs="+", required=True, metavar="RUN", help="finished `mmctr train` run folders")
    p.add_argument("--day", type=int, help="day to score (default: the world's last day, the test day)")
    p.add_argument("--baseline", help="baseline run name (folder name) or variant (default: the first id_only run, else the first)")
    p.add_argument("--out", type=Path, help="report folder (default: eval-day-D next to the first run folder)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples of users (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=8192, help="impressions per scoring batch per rank (default: 8192)")
    p.add_argument("--store", type=Path, help="vector store (`mmctr embed-new`) adding vectors of items the runs' tables lack")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_cmd_evaluate)

    from recsys.pipeline.config import PRESETS as PIPELINES

    for name, about in (("pipeline", "the main job: world -> pre-training -> CTR variants -> Triton -> evaluation -> retrain"),
                        ("demo", "the main job (`make demo`): `mmctr pipeline`, small preset into runs/demo")):
        p = sub.add_parser(name, help=about)
        p.add_argument("--preset", choices=sorted(PIPELINES), default="small", help="pipeline preset (default: small)")
        p.add_argument("--out", type=Path, default=Path("runs/demo"), required=name == "pipeline",
                       help="run folder; run again with the same folder to resume" + ("" if name == "pipeline" else " (default: runs/demo)"))
        p.add_argument("--quiet", action="store_true", help="no stage messages")
        p.set_defaults(fn=_cmd_pipeline)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
