"""``bench.ranking``'s pure parts: perf_analyzer's input-data JSON and its CSV report (no server, no perf_analyzer)."""

from __future__ import annotations

import csv
import doctest
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

import bench.ranking
from bench.ranking import CANDIDATES, HISTORY, PerfRow, input_data, parse_perf_csv
from serving.ranker import RankRequest

# perf_analyzer 2.40's `-f` header, as it wrote it against the served ranker
HEADER = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
          "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency")  # fmt: skip


def test_doc_examples() -> None:
    assert doctest.testmod(bench.ranking).failed == 0


def test_csv_rows_in_milliseconds() -> None:
    # infer/s; p50, p99, server queue and compute infer in microseconds
    measured = {1: (93.4948, 10596, 14035, 1149, 8485), 8: (254.897, 30058, 53414, 12624, 16192)}
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(HEADER.split(","))
    for c, (rate, p50, p99, queue, infer) in measured.items():
        writer.writerow([c, rate, 13, 234, queue, 49, infer, 732, 6, p50, p50 + 1, p50 + 2, p99])
    text.write("\nServer Endpoint,Model,GPU UUID\n")  # a later section (--collect-metrics) is not a row
    got = parse_perf_csv(text.getvalue())
    want = [PerfRow(c, rate, *(us / 1000 for us in rest)) for c, (rate, *rest) in measured.items()]
    assert got == want


def test_input_data_holds_each_request_without_the_batch_dimension() -> None:
    rng = np.random.default_rng(0)
    requests = [RankRequest(int(u), rng.integers(0, 1500, HISTORY), rng.choice(1500, CANDIDATES, replace=False),
                            {"position": np.arange(CANDIDATES, dtype=np.float64)}) for u in (3, 7)]  # fmt: skip
    data = json.loads(json.dumps(input_data(requests)))["data"]  # as perf_analyzer reads the file
    assert len(data) == len(requests)
    for entry, r in zip(data, requests):
        assert set(entry) == {"user", "history", "candidates", "position"}
        assert entry["user"] == {"content": [r.user], "shape": [1]}
        for name, want in (("history", r.history), ("candidates", r.candidates), ("position", r.context["position"])):
            assert entry[name]["shape"] == [len(want)]  # -b 1 adds Triton's batch dimension: [1, len]
            assert np.array_equal(np.array(entry[name]["content"]), want)
        assert all(isinstance(v, float) for v in entry["position"]["content"])  # FP32 input
        assert all(isinstance(v, int) for v in entry["candidates"]["content"])  # INT64 inputs


def test_requests_read_the_test_day_in_any_file_layout(tiny_world: Path, tmp_path: Path) -> None:
    """The test day's users and histories, the same whether impressions lie flat or in ``day=K/`` folders."""
    from bench.ranking import bench_requests
    from bench.vectors import world_items
    from recsys.data.schema import Manifest, table_files

    manifest = Manifest.read(tiny_world)
    items = world_items(tiny_world)
    flat = bench_requests(tiny_world, items, 30, seed=1)
    nested = tmp_path / "nested"
    shutil.copytree(tiny_world, nested, ignore=shutil.ignore_patterns("impressions"))
    for path in table_files(tiny_world, "impressions"):
        day = int(pq.read_table(path, columns=["day"]).column(0)[0].as_py())
        (nested / "impressions" / f"day={day}").mkdir(parents=True)
        shutil.copy(path, nested / "impressions" / f"day={day}" / "part.parquet")
    got = bench_requests(nested, items, 30, seed=1)
    assert [(r.user, r.history.tolist(), r.candidates.tolist()) for r in got] == \
        [(r.user, r.history.tolist(), r.candidates.tolist()) for r in flat]
    test_users = set(pq.read_table(tiny_world / "impressions", filters=[("day", "=", manifest.test_day)],
                                   columns=["user_id"]).column(0).to_pylist())
    assert {r.user for r in flat} <= test_users and all(len(r.history) == HISTORY for r in flat)
