"""TorchX components of serving: the encoder for Triton, the real-time item embedder, the CTR ranker's repository.

Both are single-process jobs (``torchx.components.utils.python`` over
``python -m recsys.cli STAGE ...``). Run locally, with the venv's ``bin`` on ``PATH``::

    torchx run -s local_cwd torchx_components/serving.py:export \\
        --encoder runs/demo/pretrain-scl/encoder.pt --out runs/demo/triton
    mmctr serve --repository runs/demo/triton &
    torchx run -s local_cwd torchx_components/serving.py:embed_new \\
        --feed runs/demo/feed --store runs/demo/vectors.sqlite --url 127.0.0.1:8001

On a cluster scheduler the same components run with ``image`` pointing at a
container with this project installed and paths on shared storage; the
``production/`` repository of the export goes to a Triton container.

Example::

    >>> export(encoder="e.pt", out="o").roles[0].args
    ['-m', 'recsys.cli', 'export', '--encoder', 'e.pt', '--out', 'o', '--max-batch-size', '64', '--torch-threads', '1']
    >>> app = embed_new(feed="f", store="s.sqlite", url="h:1", exit_when_idle=2.0)
    >>> app.roles[0].args[2:]
    ['embed-new', '--feed', 'f', '--store', 's.sqlite', '--url', 'h:1', '--batch-size', '64', '--exit-when-idle', '2.0']
    >>> export_ranker(run="r", out="repo", version=2).roles[0].args[2:7]
    ['export-ranker', '--run', 'r', '--out', 'repo']
    >>> online_eval(url="h:1", run="r", out="o.json", day=9).roles[0].args[-2:]
    ['--day', '9']
"""

# No `from __future__ import annotations`: TorchX reads the real annotation
# objects to parse component arguments.
from typing import Optional

from torchx import specs

from serving import constants as k
from serving.client import ClientConfig
from serving.embedder import EmbedderConfig
from serving.ranker_export import RankerExportConfig
from serving.ranker_online import OnlineEvalConfig
from serving.server import GRPC_PORT, HTTP_PORT, ServerConfig
from torchx_components.pipeline import CPU, DEFAULT_IMAGE, _single

SERVER_MEM_MB = 4096  # export and Triton: memory per replica, MB
LIGHT_CPU = 1  # the embedder and the feed: CPUs per replica
LIGHT_MEM_MB = 2048  # the embedder and the feed: memory per replica, MB


def export(
    encoder: str,
    out: str,
    max_batch_size: int = k.MAX_BATCH_SIZE,
    torch_threads: int = k.TORCH_THREADS,
    image: str = DEFAULT_IMAGE,
    cpu: int = CPU,
    memMB: int = SERVER_MEM_MB,
) -> specs.AppDef:
    """Exports an encoder checkpoint as Triton model repositories (embedded and production).

    Args:
        encoder: encoder.pt from mmctr pretrain
        out: export folder (OUT/embedded, OUT/production, OUT/export.json)
        max_batch_size: items per request and per dynamic batch
        torch_threads: intra-op threads of the served encoder (0: torch's default)
        image: container image (cluster schedulers only)
        cpu: CPUs per replica
        memMB: memory per replica, MB
    """
    args = ["--encoder", encoder, "--out", out, "--max-batch-size", str(max_batch_size), "--torch-threads", str(torch_threads)]
    return _single("export", args, image, cpu, memMB)


def embed_new(
    feed: str,
    store: str,
    url: str = ClientConfig.url,
    batch_size: int = EmbedderConfig.batch_size,
    exit_when_idle: Optional[float] = None,
    report: Optional[str] = None,
    ready_file: Optional[str] = None,
    image: str = DEFAULT_IMAGE,
    cpu: int = LIGHT_CPU,
    memMB: int = LIGHT_MEM_MB,
) -> specs.AppDef:
    """The real-time item embedder: new items from the feed, through Triton, into the vector store.

    Args:
        feed: feed directory (append-only Parquet files)
        store: vector store (SQLite file, created if missing)
        url: Triton gRPC HOST:PORT
        batch_size: items per store transaction
        exit_when_idle: stop after this many seconds without new items (default: run until stopped)
        report: also write the run's report (coverage, latency) as JSON here
        ready_file: create this file once the embedder is connected to Triton and has opened the store
        image: container image (cluster schedulers only)
        cpu: CPUs per replica
        memMB: memory per replica, MB
    """
    args = ["--feed", feed, "--store", store, "--url", url, "--batch-size", str(batch_size)]
    if exit_when_idle is not None:
        args += ["--exit-when-idle", str(exit_when_idle)]
    if report is not None:
        args += ["--report", report]
    if ready_file is not None:
        args += ["--ready-file", ready_file]
    return _single("embed-new", args, image, cpu, memMB)


def serve(
    repository: str,
    grpc_port: int = GRPC_PORT,
    http_port: int = HTTP_PORT,
    model_control: str = ServerConfig.model_control,
    image: str = DEFAULT_IMAGE,
    cpu: int = CPU,
    memMB: int = SERVER_MEM_MB,
) -> specs.AppDef:
    """Triton Inference Server on an exported repository, bound to 127.0.0.1, until cancelled (SIGTERM).

    Args:
        repository: mmctr export folder (its embedded/) or a model repository
        grpc_port: gRPC port
        http_port: HTTP port
        model_control: none (fixed at start) or explicit (clients load new versions: a ranker's hot update)
        image: container image (cluster schedulers only)
        cpu: CPUs per replica
        memMB: memory per replica, MB
    """
    args = ["--repository", repository, "--grpc-port", str(grpc_port), "--http-port", str(http_port),
            "--model-control", model_control]
    return _single("serve", args, image, cpu, memMB)


def export_ranker(
    run: str,
    out: str,
    world: Optional[str] = None,
    version: Optional[int] = None,
    store: Optional[str] = None,
    precision: str = RankerExportConfig.precision,
    name: str = RankerExportConfig.name,
    image: str = DEFAULT_IMAGE,
    cpu: int = LIGHT_CPU,
    memMB: int = SERVER_MEM_MB,
) -> specs.AppDef:
    """Writes (or adds a version to) a Triton repository serving a finished CTR run; serve it with the serve component.

    Args:
        run: a finished mmctr train or retrain run folder
        out: the model repository
        world: the dataset it was trained on (default: the one its train_log.json names)
        version: the version folder to write (default 1; a retrain: the next number)
        store: a vector store whose new items are scored with their vectors while serving
        precision: the served ID tables' rows: fp32, fp16 or int8
        name: the model's name in the repository
        image: container image (cluster schedulers only)
        cpu: CPUs per replica
        memMB: memory per replica, MB
    """
    args = ["--run", run, "--out", out, "--precision", precision, "--name", name]
    optional = {"--world": world, "--store": store, "--version": None if version is None else str(version)}
    args += [x for flag, value in optional.items() if value is not None for x in (flag, value)]
    return _single("export-ranker", args, image, cpu, memMB)


def online_eval(
    url: str,
    run: str,
    out: str,
    world: Optional[str] = None,
    day: Optional[int] = None,
    store: Optional[str] = None,
    users: int = OnlineEvalConfig.users,
    seed: int = OnlineEvalConfig.seed,
    name: str = RankerExportConfig.name,
    max_candidates: int = RankerExportConfig.max_candidates,
    image: str = DEFAULT_IMAGE,
    cpu: int = LIGHT_CPU,
    memMB: int = SERVER_MEM_MB,
) -> specs.AppDef:
    """Ranks a sample of a day's impressions on a served ranker; online against offline AUC and GAUC, as JSON.

    Args:
        url: Triton gRPC HOST:PORT serving the run
        run: the served run folder
        out: the report (JSON)
        world: its dataset (default: the one its train_log.json names)
        day: the day sampled (default: the manifest's test_day)
        store: the vector store the server reads (counts new items scored with its vectors)
        users: users sampled; each one's impressions that day are ranked
        seed: seed of the user sample
        name: the served ranker's name
        max_candidates: the most candidates per request
        image: container image (cluster schedulers only)
        cpu: CPUs per replica
        memMB: memory per replica, MB
    """
    args = ["--url", url, "--run", run, "--out", out, "--users", str(users), "--seed", str(seed), "--name", name,
            "--max-candidates", str(max_candidates)]
    optional = {"--world": world, "--day": day, "--store": store}
    args += [x for flag, value in optional.items() if value is not None for x in (flag, str(value))]
    return _single("online-eval", args, image, cpu, memMB)


def feed(
    world: str,
    feed: str,
    day: Optional[int] = None,
    rate: Optional[float] = None,
    image: str = DEFAULT_IMAGE,
    cpu: int = LIGHT_CPU,
    memMB: int = LIGHT_MEM_MB,
) -> specs.AppDef:
    """Publishes a world's items created on a day into a feed, as newly created items.

    Args:
        world: dataset directory
        feed: feed directory
        day: creation day of the items (default: the test day)
        rate: items per second (default: as fast as possible)
        image: container image (cluster schedulers only)
        cpu: CPUs per replica
        memMB: memory per replica, MB
    """
    args = ["--world", world, "--feed", feed]
    optional = {"--day": day, "--rate": rate}
    args += [x for flag, value in optional.items() if value is not None for x in (flag, str(value))]
    return _single("feed", args, image, cpu, memMB)
