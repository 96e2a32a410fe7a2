"""The columns a feature spec requires of each table of a dataset, and their types.

``mmctr validate`` checks a dataset against these (``recsys/data/validate.py``).
Each :class:`Column` names its column, its kind (a key of :data:`TYPES`),
the declaration that requires it (for messages), the embedding table that
bounds its IDs and the side table that must hold a row for each of them:

* ``impressions``: the day, the label, the user and item keys, the history
  (if declared; a list of item IDs, each with its ``items`` row), every
  sparse and dense feature of source ``impressions``;
* ``users`` (read only when a feature comes from it, :func:`needs_users`):
  the user key (unique) and its sparse and dense features;
* ``items``: the item key (unique), its sparse and dense features, and the
  declared content (``title`` a string, ``image`` bytes);
* ``searches`` (the search log, optional): ``session_id``, ``day``,
  ``purchased_item_id``, ``clicked_item_ids`` and the query columns of the
  declared content (``query_text`` with ``title``, ``query_image`` with
  ``image``); ``shown_item_ids`` and ``user_id`` where present.

Example::

    >>> from recsys.data.spec import world_spec
    >>> columns = layout(world_spec(content=("title",)), ("items", "impressions"))
    >>> [(c.name, c.kind) for c in columns["items"]]  # doctest: +NORMALIZE_WHITESPACE
    [('item_id', 'id'), ('shop_id', 'id'), ('brand_id', 'id'), ('category_id', 'id'),
     ('price_bucket', 'id'), ('title', 'text')]
    >>> history = columns["impressions"][4]
    >>> history.name, history.kind, history.table, history.ref, history.why
    ('history_item_ids', 'ids', 'item_id', 'items', 'features.history')
    >>> needs_users(world_spec())
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from recsys.data.spec import FeatureSpec


def _ids_type(t: pa.DataType) -> bool:
    return t in (pa.int32(), pa.int64())


def _list_of_ids(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and _ids_type(t.value_type)


# Column kind -> (accepts an Arrow type, what is expected, for messages).
TYPES: dict[str, tuple[Callable[[pa.DataType], bool], str]] = {
    "id": (_ids_type, "int32 or int64"),
    "ids": (_list_of_ids, "a list of int32 or int64"),
    "int": (pa.types.is_signed_integer, "a signed integer"),
    # any integer, float or bool, as real logs store clicks (int8, int32, bool, float32); its values must be
    # exactly 0 or 1 (side.label_fault); read as float32
    "label": (lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t),
              "an integer, float or bool"),
    "dense": (lambda t: pa.types.is_integer(t) or pa.types.is_floating(t), "a number (integer or float)"),
    "text": (lambda t: t in (pa.string(), pa.large_string()), "string"),
    "image": (lambda t: t in (pa.binary(), pa.large_binary()), "binary"),
}


@dataclass(frozen=True)
class Column:
    """A column of a table, and what it must hold (:func:`layout` derives them from a spec)."""

    name: str
    kind: str  # a key of TYPES: id, ids (a list of IDs), int, label, dense, text, image
    why: str  # the declaration requiring it, for messages: "features.label"
    table: str | None = None  # embedding table bounding its IDs (kinds id, ids)
    ref: str | None = None  # side table ("users", "items") that must hold a row per ID
    key: bool = False  # the side table's own key: unique; the IDs `ref` looks up
    optional: bool = False  # checked where present


def needs_users(spec: FeatureSpec) -> bool:
    """Whether a feature comes from ``users/`` (else it is not read)."""
    return any(f.source == "users" for f in (*spec.sparse, *spec.dense))


def layout(spec: FeatureSpec, tables: tuple[str, ...]) -> dict[str, tuple[Column, ...]]:
    """The columns of each table in ``tables``, from ``spec`` (module docstring).

    Args:
        spec (FeatureSpec): the dataset's feature spec.
        tables (tuple[str, ...]): the tables read; an impression's user needs
            a row only when ``users`` is among them.

    Returns:
        dict[str, tuple[Column, ...]]: per table of ``tables``, its columns.

    Raises:
        KeyError: a table that is not one of ``schema.TABLES``.
    """
    users, s = "users" in tables, spec

    def sparse(source: str) -> list[Column]:
        def why(name: str) -> str:
            side = ", a history_side feature" if s.history is not None and name in s.history_side else ""
            return f"features.sparse '{name}' (source {source}{side})"

        return [Column(f.name, "id", why(f.name), s.table_of(f.name))
                for f in s.sparse if f.source == source and f.name not in (s.user_key, s.item_key)]  # fmt: skip

    def dense(source: str) -> list[Column]:
        return [Column(f.name, "dense", f"features.dense '{f.name}' (source {source})")
                for f in s.dense if f.source == source]  # fmt: skip

    def key(name: str, ref: str | None, is_key: bool = False) -> Column:
        what = "user_key" if name == s.user_key else "item_key"
        return Column(name, "id", f"features.{what}", s.table_of(name), ref, is_key)

    item_table, user_table = s.table_of(s.item_key), s.table_of(s.user_key)
    out: dict[str, list[Column]] = {
        "users": [key(s.user_key, "users", True), *sparse("users"), *dense("users")],
        "items": [key(s.item_key, "items", True), *sparse("items"), *dense("items")],
        "impressions": [
            Column(s.day, "int", "features.day"),
            Column(s.label, "label", "features.label"),
            key(s.user_key, "users" if users else None),
            key(s.item_key, "items"),
            *([Column(s.history, "ids", "features.history", item_table, "items")] if s.history else []),
            *sparse("impressions"),
            *dense("impressions"),
        ],
        "searches": [
            Column("session_id", "int", "the search log"),
            Column("day", "int", "the search log"),
            Column("purchased_item_id", "id", "the search log", item_table, "items"),
            Column("clicked_item_ids", "ids", "the search log", item_table, "items"),
            Column("shown_item_ids", "ids", "the search log", item_table, "items", optional=True),
            Column("user_id", "id", "the search log", user_table, "users" if users else None, optional=True),
        ],
    }
    for content, table, query in (("title", "text", "query_text"), ("image", "image", "query_image")):
        if content in s.content:
            out["items"].append(Column(content, table, f"features.content '{content}'"))
            out["searches"].append(Column(query, table, f"the search log with features.content '{content}'"))
    return {t: tuple(out[t]) for t in tables}
