"""Served scores, sampled, to a Parquet directory: a day of online traffic replayable offline.

One row per logged request::

    served_at     float64        unix seconds the request was scored
    version       int64          the model version that scored it
    user          int64
    history       list<int64>    oldest first, as sent
    candidates    list<int64>    N items, as sent
    context       map<string, list<float64>>   the context features sent (absent ones left out)
    scores        list<float32>  N click probabilities, candidate order

Files are ``part-<unix ns>-<pid>.parquet``, each written under a ``.tmp-``
name and renamed, so a reader never sees half a file (as the feed's).
:class:`ScoreLog` keeps a request with probability ``sample`` (a seeded
generator: the same traffic logs the same requests) and writes a file every
``flush_rows`` kept requests and when closed. :func:`read_score_log` reads
the directory back; :func:`replay_requests` turns its rows into
``RankRequest`` s for ``Ranker.score_many`` (the offline replay).

Example::

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> log = ScoreLog(folder, sample=1.0, flush_rows=2)
    >>> log.add(RankRequest(7, np.array([1, 2]), np.array([3, 4]), {"position": np.array([0.0, 1.0])}),
    ...         np.array([0.25, 0.5], np.float32), version=3)
    True
    >>> log.close()
    >>> table = read_score_log(folder)
    >>> table.num_rows, table["candidates"].to_pylist(), replay_requests(table)[0].context["position"].tolist()
    (1, [[3, 4]], [0.0, 1.0])
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from serving.ranker import RankRequest

SCHEMA = pa.schema([
    ("served_at", pa.float64()), ("version", pa.int64()), ("user", pa.int64()),
    ("history", pa.list_(pa.int64())), ("candidates", pa.list_(pa.int64())),
    ("context", pa.map_(pa.string(), pa.list_(pa.float64()))), ("scores", pa.list_(pa.float32())),
])  # fmt: skip


class ScoreLog:
    """Buffers sampled requests and their scores; writes Parquet files (module docstring).

    Args:
        folder (Path): the log directory (created).
        sample (float): the probability that a request is logged, in [0, 1].
        flush_rows (int): logged requests per file.
        seed (int): the sampling generator's seed.

    Raises:
        ValueError: ``sample`` outside [0, 1] or ``flush_rows`` < 1.
    """

    def __init__(self, folder: Path, sample: float = 1.0, flush_rows: int = 1000, seed: int = 0) -> None:
        if not 0.0 <= sample <= 1.0 or flush_rows < 1:
            raise ValueError(f"ScoreLog: sample must lie in [0, 1] and flush_rows be >= 1, got {sample}, {flush_rows}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sample = sample
        self.flush_rows = flush_rows
        self._rng = np.random.default_rng(seed)
        self._rows: list[dict] = []
        self.logged = 0  # requests written or buffered

    def add(self, request: RankRequest, scores: np.ndarray, version: int) -> bool:
        """Logs one scored request with probability ``sample``; returns whether it was kept."""
        if self.sample < 1.0 and self._rng.random() >= self.sample:
            return False
        self._rows.append({
            "served_at": time.time(), "version": int(version), "user": int(request.user),
            "history": np.asarray(request.history, np.int64).tolist(),
            "candidates": np.asarray(request.candidates, np.int64).tolist(),
            "context": [(k, np.asarray(v, np.float64).tolist()) for k, v in request.context.items()],
            "scores": np.asarray(scores, np.float32).tolist(),
        })  # fmt: skip
        self.logged += 1
        if len(self._rows) >= self.flush_rows:
            self.flush()
        return True

    def flush(self) -> None:
        """Writes the buffered requests as one file (nothing when empty)."""
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=SCHEMA)
        name = f"part-{time.time_ns()}-{os.getpid()}.parquet"
        tmp = self.folder / f".tmp-{name}"
        pq.write_table(table, tmp)
        os.replace(tmp, self.folder / name)
        self._rows = []

    def close(self) -> None:
        self.flush()


def read_score_log(folder: Path) -> pa.Table:
    """Every logged request of ``folder``'s files, in file-name (time) order.

    Raises:
        FileNotFoundError: no log files there.
    """
    files = sorted(Path(folder).glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no served-score log files (part-*.parquet)")
    return pa.concat_tables([pq.read_table(f, schema=SCHEMA) for f in files])


def replay_requests(table: pa.Table) -> list[RankRequest]:
    """The logged rows as ``RankRequest`` s, in order (their scores: ``table["scores"]``)."""
    return [
        RankRequest(row["user"], np.array(row["history"], np.int64), np.array(row["candidates"], np.int64),
                    {k: np.array(v, np.float64) for k, v in row["context"]})
        for row in table.select(["user", "history", "candidates", "context"]).to_pylist()
    ]  # fmt: skip
