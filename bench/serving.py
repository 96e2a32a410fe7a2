"""``python -m bench.serving``: the encoder on Triton against the encoder in this process, and the
real-time embedder's creation -> vector latency and coverage. One run, printed.

1. export the encoder (``--encoder``, else a randomly initialised one with
   the default towers: the same compute as a trained one) and start
   ``tritonserver`` on it: start-to-ready seconds;
2. in-process throughput: the eager encoder on batches of 64 items, titles
   tokenised in the clock (the server tokenises too), at 1 thread and at
   torch's default threads; the better one is the baseline;
3. Triton gRPC throughput: ``--in-flight`` requests in flight (16), each of
   ``--per-request`` items, from as many client threads, dynamic batching on
   the server; ratio to the baseline (goal >= 0.5);
4. latency: a producer appends one item per feed file at ``--rate`` new
   items/s (50) for ``--seconds``, while ``mmctr embed-new`` runs as its own
   process; p50/p99 of creation -> vector (the store's ``embedded_at -
   created_at``; goal p99 <= 1 s on 2 cores) and coverage after the run
   (goal >= 99.9 %).

The items are the world's (``--world``, else the tiny preset generated
into a temporary folder), their PNGs decoded on the client side.

Usage::

    python -m bench.serving [--encoder ENCODER.pt] [--world DIR] [--seconds 20] [--rate 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pretrain.config import TowerConfig
from pretrain.data import decode_images
from pretrain.encoder import load_encoder, save_encoder
from pretrain.towers import ItemEncoder, build_tokenizer, build_towers
from recsys.data.schema import Manifest, table_files
from serving.client import ClientConfig, EncoderClient
from serving.embedder import percentiles
from serving.export import export_repository
from serving.feed import append
from serving.server import ServerConfig, TritonServer
from serving.store import VectorStore

BATCH = 64  # in-process batch, and the server's max_batch_size


def world_items(world: Path) -> pa.Table:
    """item_id, title, image of every item of ``world``."""
    return pa.concat_tables([pq.read_table(f, columns=["item_id", "title", "image"]) for f in table_files(world, "items")])


def in_process_items_per_s(encoder: ItemEncoder, images: np.ndarray, titles: list[str], threads: int) -> float:
    """Items/s of tokenise + forward in batches of ``BATCH`` on ``threads`` torch threads (one warm-up batch)."""
    tokenize = build_tokenizer(TowerConfig(context_length=encoder.context_length))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            encoder(torch.from_numpy(images[:BATCH]), tokenize(titles[:BATCH]))
            t = time.perf_counter()
            for a in range(0, len(titles), BATCH):
                encoder(torch.from_numpy(images[a : a + BATCH]), tokenize(titles[a : a + BATCH]))
            return len(titles) / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)


def triton_items_per_s(url: str, images: np.ndarray, titles: list[str], in_flight: int, per_request: int) -> float:
    """Items/s through Triton with ``in_flight`` client threads each sending ``per_request`` items at a time."""
    requests = [(a, a + per_request) for a in range(0, len(titles) - per_request + 1, per_request)]
    with EncoderClient(ClientConfig(url=url, max_in_flight=1)) as client:
        client.encode(images[:BATCH], titles[:BATCH])  # warm-up

        def worker(mine: list[tuple[int, int]]) -> None:
            for a, b in mine:
                client.encode(images[a:b], titles[a:b])

        threads = [threading.Thread(target=worker, args=(requests[i::in_flight],)) for i in range(in_flight)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return len(requests) * per_request / (time.perf_counter() - t)


def _bound(store: Path) -> bool:
    """Whether the embedder has opened ``store`` and bound it to the served encoder."""
    try:
        with VectorStore(store, readonly=True) as s:
            return s.dim is not None
    except FileNotFoundError:  # not there yet, or being created
        return False


def latency_run(url: str, items: pa.Table, workdir: Path, rate: float, seconds: float) -> dict[str, float]:
    """Publishes ``rate`` items/s for ``seconds`` while ``mmctr embed-new`` runs; returns latency and coverage."""
    feed, store = workdir / "feed", workdir / "vectors.sqlite"
    n = min(int(rate * seconds), len(items))
    cmd = [sys.executable, "-m", "recsys.cli", "embed-new", "--feed", str(feed), "--store", str(store),
           "--url", url, "--exit-when-idle", "3"]  # fmt: skip
    embedder = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while not _bound(store):  # its imports and first poll, before the clock starts
        if embedder.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mmctr embed-new did not start (exit code {embedder.poll()})")
        time.sleep(0.1)
    ids, titles, images = items["item_id"].to_pylist(), items["title"].to_pylist(), items["image"].to_pylist()
    start = time.monotonic()
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        append(feed, ids[i : i + 1], titles[i : i + 1], images[i : i + 1], [time.time()])
    out, _ = embedder.communicate(timeout=600)
    with VectorStore(store, readonly=True) as s:
        stats = s.stats()
    return {"items": n, "coverage": stats.vectors / n, "failures": stats.failures, **percentiles(stats.latency_s),
            "embedder_report": out.strip()}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", type=Path, help="encoder.pt (default: random init, default towers)")
    parser.add_argument("--world", type=Path, help="dataset directory (default: tiny preset, generated)")
    parser.add_argument("--items", type=int, default=1024, help="items of each throughput run (default: 1024)")
    parser.add_argument("--in-flight", type=int, default=16, help="concurrent requests (default: 16)")
    parser.add_argument("--per-request", type=int, default=1, help="items per request (default: 1)")
    parser.add_argument("--rate", type=float, default=50.0, help="new items per second (default: 50)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the latency run (default: 20)")
    args = parser.parse_args(argv)

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        encoder_file = args.encoder or work / "encoder.pt"
        if args.encoder is None:
            torch.manual_seed(0)
            save_encoder(encoder_file, ItemEncoder(build_towers(TowerConfig())).eval(), TowerConfig())
        if args.world is None:
            from recsys.world.generate import generate_world

            generate_world(work / "world", preset="tiny", seed=0)
        spec = export_repository(encoder_file, work / "export")
        encoder = load_encoder(encoder_file)
        world = args.world or work / "world"
        items = world_items(world)
        size = Manifest.read(world).image_size
        k = min(args.items, len(items))
        images = decode_images(items["image"].to_pylist()[:k], size, [f"item {i}" for i in range(k)])
        titles = items["title"].to_pylist()[:k]

        with TritonServer(ServerConfig(repository=work / "export" / "embedded")) as server:
            ready = server.ready_seconds
            threads = torch.get_num_threads()
            local = {t: in_process_items_per_s(encoder, images, titles, t) for t in sorted({1, threads})}
            best_threads = max(local, key=local.get)
            served = triton_items_per_s(server.grpc_url, images, titles, args.in_flight, args.per_request)
            served_batched = triton_items_per_s(server.grpc_url, images, titles, args.in_flight, 8)
            lat = latency_run(server.grpc_url, items, work, args.rate, args.seconds)

    print(f"\nserving benchmark: encoder {args.encoder or 'random init'} (D={spec.dim}, {spec.image_size[0]} px, "
          f"context {spec.context_length}), items of {args.world or 'the tiny preset'}; "
          f"{os.cpu_count()} cores, load average {load:.1f} at start")  # fmt: skip
    print(f"  server start to every model ready: {ready:.1f} s")
    for t, rate in local.items():
        print(f"  in-process encoder, batch {BATCH}, {t} thread(s), tokenisation included: {rate:,.0f} items/s")
    print(f"  Triton gRPC, {args.in_flight} requests in flight x {args.per_request} item(s), dynamic batching: "
          f"{served:,.0f} items/s = {served / local[best_threads]:.2f}x in-process (goal >= 0.5)")  # fmt: skip
    print(f"  Triton gRPC, {args.in_flight} requests in flight x 8 items: "
          f"{served_batched:,.0f} items/s = {served_batched / local[best_threads]:.2f}x in-process")  # fmt: skip
    print(f"  creation -> vector at {args.rate:.0f} new items/s, {lat['items']} items: p50 {lat['p50'] * 1e3:.0f} ms, "
          f"p99 {lat['p99'] * 1e3:.0f} ms (goal <= 1000 ms), max {lat['max'] * 1e3:.0f} ms")  # fmt: skip
    print(f"  coverage after the run: {lat['coverage']:.2%} (goal >= 99.9%), failures {lat['failures']}")


if __name__ == "__main__":
    main()
