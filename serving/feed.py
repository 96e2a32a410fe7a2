"""The new-item feed: an append-only directory of Parquet files.

A producer (the item-creation service) appends a file per event or per
batch of new items; the embedder (:mod:`serving.embedder`) consumes them::

    FEED/
      part-<unix ns, 20 digits>-<8 hex>.parquet     read in name order
      .tmp-<...>.parquet                            being written: ignored

Each file holds rows of :data:`FEED_SCHEMA`:

| column | type | meaning |
|---|---|---|
| ``item_id`` | int64 | the item (the items table's ID) |
| ``title`` | string | raw title |
| ``image`` | binary | PNG (or any PIL format) bytes, RGB, H x W of the encoder |
| ``created_at`` | float64 | unix seconds the item was created |

``title`` and ``image`` may be null, or left out of a file (read as nulls):
items of a titles-only catalogue have no image, and the embedder reads only
what the served encoder takes.

A file appears whole or not at all: it is written under a ``.tmp-`` name,
flushed to disk and renamed. Files are never changed or removed by readers;
an item may appear in several files (duplicate events). The consumer keeps
the set of file names it has fully handled (in the vector store, in the
same transaction as their vectors), so a file that lands late under an
"older" name is still read.

Example::

    >>> import tempfile
    >>> feed = Path(tempfile.mkdtemp())
    >>> path = append(feed, [3, 4], ["red dress", "kettle"], [b"png3", b"png4"], [1.0, 2.0])
    >>> [p.name == path.name for p in list_files(feed)], read_file(path)["item_id"].to_pylist()
    ([True], [3, 4])
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.settings import setting

FEED_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("image", pa.binary()),
        pa.field("created_at", pa.float64(), nullable=False),
    ]
)
PART_PREFIX = "part-"
TMP_PREFIX = ".tmp-"


class FeedError(ValueError):
    """A feed file that cannot be read as :data:`FEED_SCHEMA` (names the file, column and row)."""


def append(
    feed: Path,
    item_ids: Sequence[int],
    titles: Sequence[str | None],
    images: Sequence[bytes | None],
    created_at: Sequence[float],
) -> Path:
    """Appends one file of new items to ``feed`` atomically; returns its path.

    Args:
        feed (Path): the feed directory (created if missing).
        item_ids (Sequence[int]): N item IDs.
        titles (Sequence[str | None]): N titles (None: the item has none).
        images (Sequence[bytes | None]): N encoded images (None: the item has none).
        created_at (Sequence[float]): N creation times, unix seconds.
    """
    feed = Path(feed)
    feed.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {"item_id": pa.array(item_ids, pa.int64()), "title": pa.array(titles, pa.string()),
         "image": pa.array(images, pa.binary()), "created_at": pa.array(created_at, pa.float64())},
        schema=FEED_SCHEMA,
    )  # fmt: skip
    name = f"{PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = feed / (TMP_PREFIX + name)
    with open(tmp, "wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(feed / name)
    return feed / name


def list_files(feed: Path) -> list[Path]:
    """The feed's complete files, in name order (``.tmp-`` files left out)."""
    feed = Path(feed)
    if not feed.is_dir():
        return []
    names = sorted(e.name for e in os.scandir(feed) if e.name.startswith(PART_PREFIX) and e.name.endswith(".parquet"))
    return [feed / n for n in names]


def read_file(path: Path) -> pa.Table:
    """One feed file, checked: the four columns with their types, no null ``item_id`` or ``created_at``.

    Null titles or images are allowed here, and a file without a ``title`` or
    ``image`` column reads as nulls in it; the embedder records an item as
    failed when it lacks content the served encoder takes.

    Raises:
        FeedError: naming the file, and the column and row of the first fault.
    """
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise FeedError(f"{path}: not a readable Parquet file ({e})") from None
    for field in FEED_SCHEMA:
        if field.name not in table.column_names and field.nullable:  # content the catalogue has not: nulls
            table = table.append_column(field, pa.nulls(len(table), field.type))
        if field.name not in table.column_names:
            raise FeedError(f"{path}: column {field.name!r} missing (has {table.column_names})")
        have = table.schema.field(field.name).type
        if have != field.type and not (pa.types.is_large_string(have) or pa.types.is_large_binary(have)):
            raise FeedError(f"{path}: column {field.name!r} is {have}, expected {field.type}")
        if not field.nullable and table[field.name].null_count:
            row = int(np.flatnonzero(pc.is_null(table[field.name]).to_numpy(zero_copy_only=False))[0])
            raise FeedError(f"{path}: column {field.name!r}, row {row}: null")
    return table.select([f.name for f in FEED_SCHEMA])


@dataclass(frozen=True)
class PublishConfig:
    """How :func:`publish_world_items` publishes (``mmctr feed``'s settings)."""

    day: int | None = setting(None, "creation day of the items (default: the test day)")
    rate: float | None = setting(None, "items per second (default: as fast as possible)")
    per_file: int = setting(1, "items per feed file")
    limit: int | None = setting(None, "publish at most N items")


def publish_world_items(
    world: Path,
    feed: Path,
    day: int | None = None,
    rate: float | None = None,
    per_file: int = PublishConfig.per_file,
    limit: int | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Appends a world's items created on ``day`` to ``feed``, as if they were created now.

    The item content the world declares is published (a titles-only world's
    items go out with null images). Each item's ``created_at`` is the time it is appended. With ``rate``,
    items go out at that many per second (a file every ``per_file / rate``
    seconds), else as fast as they are written.

    Args:
        world (Path): dataset directory (public format).
        feed (Path): feed directory.
        day (int | None): creation day of the items to publish; None: the test day (the newest items).
        rate (float | None): items per second; None: no pacing.
        per_file (int): items per feed file.
        limit (int | None): publish at most this many items.
        clock (Callable[[], float]): unix seconds now.

    Returns:
        int: items published.
    """
    from recsys.data.schema import Manifest, read_table_files, table_files

    if per_file < 1 or (rate is not None and rate <= 0):
        raise ValueError(f"per_file must be >= 1 and rate > 0, got per_file={per_file}, rate={rate}")
    manifest = Manifest.read(world)
    day = manifest.last_day if day is None else day
    from recsys.data.stats import CREATED_DAY, item_index, new_item_mask

    content = [c for c in ("title", "image") if c in manifest.features.content]  # the columns the items have
    key = manifest.features.item_key
    files = table_files(world, "items")
    created = bool(files) and CREATED_DAY in pq.read_schema(files[0]).names
    items = read_table_files(files, columns=[key, *content, *([CREATED_DAY] if created else [])], ids=[key])
    if created:
        items = items.filter(pc.equal(items[CREATED_DAY], day))
    else:  # a log without creation days: the items first shown on the day
        new = item_index(world, manifest)[new_item_mask(world, day, manifest)]
        items = items.filter(pc.is_in(items[key], pa.array(new, pa.int64())))
    if limit is not None:
        items = items.slice(0, limit)
    ids = items[key].to_pylist()
    titles, images = (items[c].to_pylist() if c in content else [None] * len(ids) for c in ("title", "image"))
    start = time.monotonic()
    for a in range(0, len(ids), per_file):
        if rate is not None:
            delay = start + a / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        b = min(a + per_file, len(ids))
        append(feed, ids[a:b], titles[a:b], images[a:b], [clock()] * (b - a))
    return len(ids)
