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

Every table is a directory of Parquet files, so a real log can be written in
shards of any size. Every ``*.parquet`` file under the table's directory is
read, at any depth (Hive-style partition folders such as
``impressions/day=6/part-0.parquet`` included; symlinked folders are followed),
in sorted order of its path relative to that directory (:func:`table_files`).
Folder names carry no data: ``day=6`` is not a column, each file holds every
column itself, and a file that lacks one is refused, naming the file.

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
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.spec import FeatureSpec, world_spec

FORMAT_VERSION = 2  # written; 2 adds `features` (the feature spec), `test_day`, optional generator fields
READ_VERSIONS: tuple[int, ...] = (1, 2)
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

# The world's ID columns and the ID range (table of world_spec()) bounding each;
# histories and the search lists hold item IDs. A log's come from its spec.
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


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``: what a dataset holds.

    Required: ``format_version``, ``first_day``, ``last_day`` and, from format
    2 on, ``features`` when read from a file; everything else has a default, so
    a real log's manifest is a few lines and its spec.

    Args:
        format_version (int): version of this format (``FORMAT_VERSION``);
            ``READ_VERSIONS`` are read. Format 1 has no ``features`` and reads
            as ``spec.world_spec()``.
        first_day (int): first impression day.
        last_day (int): last impression day.
        counts (dict[str, int]): rows per table (informational).
        id_ranges (dict[str, int]): for each ``identity`` table, its size: valid
            IDs are ``0 <= id < id_ranges[table]``. Tables of raw IDs
            (``managed``, ``hash``) need none.
        max_history_len (int): longest history kept per impression (the last
            this many items; longer histories are cut, not refused).
        test_day (int | None): the evaluation day; the model trains on the days
            before it. ``None`` = ``last_day``.
        features (FeatureSpec): the feature spec (``recsys.data.spec``).
        preset (str): world preset, or any name for a real log.
        seed (int): generator seed (0 for a real log).
        image_size (int | None): side of the square item images, in pixels;
            required when ``features.content`` holds ``image``.
        extra (dict): free-form notes.
    """

    format_version: int
    first_day: int
    last_day: int
    counts: dict[str, int] = field(default_factory=dict)
    id_ranges: dict[str, int] = field(default_factory=dict)
    max_history_len: int = 50
    test_day: int | None = None  # type: ignore[assignment]  # None: filled with last_day
    features: FeatureSpec = field(default_factory=world_spec)
    preset: str = "log"
    seed: int = 0
    image_size: int | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.test_day is None:
            object.__setattr__(self, "test_day", self.last_day)
        if isinstance(self.features, dict):
            object.__setattr__(self, "features", FeatureSpec.from_dict(self.features, MANIFEST))

    @property
    def spec(self) -> FeatureSpec:
        return self.features

    def write(self, directory: Path) -> None:
        path = Path(directory) / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        raw = asdict(self)
        raw["features"] = self.features.to_dict()
        if self.format_version == 1:  # the old layout: the spec is implied (world_spec), the test day the last
            del raw["features"], raw["test_day"]
        tmp.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    @staticmethod
    def read(directory: Path) -> "Manifest":
        """Reads and checks ``manifest.json`` of ``directory``.

        Raises:
            FileNotFoundError: no ``manifest.json``.
            ValueError: naming the file and the field: not JSON, a missing
                required or unknown field, an unread format version, a bad spec,
                a format 2 manifest without ``features``.
        """
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
        missing = sorted({"format_version", "first_day", "last_day"} - set(raw))
        if missing:
            raise ValueError(f"{path}: missing field(s) {missing}")
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {unknown}; known: {sorted(names)}")
        if raw["format_version"] not in READ_VERSIONS:
            raise ValueError(
                f"{path}: format_version {raw['format_version']!r}, this mmctr reads {list(READ_VERSIONS)}"
            )
        if raw["format_version"] == 1 and "features" in raw:
            raise ValueError(f"{path}: format_version 1 has no 'features'; declare format_version {FORMAT_VERSION}")
        if "features" in raw:
            raw["features"] = FeatureSpec.from_dict(raw["features"], str(path))
        elif raw["format_version"] != 1:  # world_spec() would apply, and every check would name its columns, not the log's
            raise ValueError(
                f"{path}: no 'features'; a format_version {raw['format_version']} manifest declares its feature spec "
                f"(which columns are the user, item, label, day and features: README, \"Bring your own log\")"
            )
        nullable = ("test_day", "image_size")  # null: the default (last_day; no images)
        for name in ("first_day", "last_day", "max_history_len", "seed", *nullable):
            if name in raw and not (raw[name] is None and name in nullable) and (
                    not isinstance(raw[name], int) or isinstance(raw[name], bool)):
                raise ValueError(f"{path}: {name} must be an integer, got {raw[name]!r}")
        m = Manifest(**raw)
        if m.max_history_len < 1:
            raise ValueError(f"{path}: max_history_len must be >= 1, got {m.max_history_len}")
        if not m.first_day <= m.test_day <= m.last_day:
            raise ValueError(f"{path}: test_day {m.test_day} outside the days [{m.first_day}, {m.last_day}]")
        return m


def table_files(directory: Path, table: str) -> list[Path]:
    """The Parquet files of ``table`` in ``directory``, in read order.

    Every file named ``*.parquet`` under ``directory/table``, at any depth, so
    partition folders (``impressions/day=6/part-0.parquet``) are read, never
    skipped; folders whose names end in ``.parquet`` (Spark writes those) are
    folders, not files, and are searched like any other. Symlinked folders are
    followed, each real folder once. The order is the sorted paths relative to
    ``directory/table`` (compared folder by folder, as ``Path`` sorts): the
    same on every machine and run, and for a flat folder the sorted file names.
    A folder name is not data: ``day=6`` adds no column (each file must hold
    its own; ``mmctr validate`` refuses one that does not, naming it).

    Returns:
        list[Path]: ``directory/table/<relative path>`` per file; empty when the
        folder is absent or holds no ``*.parquet`` file at any depth.

    Raises:
        KeyError: ``table`` is not one of ``TABLES``.

    Example::

        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("b.parquet", "day=6/part-0.parquet", "a.parquet", "day=6/notes.txt"):
        ...     (root / "impressions" / name).parent.mkdir(parents=True, exist_ok=True)
        ...     (root / "impressions" / name).touch()
        >>> [p.relative_to(root / "impressions").as_posix() for p in table_files(root, "impressions")]
        ['a.parquet', 'b.parquet', 'day=6/part-0.parquet']
    """
    if table not in TABLES:
        raise KeyError(f"unknown table {table!r}; tables are {sorted(TABLES)}")
    top = Path(directory) / table
    found: list[Path] = []
    seen: set[str] = set()  # real folders walked: a symlink loop or a second link to a folder reads it once
    for folder, subfolders, names in os.walk(top, followlinks=True):
        subfolders.sort()  # walk order, hence which link to a folder is kept, is the same every run
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        found += [Path(folder) / n for n in names if n.endswith(".parquet")]
    return sorted(found, key=lambda p: p.relative_to(top).parts)


def read_table_file(path: Path, columns: list[str] | None = None, filters: list | None = None) -> pa.Table:
    """One file of :func:`table_files`, read as it is: its own columns only, whatever folder holds it.

    ``pq.read_table(path)`` treats ``name=value`` folders above ``path`` as
    Hive partitions: under ``impressions/day=6/`` it adds a ``day`` column
    and, as the file has its own ``day``, fails ("Unable to merge: Field day
    has incompatible types"); under ``region=eu/`` it adds a ``region``
    column. This reads with ``partitioning=None``: folder names are not data.

    Args:
        path (Path): a Parquet file.
        columns (list[str] | None): the columns to read; ``None`` = all.
        filters (list | None): row filters on the file's columns (``pq.read_table``'s).

    Raises:
        ValueError: naming ``path``: not readable, or a column it lacks.

    Example::

        >>> import tempfile, pyarrow.parquet as pq
        >>> f = Path(tempfile.mkdtemp()) / "day=6" / "part-0.parquet"
        >>> f.parent.mkdir()
        >>> pq.write_table(pa.table({"day": pa.array([6], pa.int32()), "label": [1.0]}), f)
        >>> read_table_file(f, ["label"], [("day", "=", 6)]).column_names
        ['label']
    """
    try:
        return pq.read_table(path, columns=columns, filters=filters, partitioning=None)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: {e}") from e


def read_table_files(paths: Sequence[Path], columns: list[str] | None = None, filters: list | None = None,
                     ids: Sequence[str] = ()) -> pa.Table:
    """Files of one table (:func:`read_table_file` each) as one table, in the order given.

    Files of a real log differ in ways ``validate`` and the reader accept: a
    label stored as ``int8`` in one and ``float`` in another, a column
    ``not null`` in one file only. Their columns are unified as pyarrow's
    permissive promotion does (``pa.concat_tables(promote_options="permissive")``:
    the wider numeric type, nullable where any file is).

    Args:
        paths (Sequence[Path]): the files, e.g. ``table_files(world, "impressions")``.
        columns (list[str] | None): the columns to read; ``None`` = all.
        filters (list | None): row filters on the files' columns.
        ids (Sequence[str]): ID columns (integers, or lists of them, such as a history): never
            promoted to floats, which would lose the low bits of a 64-bit ID.

    Returns:
        pa.Table: their rows, file after file (no columns when ``paths`` is empty and ``columns`` None).

    Raises:
        ValueError: naming a file that cannot be read, the first file whose columns cannot be
            unified with the files before it (e.g. uint64 IDs past int64 beside int64 ones), or
            the first file that stores an ID column as floats beside integer files.

    Example::

        >>> import tempfile, pyarrow.parquet as pq
        >>> d = Path(tempfile.mkdtemp())
        >>> pq.write_table(pa.table({"label": pa.array([1.0], pa.float32())}), d / "a.parquet")
        >>> pq.write_table(pa.table({"label": pa.array([0], pa.int8())}), d / "b.parquet")
        >>> t = read_table_files([d / "a.parquet", d / "b.parquet"])
        >>> str(t.schema.field("label").type), t["label"].to_pylist()
        ('float', [1.0, 0.0])
    """
    parts = [read_table_file(path, columns=columns, filters=filters) for path in paths]
    if not parts:
        return pa.table({c: pa.array([], pa.null()) for c in columns or []})
    try:
        table = pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        for i in range(1, len(parts)):  # the first file that does not unify with those before it
            try:
                pa.concat_tables(parts[: i + 1], promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
                raise ValueError(f"{paths[i]}: its columns do not unify with {paths[0]}'s ({e})") from e
        raise
    for name in ids:
        if name in table.column_names and _floating(table.schema.field(name).type):
            where = next((p for p, t in zip(paths, parts) if _floating(t.schema.field(name).type)), paths[0])
            raise ValueError(f"{where}: column {name!r} holds IDs as floats ({table.schema.field(name).type} after "
                             "unifying the files); store IDs as integers")
    return table


def _floating(kind: pa.DataType) -> bool:
    """Whether ``kind`` is a floating-point type, or a list of them."""
    while pa.types.is_list(kind) or pa.types.is_large_list(kind):
        kind = kind.value_type
    return pa.types.is_floating(kind)


GROWING_FIELDS = ("last_day", "test_day", "counts", "id_ranges", "extra")  # change as days land in a log


def schema_sha(directory: Path) -> str:
    """A dataset's schema identity: the SHA-256 of its parsed manifest without ``GROWING_FIELDS``, first 16 hex digits.

    What stays when a day lands in a log (``last_day``, ``test_day``, the
    row ``counts``, identity tables' ``id_ranges`` and the free ``extra``
    notes change): the format, ``first_day``, the feature spec, the history
    length, the image size, the preset and seed. Computed from the parsed
    manifest, so rewriting ``manifest.json`` with other whitespace or key
    order keeps it. Run folders record it (``world_schema_sha``); a run is
    scored or retrained on a world of its schema whose days it trained on
    still hold the rows it trained on (``recsys.train.world_check``).

    Raises:
        FileNotFoundError, ValueError: as :meth:`Manifest.read`.

    Example::

        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> Manifest(format_version=2, first_day=0, last_day=3).write(d)
        >>> before = schema_sha(d)
        >>> Manifest(format_version=2, first_day=0, last_day=4, counts={"impressions": 9}).write(d)
        >>> schema_sha(d) == before
        True
    """
    manifest = Manifest.read(directory)
    raw = asdict(manifest)
    raw["features"] = manifest.features.to_dict()
    kept = {k: v for k, v in raw.items() if k not in GROWING_FIELDS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def manifest_sha(directory: Path) -> str:
    """A dataset's identity: the SHA-256 of its ``manifest.json`` bytes, first 16 hex digits.

    Run folders record it (``world_manifest_sha``) and evaluation checks a run
    against the world it scores with it.

    Raises:
        FileNotFoundError: ``directory`` holds no ``manifest.json``.
    """
    return hashlib.sha256((Path(directory) / MANIFEST).read_bytes()).hexdigest()[:16]
