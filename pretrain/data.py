"""Pre-training data from the public format: item content and search pairs.

SCL's positive pairs come from ``searches``: (query image, purchased item's
image) and (query text, purchased item's title); the items clicked but not
bought in the same session are its hard negatives. Only public tables are
read, so a real log in the same format works unchanged.

Only the content the manifest declares (``features.content``: ``title``,
``image`` or both) is read, items and queries alike; the other is None. The
search log is optional in the format (``searches/`` may be absent or
empty): :func:`has_searches` says whether there is one, and
:func:`load_search_pairs` refuses a dataset without it in one line.

Notation: ``N`` items, ``S`` sessions, ``H`` image side, ``Hn`` hard
negatives per session (padded with -1).

Example::

    >>> import tempfile, pathlib
    >>> from recsys.world.generate import generate_world
    >>> world = pathlib.Path(tempfile.mkdtemp()) / "w"
    >>> _ = generate_world(world, "tiny", 0)
    >>> items = load_item_content(world)
    >>> items.images.shape, len(items.titles)
    ((1500, 64, 64, 3), 1500)
    >>> pairs = load_search_pairs(world, items)
    >>> pairs.query_images.shape[1:], pairs.hard_rows.shape[1], items.modalities
    ((64, 64, 3), 3, ('image', 'text'))
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretrain.config import content_modalities
from recsys.data.content import ContentError, check_text, content_columns, decode_image, first_fault, where
from recsys.data.schema import Manifest, read_table_file, table_files

MAX_HARD_NEGATIVES = 3  # Hn: hard negatives kept per session
DECODE_CHUNK = 1024  # images per task of decode_images' pool


def decode_images(blobs: list[bytes | None], size: int, what: list[str], workers: int = 2) -> np.ndarray:
    """Decodes PNG/JPEG bytes to uint8 (N, size, size, 3) on a thread pool (``content.decode_image``).

    Each task decodes a run of up to :data:`DECODE_CHUNK` images: with one future
    per image the pool's own work held the GIL for much of the time (the
    ``small`` world's 100k 64-px PNGs on 2 threads: ~30 s that way, 20.6 s
    in runs).

    Raises:
        ValueError: ``what[i]: `` and the content rule's message, for the
            first blob that is missing, does not decode to RGB, or is not
            ``size`` x ``size``.
    """
    out = np.empty((len(blobs), size, size, 3), dtype=np.uint8)

    chunk = max(1, min(DECODE_CHUNK, -(-len(blobs) // max(1, workers))))  # every worker busy on a short list too

    def run(start: int) -> tuple[int, str] | None:
        for i in range(start, min(start + chunk, len(blobs))):
            try:
                out[i] = decode_image(blobs[i], size)
            except ContentError as e:
                return i, str(e)
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for fault in pool.map(run, range(0, len(blobs), chunk)):  # in order: the first fault is the first row's
            if fault is not None:
                raise ValueError(f"{what[fault[0]]}: {fault[1]}")
    return out


def check_texts(texts: list[str | None], what: list[str], column: str) -> None:
    """Raises ValueError ``what[i]: `` and ``content.check_text``'s message for the first blank text."""
    fault = first_fault(texts, lambda text: check_text(text, column))
    if fault is not None:
        raise ValueError(f"{what[fault[0]]}: {fault[1]}")


@dataclass(frozen=True)
class ItemContent:
    """Every item's image and title, in ascending ``item_id`` order; None for content the dataset lacks."""

    item_ids: np.ndarray  # (N,) int64, ascending
    images: np.ndarray | None  # (N, H, W, 3) uint8; None: the items have no image column
    titles: list[str] | None  # N titles; None: the items have no title column

    @property
    def modalities(self) -> tuple[str, ...]:
        """The towers this content feeds, in ``MODALITIES`` order: ``image`` if images, ``text`` if titles."""
        return tuple(m for m, v in (("image", self.images), ("text", self.titles)) if v is not None)

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each item ID; -1 where the ID is unknown."""
        ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.searchsorted(self.item_ids, ids)
        pos = np.minimum(pos, len(self.item_ids) - 1)
        return np.where(self.item_ids[pos] == ids, pos, -1)


def declared_content(world: Path) -> tuple[tuple[str, ...], int | None]:
    """(``features.content``, ``image_size``) of a dataset's manifest.

    Raises:
        ValueError: the items carry no content, or images without an ``image_size``.
    """
    m = Manifest.read(world)
    content = tuple(m.features.content)
    if not content:
        raise ValueError(f"{world}: the items carry no content (manifest features.content is empty); "
                         "pre-training needs titles, images or both")  # fmt: skip
    if "image" in content and not m.image_size:
        raise ValueError(f"{world}: manifest features.content holds 'image' but image_size is {m.image_size!r}")
    return content, m.image_size


def load_item_content(world: Path, workers: int = 2) -> ItemContent:
    """Reads and decodes every item's content: the columns ``manifest.features.content`` declares, no other.

    Raises:
        ValueError: no content declared, or an item whose title or image breaks a
            content rule (``recsys/data/content.py``; naming file, column, row and item).
    """
    content, size = declared_content(world)
    columns = content_columns("items", content)
    key = Manifest.read(world).features.item_key  # the items' ID column (the spec's item key)
    ids, titles, images = [], [], []
    for f in table_files(world, "items"):
        t = read_table_file(f, columns=[key, *columns])
        file_ids = t[key].to_numpy()
        name = str(f.relative_to(world))
        if "title" in columns:
            file_titles = t["title"].to_pylist()
            check_texts(file_titles, [f"{where(name, 'title', r)} (item {i})" for r, i in enumerate(file_ids)], "title")
            titles.extend(file_titles)
        if "image" in columns:
            what = [f"{where(name, 'image', r)} (item {i})" for r, i in enumerate(file_ids)]
            images.append(decode_images(t["image"].to_pylist(), size, what, workers))
        ids.append(file_ids)
    if not ids:
        raise ValueError(f"{world}: no items")
    item_ids = np.concatenate(ids).astype(np.int64)
    order = np.argsort(item_ids, kind="stable")
    if np.any(np.diff(item_ids[order]) == 0):
        dup = item_ids[order][np.flatnonzero(np.diff(item_ids[order]) == 0)[0]]
        raise ValueError(f"{world}: item {dup} appears more than once")
    return ItemContent(
        item_ids[order],
        np.concatenate(images)[order] if "image" in columns else None,
        [titles[i] for i in order] if "title" in columns else None,
    )


@dataclass(frozen=True)
class SearchPairs:
    """Search sessions as training pairs, rows pointing into an ``ItemContent``; None for an absent query column."""

    session_ids: np.ndarray  # (S,) int64
    days: np.ndarray  # (S,) int32
    query_images: np.ndarray | None  # (S, H, W, 3) uint8; None: no query_image column (no item images)
    query_texts: list[str] | None  # S texts; None: no query_text column (no item titles)
    purchased_rows: np.ndarray  # (S,) int64 rows of the purchased items
    hard_rows: np.ndarray  # (S, Hn) int64 rows of clicked-not-bought items, -1 padded

    def __len__(self) -> int:
        return len(self.session_ids)

    def subset(self, mask: np.ndarray) -> "SearchPairs":
        idx = np.flatnonzero(mask)
        return SearchPairs(
            self.session_ids[idx],
            self.days[idx],
            None if self.query_images is None else self.query_images[idx],
            None if self.query_texts is None else [self.query_texts[i] for i in idx],
            self.purchased_rows[idx],
            self.hard_rows[idx],
        )


def has_searches(world: Path) -> bool:
    """Whether the dataset has a search log: a ``searches/`` folder holding at least one Parquet file."""
    return bool(table_files(world, "searches"))


def no_searches_message(modalities: tuple[str, ...]) -> str:
    """The one line refusing SCL on a dataset without searches, naming the method that can run instead.

    Example::

        >>> no_searches_message(("image", "text"))
        'SCL needs the search log (searches/); this dataset has none: pre-train with --method clip'
    """
    other = "clip" if len(modalities) == 2 else "random (clip needs both titles and images)"
    return f"SCL needs the search log (searches/); this dataset has none: pre-train with --method {other}"


def load_search_pairs(world: Path, items: ItemContent, workers: int = 2) -> SearchPairs:
    """Reads every search session as a (query, purchase, hard negatives) row.

    Only the query columns of the declared content are read: ``query_text``
    with titles, ``query_image`` with images.

    Raises:
        ValueError: :func:`no_searches_message` when there is no search log
            (no ``searches/``, no files in it, or no session in them); a session
            whose purchased or clicked item is unknown, or whose query breaks a
            content rule (naming the file and the session).
    """
    content, size = declared_content(world)
    queries = content_columns("searches", content)
    if not has_searches(world):
        raise ValueError(no_searches_message(content_modalities(content)))
    cols = ["session_id", "day", *queries, "clicked_item_ids", "purchased_item_id"]
    parts: dict[str, list] = {k: [] for k in ("sid", "day", "img", "txt", "pur", "hard")}
    for f in table_files(world, "searches"):
        t = read_table_file(f, columns=cols)
        sid = t["session_id"].to_numpy()
        name = f.relative_to(world)
        pur = items.rows(t["purchased_item_id"].to_numpy())
        if np.any(pur < 0):
            i = int(np.flatnonzero(pur < 0)[0])
            raise ValueError(
                f"{name}: session {sid[i]}: purchased item {t['purchased_item_id'][i].as_py()} is not in items/"
            )
        if "query_text" in queries:
            texts = t["query_text"].to_pylist()
            what = [f"{where(str(name), 'query_text', r)} (session {s})" for r, s in enumerate(sid)]
            check_texts(texts, what, "query_text")
            parts["txt"].extend(texts)
        hard = np.full((len(sid), MAX_HARD_NEGATIVES), -1, dtype=np.int64)
        for i, clicked in enumerate(t["clicked_item_ids"].to_pylist()):
            rows = items.rows(np.asarray(clicked[:MAX_HARD_NEGATIVES], dtype=np.int64))
            if np.any(rows < 0):
                raise ValueError(f"{name}: session {sid[i]}: clicked item {clicked[int(np.argmin(rows))]} is not in items/")
            hard[i, : len(rows)] = rows
        if "query_image" in queries:
            what = [f"{where(str(name), 'query_image', r)} (session {s})" for r, s in enumerate(sid)]
            parts["img"].append(decode_images(t["query_image"].to_pylist(), size, what, workers))
        parts["sid"].append(sid)
        parts["day"].append(t["day"].to_numpy())
        parts["pur"].append(pur)
        parts["hard"].append(hard)
    if not parts["sid"] or sum(len(s) for s in parts["sid"]) == 0:
        raise ValueError(no_searches_message(content_modalities(content)))
    return SearchPairs(
        np.concatenate(parts["sid"]).astype(np.int64),
        np.concatenate(parts["day"]).astype(np.int32),
        np.concatenate(parts["img"]) if "query_image" in queries else None,
        parts["txt"] if "query_text" in queries else None,
        np.concatenate(parts["pur"]).astype(np.int64),
        np.concatenate(parts["hard"]),
    )


def split_heldout(pairs: SearchPairs, test_day: int) -> tuple[SearchPairs, SearchPairs]:
    """(train, held-out): sessions of the test day are held out for evaluation."""
    held = pairs.days == test_day
    return pairs.subset(~held), pairs.subset(held)
