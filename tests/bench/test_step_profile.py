"""bench.step_profile's accounting on real profiler events: nested ranges counted once, collective bytes from shapes."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile

from bench.step_profile import _merged, breakdown, collective_bytes


def _events(spans: list[tuple[str, float, float]]) -> list[FunctionEvent]:
    """Profiler events (torch's own class) at chosen times, µs: what a profile of a step holds, without its jitter."""
    return [FunctionEvent(id=i, name=name, thread=0, start_us=start, end_us=end) for i, (name, start, end) in enumerate(spans)]


def test_merged_counts_overlaps_once() -> None:
    assert _merged([(0, 10), (5, 15), (20, 25), (21, 22)]) == 20
    assert _merged([]) == 0


def test_breakdown_splits_a_step_by_its_nested_ranges() -> None:
    step = [  # one step of 40 ms, µs from its start
        ("mmctr:reader", 0, 4000),
        ("mmctr:forward", 4000, 20000),
        ("## all2all_data:kjt features ##", 4000, 14000),  # input all-to-all, a wait nested in it
        ("## KJTAllToAllSplitsAwaitable wait() ##", 9000, 14000),
        ("fbgemm::split_embedding_codegen_lookup_rowwise_adagrad_function", 14000, 16000),
        ("## all2all_pooled ##", 16000, 17000),
        ("mmctr:backward", 20000, 34000),
        ("fbgemm::split_embedding_backward", 21000, 24000),  # the lookup's backward, fused optimizer update
        ("gloo:all_reduce", 30000, 33000),
        ("mmctr:optimizer", 34000, 38000),
    ]
    two_steps = step + [(name, start + 40000, end + 40000) for name, start, end in step]
    ms = breakdown(_events(two_steps), steps=2, wall_s=0.080)
    assert ms == pytest.approx({
        "reader": 4.0, "input all-to-all (forward)": 10.0, "embedding lookup (forward)": 2.0,
        "output all-to-all (forward)": 1.0, "dense forward": 3.0, "embedding lookup (backward)": 3.0,
        "output all-to-all (backward)": 0.0, "grad all-reduce (backward)": 3.0, "dense backward": 8.0,
        "optimizer": 4.0, "other": 2.0,
    })
    assert sum(ms.values()) == pytest.approx(40.0)  # every ms of the step counted once


def test_a_range_outside_every_phase_counts_as_other() -> None:
    ms = breakdown(_events([("mmctr:forward", 0, 1000), ("## all2all_pooled ##", 2000, 3000)]), steps=1, wall_s=0.004)
    assert ms["output all-to-all (forward)"] == 0 and ms["dense forward"] == 1.0 and ms["other"] == pytest.approx(3.0)


def test_collective_bytes_are_the_inputs_sizes(tmp_path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(3):
                dist.all_reduce(torch.ones(1000, dtype=torch.float32))
                out = torch.empty(64, dtype=torch.int64)
                dist.all_to_all_single(out, torch.arange(64, dtype=torch.int64))
        got = collective_bytes(list(prof.events()), steps=3)
    finally:
        dist.destroy_process_group()
    assert got == {"gloo:all_reduce": 1000 * 4, "gloo:all_to_all": 64 * 8}  # float32, int64


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
