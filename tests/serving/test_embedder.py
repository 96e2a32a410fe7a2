"""The real-time embedder against a real Triton server: one vector per item through duplicate
events, a killed embedder, bad images and a Triton crash; the command and its TorchX component."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pretrain.config import TowerConfig
from pretrain.data import decode_images
from pretrain.encoder import load_encoder
from pretrain.towers import build_tokenizer
from recsys.data.content import ContentError, check_image, check_text
from recsys.data.schema import Manifest, table_files
from serving.client import ClientConfig, EncoderClient
from serving.embedder import Embedder, EmbedderConfig
from serving.feed import append, list_files, publish_world_items, read_file
from serving.server import SHM_DIR, TritonServer, group_members
from serving.store import VectorStore

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]
C = 16  # context length of the tiny encoder (tests/conftest.py)


@pytest.fixture(scope="module")
def world_items(tiny_world: Path) -> pa.Table:
    """item_id, title, image of every item of the tiny world."""
    return pa.concat_tables([pq.read_table(f, columns=["item_id", "title", "image"]) for f in table_files(tiny_world, "items")])


def _expected(encoder_file: Path, items: pa.Table, item_ids: np.ndarray) -> np.ndarray:
    """The in-process encoder's vectors of ``item_ids`` (N, D), from the world's PNGs and titles."""
    rows = {int(i): r for r, i in enumerate(items["item_id"].to_pylist())}
    take = [rows[int(i)] for i in item_ids]
    images = decode_images([items["image"][r].as_py() for r in take], 64, [str(i) for i in item_ids])
    tokens = build_tokenizer(TowerConfig(context_length=C))([items["title"][r].as_py() for r in take])
    with torch.no_grad():
        return load_encoder(encoder_file)(torch.from_numpy(images), tokens).numpy()


def _feed_ids(feed: Path) -> set[int]:
    return {i for f in list_files(feed) for i in read_file(f)["item_id"].to_pylist()}


def _check_exactly_once(store_path: Path, feed: Path, encoder_file: Path, items: pa.Table) -> None:
    with VectorStore(store_path, readonly=True) as store:
        snap = store.read()
    assert len(snap.item_ids) == len(set(snap.item_ids.tolist()))  # one row per item (the primary key)
    assert set(snap.item_ids.tolist()) == _feed_ids(feed)  # every item of the feed, no other
    np.testing.assert_allclose(snap.vectors, _expected(encoder_file, items, snap.item_ids), atol=1e-5, rtol=0)


def _mmctr(*args: str) -> list[str]:
    return [sys.executable, "-m", "recsys.cli", *args]


def test_killed_embedder_and_duplicate_events_still_give_one_vector_per_item(
    server: TritonServer, tiny_world: Path, world_items: pa.Table, tiny_encoder_file: Path, tmp_path: Path
) -> None:
    feed, store = tmp_path / "feed", tmp_path / "vectors.sqlite"
    n = publish_world_items(tiny_world, feed, per_file=5)
    publish_world_items(tiny_world, feed, per_file=40, limit=30)  # duplicate events of 30 items
    first = read_file(list_files(feed)[0])
    append(feed, first["item_id"].to_pylist() * 2, first["title"].to_pylist() * 2, first["image"].to_pylist() * 2,
           [time.time()] * 2 * len(first))  # fmt: skip
    args = ["embed-new", "--feed", str(feed), "--store", str(store), "--url", server.grpc_url]
    # Batches of 2: ~50 transactions, so the kill surely lands mid-run.
    crashed = subprocess.Popen(_mmctr(*args, "--batch-size", "2"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _count(store) < 16:  # some batches committed, more to go
            assert crashed.poll() is None and time.monotonic() < deadline, crashed.stderr.read()
            time.sleep(0.02)
    finally:
        crashed.send_signal(signal.SIGKILL)  # mid-run, maybe mid-batch: no clean shutdown
        crashed.wait()
    assert _count(store) < n
    rerun = subprocess.run(_mmctr(*args, "--exit-when-idle", "0.5"), capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    assert "coverage 100.00%" in rerun.stdout and "duplicates skipped" in rerun.stdout
    _check_exactly_once(store, feed, tiny_encoder_file, world_items)
    with VectorStore(store, readonly=True) as s:
        assert s.handled_files() == {p.name for p in list_files(feed)} and s.stats().vectors == n


def _count(store: Path) -> int:
    """Vectors in the store; 0 while it does not exist or is being created."""
    try:
        with VectorStore(store, readonly=True) as s:
            return s.stats().vectors
    except FileNotFoundError:
        return 0


def _png(size: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _fault(rule: Callable[[], None]) -> str:
    """The message of the content rule ``rule`` breaks."""
    with pytest.raises(ContentError) as e:
        rule()
    return str(e.value)


def test_bad_items_fail_alone_named_counted_and_retried_by_a_later_event(server: TritonServer, tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    images = [_png(64, 1), b"\x89PNG not really", _png(32, 3), _png(64, 4), _png(64, 5)]
    path = append(feed, [1, 2, 3, 4, 5], ["ok", "bad png", "small", "", "ok too"], images, [time.time()] * 5)
    config = EmbedderConfig(exit_when_idle_s=0.2)
    with EncoderClient(ClientConfig(url=server.grpc_url)) as client, VectorStore(tmp_path / "s.sqlite") as store:
        report = Embedder(feed, store, client, config).run()
        assert sorted(store.read().item_ids.tolist()) == [1, 5]
        failures = store.failures()
        assert sorted(failures) == [2, 3, 4] and report.failed == 3 and report.coverage == pytest.approx(2 / 5)
        # the content rules of the dataset (recsys/data/content.py), in their words
        rules = [lambda: check_image(images[1], 64), lambda: check_image(images[2], 64), lambda: check_text("", "title")]
        assert [failures[i] for i in (2, 3, 4)] == [f"{path.name}, row {r}: {_fault(rule)}" for r, rule in enumerate(rules, 1)]
        assert "coverage 40.00%" in report.summary()
        append(feed, [2], ["fixed"], [_png(64, 2)], [time.time()])  # the producer sends the item again
        report = Embedder(feed, store, client, config).run()
        assert sorted(store.read().item_ids.tolist()) == [1, 2, 5] and sorted(store.failures()) == [3, 4]
        assert report.written == 1 and report.coverage == pytest.approx(3 / 5)


def test_triton_killed_while_embedding_then_restarted_every_item_gets_one_vector(
    server: TritonServer, tiny_world: Path, world_items: pa.Table, tiny_encoder_file: Path, tmp_path: Path
) -> None:
    feed, store_path = tmp_path / "feed", tmp_path / "vectors.sqlite"
    day = Manifest.read(tiny_world).last_day - 1
    before, during, after = (dict(day=d, per_file=2, limit=20) for d in (day, day - 1, day - 2))
    client = EncoderClient(ClientConfig(url=server.grpc_url, timeout_s=2.0, retries=2, backoff_s=0.05))
    store = VectorStore(store_path)
    embedder = Embedder(feed, store, client, EmbedderConfig(backoff_s=0.1, max_backoff_s=0.5))
    stop = threading.Event()
    thread = threading.Thread(target=embedder.run, args=(stop,))
    thread.start()
    try:
        publish_world_items(tiny_world, feed, rate=40.0, **before)
        _wait(lambda: _count(store_path) == 20, "the first items embedded")
        old_pid, shm_before = server.pid, sorted(SHM_DIR.glob("mmctr-triton-*"))
        server.kill()  # SIGKILL: a crash, no clean shutdown
        outage = publish_world_items(tiny_world, feed, rate=40.0, **during)  # created while Triton is down
        _wait(lambda: embedder.report.unavailable >= 1, "the embedder to notice the outage")
        assert _count(store_path) == 20  # nothing written while Triton is down, nothing skipped either
        server.start()  # same ports; cleans up what the killed server left
        assert group_members(old_pid) == [] and not any(p.exists() for p in shm_before)
        publish_world_items(tiny_world, feed, rate=40.0, **after)
        _wait(lambda: _count(store_path) == 40 + outage, "every item embedded after the restart")
    finally:
        stop.set()
        thread.join()
        client.close()
    report = embedder.finish()
    store.close()
    assert outage == 20 and report.written == 60 and report.failed == 0 and report.coverage == 1.0
    _check_exactly_once(store_path, feed, tiny_encoder_file, world_items)


def _wait(condition: object, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_torchx_component_runs_the_embedder(server: TritonServer, tiny_world: Path, tmp_path: Path) -> None:
    feed, store = tmp_path / "feed", tmp_path / "vectors.sqlite"
    n = publish_world_items(tiny_world, feed, per_file=50, limit=60)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = ["torchx", "run", "-s", "local_cwd", "torchx_components/serving.py:embed_new", "--feed", str(feed),
           "--store", str(store), "--url", server.grpc_url, "--exit_when_idle", "0.5"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _count(store) == n
