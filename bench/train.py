"""``python -m bench.train``: CTR training throughput, the DMP path against plain PyTorch, and sharded memory.

Every measurement runs ours and its baseline in this run, one thread per
process (``OMP_NUM_THREADS=1``, so 1- and 2-process numbers compare), and
prints the ratio the issue names:

1. samples/s of every variant at 1 and 2 processes, through
   ``recsys.train.trainer.build`` and the real DMP step (fused row-wise
   Adagrad + Adam), batches from ``ImpressionReader`` over the training days
   (MAKE variants get randomly initialised stage-1 weights, so stage 1 is not run);
2. ``simtier_make`` / ``id_only`` step time at 1 process (goal <= 1.3), the
   two taking turns (median of ``--rounds``): the default config, MAKE's other
   stage-2 modes (frozen, or only its attention frozen), MAKE's attention 8 wide, SimTier in ``simtier``'s form (soft
   tiers over a learned metric, 50) in place of the paper's, ``configs/light_make.yaml`` alone
   and with the frozen table projected to 32 and 16 dimensions in the run
   (``ModelConfig.mm_width``), and with 16-d vectors (``--narrow-vectors``)
   alone and with ``configs/light_make.yaml``, the last also without the
   fused kernels (``recsys.models.fused``);
   ``--ratios-only`` measures these alone;
3. the DMP path vs a plain-PyTorch ``id_only`` (``nn.EmbeddingBag(sparse=True)``
   tables, sparse Adagrad + Adam) on the same batches held in memory, taking
   turns in one process (goal >= 1.0);
4. reader throughput alone / ``id_only`` training consumption (goal >= 3);
5. vectorised GAUC vs a per-user sklearn loop (``bench.gauc``, goal >= 20x);
6. per-rank embedding memory (tables, and tables + fused optimizer state)
   with 2-rank row-wise sharding vs 1 rank on the ``large`` world (goal <= 0.55);
7. mmctr vs the peer DIN (``bench.peer``) at batch 256 and 2,048
   (``--peer-batch-sizes``): ``id_only`` samples/s over the peer DIN's and
   ``simtier``'s over the peer DIN + SimTier's, the same batches in memory,
   taking turns in one process (goal >= 1.0 each; ``bench.peer_speed``);
8. the default ``simtier_make`` / ``id_only`` step time with 64-d
   (``--vectors``) and 384-d vectors (``--wide-vectors``, else random unit
   ones written for the world's items; goal <= 1.3 each), and the 384-d
   over the 64-d ``simtier_make`` step (goal <= 1.1);
9. scaling: total samples/s at 2 ranks over 1 rank of ``id_only`` and
   ``simtier_make``, table-wise and row-wise, each with TorchRec's
   ``TrainPipelineSparseDist`` and with the plain loop (goals 1.6 and 1.4;
   ``--scaling-only`` measures it alone: 16 spawned runs).

Every throughput runs its steps through ``recsys.train.loop.training_steps``,
as training does (TorchRec's train pipeline unless ``Run.pipeline`` says plain).

``--peer-only`` measures 7. and 8. alone: on the tiny world with ``--steps 20
--warmup 3`` about 12 min wall (3 rounds; the 9 spawned processes of 8. take
most of it), with ``--rounds 1 --steps 10 --warmup 2`` about 3 min of CPU.

Usage::

    python -m bench.train [--world DIR] [--vectors RUN] [--narrow-vectors RUN] [--large-world DIR] [--steps 40]
        [--ratios-only | --peer-only | --scaling-only] [--wide-vectors RUN] [--peer-batch-sizes 256 2048] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torchrec.modules.mlp import MLP

from bench.peer import OptimizerGroup
from recsys.allocator import pin_malloc_thresholds
from recsys.data.batch import Batch
from recsys.data.spec import world_spec
from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.data.schema import Manifest
from recsys.data.vectors import load_vectors
from recsys.distributed import DistContext, init_distributed
from recsys.models import fused
from recsys.models.attention import TargetAttention
from recsys.models.config import SIMTIER_ALONE, SIMTIER_PAPER, VARIANTS, ModelConfig, simtier_fields, table_sizes
from recsys.models.ctr_model import VARIANT_SPECS
from recsys.models.make import Make, make_config
from recsys.train.config import TRAIN_PIPELINES, TrainConfig, load_job_config, resolve_train_pipeline
from recsys.train.loop import training_steps
from recsys.train.make_stage import MAKE_FILE
from recsys.train.setup import split_days
from recsys.train.trainer import Built, TrainJob, build

WORLD = world_spec()  # the plain-PyTorch baseline is written for the world's features
POOLED_FEATURES = WORLD.pooled()
DENSE_FEATURES = WORLD.dense_names()

LIGHT_MAKE_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "light_make.yaml")
# SimTier's forms as ModelConfig overrides: the paper's (simtier_make's default), and SIMTIER_ALONE (simtier's)
PAPER_SIMTIER = simtier_fields(SIMTIER_PAPER)
SOFT_LEARNED_SIMTIER = simtier_fields(SIMTIER_ALONE)


@dataclass(frozen=True)
class Run:
    """One throughput or memory measurement (picklable for spawned workers)."""

    world: str
    vectors: str
    variant: str
    steps: int
    warmup: int
    batch_size: int
    sharding: str = "auto"
    memory_only: bool = False
    make_frozen: bool | None = None  # None: ModelConfig's default
    make_attention_hidden: tuple[int, ...] | None = None  # None: ModelConfig's default
    fused_kernels: bool | None = None  # None: ModelConfig's default; False: without recsys.models.fused's kernels
    pipeline: str = TrainConfig.train_pipeline  # how a step runs (config.resolve_train_pipeline, loop.training_steps)
    model_overrides: tuple[tuple[str, object], ...] = ()  # any other ModelConfig fields, (name, value) pairs

    def model_config(self) -> ModelConfig:
        overrides: dict[str, object] = {
            "make_frozen": self.make_frozen,
            "make_attention_hidden": self.make_attention_hidden,
            "fused_kernels": self.fused_kernels,
            **dict(self.model_overrides),
        }
        return ModelConfig(variant=self.variant, **{k: v for k, v in overrides.items() if v is not None})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fake_make_stage1(folder: Path, run: Run) -> Path:
    """A stage-1 folder with randomly initialised MAKE weights (the bench does not run stage 1), as wide as
    the frozen table: the vectors' D, or ``ModelConfig.mm_width`` where they are wider (``setup.projected_vectors``)."""
    dim = load_vectors(Path(run.vectors)).dim
    width = run.model_config().mm_width
    dim = width if 0 < width < dim else dim
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": Make(make_config(run.model_config()), dim, len(DENSE_FEATURES)).state_dict(), "mm_dim": dim}, folder / MAKE_FILE)
    return folder


def _cycled(batches: Iterable[Batch]) -> Iterator[Batch]:
    """``batches`` again from its start each time it runs out (an epoch of a small world holds fewer batches
    than warmup + steps)."""
    while True:
        yield from batches


def _steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Batch], run: Run,
           device: torch.device) -> tuple[int, float]:
    """Runs warmup + timed steps on ``device`` the way training does (``recsys.train.loop.training_steps``
    with ``run.pipeline``); returns (impressions timed on this rank, seconds)."""
    pipeline = resolve_train_pipeline(run.pipeline, dist.get_world_size() if dist.is_initialized() else 1, device.type)
    with closing(training_steps(model, optimizer, _cycled(batches), device, pipeline)) as steps:
        for _ in range(run.warmup):
            next(steps)
        _sync(device)
        samples, start = 0, time.perf_counter()
        for _ in range(run.steps):
            samples += int(next(steps)[1])
        _sync(device)
        return samples, time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of this rank's shards of every sharded table, and of the fused optimizer state."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    def local_bytes(value: object) -> int:
        if isinstance(value, ShardedTensor):
            return sum(s.tensor.numel() * s.tensor.element_size() for s in value.local_shards())
        return 0

    tables = sum(local_bytes(v) for v in model.state_dict().values())
    state = optimizer.state_dict()["state"]
    optim = sum(local_bytes(v) for entry in state.values() for v in entry.values())
    return {"tables": tables, "tables_and_optimizer": tables + optim}


@contextmanager
def rank_process(rank: int, world_size: int, port: int) -> Iterator[DistContext]:
    """A spawned rank's set-up: pinned malloc thresholds, 1 thread, a gloo (or NCCL) group on 127.0.0.1; destroyed after."""
    pin_malloc_thresholds()  # a spawned process: its own entry point
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    ctx = init_distributed(always=True)
    try:
        yield ctx
    finally:
        dist.destroy_process_group()


def build_run(run: Run, ctx: DistContext, tmp: Path) -> Built:
    """``recsys.train.trainer.build`` of ``run`` in the scratch folder ``tmp`` (MAKE variants: random stage-1 weights)."""
    make_from = _fake_make_stage1(tmp / "make", run) if "make" in run.variant else None
    job = TrainJob(world=Path(run.world), out=tmp / "run", model=run.model_config(),
                   train=TrainConfig(batch_size=run.batch_size), vectors=Path(run.vectors),
                   sharding=run.sharding, make_from=make_from, quiet=True)
    return build(job, ctx)


def worker(rank: int, world_size: int, port: int, run: Run, out: str) -> None:
    """One rank of a measurement; rank 0 writes the result JSON to ``out``."""
    with rank_process(rank, world_size, port) as ctx:
        with tempfile.TemporaryDirectory() as tmp:
            built = build_run(run, ctx, Path(tmp))
            result: dict[str, object] = {}
            if run.memory_only:
                mem = _memory(built.model, built.optimizer)
                t = torch.tensor([mem["tables"], mem["tables_and_optimizer"]], dtype=torch.float64, device=ctx.device)
                if world_size > 1:
                    dist.all_reduce(t, op=dist.ReduceOp.MAX)
                result = {"max_rank_tables": t[0].item(), "max_rank_tables_and_optimizer": t[1].item()}
            else:
                reader = ImpressionReader(Path(run.world), ReaderConfig(
                    batch_size=run.batch_size, days=built.split.train, rank=ctx.rank, world_size=ctx.world_size,
                    shuffle=True, table_sizes=built.sizes))
                samples, seconds = _steps(built.model, built.optimizer, reader, run, ctx.device)
                result = {"samples_per_s": samples * world_size / seconds, "step_s": seconds / run.steps}
            if ctx.is_main:
                Path(out).write_text(json.dumps(result))


def _ratio_candidates(base: Run, narrow_vectors: str) -> dict[str, Run]:
    """The ``simtier_make`` configurations timed against ``id_only``, by label (the first: the defaults)."""
    sm = replace(base, variant="simtier_make")
    light = load_job_config(LIGHT_MAKE_CONFIG)[0]
    runs = {
        "defaults": sm,
        f"MAKE {'fine-tuned' if ModelConfig().make_frozen else 'frozen'} in stage 2": replace(
            sm, make_frozen=not ModelConfig().make_frozen
        ),
        f"MAKE's attention {'fine-tuned' if ModelConfig().make_attention_frozen else 'frozen'} in stage 2 "
        "(its MLP fine-tuned)": replace(
            sm, model_overrides=(("make_attention_frozen", not ModelConfig().make_attention_frozen),)
        ),
        "MAKE's attention unit 8 wide": replace(sm, make_attention_hidden=(8,)),
        "MAKE's attention bilinear (make_attention: bilinear)": replace(
            sm, model_overrides=(("make_attention", "bilinear"),)),
        "SimTier soft, learned metric, 50 (simtier's form; the default before)": replace(
            sm, model_overrides=tuple(SOFT_LEARNED_SIMTIER.items())),
    }
    light_config = {"make_frozen": light.make_frozen, "make_attention_hidden": light.make_attention_hidden}
    runs[f"{Path(LIGHT_MAKE_CONFIG).name} (MAKE frozen, attention 8)"] = replace(sm, **light_config)
    for width in (32, 16):  # the frozen table projected in the run (ModelConfig.mm_width), no reduce-vectors run needed
        runs[f"  the same, vectors projected to {width}-d (mm_width: {width})"] = replace(
            sm, **light_config, model_overrides=(("mm_width", width),))
    if Path(narrow_vectors).exists():
        narrow = replace(sm, vectors=narrow_vectors)
        dim = load_vectors(Path(narrow_vectors)).dim
        runs[f"{dim}-d vectors"] = narrow
        light_run = replace(narrow, make_frozen=light.make_frozen, make_attention_hidden=light.make_attention_hidden)
        runs[f"{dim}-d vectors and {Path(LIGHT_MAKE_CONFIG).name} (MAKE frozen, attention 8)"] = light_run
        runs["  the same with eager ops (fused_kernels: false)"] = replace(light_run, fused_kernels=False)
    else:
        print(f"  ({narrow_vectors} missing: no narrow-vector ratios; make it with `mmctr reduce-vectors --dim 16`)")
    return runs


def step_times(runs: dict[str, Run], rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each run, one process each, ``rounds`` rounds in which every run takes its turn
    in order (on a shared machine the speed drifts between runs minutes apart: compare within a round)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(measure(run, 1)["step_s"])
    return times


def median_ratio(times: dict[str, list[float]], name: str, reference: str) -> float:
    """The median over rounds of ``name``'s step time over ``reference``'s in the same round."""
    return statistics.median(a / b for a, b in zip(times[name], times[reference]))


def step_time_ratios(base: Run, candidates: dict[str, Run], rounds: int) -> dict[str, float]:
    """Step time of each candidate over ``base``'s, one process: in each round ``base`` runs,
    then every candidate, and each ratio is against that round's ``base``; the median over rounds."""
    times = step_times({"": base, **candidates}, rounds)
    return {name: median_ratio(times, name, "") for name in candidates}


def measure(run: Run, nproc: int, rank_worker: Callable[[int, int, int, Run, str], None] | None = None) -> dict:
    """Runs ``rank_worker`` (default :func:`worker`; a module-level function, as ``mp.spawn`` pickles it) on ``nproc``
    spawned processes of 1 thread; returns the JSON result rank 0 wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        os.environ["OMP_NUM_THREADS"] = "1"
        mp.spawn(rank_worker or worker, args=(nproc, _free_port(), run, out), nprocs=nproc, join=True)
        return json.loads(Path(out).read_text())


class PlainIdOnly(nn.Module):
    """The ``id_only`` model in plain PyTorch: ``nn.EmbeddingBag(sparse=True)`` tables, same widths."""

    def __init__(self, config: ModelConfig, sizes: dict[str, int]) -> None:
        super().__init__()
        E = config.embedding_dim
        self.bags = nn.ModuleDict({f: nn.EmbeddingBag(sizes[f], E, mode="sum", sparse=True, include_last_offset=True) for f in POOLED_FEATURES})
        self.items = nn.Embedding(sizes["item_id"], E, sparse=True)
        self.attention = TargetAttention(E, config.attention_hidden, softmax=config.attention_softmax)
        in_dim = len(POOLED_FEATURES) * E + 2 * E + len(DENSE_FEATURES)
        self.mlp = nn.Sequential(MLP(in_dim, list(config.mlp_hidden)), nn.Linear(config.mlp_hidden[-1], 1))
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, batch: Batch) -> tuple[torch.Tensor, None]:
        kjt = batch.sparse_features.to_dict()
        pooled = [self.bags[f](kjt[f].values(), kjt[f].offsets()) for f in POOLED_FEATURES]
        target = self.items(kjt["item_id"].values())
        hist = kjt["history_item_ids"]
        lengths = hist.lengths()
        L = max(1, int(lengths.max()))
        mask = torch.arange(L, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
        history = target.new_zeros(len(lengths), L, target.shape[1])
        history[mask] = self.items(hist.values())
        pooled_history = self.attention(target, history, mask)
        logit = self.mlp(torch.cat([*pooled, target, pooled_history, batch.dense_features], dim=-1)).squeeze(-1)
        return self.loss_fn(logit, batch.labels), None


def _plain_optimizer(model: PlainIdOnly, sparse_lr: float, dense_lr: float) -> OptimizerGroup:
    """Sparse Adagrad on the tables (as the fused row-wise Adagrad) + Adam on the rest."""
    sparse, dense = OptimizerGroup.split(model, lambda name: name.startswith(("bags.", "items.")))
    return OptimizerGroup([torch.optim.Adagrad(sparse, lr=sparse_lr), torch.optim.Adam(dense, lr=dense_lr)])


@contextmanager
def one_rank_group() -> Iterator[DistContext]:
    """One thread and a one-rank process group in this process (DMP needs one), destroyed after if made here."""
    torch.set_num_threads(1)
    created = not dist.is_initialized()
    ctx = init_distributed(always=True)
    try:
        yield ctx
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def in_memory_batches(world: str, config: ReaderConfig, n: int) -> list[Batch]:
    """``n`` batches of ``ImpressionReader(world, config)``, its epoch repeated where it holds fewer."""
    first = list(itertools.islice(ImpressionReader(Path(world), config), n))
    return list(itertools.islice(itertools.cycle(first), n))


def take_turns(contenders: dict[str, tuple[nn.Module, object]], batches: list[Batch], run: Run,
               device: torch.device, rounds: int) -> dict[str, float]:
    """Median samples/s of each (model, optimizer) over ``rounds`` rounds in which each takes its turn
    on the same batches (``run.warmup`` + ``run.steps`` steps a turn)."""
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (model, optimizer) in contenders.items():
            samples, seconds = _steps(model, optimizer, batches, run, device)  # type: ignore[arg-type]
            rates[name].append(samples / seconds)
    return {name: statistics.median(values) for name, values in rates.items()}


def built_model(run: Run, config: ModelConfig, ctx: DistContext, out: Path) -> Built:
    """``trainer.build`` of ``config`` on ``run``'s world, vectors and batch size, in this process's group."""
    job = TrainJob(world=Path(run.world), out=out, model=config, train=TrainConfig(batch_size=run.batch_size), quiet=True,
                   vectors=Path(run.vectors) if VARIANT_SPECS[config.variant].uses_vectors() else None)
    return build(job, ctx)


def dmp_vs_plain(run: Run, rounds: int = 3) -> tuple[float, float]:
    """Samples/s of the DMP ``id_only`` and the plain-PyTorch one, in this process, on the same batches.

    The batches are read into memory first (the reader is measured on its
    own), then the two models take turns for ``rounds`` timed windows each;
    the medians are returned as (DMP, plain).
    """
    with one_rank_group() as ctx, tempfile.TemporaryDirectory() as tmp:
        built = built_model(run, ModelConfig(variant="id_only"), ctx, Path(tmp) / "run")
        batches = in_memory_batches(run.world, ReaderConfig(batch_size=run.batch_size, days=built.split.train,
                                                            shuffle=True, table_sizes=built.sizes), run.warmup + run.steps)
        torch.manual_seed(0)
        plain = PlainIdOnly(ModelConfig(), built.sizes).to(ctx.device)
        train = TrainConfig()
        contenders = {"dmp": (built.model, built.optimizer), "plain": (plain, _plain_optimizer(plain, train.sparse_lr, train.dense_lr))}
        rates = take_turns(contenders, batches, run, ctx.device, rounds)
    return rates["dmp"], rates["plain"]


def reader_rate(run: Run, batches: int) -> float:
    """Samples/s of ImpressionReader alone (prefetch on, one thread), over the training days."""
    torch.set_num_threads(1)
    days = split_days(Manifest.read(Path(run.world))).train
    reader = ImpressionReader(Path(run.world), ReaderConfig(batch_size=run.batch_size, days=days, shuffle=True))
    it = iter(reader)
    next(it)
    samples, start = 0, time.perf_counter()
    for _, batch in zip(range(batches), it):
        samples += batch.batch_size
    return samples / (time.perf_counter() - start)


def vectors_or_random(world: str, vectors: str | None, dim: int, scratch: Path) -> str:
    """``vectors`` where it exists, else random unit ``dim``-wide vectors for the world's items written to ``scratch``."""
    if vectors is not None and Path(vectors).exists():
        return vectors
    from bench.vectors import write_random_vectors

    print(f"  ({vectors or 'no vectors given'}: using random unit {dim}-d vectors for {world}'s items)")
    return str(write_random_vectors(Path(world), scratch, dim))


SCALING_VARIANTS = ("id_only", "simtier_make")  # the two: the ID path, and the default multimodal model
SCALING_SHARDINGS = ("table_wise", "row_wise")
SCALING_GOALS = {"id_only": 1.6, "simtier_make": 1.4}  # total samples/s at 2 ranks over 1 rank, on 2 cores


def measure_scaling(base: Run, results: dict[str, object]) -> None:
    """9. Total samples/s at 2 ranks over 1 rank, per variant and sharding, with TorchRec's train pipeline
    (``sparse_dist``) and without (``plain``), 1 thread per rank; into ``results["scaling"]``."""
    print(f"scaling: total samples/s, 2 ranks / 1 rank (batch {base.batch_size} per rank, 1 thread per rank; "
          f"goals {', '.join(f'{v} >= {g}' for v, g in SCALING_GOALS.items())})")
    out: dict[str, dict[str, float]] = {}
    for variant, sharding, pipeline in itertools.product(SCALING_VARIANTS, SCALING_SHARDINGS, TRAIN_PIPELINES):
        run = replace(base, variant=variant, sharding=sharding, pipeline=pipeline)
        one, two = (measure(run, n)["samples_per_s"] for n in (1, 2))
        out[f"{variant}/{sharding}/{pipeline}"] = {"1": one, "2": two, "ratio": two / one}
        print(f"  {variant:<13} {sharding:<11} {pipeline:<12} 1 rank {one:>9,.0f}   2 ranks {two:>9,.0f}   "
              f"({two / one:.2f}x)")
    results["scaling"] = out


def measure_mmctr(args: argparse.Namespace, base: Run, results: dict[str, object]) -> None:
    """Measurements 1.-6. of the module docstring (1. and 2. alone with ``--ratios-only``) into ``results``."""
    print(f"training samples/s (batch {args.batch_size} per rank, {args.steps} steps after {args.warmup}, 1 thread/process)")
    # one GPU per rank: a one-GPU machine measures 1 process only
    procs = (1, 2) if not torch.cuda.is_available() or torch.cuda.device_count() >= 2 else (1,)
    for variant in () if args.ratios_only else VARIANTS:
        rates = {n: measure(replace(base, variant=variant), n)["samples_per_s"] for n in procs}
        results["throughput"][variant] = rates  # type: ignore[index]
        two = f"   2 processes {rates[2]:>9,.0f}   ({rates[2] / rates[1]:.2f}x)" if 2 in rates else ""
        print(f"  {variant:<13} 1 process {rates[1]:>9,.0f}{two}")
    ratios = step_time_ratios(base, _ratio_candidates(base, args.narrow_vectors), args.rounds)
    results["step_time_ratios"] = ratios
    ratio = ratios["defaults"]
    print(f"simtier_make / id_only step time (1 process; the two take turns, median of {args.rounds} rounds; goal <= 1.3):")
    for label, value in ratios.items():
        print(f"  {label:<62} {value:.2f}")
    if args.ratios_only:
        return
    tp = results["throughput"]

    ours_in_memory, plain = dmp_vs_plain(base)
    ours = tp["id_only"][1]  # type: ignore[index]
    print(f"id_only samples/s, batches in memory, turns taken: DMP fused {ours_in_memory:,.0f} vs plain "
          f"nn.EmbeddingBag(sparse=True) {plain:,.0f}: {ours_in_memory / plain:.2f}x (goal >= 1.0)")
    rate = reader_rate(base, batches=200)
    print(f"reader {rate:,.0f} samples/s vs id_only training {ours:,.0f}: {rate / ours:.1f}x (goal >= 3)")
    results.update(step_time_ratio=ratio, plain_id_only=plain, dmp_id_only_in_memory=ours_in_memory,
                   dmp_vs_plain=ours_in_memory / plain,
                   reader_samples_per_s=rate, reader_vs_training=rate / ours)

    from bench.gauc import bench_gauc

    g = bench_gauc(n_impressions=args.gauc_impressions)
    print(f"GAUC: per-user sklearn loop {g['sklearn_s']:.2f} s vs vectorised {g['ours_s']:.3f} s: {g['speedup']:.0f}x (goal >= 20x)")
    results["gauc"] = g

    if not args.skip_large:
        mem = replace(base, world=args.large_world, sharding="row_wise", memory_only=True)
        one, two = measure(mem, 1), measure(mem, 2)
        for key in ("max_rank_tables", "max_rank_tables_and_optimizer"):
            print(f"{key}: 2 ranks row-wise {two[key] / 2**20:,.0f} MiB per rank vs 1 rank {one[key] / 2**20:,.0f} MiB: "
                  f"{two[key] / one[key]:.3f} (goal <= 0.55)")
        results["memory"] = {"one_rank": one, "two_ranks_row_wise": two}


def measure_peer(args: argparse.Namespace, base: Run, scratch: Path) -> dict[str, object]:
    """Measurements 7. and 8. of the module docstring (``bench.peer_speed``); returns their numbers."""
    from bench.peer_speed import peer_vs_mmctr, print_peer_rates, vector_width_ratios  # it builds on this module

    out: dict[str, object] = {"samples_per_s": {}, "ratios": {}}
    print(f"mmctr vs the peer DIN (bench.peer): samples/s, batches in memory, turns taken, 1 thread, median of "
          f"{args.rounds} rounds of {args.steps} steps after {args.warmup}; goal >= 1.0")
    for b in args.peer_batch_sizes:
        rates = peer_vs_mmctr(replace(base, batch_size=b), args.rounds)
        out["samples_per_s"][str(b)] = rates  # type: ignore[index]
        out["ratios"][str(b)] = print_peer_rates(b, rates)  # type: ignore[index]
    wide = vectors_or_random(args.world, args.wide_vectors, args.wide_dim, scratch / "wide")
    widths = vector_width_ratios(base, base.vectors, wide, args.rounds)
    print(f"default simtier_make step time by vector width (batch {args.batch_size}, 1 process each, turns taken, "
          f"median of {args.rounds} rounds):")
    for label, value in widths.items():
        print(f"  {label:<62} {value:.2f}")
    out["vector_width_ratios"] = widths
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="runs/world-small", help="dataset directory")
    parser.add_argument("--vectors", default="runs/pt/e2",
                        help="item vectors (file or pretrain run; 64-d); random 64-d ones if missing")
    parser.add_argument("--large-world", default="runs/world-large", help="world for the memory measurement")
    parser.add_argument("--skip-large", action="store_true", help="skip the memory measurement")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--gauc-impressions", type=int, default=400_000)
    parser.add_argument("--narrow-vectors", default="runs/pt/e2-16",
                        help="16-d vectors (`mmctr reduce-vectors`) for the narrow-vector step-time ratios; skipped if missing")
    parser.add_argument("--wide-vectors", help="wide vectors for 8.; default: random unit --wide-dim vectors")
    parser.add_argument("--wide-dim", type=int, default=384, help="width of the random wide vectors")
    parser.add_argument("--peer-batch-sizes", type=int, nargs="+", default=[256, 2048], help="batch sizes of 7.")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each contender in the step-time ratios and 7.")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--ratios-only", action="store_true", help="measure the step-time ratios (2.) alone")
    only.add_argument("--peer-only", action="store_true", help="measure 7. and 8. (the peer DIN, vector widths) alone")
    only.add_argument("--scaling-only", action="store_true", help="measure 9. (2 ranks / 1 rank) alone")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args(argv)
    pin_malloc_thresholds()  # process-wide, here at the entry point (recsys.allocator)
    results: dict[str, object] = {"throughput": {}}
    with tempfile.TemporaryDirectory() as tmp:
        vectors = vectors_or_random(args.world, args.vectors, 64, Path(tmp) / "vectors")
        base = Run(args.world, vectors, "id_only", args.steps, args.warmup, args.batch_size,
                   fused_kernels=fused.env_override())  # MMCTR_FUSED, read once
        if not (args.peer_only or args.scaling_only):
            measure_mmctr(args, base, results)
        if not (args.ratios_only or args.scaling_only):
            results["peer"] = measure_peer(args, base, Path(tmp))
        if not (args.ratios_only or args.peer_only):
            measure_scaling(base, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
