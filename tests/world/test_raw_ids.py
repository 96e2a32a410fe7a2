"""World formats (``mmctr world --raw-ids --content ... --no-searches``): the same world, written in another shape."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys.data.schema import TABLES, TRUTH_DIR, Manifest, table_files
from recsys.data.spec import world_spec
from recsys.world import generate
from recsys.world.config import PRESETS, WorldFormat
from recsys.world.generate import generate_world
from recsys.world.summary import summarize

TINY = PRESETS["tiny"]
KIND_COUNT = {"user_id": TINY.n_users, "item_id": TINY.n_items, "shop_id": TINY.n_shops, "brand_id": TINY.n_brands}


def _read(directory: Path, table: str, columns: list[str] | None = None) -> pa.Table:
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in table_files(directory, table)])


def _truth(directory: Path, name: str) -> pa.Table:
    files = sorted((directory / TRUTH_DIR / name).glob("*.parquet")) if name == "impressions" else [directory / TRUTH_DIR / f"{name}.parquet"]
    return pa.concat_tables([pq.read_table(f) for f in files])


def _flat(table: pa.Table, column: str) -> np.ndarray:
    """The IDs of an ID or list-of-IDs column, flattened."""
    col = table[column].combine_chunks()
    return (col.flatten() if pa.types.is_list(col.type) else col).to_numpy()


def _columns(directory: Path, table: str) -> set[str]:
    return {n for f in table_files(directory, table) for n in pq.read_schema(f).names}


@pytest.fixture(scope="module")
def raw_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world of seed 0 (as ``tiny_world``), with raw IDs."""
    out = tmp_path_factory.mktemp("raw") / "tiny"
    generate_world(out, "tiny", 0, fmt=WorldFormat(raw_ids=True))
    return out


def test_raw_ids_are_sparse_64_bit_and_unique_per_kind(raw_world: Path) -> None:
    items, users = _read(raw_world, "items"), _read(raw_world, "users")
    for table, kind in ((users, "user_id"), (items, "item_id")):
        ids = table[kind].to_numpy()
        assert len(np.unique(ids)) == len(ids) == KIND_COUNT[kind]  # one row per ID
    for kind in KIND_COUNT:
        ids = np.unique((users if kind == "user_id" else items)[kind].to_numpy())
        assert ids.dtype == np.int64 and ids.min() >= 1 and ids.max() <= 2**62, kind
        assert ids.max() > 2**40, kind  # not dense
        assert not np.array_equal(ids, np.arange(len(ids))), kind


def test_every_id_joins_exactly_one_row(raw_world: Path) -> None:
    items, users = _read(raw_world, "items"), _read(raw_world, "users")
    imp, searches = _read(raw_world, "impressions"), _read(raw_world, "searches")
    uniq_users = pa.table({"user_id": users["user_id"]})
    uniq_items = pa.table({"item_id": items["item_id"]})
    # Inner joins against the entity tables keep every row once: every ID resolves, none twice.
    for table, column, to in (
        (imp, "user_id", uniq_users), (imp, "item_id", uniq_items), (imp, "history_item_ids", uniq_items),
        (searches, "user_id", uniq_users), (searches, "purchased_item_id", uniq_items),
        (searches, "shown_item_ids", uniq_items), (searches, "clicked_item_ids", uniq_items),
    ):  # fmt: skip
        key = to.column_names[0]
        ids = pa.table({key: _flat(table, column)})
        assert ids.join(to, key).num_rows == ids.num_rows > 0, column
    # truth/ names the same users and items, row for row.
    assert _truth(raw_world, "items")["item_id"].equals(items["item_id"])
    assert _truth(raw_world, "users")["user_id"].equals(users["user_id"])


def test_the_raw_world_is_the_dense_world_renamed(raw_world: Path, tiny_world: Path) -> None:
    dense_items, raw_items = _read(tiny_world, "items"), _read(raw_world, "items")
    dense_users, raw_users = _read(tiny_world, "users"), _read(raw_world, "users")
    # The maps dense -> raw, read from the entity tables row by row, are injective functions.
    maps = {}
    for kind, dense, raw in (
        ("item_id", dense_items, raw_items), ("shop_id", dense_items, raw_items),
        ("brand_id", dense_items, raw_items), ("user_id", dense_users, raw_users),
    ):  # fmt: skip
        pairs = set(zip(dense[kind].to_pylist(), raw[kind].to_pylist()))
        d, r = zip(*pairs)
        assert len(set(d)) == len(set(r)) == len(pairs), kind  # one raw per dense and one dense per raw
        maps[kind] = dict(pairs)
    assert len(maps["item_id"]) == TINY.n_items and len(maps["user_id"]) == TINY.n_users
    # Every other column of items and users is the dense world's, content included.
    for dense, raw, renamed in ((dense_items, raw_items, ("item_id", "shop_id", "brand_id")), (dense_users, raw_users, ("user_id",))):
        for name in dense.column_names:
            if name not in renamed:
                assert dense[name].equals(raw[name]), name
    # Same impressions, IDs renamed through the same maps.
    dense_imp, raw_imp = _read(tiny_world, "impressions"), _read(raw_world, "impressions")
    for name in ("day", "position", "label"):
        assert dense_imp[name].equals(raw_imp[name]), name
    for column, kind in (("user_id", "user_id"), ("item_id", "item_id"), ("history_item_ids", "item_id")):
        renamed = np.array([maps[kind][x] for x in _flat(dense_imp, column).tolist()], dtype=np.int64)
        np.testing.assert_array_equal(renamed, _flat(raw_imp, column), err_msg=column)
    assert pc.list_value_length(dense_imp["history_item_ids"]).equals(pc.list_value_length(raw_imp["history_item_ids"]))
    dense_s, raw_s = _read(tiny_world, "searches"), _read(raw_world, "searches")
    for column, kind in (("user_id", "user_id"), ("purchased_item_id", "item_id"), ("shown_item_ids", "item_id"), ("clicked_item_ids", "item_id")):
        renamed = np.array([maps[kind][x] for x in _flat(dense_s, column).tolist()], dtype=np.int64)
        np.testing.assert_array_equal(renamed, _flat(raw_s, column), err_msg=column)
    assert dense_s["query_text"].equals(raw_s["query_text"])
    assert _truth(tiny_world, "impressions").equals(_truth(raw_world, "impressions"))


def test_the_raw_manifest_declares_managed_tables(raw_world: Path, tiny_world: Path, tiny_manifest: Manifest) -> None:
    m = Manifest.read(raw_world)
    capacity = {kind: n + 1 for kind, n in KIND_COUNT.items()}  # every ID, plus the unseen-ID row
    assert m.features == world_spec(("title", "image"), raw_ids=True, capacity=capacity)
    assert {t.name: t.rows for t in m.features.managed_tables()} == capacity
    assert all(t.ids == "managed" for t in m.features.managed_tables())
    assert m.id_ranges == {k: v for k, v in tiny_manifest.id_ranges.items() if k not in KIND_COUNT}
    assert m.counts == tiny_manifest.counts and m.test_day == m.last_day and m.image_size == TINY.image_size
    # The summary reads raw IDs: the same numbers as the dense world's.
    assert summarize(raw_world) == summarize(tiny_world)


def test_text_world_has_no_image_and_renders_none(
    tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("an image was rendered for --content text")

    monkeypatch.setattr(generate, "render_images", refuse)
    monkeypatch.setattr(generate, "encode_png", refuse)
    m = generate_world(tmp_path / "text", "tiny", 0, fmt=WorldFormat(content="text"))
    for table in TABLES:
        assert not {n for n in _columns(tmp_path / "text", table) if "image" in n}, table
    assert m.features.content == ("title",) and m.image_size is None
    assert Manifest.read(tmp_path / "text") == m
    # The titles and queries are the full world's: rendering's draws were still made.
    assert _read(tiny_world, "items", ["title"]).equals(_read(tmp_path / "text", "items", ["title"]))
    assert _read(tiny_world, "searches", ["query_text"]).equals(_read(tmp_path / "text", "searches", ["query_text"]))


def test_image_world_without_searches(tiny_world: Path, tmp_path: Path) -> None:
    out = tmp_path / "image"
    m = generate_world(out, "tiny", 0, fmt=WorldFormat(content="image", searches=False))
    assert not (out / "searches").exists() and "searches" not in m.counts
    assert sorted(p.name for p in out.iterdir()) == ["impressions", "items", "manifest.json", "truth", "users"]
    assert "title" not in _columns(out, "items")
    assert m.features.content == ("image",) and m.image_size == TINY.image_size
    assert Manifest.read(out) == m
    assert _read(tiny_world, "items", ["image"]).equals(_read(out, "items", ["image"]))
    assert _read(tiny_world, "impressions").equals(_read(out, "impressions"))
    assert summarize(out)["searches"] == 0


def _fingerprint(directory: Path, table: str, columns: list[str]) -> tuple[int, str]:
    """Rows and a hash of the values of ``columns`` (list offsets included; PNG bytes left out: zlib's to decide)."""
    h = hashlib.sha256()
    t = _read(directory, table, columns)
    for name in columns:
        col = t[name].combine_chunks()
        if pa.types.is_list(col.type):
            h.update(np.asarray(col.offsets).astype(np.int64).tobytes())
            col = col.flatten()
        if pa.types.is_string(col.type):
            for v in col.to_pylist():
                h.update(v.encode() + b"\0")
        else:
            h.update(np.asarray(col).tobytes())
    return t.num_rows, h.hexdigest()[:16]


def test_default_world_is_unchanged(tiny_world: Path) -> None:
    # Fingerprints of the tiny world of seed 0 as written before world formats existed (commit ec8f6e2).
    want = {
        "impressions": (["day", "user_id", "item_id", "history_item_ids", "position", "label"], (20000, "a6177944cf50a5c2")),
        "items": (["item_id", "category_id", "shop_id", "brand_id", "price_bucket", "created_day", "title"], (1500, "7f9657a8160269d1")),
        "searches": (
            ["session_id", "day", "user_id", "query_text", "shown_item_ids", "clicked_item_ids", "purchased_item_id"],
            (1200, "3fc25eab79da9c42"),
        ),
        "users": (["user_id", "age_bucket", "gender", "city_id"], (400, "5f14c537fb2b084c")),
    }
    for table, (columns, expected) in want.items():
        assert _fingerprint(tiny_world, table, columns) == expected, table
    m = Manifest.read(tiny_world)
    assert m.features == world_spec() and m.test_day == m.last_day and m.image_size == TINY.image_size
    assert m.id_ranges["item_id"] == TINY.n_items


def test_world_flags_build_the_format() -> None:
    from recsys.cli import build_parser
    from recsys.settings import settings_from_args

    parser = build_parser({"world"})
    args = parser.parse_args(["world", "--out", "w", "--raw-ids", "--content", "text", "--no-searches"])
    assert settings_from_args(WorldFormat, args) == WorldFormat(raw_ids=True, content="text", searches=False)
    assert settings_from_args(WorldFormat, parser.parse_args(["world", "--out", "w"])) == WorldFormat()
    with pytest.raises(SystemExit):
        parser.parse_args(["world", "--out", "w", "--content", "video"])
