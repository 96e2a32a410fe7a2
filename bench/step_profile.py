"""``python -m bench.step_profile``: where one training step's time goes at 1 and 2 ranks, and the bytes each collective moves.

Each configuration (variant × sharding × ranks) runs the real DMP step of
``recsys.train.trainer.build`` (as ``bench.train``, 1 thread per rank, batches
from ``ImpressionReader``), then profiles ``--steps`` steps with
``torch.profiler`` on every rank. Rank 0's timeline is split into:

=====================  =========================================================================
reader                 ``next(reader)`` (the batch of this rank)
input all-to-all       TorchRec's KJT all-to-alls (``## all2all_data:kjt ... ##``), their waits
embedding lookup       fbgemm's TBE forward and its backward, which holds the fused optimizer update
output all-to-all      the pooled embeddings' all-to-all (``## all2all_pooled ##``; row-wise: reduce-scatter,
                       all-gather backward), its wait
dense forward          the rest of ``model(batch)``
dense backward         the rest of ``loss.backward()``, DDP's gradient all-reduce included
grad all-reduce        the part of it spent in ``c10d::allreduce_`` calls and waits
optimizer              ``optimizer.step()`` + ``zero_grad()`` (Adam on the dense parts)
other                  the step's wall time outside those (the loop, batch moves)
=====================  =========================================================================

(ms per step, each category's events merged on the timeline so nested ones
count once), and the bytes each collective op moves per step and per sample
(the ``gloo:*``/``nccl:*`` events' tensor shapes and dtypes: ``record_shapes``). The printed
ratio is total samples/s at 2 ranks over 1 rank (issue's goal: 1.6 for
``id_only``, 1.4 for ``simtier_make``). ``--bytes-ranks`` adds rank counts
(4 by default) at which only the bytes are reported, for the communication
volume by rank count; the steps are the plain loop's (``Run.pipeline``
is not used here, so the categories stay apart).

Usage::

    python -m bench.step_profile [--world DIR] [--vectors RUN] [--variants id_only simtier_make]
        [--shardings table_wise row_wise] [--batch-size 2048] [--steps 20] [--warmup 5] [--bytes-ranks 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile, record_function

from bench.train import Run, build_run, measure, rank_process, vectors_or_random
from recsys.data.reader import ImpressionReader, ReaderConfig

PHASES = ("reader", "forward", "backward", "optimizer")  # our record_function ranges, "mmctr:PHASE"
# Inside a phase: a category's events by name (matched case-insensitively), merged on the timeline.
INSIDE = {
    "input all-to-all": ("all2all_data", "kjtalltoall", "kjtonetoall", "splitsawaitable wait"),
    # table-wise: an all-to-all; row-wise: a reduce-scatter forward, an all-gather backward
    "output all-to-all": ("all2all_pooled", "pooledembeddingsawaitable", "alltoall_pooled", "reducescatter",
                          "reduce_scatter", "allgather", "all_gather"),
    "embedding lookup": ("split_embedding", "fbgemm::", "tbe"),
    "grad all-reduce": ("allreduce", "all_reduce"),
}
DTYPE_BYTES = {"float": 4, "double": 8, "long int": 8, "int": 4, "c10::Half": 2, "c10::BFloat16": 2, "signed char": 1,
               "unsigned char": 1, "bool": 1, "short int": 2}


def _merged(spans: list[tuple[float, float]]) -> float:
    """Length of the union of intervals (µs)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        total += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return total


def _within(spans: list[tuple[float, float]], outer: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The parts of ``spans`` inside any of ``outer``."""
    return [(max(s, a), min(e, b)) for s, e in spans for a, b in outer if min(e, b) > max(s, a)]


def breakdown(events: list, steps: int, wall_s: float) -> dict[str, float]:
    """ms per step by category (module docstring) from a rank's profiler events."""
    phase = {p: [(e.time_range.start, e.time_range.end) for e in events if e.name == f"mmctr:{p}"] for p in PHASES}
    found = {c: [(e.time_range.start, e.time_range.end) for e in events
                 if any(k in e.name.lower() for k in keys) and not e.name.startswith("mmctr:")]
             for c, keys in INSIDE.items()}
    out = {"reader": _merged(phase["reader"])}
    fwd_inner = 0.0
    for c in ("input all-to-all", "embedding lookup", "output all-to-all"):
        out[f"{c} (forward)"] = _merged(_within(found[c], phase["forward"]))
        fwd_inner += out[f"{c} (forward)"]
    out["dense forward"] = _merged(phase["forward"]) - _merged(_within(
        found["input all-to-all"] + found["embedding lookup"] + found["output all-to-all"], phase["forward"]))
    for c in ("embedding lookup", "output all-to-all", "grad all-reduce"):
        out[f"{c} (backward)"] = _merged(_within(found[c], phase["backward"]))
    out["dense backward"] = _merged(phase["backward"]) - _merged(_within(
        found["embedding lookup"] + found["output all-to-all"] + found["grad all-reduce"], phase["backward"]))
    out["optimizer"] = _merged(phase["optimizer"])
    ms = {k: v / 1e3 / steps for k, v in out.items()}
    ms["other"] = wall_s * 1e3 / steps - sum(_merged(phase[p]) for p in PHASES) / 1e3 / steps
    return ms


def collective_bytes(events: list, steps: int) -> dict[str, float]:
    """Bytes per step each collective sends, by the backend's op (``gloo:all_to_all``, ``nccl:all_reduce``, ...).

    The backend's own profiler events record the tensors they send
    (``record_shapes``): their element counts times their dtype's size.
    """
    out: dict[str, float] = defaultdict(float)
    for e in events:
        if not e.name.startswith(("gloo:", "nccl:")):
            continue
        for shape, dtype in zip(e.input_shapes or [], getattr(e, "input_dtypes", None) or []):
            if isinstance(shape, list) and all(isinstance(x, int) for x in shape):
                out[e.name] += float(torch.Size(shape).numel()) * DTYPE_BYTES.get(dtype, 4)
    return {k: v / steps for k, v in out.items()}


def worker(rank: int, world_size: int, port: int, run: Run, out: str) -> None:
    """One rank: build, warm up, profile ``run.steps`` steps; rank 0 writes its breakdown and bytes to ``out``."""
    with rank_process(rank, world_size, port) as ctx:
        with tempfile.TemporaryDirectory() as tmp:
            built = build_run(run, ctx, Path(tmp))
            config = ReaderConfig(batch_size=run.batch_size, days=built.split.train, rank=ctx.rank,
                                  world_size=ctx.world_size, shuffle=True, table_sizes=built.sizes)
            batches = iter(ImpressionReader(Path(run.world), config))
            model, optimizer = built.model, built.optimizer

            def step() -> int:
                with record_function("mmctr:reader"):
                    batch = next(batches).to(ctx.device)
                with record_function("mmctr:forward"):
                    loss, _ = model(batch)
                with record_function("mmctr:backward"):
                    loss.backward()
                with record_function("mmctr:optimizer"):
                    optimizer.step()
                    optimizer.zero_grad()
                return batch.batch_size

            for _ in range(run.warmup):
                step()
            dist.barrier()
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                t, samples = time.perf_counter(), 0
                for _ in range(run.steps):
                    samples += step()
                wall = time.perf_counter() - t
            events = list(prof.events())
            result = {"ms_per_step": breakdown(events, run.steps, wall), "step_ms": wall * 1e3 / run.steps,
                      "samples_per_s": samples * world_size / wall,
                      "bytes_per_step": collective_bytes(events, run.steps), "batch_per_rank": run.batch_size}
            if ctx.is_main:
                Path(out).write_text(json.dumps(result))


def print_table(label: str, one: dict, two: dict) -> None:
    """The two breakdowns side by side, then the collectives' bytes of the 2-rank step."""
    print(f"\n{label}: ms per step on rank 0 (batch {one['batch_per_rank']} per rank)")
    print(f"  {'':<30}{'1 rank':>10}{'2 ranks':>10}")
    for key in one["ms_per_step"]:
        print(f"  {key:<30}{one['ms_per_step'][key]:>10.2f}{two['ms_per_step'][key]:>10.2f}")
    print(f"  {'step (wall)':<30}{one['step_ms']:>10.2f}{two['step_ms']:>10.2f}")
    ratio = two["samples_per_s"] / one["samples_per_s"]
    print(f"  total samples/s: 1 rank {one['samples_per_s']:,.0f}, 2 ranks {two['samples_per_s']:,.0f}: {ratio:.2f}x")
    per_sample = 1 / two["batch_per_rank"]
    for op, b in sorted(two["bytes_per_step"].items(), key=lambda kv: -kv[1]):
        print(f"  2 ranks, {op:<36} {b / 1e6:>8.3f} MB/step/rank  {b * per_sample:>8.1f} B/sample")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.step_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="runs/world-small", help="dataset directory")
    parser.add_argument("--vectors", default="runs/pt/e2", help="item vectors (file or pretrain run); random 64-d if missing")
    parser.add_argument("--variants", nargs="+", default=["id_only", "simtier_make"])
    parser.add_argument("--shardings", nargs="+", default=["table_wise", "row_wise"])
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--bytes-ranks", type=int, nargs="*", default=[4],
                        help="more rank counts at which only the collectives' bytes per sample are reported "
                             "(more ranks than cores: their times mean nothing)")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args(argv)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        vectors = vectors_or_random(args.world, args.vectors, 64, Path(scratch) / "vectors")
        for variant in args.variants:
            for sharding in args.shardings:
                run = Run(world=args.world, vectors=vectors, variant=variant, steps=args.steps, warmup=args.warmup,
                          batch_size=args.batch_size, sharding=sharding)
                one, two = measure(run, 1, worker), measure(run, 2, worker)
                results[f"{variant}/{sharding}"] = {"1": one, "2": two}
                print_table(f"{variant}, {sharding}", one, two)
                for n in args.bytes_ranks:
                    more = measure(replace(run, steps=min(run.steps, 5), warmup=min(run.warmup, 2)), n, worker)
                    results[f"{variant}/{sharding}"][str(n)] = more
                    for op, b in sorted(more["bytes_per_step"].items(), key=lambda kv: -kv[1]):
                        print(f"  {n} ranks, {op:<36} {b / 1e6:>8.3f} MB/step/rank  {b / more['batch_per_rank']:>8.1f} B/sample")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
