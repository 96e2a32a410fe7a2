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
import time
from pathlib import Path


def _cmd_world(args: argparse.Namespace) -> int:
    from recsys.world.generate import generate_world
    from recsys.world.summary import format_summary, summarize

    t = time.perf_counter()
    generate_world(args.out, args.preset, args.seed, progress=not args.quiet)
    print(f"wrote {args.out} ({args.preset}, seed {args.seed}) in {time.perf_counter() - t:.1f} s")
    print(format_summary(summarize(args.out)))
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
        sharding=args.sharding,
        make_from=args.make_from,
        quiet=args.quiet,
    )
    run_train(job)
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
    )
    try:
        run_evaluate(job)
    except (ValueError, FileNotFoundError) as e:  # a run, day or world refused (runs.RunError is a ValueError)
        print(f"mmctr evaluate: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job: today, world generation, validation and a summary."""
    world = args.out / "world"
    rc = _cmd_world(argparse.Namespace(out=world, preset=args.preset, seed=args.seed, quiet=False))
    if rc == 0:
        rc = _cmd_validate(argparse.Namespace(directory=world, quiet=False))
    return rc


def build_parser() -> argparse.ArgumentParser:
    from recsys.world.config import PRESETS

    parser = argparse.ArgumentParser(prog="mmctr", description="Multimodal CTR ranking on TorchRec.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("world", help="generate a synthetic Taobao-like world (public Parquet format)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small", help="world size (default: small)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same world (default: 0)")
    p.add_argument("--out", type=Path, required=True, help="output dataset directory (replaced)")
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

    from recsys.models.config import VARIANTS
    from recsys.train.sharding import SHARDINGS

    p = sub.add_parser("train", help="train a CTR variant with TorchRec (DMP) and evaluate it on the test day")
    p.add_argument("--world", type=Path, required=True, help="dataset directory")
    p.add_argument("--vectors", type=Path, help="item_vectors.parquet (or its run folder); every variant but id_only")
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
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_cmd_train)

    p = sub.add_parser("evaluate", help="score a day with finished CTR runs; AUC/GAUC/NE vs a baseline with bootstrap CIs, JSON + HTML")
    p.add_argument("--world", type=Path, required=True, help="dataset directory the runs were trained on")
    p.add_argument("--models", type=Path, nargs="+", required=True, metavar="RUN", help="finished `mmctr train` run folders")
    p.add_argument("--day", type=int, help="day to score (default: the world's last day, the test day)")
    p.add_argument("--baseline", help="baseline run name (folder name) or variant (default: the first id_only run, else the first)")
    p.add_argument("--out", type=Path, help="report folder (default: eval-day-D next to the first run folder)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples of users (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=8192, help="impressions per scoring batch per rank (default: 8192)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_cmd_evaluate)

    p = sub.add_parser("demo", help="the main job (see README)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small", help="world size (default: small)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default: runs/demo)")
    p.set_defaults(fn=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
