"""The feature spec: which columns of a dataset are features, of what kind, in which embedding table.

One declaration per dataset, stored in its ``manifest.json`` under
``"features"`` (``recsys.data.schema.Manifest.features``). The reader's
``KeyedJaggedTensor`` keys, the dense columns, the ``EmbeddingBagCollection``
tables, the ID model's target/history groups, ``mmctr validate`` and the
exported ranker all derive from it. A format-1 manifest (no ``"features"``)
reads as :func:`world_spec`, the spec the world generator writes.

Like TorchEasyRec's feature configs and DeepCTR's feature columns, a feature
names its column, its source table and its kind:

* ``sparse``: single-valued categorical IDs (int64), one per impression,
  from ``impressions`` or joined from ``users`` (by the user key) or
  ``items`` (by the item key), each embedded in a ``table``;
* ``history``: the behaviour sequence, a list column of item IDs in
  ``impressions`` (most recent last); it shares the target item's table, and
  each position also carries the item features listed in ``history_side``,
  looked up from ``items`` by the reader (DIN's target item and category
  against the history items and their categories);
* ``dense``: float columns (``impressions``, ``users`` or ``items``), or the
  history length (``source: history``), with a ``transform``.

Tables say how IDs become rows (``ids``):

* ``identity``: IDs are rows ``0 <= id < rows`` (``rows`` defaults to the
  manifest's ``id_ranges[table]``); small vocabularies;
* ``managed``: any int64 ID; TorchRec's ``MCHManagedCollisionModule``
  (sorted zero-collision hashing) admits IDs into ``rows`` slots by
  ``eviction`` policy (``lfu`` or ``distance_lfu``) every
  ``eviction_interval`` training steps, those that pass ``admission``
  (``all``, or a count above the round's mean: ``average``, ``dynamic``);
  the last slot holds unseen IDs;
* ``hash``: any int64 ID, row ``id mod rows`` (collisions share a row).

Example::

    >>> spec = world_spec()
    >>> spec.sparse_keys()[:3], spec.history_keys()
    (('user_id', 'age_bucket', 'gender'), ('history_item_ids',))
    >>> spec.table_of("history_item_ids"), spec.dense_names()
    ('item_id', ('position', 'history_len'))
    >>> raw = spec.to_dict()
    >>> FeatureSpec.from_dict(raw, "doc") == spec
    True
    >>> FeatureSpec.from_dict({**raw, "label": 3}, "manifest.json")
    Traceback (most recent call last):
        ...
    ValueError: manifest.json: features.label must be a string, got 3
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

SOURCES: tuple[str, ...] = ("impressions", "users", "items")
DENSE_SOURCES: tuple[str, ...] = (*SOURCES, "history")
ID_MAPPINGS: tuple[str, ...] = ("identity", "managed", "hash")
EVICTIONS: tuple[str, ...] = ("lfu", "distance_lfu")
ADMISSIONS: tuple[str, ...] = ("all", "average", "dynamic")  # managed tables' admission filters (recsys.models.remap)
TRANSFORMS: tuple[str, ...] = ("none", "log1p", "standardize", "log1p_standardize")
CONTENT: tuple[str, ...] = ("title", "image")
HISTORY_PREFIX = "history_"  # KJT key of a history side feature: history_<item feature>


@dataclass(frozen=True)
class Table:
    """One embedding table (fields inline); features naming it share its rows."""

    name: str
    ids: str = "identity"  # how IDs map to rows: ID_MAPPINGS
    rows: int | None = None  # identity: None = the manifest's id_ranges[name]; managed, hash: required
    dim: int | None = None  # embedding width; None = the model's embedding_dim
    eviction: str = "lfu"  # managed: EVICTIONS
    eviction_interval: int = 1  # managed: training steps between admission rounds
    admission: str = "all"  # managed: ADMISSIONS; which IDs of a round may take a slot (count above the mean, ...)

    def check(self, where: str) -> None:
        _choice(self.ids, ID_MAPPINGS, f"{where}.ids")
        _choice(self.eviction, EVICTIONS, f"{where}.eviction")
        _choice(self.admission, ADMISSIONS, f"{where}.admission")
        if self.ids != "identity" and self.rows is None:
            raise ValueError(f"{where}: a {self.ids!r} table needs 'rows' (its capacity)")
        for name in ("rows", "dim", "eviction_interval"):
            value = getattr(self, name)
            if value is not None and (not _int(value) or value < 1 + (name == "rows" and self.ids == "managed")):
                raise ValueError(f"{where}.{name} must be an integer >= {2 if name == 'rows' and self.ids == 'managed' else 1}, got {value!r}")


@dataclass(frozen=True)
class Sparse:
    """A single-valued categorical feature: column ``name`` of ``source``, embedded in ``table``."""

    name: str
    source: str  # SOURCES
    table: str = ""  # "" = a table named as the feature


@dataclass(frozen=True)
class Dense:
    """A float feature: column ``name`` of ``source`` (``history``: the history length), transformed."""

    name: str
    source: str  # DENSE_SOURCES
    transform: str = "none"  # TRANSFORMS; standardize uses the training days' mean and std


@dataclass(frozen=True)
class FeatureSpec:
    """Every feature of a dataset (module docstring); ``manifest.json``'s ``"features"``.

    Args:
        user_key (str): column of ``impressions`` and ``users`` naming the user
            (GAUC groups by it).
        item_key (str): column of ``impressions`` and ``items`` naming the shown
            item (the target of target attention; item vectors are keyed by it).
        label (str): float column of ``impressions``, 1.0 = click.
        day (str): int column of ``impressions``; days are the unit of splitting.
        history (str | None): list column of item IDs in ``impressions``, oldest
            first; ``None``: no behaviour sequence.
        history_side (tuple[str, ...]): ``items`` features (sparse features of
            source ``items``) each history position carries, as the target does.
        sparse (tuple[Sparse, ...]): the single-valued features, in KJT key order;
            the user and item keys are among them.
        dense (tuple[Dense, ...]): the dense features, in column order.
        tables (tuple[Table, ...]): the embedding tables the features name.
        content (tuple[str, ...]): the item content present: ``title``, ``image``, both or none.
    """

    user_key: str = "user_id"
    item_key: str = "item_id"
    label: str = "label"
    day: str = "day"
    history: str | None = "history_item_ids"
    history_side: tuple[str, ...] = ()
    sparse: tuple[Sparse, ...] = ()
    dense: tuple[Dense, ...] = ()
    tables: tuple[Table, ...] = ()
    content: tuple[str, ...] = CONTENT

    def __post_init__(self) -> None:
        self.check("features")

    # -- derived names -------------------------------------------------------

    def sparse_keys(self) -> tuple[str, ...]:
        """Single-valued KJT keys, in order (each impression holds one ID of each)."""
        return tuple(f.name for f in self.sparse)

    def history_keys(self) -> tuple[str, ...]:
        """Jagged KJT keys after the single ones: the history, then ``history_<side>`` per side feature."""
        if self.history is None:
            return ()
        return (self.history, *(HISTORY_PREFIX + s for s in self.history_side))

    def kjt_keys(self) -> tuple[str, ...]:
        """All KJT keys of a batch, in order."""
        return self.sparse_keys() + self.history_keys()

    def dense_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.dense)

    def table_of(self, key: str) -> str:
        """The embedding table of a KJT key (history keys share their target feature's table)."""
        if key == self.history:
            return self.table_of(self.item_key)
        if self.history is not None and key.startswith(HISTORY_PREFIX) and key[len(HISTORY_PREFIX) :] in self.history_side:
            return self.table_of(key[len(HISTORY_PREFIX) :])
        for f in self.sparse:
            if f.name == key:
                return f.table or f.name
        raise KeyError(f"{key!r} is not a sparse feature of this spec; keys are {list(self.kjt_keys())}")

    def table(self, name: str) -> Table:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(f"no table {name!r}; tables are {[t.name for t in self.tables]}")

    def sources(self, source: str) -> tuple[str, ...]:
        """Sparse feature names joined from ``source`` (``users``/``items``), or read from ``impressions``."""
        return tuple(f.name for f in self.sparse if f.source == source and f.name not in (self.user_key, self.item_key))

    def dense_from(self, source: str) -> tuple[str, ...]:
        return tuple(f.name for f in self.dense if f.source == source)

    def target_group(self) -> tuple[str, ...]:
        """The target side of target attention: the item key, then its ``history_side`` features
        (without a history, the item alone, attending over nothing)."""
        return (self.item_key, *self.history_side)

    def pooled(self) -> tuple[str, ...]:
        """Sparse features embedded and pooled on their own (not part of the target group)."""
        group = set(self.target_group())
        return tuple(f.name for f in self.sparse if f.name not in group)

    def managed_tables(self) -> tuple[Table, ...]:
        """Tables of raw IDs (``managed`` and ``hash``), remapped by the model (``recsys.models.remap``)."""
        return tuple(t for t in self.tables if t.ids != "identity")

    def table_rows(self, id_ranges: dict[str, int], cap: int | None = None) -> dict[str, int]:
        """Rows of every table: ``Table.rows``, else (identity) the manifest's ``id_ranges[name]``.

        Args:
            id_ranges (dict[str, int]): ``Manifest.id_ranges``.
            cap (int | None): an upper bound on identity tables' rows (IDs past it
                are then hashed or refused by the reader: ``TrainConfig.max_table_rows``).

        Raises:
            ValueError: an identity table with neither ``rows`` nor a range, or < 1 row.
        """
        rows: dict[str, int] = {}
        for t in self.tables:
            n = t.rows if t.rows is not None else id_ranges.get(t.name)
            if n is None:
                raise ValueError(f"table {t.name!r} (identity) needs 'rows' in the spec or an id_ranges entry in the manifest")
            if int(n) < 1:
                raise ValueError(f"table {t.name!r} has {n} rows; every embedding table needs at least one")
            rows[t.name] = int(n) if cap is None or t.ids != "identity" else min(int(n), cap)
        return rows

    # -- checks and I/O ------------------------------------------------------

    def check(self, where: str) -> None:
        """Raises ValueError naming ``where`` and the field when the spec is inconsistent."""
        for name in ("user_key", "item_key", "label", "day"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{where}.{name} must be a string, got {getattr(self, name)!r}")
        names = [f.name for f in self.sparse]
        _unique(names, f"{where}.sparse")
        _unique([f.name for f in self.dense], f"{where}.dense")
        _unique([t.name for t in self.tables], f"{where}.tables")
        for key, source in ((self.user_key, "impressions"), (self.item_key, "impressions")):
            if not any(f.name == key and f.source == source for f in self.sparse):
                raise ValueError(f"{where}.sparse must list {key!r} (source impressions): the user and item keys are features")
        tables = {t.name for t in self.tables}
        for i, f in enumerate(self.sparse):
            _choice(f.source, SOURCES, f"{where}.sparse[{i}].source")
            if (f.table or f.name) not in tables:
                raise ValueError(f"{where}.sparse[{i}] ({f.name}) names table {f.table or f.name!r}, not in {where}.tables")
        for i, f in enumerate(self.dense):
            _choice(f.source, DENSE_SOURCES, f"{where}.dense[{i}].source")
            _choice(f.transform, TRANSFORMS, f"{where}.dense[{i}].transform")
            if f.source == "history" and self.history is None:
                raise ValueError(f"{where}.dense[{i}] ({f.name}) reads the history, but the spec has none")
        for i, t in enumerate(self.tables):
            t.check(f"{where}.tables[{i}]")
        items = {f.name for f in self.sparse if f.source == "items"}
        _unique(list(self.history_side), f"{where}.history_side")
        for s in self.history_side:
            if s not in items:
                raise ValueError(f"{where}.history_side names {s!r}, not a sparse feature of source items")
        if self.history_side and self.history is None:
            raise ValueError(f"{where}.history_side needs a history (features.history)")
        if self.user_key == self.item_key:
            raise ValueError(f"{where}: user_key and item_key are both {self.user_key!r}")
        clash = sorted(set(self.history_keys()) & set(names))
        if clash:
            raise ValueError(f"{where}: {clash} name both a sparse feature and a history key (history_<side feature>)")
        for c in self.content:
            _choice(c, CONTENT, f"{where}.content")
        if self.history is not None and self.history in names:
            raise ValueError(f"{where}.history {self.history!r} is also a sparse feature")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``manifest.json``'s ``"features"`` (defaults of tables left out)."""
        raw = json.loads(json.dumps(asdict(self)))  # tuples become lists
        raw["tables"] = [{"name": t["name"]} | {k: v for k, v in t.items() if v != _TABLE_DEFAULTS[k]} for t in raw["tables"]]
        raw["sparse"] = [{k: v for k, v in f.items() if k != "table" or v} for f in raw["sparse"]]
        return raw

    @staticmethod
    def from_dict(raw: Any, where: str) -> "FeatureSpec":
        """The spec of a JSON object (``manifest.json``'s ``"features"``).

        Raises:
            ValueError: naming ``where`` and the field: an unknown or mistyped key,
                an unknown source, kind or table, a duplicated name.
        """
        raw = _object(raw, f"{where}: features")
        values: dict[str, Any] = {}
        for f in fields(FeatureSpec):
            if f.name not in raw:
                continue
            value = raw[f.name]
            if f.name in ("sparse", "dense", "tables"):
                cls = {"sparse": Sparse, "dense": Dense, "tables": Table}[f.name]
                if not isinstance(value, list):
                    raise ValueError(f"{where}: features.{f.name} must be a list, got {value!r}")
                value = tuple(_record(cls, v, f"{where}: features.{f.name}[{i}]") for i, v in enumerate(value))
            elif f.name in ("history_side", "content"):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"{where}: features.{f.name} must be a list of strings, got {value!r}")
                value = tuple(value)
            elif f.name == "history":
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"{where}: features.history must be a string or null, got {value!r}")
            elif not isinstance(value, str):
                raise ValueError(f"{where}: features.{f.name} must be a string, got {value!r}")
            values[f.name] = value
        unknown = sorted(set(raw) - {f.name for f in fields(FeatureSpec)})
        if unknown:
            raise ValueError(f"{where}: features has unknown key(s) {unknown}; known: {[f.name for f in fields(FeatureSpec)]}")
        try:
            return FeatureSpec(**values)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


_TABLE_DEFAULTS = {f.name: f.default for f in fields(Table)}


def world_spec(
    content: tuple[str, ...] = CONTENT, raw_ids: bool = False, capacity: dict[str, int] | None = None
) -> FeatureSpec:
    """The spec of the world generator's datasets (and of every format-1 dataset).

    Args:
        content (tuple[str, ...]): the item content written.
        raw_ids (bool): user, item, shop and brand IDs are sparse 64-bit
            (``mmctr world --raw-ids``): their tables are ``managed``, of
            ``capacity[table]`` rows.
        capacity (dict[str, int] | None): rows of the managed tables (needed with ``raw_ids``).
    """
    managed = ("user_id", "item_id", "shop_id", "brand_id") if raw_ids else ()
    if raw_ids and not capacity:
        raise ValueError("world_spec(raw_ids=True) needs the managed tables' capacity")
    tables = tuple(
        Table(name, ids="managed", rows=int(capacity[name])) if name in managed else Table(name)  # type: ignore[index]
        for name in ("user_id", "age_bucket", "gender", "city_id", "item_id", "shop_id", "brand_id", "category_id", "price_bucket")
    )
    return FeatureSpec(
        sparse=(
            Sparse("user_id", "impressions"),
            Sparse("age_bucket", "users"),
            Sparse("gender", "users"),
            Sparse("city_id", "users"),
            Sparse("item_id", "impressions"),
            Sparse("shop_id", "items"),
            Sparse("brand_id", "items"),
            Sparse("category_id", "items"),
            Sparse("price_bucket", "items"),
        ),
        dense=(Dense("position", "impressions"), Dense("history_len", "history", "log1p")),
        tables=tables,
        content=tuple(content),
    )


def _record(cls: type, raw: Any, where: str) -> Any:
    raw = _object(raw, where)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    missing = sorted(n for n, f in known.items() if f.default is MISSING and n not in raw)
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    return cls(**raw)


def _object(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(raw).__name__}")
    return raw


def _choice(value: Any, choices: tuple[str, ...], where: str) -> None:
    if value not in choices:
        raise ValueError(f"{where} is {value!r}; expected one of {list(choices)}")


def _unique(names: list[str], where: str) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{where} lists {n!r} twice")
        seen.add(n)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


