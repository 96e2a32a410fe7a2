"""``mmctr pretrain-eval``: how well item vectors match what shoppers mean.

On held-out search sessions (the test day's), each run's encoder embeds the
query image and the query text; the purchased item is retrieved among all
items by cosine similarity against the run's item image vectors (image
queries) and item title vectors (text queries): recall@1 and recall@10. The
category purity of each item's 10 nearest neighbours (fused item vectors,
the item itself excluded) is measured on a fixed sample of items.

Only the modalities both the dataset (``features.content``: its query
columns) and the run's encoder have are scored: a titles-only world gives
``text_recall@k`` and purity. A dataset without a search log gives purity
alone (and ``queries`` 0).

Notation: ``Q`` held-out queries, ``N`` items, ``D`` dims.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pretrain.config import TowerConfig
from pretrain.data import check_texts, declared_content, decode_images, has_searches
from pretrain.encoder import MODALITY_FILES, load_encoder
from pretrain.towers import build_tokenizer
from recsys.data.content import content_columns, where
from recsys.data.schema import Manifest, read_table_file, table_files
from recsys.data.vectors import VECTORS_MANIFEST, load_vectors

PURITY_SAMPLE = 5_000  # items whose neighbours are checked
PURITY_K = 10
RECALL_KS = (1, 10)
SCORE_CHUNK = 1_024  # queries scored against all items at once


def recall_at_k(queries: np.ndarray, items: np.ndarray, target_rows: np.ndarray, ks: tuple[int, ...]) -> dict[int, float]:
    """Share of queries whose target row is among the k most similar items.

    Args:
        queries (np.ndarray): (Q, D) unit vectors.
        items (np.ndarray): (N, D) unit vectors.
        target_rows (np.ndarray): (Q,) row of each query's target in ``items``.
    """
    hits = {k: 0 for k in ks}
    for a in range(0, len(queries), SCORE_CHUNK):
        s = queries[a : a + SCORE_CHUNK] @ items.T  # (q, N)
        t = target_rows[a : a + SCORE_CHUNK]
        target_score = s[np.arange(len(t)), t]
        rank = (s > target_score[:, None]).sum(axis=1)  # 0 = best
        for k in hits:  # each k once, even if ks repeats it
            hits[k] += int((rank < k).sum())
    return {k: hits[k] / max(len(queries), 1) for k in ks}


def neighbour_purity(vectors: np.ndarray, categories: np.ndarray, sample: np.ndarray, k: int = PURITY_K) -> float:
    """Mean share of each sampled item's k nearest neighbours in its own category."""
    shares = []
    for a in range(0, len(sample), SCORE_CHUNK):
        rows = sample[a : a + SCORE_CHUNK]
        s = vectors[rows] @ vectors.T  # (q, N)
        s[np.arange(len(rows)), rows] = -np.inf  # not itself
        nn = np.argpartition(-s, k, axis=1)[:, :k]
        shares.append((categories[nn] == categories[rows][:, None]).mean(axis=1))
    return float(np.concatenate(shares).mean())


def _heldout_queries(world: Path) -> dict[str, object]:
    """Query images and/or texts (the declared content's) and purchased item IDs of the test day's sessions.

    Returns ``{"purchased": empty}`` (no query to score) when the dataset has no search log.
    """
    m = Manifest.read(world)
    content, size = declared_content(world)
    if not has_searches(world):
        return {"purchased": np.zeros(0, dtype=np.int64)}
    columns = content_columns("searches", content)
    imgs, texts, purchased = [], [], []
    for f in table_files(world, "searches"):
        t = read_table_file(f, columns=["session_id", "day", *columns, "purchased_item_id"])
        keep = np.flatnonzero(t["day"].to_numpy() == m.test_day)
        if len(keep) == 0:
            continue
        t = t.take(keep)
        name, sessions = str(f.relative_to(world)), t["session_id"].to_pylist()
        if "query_text" in columns:
            what = [f"{where(name, 'query_text', int(r))} (session {s})" for r, s in zip(keep, sessions)]
            check_texts(t["query_text"].to_pylist(), what, "query_text")
            texts.extend(t["query_text"].to_pylist())
        if "query_image" in columns:
            what = [f"{where(name, 'query_image', int(r))} (session {s})" for r, s in zip(keep, sessions)]
            imgs.append(decode_images(t["query_image"].to_pylist(), size, what))
        purchased.append(t["purchased_item_id"].to_numpy())
    if not purchased:
        raise ValueError(f"{world}: no search sessions on the test day {m.test_day}")
    out: dict[str, object] = {"purchased": np.concatenate(purchased)}
    if "query_image" in columns:
        out["image"] = np.concatenate(imgs)
    if "query_text" in columns:
        out["text"] = texts
    return out


def _categories(world: Path, item_ids: np.ndarray) -> np.ndarray | None:
    """Each item's category (-1: not in items/): the spec's first ``history_side`` feature (DIN's category),
    else an items feature ``category_id``; ``None`` when the dataset declares neither (no purity)."""
    spec = Manifest.read(world).features
    items = spec.sources("items")
    column = spec.history_side[0] if spec.history_side else ("category_id" if "category_id" in items else None)
    if column is None:
        return None
    parts = [read_table_file(f, columns=[spec.item_key, column]) for f in table_files(world, "items")]
    ids = np.concatenate([p[spec.item_key].to_numpy() for p in parts]).astype(np.int64)
    cats = np.concatenate([p[column].to_numpy() for p in parts]).astype(np.int64)
    order = np.argsort(ids)
    ids, cats = ids[order], cats[order]  # a sorted lookup: raw 64-bit IDs cost what dense ones do
    at = np.minimum(np.searchsorted(ids, item_ids), max(len(ids) - 1, 0))
    return np.where(len(ids) and ids[at] == item_ids, cats[at], -1) if len(ids) else np.full(len(item_ids), -1)


@torch.no_grad()
def evaluate_run(run: Path, queries: dict[str, object], categories: np.ndarray | None, sample: np.ndarray) -> dict[str, float]:
    """Recall (per modality of both the queries and the run's encoder) and purity of one pretrain run directory."""
    table = load_vectors(run)
    item_ids, fused = table.item_ids, table.vectors
    encoder = load_encoder(run)
    out: dict[str, float] = {}
    scored = [m for m in encoder.modalities if m in queries and len(queries["purchased"])]
    if scored:
        row_of = {int(i): r for r, i in enumerate(item_ids)}
        target = np.array([row_of[int(p)] for p in queries["purchased"]])
    for name in scored:
        if name == "image":
            x = torch.from_numpy(queries["image"])
            encode = encoder.encode_image
        else:
            x = build_tokenizer(TowerConfig(context_length=encoder.context_length))(queries["text"])
            encode = encoder.encode_text
        q = torch.cat([encode(x[a : a + 512]) for a in range(0, len(x), 512)]).numpy()
        for k, v in recall_at_k(q, np.load(run / MODALITY_FILES[name]), target, RECALL_KS).items():
            out[f"{name}_recall@{k}"] = v
    if categories is not None:
        out[f"purity@{PURITY_K}"] = neighbour_purity(fused, categories, sample)
    return out


def evaluate_runs(world: Path, runs: list[Path]) -> dict[str, dict[str, float]]:
    """One row per run, keyed ``method`` (``method-2`` etc. when repeated)."""
    queries = _heldout_queries(world)
    results: dict[str, dict[str, float]] = {}
    for run in runs:
        meta = json.loads((Path(run) / VECTORS_MANIFEST).read_text())
        item_ids = load_vectors(Path(run)).item_ids
        categories = _categories(world, item_ids)
        rng = np.random.default_rng(0)
        sample = rng.choice(len(item_ids), size=min(PURITY_SAMPLE, len(item_ids)), replace=False)
        name, i = meta["method"], 2
        while name in results:
            name, i = f"{meta['method']}-{i}", i + 1
        results[name] = {"queries": float(len(queries["purchased"])), **evaluate_run(Path(run), queries, categories, sample)}
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """One line per run; a column a run has no value for (a modality its encoder lacks) shows ``-``.

    Example::

        >>> print(format_table({"scl": {"queries": 2.0, "text_recall@1": 0.5, "purity@10": 0.25},
        ...                     "x": {"queries": 2.0, "purity@10": 0.125}}))
        method         text_recall@1         purity@10
        scl                   0.5000            0.2500
        x                          -            0.1250
    """
    cols = list(dict.fromkeys(c for row in results.values() for c in row if c != "queries"))
    lines = [f"{'method':<10}" + "".join(f"{c:>18}" for c in cols)]
    for name, row in results.items():
        lines.append(f"{name:<10}" + "".join(f"{row[c]:>18.4f}" if c in row else f"{'-':>18}" for c in cols))
    return "\n".join(lines)
