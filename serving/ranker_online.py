"""Online against offline on one day: a sample of the day's logged impressions ranked on the served ranker.

``mmctr online-eval`` (and the pipeline's ``rank_online`` stage) checks the
served model the way a ranking team checks a launch: it samples users of a
day, takes every impression of theirs that day (the day's row order: the
files in ``table_files`` order, rows of that day), groups them into requests
as a serving system would have sent them (one user with one behaviour
history ranks its candidates in one request, their logged context features
sent along; more than ``max_candidates`` rows split into several requests),
ranks each request on Triton through :class:`serving.ranker_client.RankerClient`,
and scores the same impressions offline as ``mmctr evaluate`` does
(``recsys.eval.score.score_run``: the run rebuilt through
DistributedModelParallel on one rank). It reports AUC and GAUC of both on
the sample (``recsys.eval.metrics.ranking_metrics``), the largest
|online - offline| score, request latency, the version that answered, and
the sampled candidates that are new on the day and were scored with a
vector the embedder wrote to the store (``--store``).

Example (a running server: ``tests/serving/test_ranker.py``)::

    report = online_eval("127.0.0.1:8001", Path("runs/demo/retrain/simtier_make-day-13"), Path("runs/demo/world"),
                         day=13, config=OnlineEvalConfig(users=200), store=Path("runs/demo/vectors.sqlite"))
    report.online["gauc"], report.offline["gauc"], report.max_abs_diff
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from recsys.data.schema import Manifest, read_table_files, table_files
from recsys.data.spec import FeatureSpec
from recsys.eval.metrics import ranking_metrics
from recsys.settings import setting
from serving.ranker import MAX_CANDIDATES, RankRequest, context_features
from serving.ranker_export import RANKER_MODEL


@dataclass(frozen=True)
class OnlineEvalConfig:
    """Which impressions ``mmctr online-eval`` ranks, and where (fields carry their help)."""

    users: int = setting(200, "users of the day sampled; every impression of theirs that day is ranked")
    seed: int = setting(0, "seed of the user sample")

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"OnlineEvalConfig.users must be >= 1, got {self.users}")


@dataclass(frozen=True)
class OnlineReport:
    """What ``mmctr online-eval`` measured (``as_dict``: its JSON)."""

    run: str
    day: int
    users: int  # users sampled
    impressions: int  # their impressions of the day, each ranked once online and scored once offline
    requests: int
    version: int  # the served version that answered every request
    online: dict[str, float]  # ranking_metrics of the served scores
    offline: dict[str, float]  # ranking_metrics of `mmctr evaluate`'s scores of the same rows
    max_abs_diff: float  # max |online - offline| click probability
    latency_p50_ms: float  # one request, client side
    latency_p99_ms: float
    new_items: int  # distinct sampled candidates new on the day
    new_items_served_vector: int  # of them, with a vector in the store (written by the embedder)

    def as_dict(self) -> dict:
        return asdict(self)


def day_impressions(world: Path, day: int, spec: FeatureSpec | None = None) -> pa.Table:
    """The day's impressions in the readers' row order: ``table_files`` order, that day's rows in file order.

    Returns:
        pa.Table: the spec's impression columns (user, item, history, label,
        context features), one row per impression of ``day`` (0 rows: none).
    """
    spec = spec if spec is not None else Manifest.read(world).features
    columns = [spec.user_key, spec.item_key, spec.label, spec.day, *context_features(spec)]
    columns += [] if spec.history is None else [spec.history]
    # pyarrow's filter skips the row groups whose day statistics exclude the day, and keeps the file's row order
    ids = [spec.user_key, spec.item_key, *([] if spec.history is None else [spec.history])]
    return read_table_files(table_files(world, "impressions"), columns, [(spec.day, "=", day)], ids=ids).combine_chunks()


def sample_requests(table: pa.Table, spec: FeatureSpec, users: int, seed: int,
                    max_candidates: int = MAX_CANDIDATES) -> list[tuple[RankRequest, np.ndarray]]:
    """The impressions of ``users`` sampled users of ``table`` grouped into requests (module docstring).

    Args:
        table (pa.Table): a day's impressions (:func:`day_impressions`).
        spec (FeatureSpec): the dataset's features.
        users (int): how many distinct users to sample (all of them when the day has fewer).
        seed (int): the sample's seed.
        max_candidates (int): the most candidates per request.

    Returns:
        list[tuple[RankRequest, np.ndarray]]: each request and the rows (int64 (N,), positions
        in ``table``) its candidates are, in candidate order; every sampled user's row is in exactly one.
        Each request's context holds the rows' logged values (:func:`request_context`: a categorical
        feature's IDs int64, exact; a dense feature's float64).
    """
    user = table[spec.user_key].to_numpy()
    chosen = np.unique(user)
    if len(chosen) > users:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, users, replace=False))
    rows = np.flatnonzero(np.isin(user, chosen))
    item = table[spec.item_key].to_numpy()
    history = table[spec.history].to_pylist() if spec.history is not None else None
    sparse = {f.name for f in spec.sparse}
    context = {n: request_context(table[n].to_numpy(zero_copy_only=False), n in sparse) for n in context_features(spec)}
    groups: dict[tuple, list[int]] = {}
    for r in rows:
        groups.setdefault((int(user[r]), tuple(history[r] or ()) if history is not None else ()), []).append(int(r))
    out = []
    for (u, hist), members in groups.items():
        for lo in range(0, len(members), max_candidates):
            idx = np.array(members[lo : lo + max_candidates], dtype=np.int64)
            out.append((RankRequest(u, np.array(hist, dtype=np.int64), item[idx],
                                    {n: v[idx] for n, v in context.items()}), idx))
    return out


def request_context(values: np.ndarray, sparse: bool) -> np.ndarray:
    """A logged context column as a request sends it: a categorical (sparse) feature's IDs as int64, exactly
    (a raw 64-bit ID would lose its low bits through float64), a dense feature's values as float64.

    Example::

        >>> request_context(np.array([2**60 + 1]), sparse=True).tolist() == [2**60 + 1]
        True
        >>> request_context(np.array([1, 2], dtype=np.int32), sparse=False)
        array([1., 2.])
    """
    if sparse and np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    return values.astype(np.float64)


def _offline_scores(run: Path, world: Path, day: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mmctr evaluate``'s scores of every impression of ``day`` (one rank): predictions, users, items."""
    import torch.distributed as dist

    from recsys.distributed import init_distributed
    from recsys.eval.runs import load_run
    from recsys.eval.score import score_run

    created = not dist.is_initialized()
    ctx = init_distributed(always=True)  # DistributedModelParallel needs a process group, even of one rank
    try:
        _, users, scores = score_run(load_run(run, run.name, world), world, day, ctx)
    finally:
        if created:
            dist.destroy_process_group()
    return scores.predictions, users, scores.item_ids


def _new_items_with_vector(world: Path, day: int, candidates: np.ndarray, store: Path | None) -> tuple[int, int]:
    from recsys.data.stats import item_index, new_item_mask

    new = np.intersect1d(item_index(world)[new_item_mask(world, day)], candidates)
    if store is None or not len(new):
        return int(len(new)), 0
    from serving.store import VectorStore

    with VectorStore(store, readonly=True) as db:
        return int(len(new)), int(db.has_vector(new).sum())


def online_eval(url: str, run: Path, world: Path, day: int, config: OnlineEvalConfig = OnlineEvalConfig(),
                store: Path | None = None, model: str = RANKER_MODEL, max_candidates: int = MAX_CANDIDATES) -> OnlineReport:
    """Ranks a sample of ``day``'s impressions on the ranker served at ``url`` against ``run``'s offline scores.

    Args:
        url (str): Triton's gRPC HOST:PORT, serving ``run`` as ``model``.
        run (Path): the served run folder (``mmctr export-ranker --run``).
        world (Path): its dataset.
        day (int): the day whose impressions are sampled.
        config (OnlineEvalConfig): sample size and seed.
        store (Path | None): the vector store the server reads; counts the new items scored with its vectors.
        model (str): the served ranker's name (``RankerExportConfig.name``).
        max_candidates (int): the most candidates per request (the served ranker's ``max_candidates``).

    Raises:
        ValueError: the day is outside the world (``recsys.eval.evaluate.check_day``) or has no impression
            (``recsys.data.stats.check_day_has_impressions``), the offline rows are not the sampled ones
            (naming the row), or more than one served version answered (a hot update during the run: the
            scores mix models).
        RankerRequestError, RankerUnavailable: the server refused a request, or did not answer.
    """
    from recsys.data.stats import check_day_has_impressions
    from recsys.eval.evaluate import check_day
    from serving.client import ClientConfig
    from serving.ranker_client import RankerClient

    run, world = Path(run), Path(world)
    manifest = Manifest.read(world)
    check_day(manifest, day, world)  # refused as `mmctr evaluate` refuses it, before any request is sent
    check_day_has_impressions(world, day, manifest, "rank online")
    spec = manifest.features
    table = day_impressions(world, day, spec)
    if table.num_rows == 0:
        raise ValueError(f"{world}: no impression on day {day} to rank")
    requests = sample_requests(table, spec, config.users, config.seed, max_candidates)
    rows = np.sort(np.concatenate([idx for _, idx in requests]))
    online = np.full(table.num_rows, np.nan)
    seconds, versions = [], set()
    with RankerClient(ClientConfig(url=url, model=model)) as client:
        for request, idx in requests:
            t = time.perf_counter()
            ranked = client.rank(request.user, request.history, request.candidates, request.context)
            seconds.append(time.perf_counter() - t)
            online[idx] = ranked.scores
            versions.add(ranked.version)
    if len(versions) > 1:
        raise ValueError(f"{url} {model}: versions {sorted(versions)} answered; the online scores mix models")
    offline, users, items = _offline_scores(run, world, day)
    item, user = table[spec.item_key].to_numpy(), table[spec.user_key].to_numpy()
    if len(offline) != table.num_rows or not (np.array_equal(items[rows], item[rows]) and np.array_equal(users[rows], user[rows])):
        bad = next((int(r) for r in rows if r >= len(items) or items[r] != item[r] or users[r] != user[r]), -1)
        raise ValueError(f"{world}: day {day}'s offline scores ({len(offline)} rows) are not in the order of its "
                         f"{table.num_rows} impressions (first differing row {bad})")
    labels = torch.from_numpy(table[spec.label].to_numpy().astype(np.float64)[rows])
    by_user = torch.from_numpy(user[rows].astype(np.int64))
    new, with_vector = _new_items_with_vector(world, day, item[rows], store)
    p50, p99 = np.percentile(np.array(seconds) * 1e3, [50, 99])
    return OnlineReport(
        run=str(run), day=day, users=len(np.unique(user[rows])), impressions=len(rows), requests=len(requests),
        version=versions.pop(), online=ranking_metrics(torch.from_numpy(online[rows]), labels, by_user),
        offline=ranking_metrics(torch.from_numpy(offline[rows]), labels, by_user),
        max_abs_diff=float(np.abs(online[rows] - offline[rows]).max()), latency_p50_ms=float(p50),
        latency_p99_ms=float(p99), new_items=new, new_items_served_vector=with_vector)
