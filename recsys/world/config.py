"""World presets: the sizes of a synthetic Taobao-like marketplace.

Example::

    >>> from recsys.world.config import PRESETS
    >>> PRESETS["tiny"].n_impressions <= 50_000
    True
    >>> PRESETS["small"].n_users, PRESETS["small"].n_items
    (50000, 100000)
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


@dataclass(frozen=True)
class WorldJob:
    """One ``mmctr world`` (each field carries its help: the command's flags derive from them)."""

    out: Path = setting(help="output dataset directory (replaced)")
    preset: str = setting("small", "world size", choices=sorted(PRESETS))
    seed: int = setting(0, "random seed; same seed, same world")
    validate: bool = setting(False, "then check it as `mmctr validate` does")
    quiet: bool = setting(False, "no progress bar")
