"""TorchX components of the mmctr pipeline: each launches one ``mmctr`` stage.

Every component is ``torchx.components.dist.torchrun`` over ``python -m
recsys.cli STAGE ...`` (torchrun sets rank and world size; the stage makes a
gloo group on CPU or NCCL on GPU). Run locally::

    torchx run -s local_cwd torchx_components/pipeline.py:pretrain \\
        --world runs/demo/world --out runs/demo/pretrain-scl --nproc 2
    torchx run -s local_cwd torchx_components/pipeline.py:train \\
        --world runs/demo/world --vectors runs/demo/pretrain-scl --variant simtier_make \\
        --out runs/demo/ctr-simtier_make --nproc 2 --sharding row_wise

On a cluster scheduler (``-s kubernetes`` or ``-s slurm``) the same
components run with ``image`` pointing at a container with this project
installed and paths on shared storage.

Example::

    >>> app = pretrain(world="w", out="o", nproc=2, max_steps=5)
    >>> cmd = app.roles[0].args[-1]
    >>> "--nproc_per_node 2" in cmd, cmd.split(" -m ")[1]
    (True, 'recsys.cli pretrain --method scl --world w --out o --quiet --max-steps 5')
    >>> train(world="w", out="o", variant="simtier", vectors="v", sharding="row_wise").roles[0].args[-1].split(" -m ")[1]
    'recsys.cli train --world w --out o --variant simtier --sharding row_wise --quiet --vectors v'
    >>> retrain(from_run="r1", day=43, out="r2", retrain_make=True).roles[0].args[-1].split(" -m ")[1]
    'recsys.cli retrain --from r1 --day 43 --out r2 --sharding auto --quiet --retrain-make'
    >>> world(out="w", preset="tiny").roles[0].args
    ['-m', 'recsys.cli', 'world', '--preset', 'tiny', '--seed', '0', '--out', 'w', '--quiet', '--validate']
    >>> validate(directory="/data/log").roles[0].args
    ['-m', 'recsys.cli', 'validate', '/data/log', '--quiet']
"""

# No `from __future__ import annotations`: TorchX reads the real annotation
# objects to parse component arguments.
from typing import List, Optional

from torchx import specs
from torchx.components.dist import torchrun
from torchx.components.utils import python

from pretrain.config import PretrainJob
from recsys.models.config import ModelConfig
from recsys.train.config import SHARDING
from recsys.world.config import WorldJob

# The stages' own defaults come from their config dataclasses (imported above);
# these are the components' resources.
DEFAULT_IMAGE = "mmctr:latest"  # for container schedulers; local_cwd ignores it
NPROC = 2  # processes (ranks) per node
NNODES = 1  # nodes (replicas)
CPU = 2  # CPUs per replica
MEM_MB = 8192  # memory per replica, MB
_MODULE = "recsys.cli"


def _stage(name: str, args: list[str], nproc: int, image: str, cpu: int, memMB: int, nnodes: int = NNODES) -> specs.AppDef:
    """One ``mmctr`` stage under torchrun: ``nnodes`` replicas of ``nproc`` processes each."""
    return torchrun(name, *args, m=_MODULE, image=image, name=f"mmctr-{name}", j=f"{nnodes}x{nproc}", cpu=cpu, memMB=memMB)


def _single(name: str, args: list[str], image: str, cpu: int, memMB: int) -> specs.AppDef:
    """One single-process ``mmctr`` stage (no process group)."""
    return python(name, *args, m=_MODULE, image=image, name=f"mmctr-{name}", cpu=cpu, memMB=memMB)


def world(
    out: str,
    preset: str = WorldJob.preset,
    seed: int = WorldJob.seed,
    image: str = DEFAULT_IMAGE,
    cpu: int = CPU,
    memMB: int = MEM_MB,
) -> specs.AppDef:
    """Generates a synthetic world in the public Parquet format, then validates it.

    Args:
        out: dataset directory (replaced)
        preset: tiny, small or large
        seed: random seed (same seed, same world)
        image: container image (cluster schedulers only)
        cpu: CPUs per replica
        memMB: memory per replica, MB
    """
    return _single("world", ["--preset", preset, "--seed", str(seed), "--out", out, "--quiet", "--validate"], image, cpu, memMB)


def validate(directory: str, image: str = DEFAULT_IMAGE, cpu: int = CPU, memMB: int = MEM_MB) -> specs.AppDef:
    """Checks a dataset against the public format and its manifest's feature spec.

    Args:
        directory: dataset directory (holds manifest.json)
        image: container image (cluster schedulers only)
        cpu: CPUs per replica
        memMB: memory per replica, MB
    """
    return _single("validate", [directory, "--quiet"], image, cpu, memMB)


def pretrain_eval(
    world: str, runs: List[str], out_json: str, image: str = DEFAULT_IMAGE, cpu: int = CPU, memMB: int = MEM_MB
) -> specs.AppDef:
    """Query -> purchase recall and neighbour purity of pre-trained runs, side by side.

    Args:
        world: dataset directory
        runs: pretrain run folders, comma-separated
        out_json: write the table as JSON here
        image: container image (cluster schedulers only)
        cpu: CPUs per replica
        memMB: memory per replica, MB
    """
    return _single("pretrain-eval", ["--world", world, "--runs", *runs, "--json", out_json], image, cpu, memMB)


def pretrain(
    world: str,
    out: str,
    method: str = PretrainJob.method,
    nproc: int = NPROC,
    nnodes: int = NNODES,
    config: Optional[str] = None,
    max_steps: Optional[int] = None,
    content_cache: Optional[str] = None,
    image: str = DEFAULT_IMAGE,
    cpu: int = CPU,
    memMB: int = MEM_MB,
) -> specs.AppDef:
    """SCL (or CLIP-style) pre-training of the item encoder; exports item vectors.

    Args:
        world: dataset directory (public Parquet format)
        out: run directory; a restarted job resumes from its checkpoint
        method: scl, clip or random
        nproc: processes (DDP ranks) on the node
        nnodes: nodes (replicas) on a cluster scheduler; ranks = nnodes x nproc
        config: YAML/TOML file of SclConfig values
        max_steps: stop after this many optimizer steps
        content_cache: folder keeping the items' decoded images and title tokens between runs
        image: container image (cluster schedulers only)
        cpu: CPUs per replica
        memMB: memory per replica, MB
    """
    args = ["--method", method, "--world", world, "--out", out, "--quiet"]
    if config:
        args += ["--config", config]
    if max_steps is not None:
        args += ["--max-steps", str(max_steps)]
    if content_cache:
        args += ["--content-cache", content_cache]
    return _stage("pretrain", args, nproc, image, cpu, memMB, nnodes)


def train(
    world: str,
    out: str,
    variant: str = ModelConfig.variant,
    vectors: Optional[str] = None,
    nproc: int = NPROC,
    nnodes: int = NNODES,
    sharding: str = SHARDING,
    config: Optional[str] = None,
    make_from: Optional[str] = None,
    seed: Optional[int] = None,
    checkpoint_every: Optional[int] = None,
    stop_after_steps: Optional[int] = None,
    train_until: Optional[int] = None,
    image: str = DEFAULT_IMAGE,
    cpu: int = CPU,
    memMB: int = MEM_MB,
) -> specs.AppDef:
    """Trains one CTR variant with DistributedModelParallel and evaluates it on the test day.

    Args:
        world: dataset directory (public Parquet format)
        out: run directory; a restarted job resumes from its newest checkpoint
        variant: id_only, simtier, make, simtier_make, vector or simscore
        vectors: item_vectors.parquet (or its pretrain run folder); every variant but id_only
        nproc: processes (ranks) on the node
        nnodes: nodes (replicas) on a cluster scheduler; ranks = nnodes x nproc
        sharding: table_wise, row_wise, column_wise or auto
        config: YAML/TOML job file with model and train sections
        make_from: finished MAKE stage-1 folder (default: stage 1 runs into OUT/make_stage1)
        seed: overrides train.seed
        checkpoint_every: steps between distributed checkpoints
        stop_after_steps: stop after N steps as if preempted (a rerun resumes)
        train_until: last training day (default: the day before the world's last)
        image: container image (cluster schedulers only)
        cpu: CPUs per replica
        memMB: memory per replica, MB
    """
    args = ["--world", world, "--out", out, "--variant", variant, "--sharding", sharding, "--quiet"]
    optional = {
        "--vectors": vectors,
        "--config": config,
        "--make-from": make_from,
        "--seed": seed,
        "--checkpoint-every": checkpoint_every,
        "--stop-after-steps": stop_after_steps,
        "--train-until": train_until,
    }
    args += [x for flag, value in optional.items() if value is not None for x in (flag, str(value))]
    return _stage("train", args, nproc, image, cpu, memMB, nnodes)


def retrain(
    from_run: str,
    day: int,
    out: str,
    vectors: Optional[str] = None,
    store: Optional[str] = None,
    retrain_make: bool = False,
    nproc: int = NPROC,
    nnodes: int = NNODES,
    sharding: str = SHARDING,
    image: str = DEFAULT_IMAGE,
    cpu: int = CPU,
    memMB: int = MEM_MB,
) -> specs.AppDef:
    """Daily retrain: warm-starts yesterday's run, reloads the item vectors, trains one pass over a day.

    Args:
        from_run: yesterday's finished run folder
        day: the day to train on (the next day, if the world has it, is scored)
        out: the new run folder; a restarted job resumes from its newest checkpoint
        vectors: item_vectors.parquet, its folder, or a vector store (default: the parent's)
        store: vector store adding vectors of items the table lacks (default: the parent's)
        retrain_make: run MAKE stage 1 again instead of keeping the parent's MAKE
        nproc: processes (ranks) on the node
        nnodes: nodes (replicas) on a cluster scheduler; ranks = nnodes x nproc
        sharding: table_wise, row_wise, column_wise or auto
        image: container image (cluster schedulers only)
        cpu: CPUs per replica
        memMB: memory per replica, MB
    """
    args = ["--from", from_run, "--day", str(day), "--out", out, "--sharding", sharding, "--quiet"]
    if vectors is not None:
        args += ["--vectors", vectors]
    if store is not None:
        args += ["--store", store]
    if retrain_make:
        args.append("--retrain-make")
    return _stage("retrain", args, nproc, image, cpu, memMB, nnodes)
