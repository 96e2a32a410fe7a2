"""``mmctr embed-new``: new items from the feed -> Triton -> the vector store, each item exactly once.

The loop (:meth:`Embedder.run`) polls the feed (:mod:`serving.feed`) and,
for the files the store has not marked handled, in name order:

1. takes up to ``batch_size`` rows (a large file is taken in pieces);
2. drops items that already have a vector (duplicate events, replays) and
   repeats within the batch;
3. decodes the images here, on the client side (the server takes raw
   pixels); an image or title that breaks a content rule of the dataset
   (``recsys/data/content.py``: decodes to RGB at the encoder's H x W, title
   not blank) makes that item a *failure*: recorded in the store with its reason,
   counted against coverage, reported, and never stalling the other items
   (a later event of the same item tries again). Only the content the served
   encoder takes is read and checked (``ServedModel.inputs``): a titles-only
   encoder embeds new items from their titles, whatever their image column holds;
4. encodes the rest on Triton (:class:`~serving.client.EncoderClient`:
   deadline, retries with backoff); if the server refuses a batch, its items
   are retried one by one so only the bad one fails;
5. writes the vectors, the failures and the files this batch completes in
   one store transaction (:meth:`~serving.store.VectorStore.write`).

**Exactly one vector per item.** Delivery is at-least-once: a file is
marked handled only in the transaction that writes its last items, so after
a crash, a restart or a Triton outage the unfinished files are read again
from their start. Writes are idempotent: ``item_id`` is the store's primary
key and vectors go in with ``INSERT OR IGNORE``, so a re-read or duplicated
item never gets a second vector. While Triton is down the loop backs off
and retries the same batch; nothing is skipped, so no item is lost.

Example::

    >>> percentiles(np.array([0.1, 0.2, 0.3, 0.4]))
    {'p50': 0.25, 'p99': 0.397, 'max': 0.4}
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from recsys.data.content import ContentError, check_text, decode_image  # the rules pre-training applies
from recsys.settings import setting
from serving.client import EncoderClient, EncoderRequestError, EncoderUnavailable
from serving.feed import FeedError, list_files, read_file
from serving.store import VectorStore

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedderConfig:
    """How the embedder polls, batches and waits.

    Args:
        batch_size (int): items per store transaction and encode call (the client
            cuts it into requests of the server's ``max_batch_size``).
        poll_interval_s (float): wait between polls of an idle feed.
        backoff_s (float): first wait after Triton stayed unavailable; doubles.
        max_backoff_s (float): longest wait between attempts while Triton is down.
        exit_when_idle_s (float | None): stop once nothing new came for this long;
            None: run until stopped (SIGTERM/SIGINT).
        report_every_s (float): log the report (coverage, latency) this often while running.
    """

    batch_size: int = setting(64, "items per store transaction")  # one server batch
    # adds at most 50 ms to creation -> vector latency
    poll_interval_s: float = setting(0.05, "seconds between polls of an idle feed", flag="--poll-interval")
    backoff_s: float = 0.5  # the client has already retried for ~3 s by then
    max_backoff_s: float = 5.0  # recovery within 5 s of Triton being back
    exit_when_idle_s: float | None = setting(  # tests and benchmarks: stop when drained
        None, "stop after this many seconds without new items (default: run until SIGTERM)", flag="--exit-when-idle")
    report_every_s: float = 60.0  # a service's heartbeat in its log

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.poll_interval_s <= 0 or self.backoff_s <= 0:
            raise ValueError(f"EmbedderConfig: batch_size >= 1, poll_interval_s > 0 and backoff_s > 0, got {self}")


def percentiles(seconds: np.ndarray) -> dict[str, float]:
    """p50, p99 and max of latencies (nan when there are none)."""
    if len(seconds) == 0:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    p50, p99 = np.percentile(seconds, [50, 99])
    return {"p50": round(float(p50), 6), "p99": round(float(p99), 6), "max": round(float(np.max(seconds)), 6)}


@dataclass
class EmbedReport:
    """What a run did and where the store stands."""

    written: int = 0  # vectors this run added
    duplicates: int = 0  # rows skipped: the item already had a vector or repeated in its batch
    failed: int = 0  # items this run recorded as failed
    unavailable: int = 0  # times Triton stayed unavailable through the client's retries
    latency_s: list[float] = field(default_factory=list)  # creation -> vector, this run's vectors
    store_vectors: int = 0  # items with a vector in the store
    store_failures: int = 0  # items recorded as failed in the store
    pending: int = 0  # distinct items in feed files not yet handled
    bad_files: list[str] = field(default_factory=list)  # feed files that could not be read

    @property
    def coverage(self) -> float:
        """Share of the items seen (store vectors + failures + pending) that have a vector."""
        seen = self.store_vectors + self.store_failures + self.pending
        return self.store_vectors / seen if seen else float("nan")

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: the counts, coverage and latency percentiles (seconds)."""
        counts = {k: v for k, v in vars(self).items() if k != "latency_s"}
        return {**counts, "coverage": self.coverage, "latency_s": percentiles(np.array(self.latency_s))}

    def summary(self) -> str:
        lat = percentiles(np.array(self.latency_s))
        lines = [
            f"vectors written {self.written}, duplicates skipped {self.duplicates}, failed {self.failed}, "
            f"Triton unavailable {self.unavailable} time(s)",
            f"creation -> vector latency: p50 {lat['p50'] * 1e3:.0f} ms, p99 {lat['p99'] * 1e3:.0f} ms, "
            f"max {lat['max'] * 1e3:.0f} ms",
            f"store: {self.store_vectors} vectors, {self.store_failures} failures, {self.pending} pending: "
            f"coverage {self.coverage:.2%}",
        ]
        lines += [f"unreadable feed file: {name}" for name in self.bad_files]
        return "\n".join(lines)


@dataclass
class _Rows:
    """Feed rows of one batch."""

    item_ids: list[int] = field(default_factory=list)
    titles: list[str | None] = field(default_factory=list)
    images: list[bytes | None] = field(default_factory=list)
    created_at: list[float] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # "file, row r" of each row

    def extend(self, table: pa.Table, name: str, start: int) -> None:
        self.item_ids += table["item_id"].to_pylist()
        self.titles += table["title"].to_pylist()
        self.images += table["image"].to_pylist()
        self.created_at += table["created_at"].to_pylist()
        self.where += [f"{name}, row {start + r}" for r in range(len(table))]


class Embedder:
    """The loop of the module docstring.

    Args:
        feed (Path): the feed directory.
        store (VectorStore): the store it writes (bound to the served encoder on the first step).
        client (EncoderClient): the served encoder.
        config (EmbedderConfig): batching, polling, backoff.
    """

    def __init__(self, feed: Path, store: VectorStore, client: EncoderClient, config: EmbedderConfig) -> None:
        self.feed, self.store, self.client, self.config = Path(feed), store, client, config
        self.report = EmbedReport()
        self._handled = store.handled_files()
        self._offsets: dict[str, int] = {}  # rows of a partly handled file already committed
        self._tables: dict[str, pa.Table] = {}  # read files not yet handled
        self._bad: set[str] = set()
        self._bound = False

    def _pending(self) -> list[Path]:
        return [p for p in list_files(self.feed) if p.name not in self._handled and p.name not in self._bad]

    def _table(self, path: Path) -> pa.Table | None:
        if path.name not in self._tables:
            try:
                self._tables[path.name] = read_file(path)
            except FeedError as e:
                LOG.error("%s; skipped until the embedder restarts", e)
                self._bad.add(path.name)
                self.report.bad_files.append(path.name)
                return None
        return self._tables[path.name]

    def step(self) -> int:
        """Handles up to ``batch_size`` pending rows in one store transaction; returns the rows handled.

        Raises:
            EncoderUnavailable: Triton did not answer; nothing was committed.
        """
        if not self._bound:
            model = self.client.model()
            self.store.bind(model.dim, model.encoder_sha256)
            self._bound = True
        rows, completes, offsets = _Rows(), [], {}
        for path in self._pending():
            table = self._table(path)
            if table is None:
                continue
            start = self._offsets.get(path.name, 0)
            stop = min(len(table), start + self.config.batch_size - len(rows.item_ids))
            rows.extend(table.slice(start, stop - start), path.name, start)
            offsets[path.name] = stop
            if stop == len(table):
                completes.append((path.name, len(table)))
            if len(rows.item_ids) >= self.config.batch_size:
                break
        if not offsets:
            return 0
        self._handle(rows, completes)
        self._offsets.update(offsets)
        for name, _ in completes:
            self._handled.add(name)
            self._tables.pop(name, None)
            self._offsets.pop(name, None)
        return len(rows.item_ids)

    def _handle(self, rows: _Rows, completes: list[tuple[str, int]]) -> None:
        """Dedupes, decodes, encodes and commits one batch (module docstring, steps 2-5)."""
        have = self.store.has_vector(rows.item_ids)
        seen: set[int] = set()
        todo, failures, duplicates = [], [], 0
        model = self.client.model()
        shape = model.image_shape
        for r, item in enumerate(rows.item_ids):
            if have[r] or item in seen:
                duplicates += 1
                continue
            seen.add(item)
            try:
                pixels = None
                if shape is not None:
                    pixels = decode_image(rows.images[r], shape[0])
                    if pixels.shape != shape:
                        raise ContentError(f"image decodes to shape {pixels.shape}, the encoder takes {shape}")
                if model.takes_titles:
                    check_text(rows.titles[r], "title")
            except ContentError as e:
                failures.append((item, f"{rows.where[r]}: {e}", rows.created_at[r]))
            else:
                todo.append((r, pixels))
        titles = [rows.titles[r] for r, _ in todo] if model.takes_titles else None
        vectors, refused = self._encode(len(todo), titles, [p for _, p in todo] if shape is not None else None)
        failures += [(rows.item_ids[todo[i][0]], f"{rows.where[todo[i][0]]}: {msg}", rows.created_at[todo[i][0]])
                     for i, msg in refused.items()]  # fmt: skip
        ok = [i for i in range(len(todo)) if i not in refused]
        ids = np.array([rows.item_ids[todo[i][0]] for i in ok], dtype=np.int64)
        created = np.array([rows.created_at[todo[i][0]] for i in ok], dtype=np.float64)
        result = self.store.write(ids, vectors[ok] if len(ok) else vectors[:0], created, failures, completes)
        written = np.isin(ids, result.inserted)
        now = time.time()
        self.report.written += int(written.sum())
        self.report.duplicates += duplicates + int((~written).sum())  # (~written): a concurrent writer was first
        self.report.latency_s += (now - created[written]).tolist()
        self.report.failed += len(failures)
        for item, reason, _ in failures:
            LOG.warning("item %d not embedded: %s", item, reason)

    def _encode(
        self, n: int, titles: list[str] | None, images: list[np.ndarray] | None
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Vectors (n, D) of n items and {index: reason} of those the server refused (their rows are zeros).

        ``titles`` and ``images`` hold n entries each, or are None for an input the served model does not take.
        """
        dim = self.client.model().dim
        if not n:
            return np.zeros((0, dim), np.float32), {}
        vectors, refused = np.zeros((n, dim), np.float32), {}

        def encode(a: int, b: int) -> np.ndarray:
            pixels = None if images is None else np.stack(images[a:b])
            return self.client.encode(pixels, None if titles is None else titles[a:b])

        try:
            return encode(0, n), refused
        except EncoderRequestError as e:
            if n == 1:
                return vectors, {0: f"refused by the server: {e}"}
        for i in range(n):  # isolate the bad item(s)
            try:
                vectors[i] = encode(i, i + 1)[0]
            except EncoderRequestError as e:
                refused[i] = f"refused by the server: {e}"
        return vectors, refused

    def run(self, stop: threading.Event | None = None) -> EmbedReport:
        """Polls until ``stop`` is set (or the feed stayed idle ``exit_when_idle_s``); returns the report."""
        stop = stop or threading.Event()
        cfg = self.config
        idle_since, backoff = time.monotonic(), cfg.backoff_s
        next_report = time.monotonic() + cfg.report_every_s
        while not stop.is_set():
            if time.monotonic() >= next_report:
                LOG.info("report:\n%s", self.finish().summary())
                next_report = time.monotonic() + cfg.report_every_s
            try:
                handled = self.step()
            except EncoderUnavailable as e:
                self.report.unavailable += 1
                LOG.warning("Triton unavailable (%s); retrying in %.1f s", e, backoff)
                stop.wait(backoff)
                backoff = min(2 * backoff, cfg.max_backoff_s)
                idle_since = time.monotonic()
                continue
            backoff = cfg.backoff_s
            if handled:
                idle_since = time.monotonic()
                continue
            if cfg.exit_when_idle_s is not None and time.monotonic() - idle_since >= cfg.exit_when_idle_s:
                break
            stop.wait(cfg.poll_interval_s)
        return self.finish()

    def finish(self) -> EmbedReport:
        """Fills the report's store and pending counts."""
        stats = self.store.stats()
        pending: set[int] = set()
        for path in self._pending():
            table = self._table(path)
            if table is not None:
                pending.update(table["item_id"].to_pylist()[self._offsets.get(path.name, 0) :])
        if pending:
            pending -= {i for i, h in zip(sorted(pending), self.store.has_vector(sorted(pending))) if h}
        self.report.store_vectors, self.report.store_failures, self.report.pending = stats.vectors, stats.failures, len(pending)
        return self.report
