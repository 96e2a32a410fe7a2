"""The public data format: Parquet tables and ``manifest.json``.

This module is the single source of the format. The README's format section,
``mmctr validate``, the world generator and every reader derive from it.

A dataset directory holds::

    manifest.json                 format version, counts, ID ranges, day ranges
    items/part-NNNNN.parquet      one row per item (content included)
    users/part-NNNNN.parquet      one row per user
    impressions/day-DDDD-part-NNNNN.parquet   one row per ad impression
    searches/part-NNNNN.parquet   one row per search -> purchase session
    truth/                        generator-only hidden truth (optional; only
                                  evaluation reports may read it)

Every table is a directory of Parquet files read in sorted name order, so a
real log can be written in shards of any size.

Example::

    >>> from recsys.data.schema import TABLES, IMPRESSIONS
    >>> sorted(TABLES)
    ['impressions', 'items', 'searches', 'users']
    >>> str(IMPRESSIONS.field("history_item_ids").type)
    'list<item: int64>'
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TRUTH_DIR = "truth"

ITEMS = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("category_id", pa.int32(), nullable=False),  # leaf category
        pa.field("shop_id", pa.int64(), nullable=False),
        pa.field("brand_id", pa.int64(), nullable=False),
        pa.field("price_bucket", pa.int32(), nullable=False),
        pa.field("created_day", pa.int32(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),  # PNG bytes, RGB
    ]
)

USERS = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("age_bucket", pa.int32(), nullable=False),
        pa.field("gender", pa.int32(), nullable=False),
        pa.field("city_id", pa.int32(), nullable=False),
    ]
)

IMPRESSIONS = pa.schema(
    [
        pa.field("day", pa.int32(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        # Most recent clicked items before this impression, oldest first.
        pa.field("history_item_ids", pa.list_(pa.int64()), nullable=False),
        pa.field("position", pa.int32(), nullable=False),  # ad slot, 0 = top
        pa.field("label", pa.float32(), nullable=False),  # 1.0 click, 0.0 no click
    ]
)

SEARCHES = pa.schema(
    [
        pa.field("session_id", pa.int64(), nullable=False),
        pa.field("day", pa.int32(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("query_text", pa.string(), nullable=False),
        pa.field("query_image", pa.binary(), nullable=False),  # PNG bytes, RGB
        pa.field("shown_item_ids", pa.list_(pa.int64()), nullable=False),
        # Clicked but not bought: the hard negatives of SCL pre-training.
        pa.field("clicked_item_ids", pa.list_(pa.int64()), nullable=False),
        pa.field("purchased_item_id", pa.int64(), nullable=False),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "items": ITEMS,
    "users": USERS,
    "impressions": IMPRESSIONS,
    "searches": SEARCHES,
}

# Which ID column is bounded by which manifest ID range. Histories and the
# search lists hold item IDs.
ID_COLUMNS: dict[str, dict[str, str]] = {
    "items": {
        "item_id": "item_id",
        "category_id": "category_id",
        "shop_id": "shop_id",
        "brand_id": "brand_id",
        "price_bucket": "price_bucket",
    },
    "users": {
        "user_id": "user_id",
        "age_bucket": "age_bucket",
        "gender": "gender",
        "city_id": "city_id",
    },
    "impressions": {
        "user_id": "user_id",
        "item_id": "item_id",
        "history_item_ids": "item_id",
    },
    "searches": {
        "user_id": "user_id",
        "shown_item_ids": "item_id",
        "clicked_item_ids": "item_id",
        "purchased_item_id": "item_id",
    },
}

# Image columns hold PNG bytes that must decode to RGB.
IMAGE_COLUMNS: dict[str, tuple[str, ...]] = {"items": ("image",), "searches": ("query_image",)}


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: what a dataset holds.

    Args:
        format_version (int): version of this format (``FORMAT_VERSION``).
        preset (str): world preset, or any name for a real log.
        seed (int): generator seed (0 for a real log).
        counts (dict[str, int]): rows per table.
        id_ranges (dict[str, int]): for each ID kind, the table size: valid IDs
            are ``0 <= id < id_ranges[kind]``.
        first_day (int): first impression day.
        last_day (int): last impression day; by convention the test day.
        max_history_len (int): longest allowed ``history_item_ids``.
        image_size (int): side of the square item images, in pixels.
    """

    format_version: int
    preset: str
    seed: int
    counts: dict[str, int]
    id_ranges: dict[str, int]
    first_day: int
    last_day: int
    max_history_len: int
    image_size: int
    extra: dict[str, object] = field(default_factory=dict)  # free-form notes

    @property
    def test_day(self) -> int:
        return self.last_day

    def write(self, directory: Path) -> None:
        path = Path(directory) / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    @staticmethod
    def read(directory: Path) -> "Manifest":
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; every dataset needs a {MANIFEST}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object")
        names = set(Manifest.__dataclass_fields__)
        missing = sorted(names - set(raw) - {"extra"})
        if missing:
            raise ValueError(f"{path}: missing field(s) {missing}")
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {unknown}")
        if raw["format_version"] != FORMAT_VERSION:
            raise ValueError(
                f"{path}: format_version {raw['format_version']!r}, this mmctr reads {FORMAT_VERSION}"
            )
        return Manifest(**raw)


def table_files(directory: Path, table: str) -> list[Path]:
    """The Parquet files of ``table`` in ``directory``, in read order."""
    if table not in TABLES:
        raise KeyError(f"unknown table {table!r}; tables are {sorted(TABLES)}")
    return sorted((Path(directory) / table).glob("*.parquet"))


def manifest_sha(directory: Path) -> str:
    """A dataset's identity: the SHA-256 of its ``manifest.json`` bytes, first 16 hex digits.

    Run folders record it (``world_manifest_sha``) and evaluation checks a run
    against the world it scores with it.

    Raises:
        FileNotFoundError: ``directory`` holds no ``manifest.json``.
    """
    return hashlib.sha256((Path(directory) / MANIFEST).read_bytes()).hexdigest()[:16]
