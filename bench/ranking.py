"""``python -m bench.ranking``: the CTR ranker on Triton against the same ranker in this process, new items'
freshness while serving, and a hot update under load. One run, printed as one table.

1. **Setup.** ``--run`` (a finished run of ``--world``), else a tiny world
   generated into a temporary folder and a ``simtier_make`` run trained on
   its oracle vectors (the world's hidden semantics, ``bench.vectors``) of
   the items created before the test day (``write_catalogue``), as
   ``tests/serving/test_ranker.py`` does. The run is exported
   (``export_ranker``, the default ``RankerExportConfig``: dynamic batches of
   up to 8 requests, one torch thread) with a vector store bound to the
   vectors' width, and served by ``tritonserver`` in explicit model control.
2. **Requests.** ``--requests`` requests of the test day's users: 100
   candidates and a 50-item history each (the user's logged history, padded
   at the front with random items; the model reads its last
   ``max_history_len``), positions 0..99 as context; items are those the
   run's vectors hold (every item for ``id_only``).
3. **perf_analyzer** (``../shared/STACK.md``; installed once into ``.perf/``
   beside this repository by :func:`install_perf_analyzer`) sends them over
   gRPC at concurrency 1 and 8 (``--input-data`` JSON, ``-b 1``,
   ``--percentile 99``): p50, p99 and candidates/s (100 x inferences/s).
4. **In-process baseline**, in this process between the server's runs:
   ``Ranker.load`` scoring the same requests one by one, and 8 at a time
   (``score_many``: the batch the server's dynamic batcher forms). Ratios:
   Triton at concurrency 1 / one by one, Triton at concurrency 8 / 8 at a time.
5. **Freshness.** One at a time, a test-day item's vector goes into the store
   (``VectorStore.write``) while the server runs; a request whose first
   candidate is that item is sent until its score moves from the score it
   had without a vector: seconds from the write's commit to that answer
   (the ranker looks at the store every ``REFRESH_INTERVAL_S``; goal <= 1 s).
6. **Hot update.** A thread sends requests back to back (``RankerClient``,
   no retries); the run is exported again as version 2 and
   ``RankerClient.load`` swaps it in. Failed requests (goal 0), answers per
   version, and latency before vs during the swap (from the load call to
   the first answer of version 2, or the load's return if later).

Nothing is asserted: the goals are printed beside the numbers. On 2 shared
cores perf_analyzer, ``tritonserver``, the model's stub and this process
share the CPU, so the served numbers include their contention.

Usage::

    python -m bench.ranking [--world DIR --run RUN] [--quick] [--requests 64] [--interval-ms 4000]
        [--stability 50] [--fresh-items 30]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from bench.vectors import TRUTH_ITEMS, world_items, write_truth_vectors
from recsys.data.schema import Manifest, read_table_files, table_files
from recsys.data.vectors import VECTORS_FILE, load_vectors, read_item_vectors
from recsys.eval.runs import load_run
from serving.client import ClientConfig
from serving.embedder import percentiles
from serving.ranker import ENGINES, REFRESH_INTERVAL_S, Ranker, RankRequest, context_features
from serving.ranker_client import RankerClient
from serving import ranker_export as rx
from serving.ranker_export import RankerExportConfig, export_ranker
from serving.server import ServerConfig, TritonServer
from serving.store import VectorStore

CANDIDATES = 100  # per request
HISTORY = 50  # items per request's history (the model reads the last max_history_len)
CONCURRENCY = (1, 8)  # perf_analyzer's concurrency levels
GOAL_P99_MS = 25.0  # the p99 at concurrency 8
GOAL_RATIO = 0.5  # Triton throughput / in-process throughput
GOAL_FRESH_S = 1.0  # write commit -> served with the vector (REFRESH_INTERVAL_S is 0.2 s)
MODEL = RankerExportConfig().name

PERF_DIR = Path(__file__).resolve().parents[1] / ".perf"  # git-ignored; shared by worktrees' runs of this bench
PERF_WHEEL = "tritonclient[all]==2.40.0"  # the last wheel that ships perf_analyzer (STACK.md)
PERF_MEMBER = "tritonclient-2.40.0.data/data/bin/perf_analyzer"
CUDART = "nvidia-cuda-runtime-cu12==12.9.79"  # libcudart.so.12, which perf_analyzer loads even on CPU
LIBB64_INSTALL = ["apt-get", "install", "-y", "libb64-0d"]  # Debian's libb64.so.0d


# -- perf_analyzer --------------------------------------------------------------------------------


class PerfAnalyzerUnavailable(RuntimeError):
    """perf_analyzer cannot run here; the message says what to do."""


@dataclass(frozen=True)
class PerfAnalyzer:
    """The perf_analyzer binary and the environment it runs in (``LD_LIBRARY_PATH`` with its CUDA runtime)."""

    binary: Path
    env: dict[str, str]


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--no-deps"], capture_output=True, text=True)
    if done.returncode != 0:
        raise PerfAnalyzerUnavailable(f"pip {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def _missing_libs(binary: Path, env: dict[str, str]) -> list[str]:
    """Shared libraries ``ldd`` cannot find for ``binary`` under ``env``."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env).stdout
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


def install_perf_analyzer(folder: Path = PERF_DIR) -> PerfAnalyzer:
    """perf_analyzer from the ``tritonclient`` 2.40.0 wheel in ``folder/bin``, its CUDA runtime in ``folder/cudart``.

    Downloads what is missing once (pip, outside the project's environment);
    installs Debian's ``libb64-0d`` when it is missing and this is root.

    Raises:
        PerfAnalyzerUnavailable: a download failed, or libb64 is missing and this is not root
            (the message holds the command to run).
    """
    binary = folder / "bin" / "perf_analyzer"
    if not binary.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            _pip("download", PERF_WHEEL, "-d", tmp)
            wheel = next(Path(tmp).glob("tritonclient-*.whl"))
            binary.parent.mkdir(parents=True, exist_ok=True)
            partial = binary.with_suffix(".part")
            with zipfile.ZipFile(wheel) as z:
                partial.write_bytes(z.read(PERF_MEMBER))
            partial.chmod(0o755)
            partial.replace(binary)  # whole or absent: an interrupted install is redone
    cudart = folder / "cudart"
    lib = cudart / "nvidia" / "cuda_runtime" / "lib"
    if not (lib / "libcudart.so.12").is_file():
        _pip("install", "--target", str(cudart), CUDART)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p)
    missing = _missing_libs(binary, env)
    if any(m.startswith("libb64") for m in missing):
        if os.geteuid() != 0:
            raise PerfAnalyzerUnavailable(f"perf_analyzer needs libb64.so.0d: run `sudo {' '.join(LIBB64_INSTALL)}`")
        if subprocess.run(LIBB64_INSTALL, capture_output=True).returncode != 0:  # stale package lists
            subprocess.run(["apt-get", "update"], capture_output=True, check=True)
            subprocess.run(LIBB64_INSTALL, capture_output=True, check=True)
        missing = _missing_libs(binary, env)
    if missing:
        raise PerfAnalyzerUnavailable(f"{binary}: shared libraries not found: {missing}")
    return PerfAnalyzer(binary, env)


def input_data(requests: list[RankRequest]) -> dict[str, list[dict[str, dict[str, list]]]]:
    """perf_analyzer's ``--input-data`` JSON object for ``requests`` (one entry each, sent round-robin).

    Each tensor's ``shape`` leaves out Triton's batch dimension (``-b 1`` adds it):
    ``user`` [1], ``history`` [L], ``candidates`` [N], each context feature [N] (FP32).

    Example::

        >>> r = RankRequest(7, np.array([3, 9]), np.array([11, 12]), {"position": np.array([0.0, 1.0])})
        >>> input_data([r])["data"][0]["history"]
        {'content': [3, 9], 'shape': [2]}
    """
    def tensor(values: np.ndarray, dtype: type) -> dict[str, list]:
        flat = np.asarray(values, dtype=dtype).reshape(-1)
        return {"content": flat.tolist(), "shape": [len(flat)]}

    data = []
    for r in requests:
        entry = {rx.USER_INPUT: tensor(np.array([r.user]), np.int64), rx.HISTORY_INPUT: tensor(r.history, np.int64),
                 rx.CANDIDATES_INPUT: tensor(r.candidates, np.int64)}
        entry.update({name: tensor(values, np.float32) for name, values in r.context.items()})
        data.append(entry)
    return {"data": data}


@dataclass(frozen=True)
class PerfRow:
    """One concurrency level of a perf_analyzer CSV report (latencies as the client saw them)."""

    concurrency: int
    infer_per_s: float  # requests answered per second
    p50_ms: float
    p99_ms: float
    queue_ms: float  # the server's mean time in the dynamic batcher's queue
    compute_ms: float  # the server's mean model execution time (the batch's forward pass)


def parse_perf_csv(text: str) -> list[PerfRow]:
    """The rows of perf_analyzer's ``-f`` CSV report (latency columns in microseconds), in file order.

    Example::

        >>> parse_perf_csv("Concurrency,Inferences/Second,p50 latency,p99 latency,Server Queue,Server Compute Infer\\n"
        ...                "8,120.5,40000,61000,9000,20000\\n")
        [PerfRow(concurrency=8, infer_per_s=120.5, p50_ms=40.0, p99_ms=61.0, queue_ms=9.0, compute_ms=20.0)]
    """
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        if not row.get("Concurrency", "").strip().isdigit():  # server-side metric sections after a blank line
            break
        ms = [float(row[name]) / 1e3 for name in ("p50 latency", "p99 latency", "Server Queue", "Server Compute Infer")]
        rows.append(PerfRow(int(row["Concurrency"]), float(row["Inferences/Second"]), *ms))
    return rows


def run_perf_analyzer(pa: PerfAnalyzer, url: str, requests: list[RankRequest], work: Path, interval_ms: int,
                      stability: int) -> list[PerfRow]:  # fmt: skip
    """perf_analyzer over gRPC at each of ``CONCURRENCY``, the requests as ``--input-data``; a level is measured
    once three windows in a row agree within ``stability`` percent (throughput and p99).

    Raises:
        PerfAnalyzerUnavailable: it failed (its output's tail in the message).
    """
    data, report = work / "input_data.json", work / "perf.csv"
    data.write_text(json.dumps(input_data(requests)))
    low, high = CONCURRENCY
    cmd = [str(pa.binary), "-m", MODEL, "-i", "grpc", "-u", url, "-b", "1", "--input-data", str(data),
           "--concurrency-range", f"{low}:{high}:{high - low}", "--percentile", "99",
           "--measurement-interval", str(interval_ms), "--stability-percentage", str(stability), "--max-trials", "10",
           "-f", str(report)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=pa.env)
    if done.returncode != 0 or not report.is_file():
        raise PerfAnalyzerUnavailable(f"perf_analyzer exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    return parse_perf_csv(report.read_text())


# -- requests and the in-process baseline -----------------------------------------------------------


def bench_requests(world: Path, items: np.ndarray, n: int, seed: int = 0) -> list[RankRequest]:
    """``n`` requests of the test day's users over ``items``: CANDIDATES distinct candidates, HISTORY history items.

    A request's history is a logged test-day history of its user (items outside
    ``items`` dropped), cut to its last HISTORY items or padded at the front
    with random ones; each context feature (the world's ``position``) is
    0..CANDIDATES-1, the candidates' slots.
    """
    manifest = Manifest.read(world)
    spec = manifest.features
    columns = [spec.user_key] + ([spec.history] if spec.history else [])
    table = read_table_files(table_files(Path(world), "impressions"), columns, [(spec.day, "=", manifest.test_day)],
                             ids=columns)  # every file, sub-folders too
    slots = {name: np.arange(CANDIDATES, dtype=np.float64) for name in context_features(spec)}
    rng = np.random.default_rng(seed)
    rows = rng.choice(table.num_rows, size=n, replace=table.num_rows < n)
    out = []
    for row in rows.tolist():
        logged = np.asarray(table[spec.history][row].as_py() if spec.history else [], dtype=np.int64)
        logged = logged[np.isin(logged, items)][-HISTORY:]
        pad = rng.choice(items, size=HISTORY - len(logged))
        out.append(RankRequest(user=int(table[spec.user_key][row].as_py()), history=np.concatenate([pad, logged]),
                               candidates=rng.choice(items, size=CANDIDATES, replace=False),
                               context=dict(slots)))
    return out


def in_process_candidates_per_s(ranker: Ranker, requests: list[RankRequest], per_call: int, seconds: float) -> float:
    """Candidates/s of ``ranker.score_many`` on ``per_call`` requests at a time, passes over ``requests`` for at
    least ``seconds`` after one warm-up pass (the first calls after a load are slower)."""
    calls = [requests[a : a + per_call] for a in range(0, len(requests) - per_call + 1, per_call)]
    for call in calls:
        ranker.score_many(call)
    scored, t = 0, time.perf_counter()
    while scored == 0 or time.perf_counter() - t < seconds:
        for call in calls:
            ranker.score_many(call)
            scored += sum(len(r.candidates) for r in call)
    return scored / (time.perf_counter() - t)


# -- freshness and hot update -----------------------------------------------------------------------


def freshness(url: str, store: Path, request: RankRequest, ids: np.ndarray, vectors: np.ndarray,
              timeout_s: float = 10.0) -> np.ndarray:  # fmt: skip
    """Seconds from each item's vector write to the first served score that moved; nan if none within ``timeout_s``.

    Items go in one at a time, each as the first candidate of ``request``. A
    random pause of up to ``REFRESH_INTERVAL_S`` before each write keeps the
    writes out of step with the ranker's looks at the store (the request just
    before a write would otherwise start a new interval every time).
    """
    seconds = np.full(len(ids), np.nan)
    pauses = np.random.default_rng(0).uniform(0.0, REFRESH_INTERVAL_S, len(ids))
    with RankerClient(ClientConfig(url=url, model=MODEL)) as client, VectorStore(store) as writer:
        for i in tqdm(range(len(ids)), desc="freshness", leave=False):
            candidates = request.candidates.copy()
            candidates[0] = ids[i]
            rank = lambda: client.rank(request.user, request.history, candidates, request.context).scores[0]  # noqa: E731
            before = rank()  # no vector yet: the table's default for an item it lacks
            time.sleep(pauses[i])
            writer.write(ids[i : i + 1], vectors[i : i + 1], created_at=np.array([time.time()]))
            t = time.perf_counter()
            while time.perf_counter() - t < timeout_s:
                if abs(rank() - before) > 1e-6:
                    seconds[i] = time.perf_counter() - t
                    break
    return seconds


@dataclass
class Call:
    """One request of the hot-update traffic: perf_counter at send and answer, the answering version (0: failed)."""

    sent: float
    done: float
    version: int


def hot_update(url: str, requests: list[RankRequest], swap: Callable[[], None], before_s: float,
               after_s: float) -> dict[str, object]:  # fmt: skip
    """Back-to-back requests from a thread while ``swap()`` writes version 2 and loads it; what they saw."""
    calls: list[Call] = []
    errors: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with RankerClient(ClientConfig(url=url, model=MODEL, retries=0)) as client:
            i = 0
            while not stop.is_set():
                r, t = requests[i % len(requests)], time.perf_counter()
                i += 1
                try:
                    version = client.rank(r.user, r.history, r.candidates, r.context).version
                except Exception as e:  # noqa: BLE001 - every failure counts
                    version = 0
                    errors.append(repr(e))
                calls.append(Call(t, time.perf_counter(), version))

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        time.sleep(before_s)
        t0 = time.perf_counter()
        swap()
        t1 = time.perf_counter()
        deadline = t1 + 60.0
        while not any(c.version == 2 for c in calls[-50:]) and time.perf_counter() < deadline:
            time.sleep(0.01)
        first_v2 = min((c.done for c in calls if c.version == 2), default=float("nan"))
        time.sleep(after_s)
    finally:
        stop.set()
        thread.join()
    end = t1 if np.isnan(first_v2) else max(t1, first_v2)  # the swap window: [t0, end]
    before = [c for c in calls if c.done < t0]
    during = [c for c in calls if c.done > t0 and c.sent < end]
    latency = lambda cs: percentiles(np.array([c.done - c.sent for c in cs]))  # noqa: E731
    versions = [c.version for c in calls if c.version]
    late_v1 = versions[versions.index(2):].count(1) if 2 in versions else 0  # v1 answers after v2 answered
    return {"failed": sum(c.version == 0 for c in calls), "errors": errors[:3], "load_s": t1 - t0, "swap_s": end - t0,
            "late_v1": late_v1,
            "versions": dict(sorted(Counter(c.version for c in calls if c.version).items())),
            "before": latency(before), "swap": latency(during), "swap_requests": len(during)}


# -- setup and report -------------------------------------------------------------------------------


def train_tiny_run(work: Path) -> tuple[Path, Path]:
    """A tiny world and a ``simtier_make`` run on its oracle vectors of items created before the test day."""
    from recsys.models.config import ModelConfig
    from recsys.pipeline.catalogue import write_catalogue
    from recsys.train.config import TrainConfig
    from recsys.train.trainer import TrainJob, run_train
    from recsys.world.generate import generate_world

    world = work / "world"
    generate_world(world, preset="tiny", seed=0)
    oracle = write_truth_vectors(world, work / "oracle")
    write_catalogue(world, oracle, Manifest.read(world).test_day, work / "catalogue")
    run = work / "runs" / "simtier_make"
    run_train(TrainJob(world=world, out=run, model=ModelConfig(variant="simtier_make"), vectors=work / "catalogue" / VECTORS_FILE,
                       quiet=True, train=TrainConfig(batch_size=256, make_max_epochs=1)))  # fmt: skip
    return world, run


@dataclass(frozen=True)
class Setup:
    """What the measurements run on."""

    world: Path
    run: Path
    requests: list[RankRequest]
    store: Path | None  # the served vector store; None for id_only
    fresh_ids: np.ndarray | None  # (M,) items the run's vectors lack, with vectors of its width; None: no freshness
    fresh: np.ndarray | None  # (M, D) their vectors
    max_history_len: int  # the history the model reads
    served: RankerExportConfig  # the served ranker's instances and batching


def prepare(world: Path, run: Path, work: Path, n_requests: int, n_fresh: int,
            served: RankerExportConfig = RankerExportConfig()) -> Setup:
    """Requests over the run's items, new items' vectors from the world's truth, a bound store, version 1 exported."""
    spec = load_run(run, run.name, world)
    known = load_vectors(spec.vectors, store=spec.store) if spec.vectors else None
    items = known.item_ids if known else np.sort(world_items(world))
    fresh_ids = fresh = store = None
    if known is not None:
        store = work / "vectors.sqlite"
        with VectorStore(store) as s:
            s.bind(dim=known.dim, encoder_sha256="")
        if (Path(world) / TRUTH_ITEMS).is_file():
            ids, vectors = read_item_vectors(write_truth_vectors(world, work / "truth") / VECTORS_FILE)
            new = ~np.isin(ids, known.item_ids)
            if vectors.shape[1] == known.dim and new.any():
                fresh_ids, fresh = ids[new][:n_fresh], vectors[new][:n_fresh]
    export_ranker(run, world, work / "repo", version=1, config=served, store=store)
    return Setup(world, run, bench_requests(world, items, n_requests), store, fresh_ids, fresh,
                 Manifest.read(world).max_history_len, served)  # fmt: skip


def measure(setup: Setup, work: Path, pa: PerfAnalyzer | None, args: argparse.Namespace) -> dict[str, object]:
    """Every measurement against one server (version 1, then the hot update to version 2)."""
    ranker = Ranker.load(setup.run, setup.world, engine=setup.served.engine)
    repo = work / "repo"
    out: dict[str, object] = {"perf": {}, "perf_note": "", "fresh": None}
    with TritonServer(ServerConfig(repository=repo, model_control="explicit")) as server:
        out["ready_s"] = server.ready_seconds
        if pa is not None:
            try:
                rows = run_perf_analyzer(pa, server.grpc_url, setup.requests, work, args.interval_ms, args.stability)
                out["perf"] = {r.concurrency: r for r in rows}
            except PerfAnalyzerUnavailable as e:
                out["perf_note"] = str(e)
        out["local"] = {k: in_process_candidates_per_s(ranker, setup.requests, k, args.local_s) for k in CONCURRENCY}
        if setup.fresh_ids is not None:
            out["fresh"] = freshness(server.grpc_url, setup.store, setup.requests[0], setup.fresh_ids, setup.fresh)

        def swap() -> None:  # the same run as version 2, loaded while version 1 serves
            export_ranker(setup.run, setup.world, repo, version=2, config=setup.served, store=setup.store)
            with RankerClient(ClientConfig(url=server.grpc_url, model=MODEL)) as admin:
                admin.load()

        out["hot"] = hot_update(server.grpc_url, setup.requests, swap, before_s=args.before_s, after_s=2.0)
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


def table(out: dict[str, object]) -> list[tuple[str, str, str, str]]:
    """The rows: metric, measured, goal, met."""
    local, perf = out["local"], out["perf"]
    rows = [("metric", "measured", "goal", "met"), ("server start to ready (version 1, idle)", f"{out['ready_s']:.1f} s", "", "")]
    rows += [(f"in-process, {k} request(s) per score_many", f"{local[k]:,.0f} candidates/s", "", "") for k in CONCURRENCY]
    for k in CONCURRENCY:
        if k not in perf:
            rows.append((f"Triton c={k}", "not measured", "", ""))
            continue
        p, served = perf[k], CANDIDATES * perf[k].infer_per_s
        rows += [(f"Triton c={k}: p50 / p99 latency", f"{p.p50_ms:.1f} / {p.p99_ms:.1f} ms",
                  *((f"p99 <= {GOAL_P99_MS:.0f} ms", _met(p.p99_ms <= GOAL_P99_MS)) if k == max(CONCURRENCY) else ("", ""))),
                 (f"Triton c={k}: server queue / forward pass (means)", f"{p.queue_ms:.1f} / {p.compute_ms:.1f} ms", "", ""),
                 (f"Triton c={k}: throughput", f"{served:,.0f} candidates/s ({p.infer_per_s:.1f} requests/s)", "", ""),
                 (f"Triton c={k} / in-process {k} per call", f"{served / local[k]:.2f}x", f">= {GOAL_RATIO}x",
                  _met(served / local[k] >= GOAL_RATIO))]  # fmt: skip
        if k != 1:
            rows.append((f"Triton c={k} / in-process 1 per call", f"{served / local[1]:.2f}x", "", ""))
    fresh = out["fresh"]
    if fresh is None:
        rows.append(("freshness", "not measured (id_only, or no world truth of the run's width)", "", ""))
    else:
        f, lost = percentiles(fresh[~np.isnan(fresh)]), int(np.isnan(fresh).sum())
        rows += [(f"freshness, {len(fresh)} new items: p50 / p99 / max", f"{f['p50']:.2f} / {f['p99']:.2f} / {f['max']:.2f} s",
                  f"p99 <= {GOAL_FRESH_S:.0f} s", _met(f["p99"] <= GOAL_FRESH_S and lost == 0)),
                 ("freshness: items not served with their vector within 10 s", str(lost), "0", _met(lost == 0))]  # fmt: skip
    hot = out["hot"]
    b, s = hot["before"], hot["swap"]
    rows += [("hot update: failed requests", str(hot["failed"]), "0", _met(hot["failed"] == 0)),
             ("hot update: answers per version", ", ".join(f"v{v}: {n}" for v, n in hot["versions"].items())
              + f" (v1 after the first v2: {hot['late_v1']})", "v1 then v2",
              _met(set(hot["versions"]) == {1, 2} and hot["late_v1"] == 0)),
             ("hot update: load call / swap window", f"{hot['load_s']:.1f} / {hot['swap_s']:.1f} s", "", ""),
             ("hot update: latency before: p50 / p99 / max", f"{_ms(b['p50'])} / {_ms(b['p99'])} / {_ms(b['max'])}", "", ""),
             (f"hot update: latency in the swap ({hot['swap_requests']} requests)",
              f"{_ms(s['p50'])} / {_ms(s['p99'])} / {_ms(s['max'])}", "", "")]  # fmt: skip
    return rows


def print_table(rows: list[tuple[str, ...]]) -> None:
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, width)).rstrip())
        if i == 0:
            print("  " + "  ".join("-" * w for w in width))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ranking", description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, help="the run's dataset (default: the tiny preset, generated)")
    parser.add_argument("--run", type=Path, help="a finished run of --world (default: simtier_make, trained here)")
    parser.add_argument("--quick", action="store_true", help="fewer requests and items, shorter windows")
    parser.add_argument("--requests", type=int, help="distinct requests (default: 64, --quick 16)")
    parser.add_argument("--interval-ms", type=int, help="perf_analyzer's measurement window (default: 4000, --quick 2000)")
    parser.add_argument("--stability", type=int, default=50, help="perf_analyzer's --stability-percentage "
                        "(default: 50; its own 10 rarely settles at p99 on 2 shared cores)")  # fmt: skip
    parser.add_argument("--fresh-items", type=int, help="new items written to the store (default: 30, --quick 10)")
    parser.add_argument("--instances", type=int, default=RankerExportConfig.instances,
                        help="served model instances (RankerExportConfig.instances)")
    parser.add_argument("--max-batch-size", type=int, default=RankerExportConfig.max_batch_size,
                        help="requests per dynamic batch (RankerExportConfig.max_batch_size)")
    parser.add_argument("--engine", default=RankerExportConfig.engine, choices=ENGINES,
                        help="what runs the model, served and in-process (RankerExportConfig.engine)")
    args = parser.parse_args(argv)
    if args.run is not None and args.world is None:
        parser.error("--run needs --world, the dataset it was trained on")
    args.requests = args.requests or (16 if args.quick else 64)
    args.interval_ms = args.interval_ms or (2000 if args.quick else 4000)
    args.fresh_items = args.fresh_items or (10 if args.quick else 30)
    args.local_s, args.before_s = (2.0, 2.0) if args.quick else (5.0, 5.0)  # in-process seconds; traffic before the swap

    load = os.getloadavg()[0]
    try:
        pa: PerfAnalyzer | None = install_perf_analyzer()
        pa_note = ""
    except PerfAnalyzerUnavailable as e:
        pa, pa_note = None, str(e)
    with tempfile.TemporaryDirectory(prefix="bench-ranking-") as tmp:
        work = Path(tmp)
        world, run = (args.world, args.run) if args.run else train_tiny_run(work)
        served = RankerExportConfig(instances=args.instances, max_batch_size=args.max_batch_size, engine=args.engine)
        setup = prepare(world, run, work, args.requests, args.fresh_items, served)
        out = measure(setup, work, pa, args)
    print(f"\nranking benchmark: run {args.run or 'simtier_make (tiny world, trained here)'}; {args.requests} requests "
          f"of {CANDIDATES} candidates and {HISTORY} history items (the model reads {setup.max_history_len}); "
          f"{os.cpu_count()} cores, load average {load:.1f} at start; torch threads {torch.get_num_threads()} in-process, "
          f"1 served, {setup.served.instances} instance(s), dynamic batches of up to {setup.served.max_batch_size}, engine {setup.served.engine}; perf_analyzer windows {args.interval_ms} ms, stability {args.stability}%")  # fmt: skip
    if pa_note or out["perf_note"]:
        print(f"  perf_analyzer: not measured: {pa_note or out['perf_note']}")
    print_table(table(out))
    if out["hot"]["errors"]:
        print(f"  hot update errors (first {len(out['hot']['errors'])}): {out['hot']['errors']}")


if __name__ == "__main__":
    main()
