"""Pre-training data: pairs from searches, and clear errors on bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.schema import Manifest, table_files
from recsys.world.render import decode_png
from pretrain.data import DECODE_CHUNK, decode_images, load_item_content, load_search_pairs, split_heldout


@pytest.fixture(scope="module")
def content(tiny_world: Path):
    return load_item_content(tiny_world)


def test_items_and_pairs_match_the_tables(tiny_world: Path, tiny_manifest: Manifest, content) -> None:
    items = pa.concat_tables([pq.read_table(f) for f in table_files(tiny_world, "items")])
    assert content.item_ids.tolist() == sorted(items["item_id"].to_pylist())
    row = int(content.rows(np.array([17]))[0])
    src = items.filter(pa.compute.equal(items["item_id"], 17))
    np.testing.assert_array_equal(content.images[row], decode_png(src["image"][0].as_py()))
    assert content.titles[row] == src["title"][0].as_py()

    pairs = load_search_pairs(tiny_world, content)
    s = pa.concat_tables([pq.read_table(f) for f in table_files(tiny_world, "searches")])
    assert len(pairs) == s.num_rows
    np.testing.assert_array_equal(content.item_ids[pairs.purchased_rows], s["purchased_item_id"].to_numpy())
    for i, clicked in enumerate(s["clicked_item_ids"].to_pylist()):
        got = [int(content.item_ids[r]) for r in pairs.hard_rows[i] if r >= 0]
        assert got == clicked[:3]
    train, held = split_heldout(pairs, tiny_manifest.test_day)
    assert len(train) + len(held) == len(pairs) and len(held) > 0
    assert set(held.days.tolist()) == {tiny_manifest.test_day}


def _copy_with(world: Path, tmp: Path, table: str, edit) -> Path:  # noqa: ANN001
    out = tmp / "w"
    shutil.copytree(world, out)
    f = table_files(out, table)[0]
    t = pq.read_table(f)
    pq.write_table(edit(t), f)
    return out


def _set(t: pa.Table, column: str, row: int, value: object) -> pa.Table:
    values = t[column].to_pylist()
    values[row] = value
    i = t.schema.get_field_index(column)
    return t.set_column(i, t.schema.field(i), pa.array(values, type=t.schema.field(i).type))


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [("image", b"not a png", r"column 'image', row 3 \(item 3\): image does not decode"),
     ("title", "  ", r"column 'title', row 3 \(item 3\): title is blank")],
)
def test_items_without_image_or_title_are_named(tiny_world: Path, tmp_path: Path, column: str, value: object, message: str) -> None:
    world = _copy_with(tiny_world, tmp_path, "items", lambda t: _set(t, column, 3, value))
    with pytest.raises(ValueError, match=message):
        load_item_content(world)


def test_unknown_purchased_item_names_the_session(tiny_world: Path, tmp_path: Path, content) -> None:
    world = _copy_with(tiny_world, tmp_path, "searches", lambda t: _set(t, "purchased_item_id", 5, 10**9))
    sid = pq.read_table(table_files(world, "searches")[0])["session_id"][5].as_py()
    with pytest.raises(ValueError, match=f"session {sid}: purchased item 1000000000"):
        load_search_pairs(world, content)


def test_unknown_hard_negative_names_the_session(tiny_world: Path, tmp_path: Path, content) -> None:
    world = _copy_with(tiny_world, tmp_path, "searches", lambda t: _set(t, "clicked_item_ids", 2, [10**9]))
    sid = pq.read_table(table_files(world, "searches")[0])["session_id"][2].as_py()
    with pytest.raises(ValueError, match=f"session {sid}: clicked item 1000000000"):
        load_search_pairs(world, content)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_decode_images_equals_one_decode_per_image_and_names_the_first_bad_one(tiny_world: Path, workers: int) -> None:
    blobs = pq.read_table(table_files(tiny_world, "items")[0], columns=["image"])["image"].to_pylist()
    blobs = (blobs * (2 * DECODE_CHUNK // len(blobs) + 2))[: 2 * DECODE_CHUNK + 7]  # 3 chunks, the last short
    what = [f"blob {i}" for i in range(len(blobs))]
    got = decode_images(blobs, 64, what, workers)
    np.testing.assert_array_equal(got, np.stack([decode_png(b) for b in blobs]))
    bad = list(blobs)
    bad[2 * DECODE_CHUNK + 3], bad[DECODE_CHUNK + 5] = b"", b"not an image"  # a later chunk's fault too
    with pytest.raises(ValueError, match=rf"^blob {DECODE_CHUNK + 5}: "):
        decode_images(bad, 64, what, workers)
    assert decode_images([], 64, [], workers).shape == (0, 64, 64, 3)
