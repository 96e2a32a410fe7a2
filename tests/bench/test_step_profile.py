"""bench.step_profile's accounting on real profiler events: nested ranges counted once, collective bytes from shapes."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile, record_function

from bench.step_profile import _merged, breakdown, collective_bytes


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_merged_counts_overlaps_once() -> None:
    assert _merged([(0, 10), (5, 15), (20, 25), (21, 22)]) == 20
    assert _merged([]) == 0


def test_breakdown_splits_a_step_by_its_nested_ranges() -> None:
    steps, spent = 2, {}

    def busy(key: str, seconds: float) -> None:
        t = time.perf_counter()
        _busy(seconds)
        spent[key] = spent.get(key, 0.0) + (time.perf_counter() - t) * 1e3 / steps

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            with record_function("mmctr:reader"):
                busy("reader", 0.004)
            with record_function("mmctr:forward"):
                with record_function("## all2all_data:kjt features ##"):  # input all-to-all, a wait nested in it
                    with record_function("## KJTAllToAllSplitsAwaitable wait() ##"):
                        busy("input all-to-all (forward)", 0.010)
                busy("dense forward", 0.006)
            with record_function("mmctr:backward"):
                with record_function("gloo:all_reduce"):
                    busy("grad all-reduce (backward)", 0.003)
                busy("dense backward", 0.005)
            with record_function("mmctr:optimizer"):
                busy("optimizer", 0.002)
        wall = time.perf_counter() - t
    ms = breakdown(list(prof.events()), steps, wall)
    for key, value in {**spent, "embedding lookup (forward)": 0.0, "output all-to-all (forward)": 0.0}.items():
        assert ms[key] == pytest.approx(value, abs=1.0), (key, ms, spent)  # ranges cost their own entry and exit
    assert sum(ms.values()) == pytest.approx(wall * 1e3 / steps, rel=1e-6)  # every ms of the step counted once


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
