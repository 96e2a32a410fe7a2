"""World presets: the sizes of a synthetic Taobao-like marketplace.

Example::

    >>> from recsys.world.config import PRESETS
    >>> PRESETS["tiny"].n_impressions <= 50_000
    True
    >>> PRESETS["small"].n_users, PRESETS["small"].n_items
    (50000, 100000)
    >>> WorldFormat(content="text").columns()
    ('title',)
    >>> WorldFormat(raw_ids=True).capacity(PRESETS["tiny"])
    {'user_id': 401, 'item_id': 1501, 'shop_id': 61, 'brand_id': 41}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recsys.settings import setting


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and knobs of one synthetic world.

    Args: see the comment on each field.
    """

    name: str  # preset name, written to the manifest
    n_users: int
    n_items: int
    n_days: int  # impression days; the last one is the test day
    prewarm_days: int  # catalogue days before the first impression day
    n_impressions: int  # over all impression days
    n_searches: int  # search -> purchase sessions over all impression days
    n_shops: int
    n_brands: int
    n_cities: int
    max_history_len: int = 50  # L: longest behaviour history written
    image_size: int = 64  # side of item and query images, pixels
    new_item_share: float = 0.08  # impressions per day drawn from items created that day
    log_item_share: float = 0.3  # share of items created during the impression days
    items_per_file: int = 50_000  # rows per items/ file (bounded memory)
    rows_per_impression_file: int = 1_000_000
    row_group_size: int = 65_536  # impressions rows per Parquet row group
    workers: int = 2  # processes rendering images

    @property
    def first_day(self) -> int:
        return self.prewarm_days

    @property
    def last_day(self) -> int:
        return self.prewarm_days + self.n_days - 1


PRESETS: dict[str, WorldConfig] = {
    "tiny": WorldConfig(
        name="tiny",
        n_users=400,
        n_items=1_500,
        n_days=5,
        prewarm_days=10,
        n_impressions=20_000,
        n_searches=1_200,
        n_shops=60,
        n_brands=40,
        n_cities=20,
        max_history_len=20,
        items_per_file=1_000,
        row_group_size=2_048,
        workers=1,
    ),
    "small": WorldConfig(
        name="small",
        n_users=50_000,
        n_items=100_000,
        n_days=14,
        prewarm_days=30,
        n_impressions=2_000_000,
        n_searches=40_000,
        n_shops=5_000,
        n_brands=2_000,
        n_cities=300,
        items_per_file=20_000,
    ),
    "large": WorldConfig(
        name="large",
        n_users=1_000_000,
        n_items=5_000_000,
        n_days=20,
        prewarm_days=30,
        n_impressions=20_000_000,
        n_searches=500_000,
        n_shops=200_000,
        n_brands=50_000,
        n_cities=1_000,
        image_size=32,
        items_per_file=250_000,
    ),
}


# `--content` value -> the item content written (spec.CONTENT names, in that order).
CONTENT: dict[str, tuple[str, ...]] = {"both": ("title", "image"), "text": ("title",), "image": ("image",)}
# ID kinds `--raw-ids` renames (each a managed table of the spec), with the WorldConfig field counting them.
RAW_ID_KINDS: dict[str, str] = {"user_id": "n_users", "item_id": "n_items", "shop_id": "n_shops", "brand_id": "n_brands"}
UNSEEN_ROWS = 1  # managed tables' rows past the world's IDs: the slot TorchRec's MCH keeps for unseen IDs


@dataclass(frozen=True)
class WorldFormat:
    """How a world is written: the same simulated world in the shape of another log.

    Whatever the format, the simulation (who saw what, clicked what, on which
    day and slot) is the same for a seed; only the written IDs and columns change.
    Each field carries its help: ``mmctr world``'s flags derive from them.
    """

    raw_ids: bool = setting(
        False,
        "write user, item, shop and brand IDs as random sparse 64-bit integers in [1, 2^62] (as a real log's), "
        "the same in every table; the manifest declares them managed tables of (count + 1) rows",
    )
    content: str = setting(
        "both", "item content written: title and image, title only (no image rendered), or image only", choices=tuple(CONTENT)
    )
    searches: bool = setting(True, "write the searches/ table (search -> purchase sessions)")

    def columns(self) -> tuple[str, ...]:
        """The content written (``FeatureSpec.content``): ``title``, ``image`` or both."""
        if self.content not in CONTENT:
            raise ValueError(f"content {self.content!r}; expected one of {sorted(CONTENT)}")
        return CONTENT[self.content]

    def capacity(self, cfg: WorldConfig) -> dict[str, int]:
        """Rows of each managed table under ``raw_ids``: the world's count of that kind + ``UNSEEN_ROWS``.

        Every ID of the kind fits without eviction (the count is known to the
        generator, as a log's distinct-ID count is to its owner), plus the last
        row, where TorchRec's managed-collision module sends IDs it never admitted.
        """
        return {kind: int(getattr(cfg, n)) + UNSEEN_ROWS for kind, n in RAW_ID_KINDS.items()}


@dataclass(frozen=True)
class WorldJob:
    """One ``mmctr world`` (each field carries its help: the command's flags derive from them)."""

    out: Path = setting(help="output dataset directory (replaced)")
    preset: str = setting("small", "world size", choices=sorted(PRESETS))
    seed: int = setting(0, "random seed; same seed, same world")
    validate: bool = setting(False, "then check it as `mmctr validate` does")
    quiet: bool = setting(False, "no progress bar")
