"""MovieLens-100k as a CTR log: RecBole's ``ml-100k`` atomic files written as a dataset of the public format.

The data: 100,000 ratings (1-5 stars) of 1,682 movies by 943 users, each
user with at least 20 ratings, collected by GroupLens from September 1997 to
April 1998 (F. Maxwell Harper and Joseph A. Konstan, "The MovieLens
Datasets: History and Context", ACM Transactions on Interactive Intelligent
Systems 5(4), 2015). RecBole ships it inside its wheel as atomic files
(``recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}``;
``recsys/world/atomic.py`` reads that format), so ``pip install --no-deps
recbole==1.2.1`` brings a real public log with no download at run time.
:func:`default_source` finds the folder without importing recbole.

The conversion, as a ranking team would turn ratings into a click log:

* **Impressions**: every rating is one; label = rating >= 4 (:data:`CLICK_RATING`,
  "clicked"). The rating and timestamp are kept as columns the spec ignores.
* **Days: a per-user time split.** Each user's ratings are ordered by
  (timestamp, item_id) (ties in time broken by the item ID); the k-th
  (0-based) of the user's n ratings gets day ``floor(days * k / n)``. With
  ``days = 5``: days 0-3 hold each user's first 80 % (training; day 3 is
  the validation day for choosing configurations, and MAKE stage 1's), day 4
  the last 20 %: the manifest's ``test_day``. Days are ranks, not calendar
  days: a user's test ratings may be older than another user's training
  ones (README, "The test day": the leak every per-user split has).
* **History**: the items the user clicked strictly earlier in that order,
  newest last, the last :data:`MAX_HISTORY_LEN` (50, the manifest's
  ``max_history_len``); each position carries its item's category
  (``history_side``), so DIN attends (movie, category) against the target's.
  A test-day impression's history holds the user's earlier test-day clicks
  too, as a live log's would.
* **Features**: users' ``age_bucket`` (MovieLens-1M's age groups,
  :data:`AGE_EDGES`), ``gender`` and ``occupation``; items' ``category``
  (the movie's first genre; RecBole lists genres in MovieLens's genre
  order; none: ``unknown``, MovieLens's own genre for it) and
  ``release_bucket`` (:data:`YEAR_EDGES`; 0 when the year is not four digits:
  RecBole's file has ``unkonwn`` for movie 267 and ``V`` for movie 1412);
  the history length (log1p). The title is the item's text content
  (``features.content = ["title"]``); no images, no search log.
* **IDs**: MovieLens's own (users 1..943, items 1..1682): small dense ints,
  so ``identity`` tables with ``id_ranges`` = largest ID + 1 (row 0 unused).
  Gender, occupation and genre are coded in sorted order; the manifest's
  ``extra.vocabularies`` lists each code's value.
* **Nothing lost**: impressions written = rating rows read (checked after
  writing, from the Parquet footers); every user and item of the source
  files has its row. A malformed value (an ID that is not a whole number, a
  rating not in [0.5, 5], a rated user or item missing from its file, an ID
  listed twice, a blank title or token) raises :class:`~recsys.world.atomic.AtomicError`
  naming the file, row and column.

Example::

    >>> import tempfile
    >>> src = Path(tempfile.mkdtemp())
    >>> _ = (src / INTER).write_text("user_id:token\\titem_id:token\\trating:float\\ttimestamp:float\\n"
    ...     + "".join(f"1\\t{i}\\t{1 + i % 5}\\t{100 + i}\\n" for i in range(1, 6)) + "2\\t3\\t5\\t50\\n")
    >>> _ = (src / ITEM).write_text("item_id:token\\tmovie_title:token_seq\\trelease_year:token\\tclass:token_seq\\n"
    ...     + "".join(f"{i}\\tMovie {i}\\t199{i}\\tDrama Comedy\\n" for i in range(1, 6)))
    >>> _ = (src / USER).write_text("user_id:token\\tage:token\\tgender:token\\toccupation:token\\tzip_code:token\\n"
    ...     "1\\t24\\tM\\twriter\\t85711\\n2\\t53\\tF\\tother\\t94043\\n")
    >>> m = convert_ml100k(src / "world", source=src, days=5)
    >>> m.counts, m.test_day, m.id_ranges["item_id"]
    ({'users': 2, 'items': 5, 'impressions': 6}, 4, 6)
    >>> im = pa.concat_tables(pq.read_table(f) for f in sorted((src / "world/impressions").glob("*.parquet")))
    >>> im.select(["day", "user_id", "item_id", "label"]).to_pylist()[-1], im["history_item_ids"][-1].as_py()
    ({'day': 4, 'user_id': 1, 'item_id': 5, 'label': 0.0}, [3, 4])
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.data.content import ContentError, check_text
from recsys.data.schema import FORMAT_VERSION, Manifest, table_files
from recsys.data.spec import Dense, FeatureSpec, Sparse, Table
from recsys.data.vectors import first_repeat
from recsys.settings import setting
from recsys.world.atomic import AtomicTable, floats, ints, read_atomic, texts

INTER, ITEM, USER = "ml-100k.inter", "ml-100k.item", "ml-100k.user"
RECBOLE_DIR = ("dataset_example", "ml-100k")  # inside the installed recbole package
CLICK_RATING = 4.0  # label 1.0 when rating >= this (4 or 5 stars)
RATING_RANGE = (0.5, 5.0)  # MovieLens stars; a rating outside is refused
MAX_HISTORY_LEN = 50  # L: clicked items kept per impression (the manifest's max_history_len)
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's age groups: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+
YEAR_EDGES = (1930, 1940, 1950, 1960, 1970, 1980, 1990, 2000)  # release_bucket 1 + bin; 0 = unknown year
UNKNOWN_GENRE = "unknown"  # MovieLens's genre for a movie without one
CITATION = ("F. Maxwell Harper and Joseph A. Konstan. The MovieLens Datasets: History and Context. "
            "ACM Transactions on Interactive Intelligent Systems 5(4), 2015")  # fmt: skip


@dataclass(frozen=True)
class Ml100kJob:
    """One ``mmctr import-ml100k`` (each field carries its help: the command's flags derive from them)."""

    out: Path = setting(help="output dataset directory (replaced if it holds a dataset)")
    source: Path | None = setting(
        None, "folder of ml-100k.{inter,item,user} (default: the one in the installed recbole wheel)")
    days: int = setting(5, "days of the per-user time split; the last is the test day, the one before it validation")


@dataclass(frozen=True)
class Ratings:
    """The rating rows of ``ml-100k.inter``, in file order (R rows)."""

    user_ids: np.ndarray  # (R,) int64
    item_ids: np.ndarray  # (R,) int64
    ratings: np.ndarray  # (R,) float64, stars
    timestamps: np.ndarray  # (R,) float64, Unix seconds


def default_source() -> Path:
    """The ``ml-100k`` folder of the installed recbole wheel, found without importing recbole.

    Raises:
        FileNotFoundError: recbole is not installed (``make real-data`` installs it).
    """
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("recbole is not installed: `pip install --no-deps recbole==1.2.1` (or `make real-data`), "
                                "or pass --source DIR holding ml-100k.{inter,item,user}")  # fmt: skip
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*RECBOLE_DIR)


def _vocabulary(values: list[str]) -> tuple[list[str], np.ndarray]:
    """(sorted distinct values, int32 code of each value)."""
    vocab = sorted(set(values))
    code = {v: i for i, v in enumerate(vocab)}
    return vocab, np.array([code[v] for v in values], dtype=np.int32)


def _unique_ids(table: AtomicTable, name: str) -> np.ndarray:
    ids = ints(table, name)
    row = first_repeat(ids)
    if row is not None:
        raise table.error(name, row, f"{name} {ids[row]} listed twice; expected one row per {name.removesuffix('_id')}")
    return ids


def read_users(path: Path) -> tuple[pa.Table, dict[str, list[str]]]:
    """``ml-100k.user`` as the ``users/`` table, and the vocabularies of its coded columns.

    Returns:
        tuple[pa.Table, dict[str, list[str]]]: columns ``user_id`` int64,
        ``age_bucket``, ``gender``, ``occupation`` int32 codes, ``age`` int32
        (years) and ``zip_code`` string (kept, unused); ``{"gender": [...],
        "occupation": [...]}``, code i meaning value i.

    Raises:
        AtomicError: a missing field, an ID or age that is not a whole number,
            a user listed twice, a blank gender or occupation.
    """
    t = read_atomic(path, ("user_id", "age", "gender", "occupation", "zip_code"))
    ids, age = _unique_ids(t, "user_id"), ints(t, "age")
    genders, gender = _vocabulary(texts(t, "gender"))
    occupations, occupation = _vocabulary(texts(t, "occupation"))
    table = pa.table({
        "user_id": pa.array(ids, pa.int64()),
        "age_bucket": pa.array(np.digitize(age, AGE_EDGES), pa.int32()),
        "gender": pa.array(gender, pa.int32()),
        "occupation": pa.array(occupation, pa.int32()),
        "age": pa.array(age, pa.int32()),
        "zip_code": pa.array(texts(t, "zip_code", blank=True), pa.string()),
    })  # fmt: skip
    return table, {"gender": genders, "occupation": occupations}


def release_bucket(year: str) -> int:
    """The release-year bucket of a ``release_year`` token: 0 unless four digits, else 1 + its :data:`YEAR_EDGES` bin.

    Example::

        >>> [release_bucket(y) for y in ("1922", "1930", "1995", "2003", "unkonwn", "V")]
        [1, 2, 8, 9, 0, 0]
    """
    year = year.strip()
    if len(year) != 4 or not (year.isascii() and year.isdigit()):
        return 0
    return 1 + int(np.digitize(int(year), YEAR_EDGES))


def read_items(path: Path) -> tuple[pa.Table, dict[str, list[str]]]:
    """``ml-100k.item`` as the ``items/`` table, and the category vocabulary.

    Returns:
        tuple[pa.Table, dict[str, list[str]]]: columns ``item_id`` int64,
        ``category`` int32 (the first genre's code), ``release_bucket`` int32
        (:func:`release_bucket`), ``title`` string, ``genres`` and
        ``release_year`` strings as written (kept, unused); ``{"category": [...]}``:
        every genre named, sorted (``unknown`` among them when a movie has none).

    Raises:
        AtomicError: a missing field, an ID that is not a whole number, an item
            listed twice, a blank title (``recsys.data.content.check_text``,
            the rule ``mmctr validate`` applies).
    """
    t = read_atomic(path, ("item_id", "movie_title", "release_year", "class"))
    ids = _unique_ids(t, "item_id")
    titles = texts(t, "movie_title", blank=True)
    for row, title in enumerate(titles):
        try:
            check_text(title, "title")
        except ContentError as e:
            raise t.error("movie_title", row, f"{e} (item {ids[row]}; every item needs a title)") from None
    genres = [g.split() for g in texts(t, "class", blank=True)]
    first = [g[0] if g else UNKNOWN_GENRE for g in genres]
    vocab = sorted({*first, *(x for g in genres for x in g)})
    code = {v: i for i, v in enumerate(vocab)}
    years = texts(t, "release_year", blank=True)
    table = pa.table({
        "item_id": pa.array(ids, pa.int64()),
        "category": pa.array([code[g] for g in first], pa.int32()),
        "release_bucket": pa.array([release_bucket(y) for y in years], pa.int32()),
        "title": pa.array(titles, pa.string()),
        "genres": pa.array([" ".join(g) for g in genres], pa.string()),
        "release_year": pa.array(years, pa.string()),
    })  # fmt: skip
    return table, {"category": vocab}


def read_ratings(path: Path, user_ids: np.ndarray, item_ids: np.ndarray) -> Ratings:
    """``ml-100k.inter``'s rows, each checked against the users and items known.

    Args:
        path (Path): the ``.inter`` file.
        user_ids (np.ndarray): int64 (U,), the IDs of ``ml-100k.user``.
        item_ids (np.ndarray): int64 (I,), the IDs of ``ml-100k.item``.

    Raises:
        AtomicError: a missing field, an ID that is not a whole number or not
            in its file, a rating not a number in :data:`RATING_RANGE`, a
            timestamp not a finite number >= 0.
    """
    t = read_atomic(path, ("user_id", "item_id", "rating", "timestamp"))
    users, items, ratings, ts = ints(t, "user_id"), ints(t, "item_id"), floats(t, "rating"), floats(t, "timestamp")
    for name, ids, known, file in (("user_id", users, user_ids, USER), ("item_id", items, item_ids, ITEM)):
        missing = np.flatnonzero(~np.isin(ids, known))
        if len(missing):
            raise t.error(name, int(missing[0]), f"unknown {name} {ids[missing[0]]} (no row in {file})")
    for name, values, bad, expected in (
        ("rating", ratings, (ratings < RATING_RANGE[0]) | (ratings > RATING_RANGE[1]), f"stars in {list(RATING_RANGE)}"),
        ("timestamp", ts, ts < 0, "Unix seconds >= 0"),
    ):
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise t.error(name, row, f"{values[row]:g}, expected {expected}")
    return Ratings(users, items, ratings, ts)


def split_days(user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray, days: int) -> tuple[np.ndarray, np.ndarray]:
    """The per-user time split: each rating's day, and the rows in each user's order.

    Args:
        user_ids, item_ids (np.ndarray): int (R,).
        timestamps (np.ndarray): float (R,).
        days (int): D >= 2.

    Returns:
        tuple[np.ndarray, np.ndarray]: ``order``, int64 (R,): rows sorted by
        (user, timestamp, item, row); ``day``, int32 (R,) in row order: the
        k-th of a user's n rows in that order gets ``floor(D * k / n)``.

    Example::

        >>> order, day = split_days(np.array([7, 7, 7, 7, 7, 9]), np.array([5, 4, 3, 2, 1, 1]),
        ...                         np.array([1.0, 2.0, 2.0, 3.0, 4.0, 0.0]), days=5)
        >>> order.tolist(), day.tolist()  # rows 1 and 2 tie in time: item 3 (row 2) first
        ([0, 2, 1, 3, 4, 5], [0, 2, 1, 3, 4, 0])
    """
    if days < 2:
        raise ValueError(f"days must be >= 2 (training days and the test day), got {days}")
    n = len(user_ids)
    order = np.lexsort((np.arange(n), item_ids, timestamps, user_ids))
    sorted_users = user_ids[order]
    start = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]]) if n else np.zeros(0, np.int64)
    count = np.diff(np.r_[start, n])
    k = np.arange(n) - np.repeat(start, count)  # rank within the user
    day = np.empty(n, dtype=np.int32)
    day[order] = (days * k) // np.repeat(count, count)
    return order.astype(np.int64), day


def click_histories(user_ids: np.ndarray, item_ids: np.ndarray, clicked: np.ndarray, order: np.ndarray, cap: int) -> list[list[int]]:
    """Per row, the items its user clicked strictly earlier in ``order``, newest last, the last ``cap``.

    Args:
        user_ids, item_ids (np.ndarray): int (R,).
        clicked (np.ndarray): bool (R,).
        order (np.ndarray): int (R,), the rows in each user's order (:func:`split_days`).
        cap (int): L, the longest history kept.

    Returns:
        list[list[int]]: R histories, in row order.

    Example::

        >>> click_histories(np.array([1, 1, 1, 2]), np.array([10, 11, 12, 10]),
        ...                 np.array([True, False, True, True]), np.arange(4), cap=50)
        [[], [10], [10], []]
    """
    out: list[list[int]] = [[] for _ in range(len(order))]
    user, history = None, []
    for row in order.tolist():
        if user_ids[row] != user:
            user, history = user_ids[row], []
        out[row] = history[-cap:]
        if clicked[row]:
            history.append(int(item_ids[row]))
    return out


def ml100k_spec() -> FeatureSpec:
    """The feature spec of the converted log (module docstring): identity tables, ``category`` as history side."""
    return FeatureSpec(
        user_key="user_id", item_key="item_id", label="label", day="day",
        history="history_item_ids", history_side=("category",),
        sparse=(Sparse("user_id", "impressions"), Sparse("item_id", "impressions"), Sparse("age_bucket", "users"),
                Sparse("gender", "users"), Sparse("occupation", "users"), Sparse("category", "items"),
                Sparse("release_bucket", "items")),
        dense=(Dense("history_len", "history", "log1p"),),
        tables=tuple(Table(n) for n in ("user_id", "item_id", "age_bucket", "gender", "occupation", "category",
                                        "release_bucket")),
        content=("title",),
    )  # fmt: skip


def impressions_table(r: Ratings, days: int, cap: int = MAX_HISTORY_LEN) -> pa.Table:
    """Every rating as an impression (module docstring), sorted by (day, timestamp, user, item).

    Returns:
        pa.Table: R rows: ``day`` int32, ``user_id``, ``item_id`` int64,
        ``history_item_ids`` list<int64>, ``label`` float32, and ``rating``
        float32, ``timestamp`` float64 (kept, unused).
    """
    order, day = split_days(r.user_ids, r.item_ids, r.timestamps, days)
    clicked = r.ratings >= CLICK_RATING
    history = click_histories(r.user_ids, r.item_ids, clicked, order, cap)
    rows = np.lexsort((r.item_ids, r.user_ids, r.timestamps, day))
    return pa.table({
        "day": pa.array(day[rows], pa.int32()),
        "user_id": pa.array(r.user_ids[rows], pa.int64()),
        "item_id": pa.array(r.item_ids[rows], pa.int64()),
        "history_item_ids": pa.array([history[i] for i in rows.tolist()], pa.list_(pa.int64())),
        "label": pa.array(clicked[rows].astype(np.float32), pa.float32()),
        "rating": pa.array(r.ratings[rows], pa.float32()),
        "timestamp": pa.array(r.timestamps[rows], pa.float64()),
    })  # fmt: skip


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _replaceable(out: Path) -> None:
    """Refuses to replace ``out`` unless it is absent, empty or a dataset (holds ``manifest.json``)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())):
        raise FileExistsError(f"{out}: exists and is not a dataset directory; not replacing it")


def convert_ml100k(out: Path, source: Path | None = None, days: int = 5) -> Manifest:
    """Writes the ml-100k atomic files of ``source`` as a dataset in ``out`` (module docstring) and returns its manifest.

    Args:
        out (Path): the dataset directory; replaced when it holds a dataset
            (written to ``OUT.partial`` first, then renamed).
        source (Path | None): the folder of ``ml-100k.{inter,item,user}``;
            None: :func:`default_source`.
        days (int): D >= 2 days of the per-user split; day D - 1 is the test day.

    Raises:
        AtomicError: a malformed source row (file, row and column named).
        FileNotFoundError: a source file missing, or recbole not installed.
        FileExistsError: ``out`` exists and is not a dataset.
        ValueError: ``days`` < 2, no rating, or no user with ``days`` ratings
            (the test day would be empty).
        RuntimeError: the impressions written differ in number from the ratings read.
    """
    out, source = Path(out), Path(source) if source is not None else default_source()
    if days < 2:
        raise ValueError(f"days must be >= 2 (training days and the test day), got {days}")
    _replaceable(out)
    users, user_vocab = read_users(source / USER)
    items, item_vocab = read_items(source / ITEM)
    ratings = read_ratings(source / INTER, users["user_id"].to_numpy(), items["item_id"].to_numpy())
    if not len(ratings.user_ids):
        raise ValueError(f"{source / INTER}: no rating rows")
    impressions = impressions_table(ratings, days)
    per_day = np.bincount(impressions["day"].to_numpy(), minlength=days)
    if per_day[-1] == 0:
        raise ValueError(f"{source / INTER}: no user has {days} ratings, so the test day {days - 1} would be empty; "
                         "use fewer --days")  # fmt: skip
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in ("users", "items", "impressions"):
        (tmp / name).mkdir(parents=True)
    pq.write_table(users, tmp / "users" / "part-00000.parquet")
    pq.write_table(items, tmp / "items" / "part-00000.parquet")
    day_col = impressions["day"].to_numpy()
    for d in np.flatnonzero(per_day).tolist():
        rows = np.flatnonzero(day_col == d)
        pq.write_table(impressions.slice(int(rows[0]), len(rows)), tmp / "impressions" / f"day-{d:04d}-part-00000.parquet")
    written = sum(pq.ParquetFile(f).metadata.num_rows for f in table_files(tmp, "impressions"))
    if written != len(ratings.user_ids):  # nothing lost, nothing counted twice
        raise RuntimeError(f"{tmp}: wrote {written} impressions for {len(ratings.user_ids)} rating rows")
    unknown_year = items.filter(pc.equal(items["release_bucket"], 0))["item_id"].to_pylist()
    manifest = Manifest(
        format_version=FORMAT_VERSION, first_day=0, last_day=days - 1, test_day=days - 1,
        counts={"users": users.num_rows, "items": items.num_rows, "impressions": written},
        id_ranges={"user_id": int(users["user_id"].to_numpy().max()) + 1, "item_id": int(items["item_id"].to_numpy().max()) + 1,
                   "age_bucket": len(AGE_EDGES) + 1, "gender": len(user_vocab["gender"]),
                   "occupation": len(user_vocab["occupation"]), "category": len(item_vocab["category"]),
                   "release_bucket": len(YEAR_EDGES) + 2},
        max_history_len=MAX_HISTORY_LEN, features=ml100k_spec(), preset="ml-100k", seed=0,
        extra={
            "source": "MovieLens-100k, RecBole atomic files (recbole/dataset_example/ml-100k)",
            "citation": CITATION,
            "files_sha256": {name: _sha256(source / name) for name in (INTER, ITEM, USER)},
            "label": f"rating >= {CLICK_RATING:g}",
            "split": f"per user, ratings ordered by (timestamp, item_id): the k-th of n on day floor({days} * k / n); "
                     f"test day {days - 1}, validation day {days - 2}",
            "vocabularies": {**user_vocab, **item_vocab},
            "age_edges": list(AGE_EDGES), "release_year_edges": list(YEAR_EDGES),
            "unknown_release_year": unknown_year,
        },
    )  # fmt: skip
    manifest.write(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return manifest


def format_conversion(world: Path) -> str:
    """Counts of a converted dataset, for the command's output: users, items, and per day impressions,
    click rate, users and items shown."""
    m = Manifest.read(world)
    days = pa.concat_tables(pq.read_table(f, columns=["day", "label", "user_id", "item_id"])
                            for f in table_files(world, "impressions"))  # fmt: skip
    day, label = days["day"].to_numpy(), days["label"].to_numpy()
    lines = [f"ml-100k -> {world}: {m.counts['users']} users, {m.counts['items']} items, {len(day)} impressions "
             f"(click rate {label.mean():.2%}); test day {m.test_day}"]  # fmt: skip
    for d in range(m.first_day, m.last_day + 1):
        on = day == d
        users, items = len(np.unique(days["user_id"].to_numpy()[on])), len(np.unique(days["item_id"].to_numpy()[on]))
        rate = f"{label[on].mean():.2%}" if on.any() else "-"
        lines.append(f"  day {d}: {int(on.sum()):>7,} impressions, click rate {rate}, {users} users, {items} items")
    return "\n".join(lines)

