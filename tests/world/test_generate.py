"""The world generator: determinism, schema, and the statistics later stages rely on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from recsys.data.schema import TABLES, TRUTH_DIR, Manifest, table_files
from recsys.world.catalog import leaf_nouns
from recsys.world.config import PRESETS
from recsys.world.generate import generate_world
from recsys.world.render import decode_png
from recsys.world.summary import summarize
from recsys.world.titles import brand_name


def _read(directory: Path, table: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in table_files(directory, table)])


def _read_truth_impressions(directory: Path) -> pa.Table:
    files = sorted((directory / TRUTH_DIR / "impressions").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def _assert_same_world(a: Path, b: Path) -> None:
    for table in TABLES:
        fa, fb = table_files(a, table), table_files(b, table)
        assert [f.name for f in fa] == [f.name for f in fb]
        for x, y in zip(fa, fb):
            assert pq.read_table(x).equals(pq.read_table(y)), f"{table}/{x.name} differs"
    assert json.loads((a / "manifest.json").read_text()) == json.loads((b / "manifest.json").read_text())


def test_same_seed_same_world_whatever_the_worker_count(tiny_world: Path, tmp_path: Path) -> None:
    # Two worker processes render the chunks in another order: same bytes.
    cfg = dataclasses.replace(PRESETS["tiny"], workers=2, items_per_file=400)
    generate_world(tmp_path / "again", cfg, seed=0)
    cfg_one = dataclasses.replace(PRESETS["tiny"], items_per_file=400)
    generate_world(tmp_path / "one", cfg_one, seed=0)
    _assert_same_world(tmp_path / "again", tmp_path / "one")
    # Behaviour does not depend on how item content is chunked.
    assert _read(tiny_world, "impressions").equals(_read(tmp_path / "one", "impressions"))


def test_other_seed_other_world(tiny_world: Path, tmp_path: Path) -> None:
    generate_world(tmp_path / "s1", "tiny", seed=1)
    a, b = _read(tiny_world, "impressions"), _read(tmp_path / "s1", "impressions")
    assert not a.equals(b)


def test_files_match_the_public_schema_exactly(tiny_world: Path, tiny_manifest: Manifest) -> None:
    for table, schema in TABLES.items():
        files = table_files(tiny_world, table)
        assert files, table
        rows = 0
        for f in files:
            got = pq.read_schema(f)
            assert got.remove_metadata().equals(schema), f"{table}: {got} != {schema}"
            rows += pq.ParquetFile(f).metadata.num_rows
        assert rows == tiny_manifest.counts[table]
    # The manifest round-trips and names every ID kind the schema bounds.
    assert Manifest.read(tiny_world) == tiny_manifest
    assert tiny_manifest.id_ranges["item_id"] == tiny_manifest.counts["items"]


def test_manifest_round_trip_and_errors(tmp_path: Path, tiny_manifest: Manifest) -> None:
    tiny_manifest.write(tmp_path)
    assert Manifest.read(tmp_path) == tiny_manifest
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="format_version"):
        Manifest.read(tmp_path)
    raw["format_version"] = 1  # format 1 has no feature spec
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="format_version 1 has no 'features'"):
        Manifest.read(tmp_path)
    raw["format_version"] = 2
    features = raw.pop("features")  # format 2 without a spec would read as the generated world's: refused
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"manifest.json: no 'features'; a format_version 2 manifest declares"):
        Manifest.read(tmp_path)
    raw["features"] = features
    del raw["first_day"]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="first_day"):
        Manifest.read(tmp_path)


def test_hidden_truth_only_under_truth(tiny_world: Path) -> None:
    public = {c for schema in TABLES.values() for c in schema.names}
    for table in TABLES:
        for f in table_files(tiny_world, table):
            assert set(pq.read_schema(f).names) <= public
    truth = _read_truth_impressions(tiny_world)
    assert truth.num_rows == _read(tiny_world, "impressions").num_rows
    assert {"p_click", "semantic_logit", "id_logit"} <= set(truth.column_names)
    items = pq.read_table(tiny_world / TRUTH_DIR / "items.parquet")
    sem = np.stack(items["semantic"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(sem, axis=1), 1.0, atol=1e-5)


def test_click_rate_semantic_signal_and_cold_start(tiny_world: Path, tiny_manifest: Manifest) -> None:
    imp = _read(tiny_world, "impressions")
    truth = _read_truth_impressions(tiny_world)
    label = imp["label"].to_numpy()
    # Stated ranges (README): click rate 5-15 %.
    assert 0.05 <= label.mean() <= 0.15
    # The true click probability ranks clicks well, and its semantic part alone
    # carries signal: what multimodal features can learn.
    assert roc_auc_score(label, truth["p_click"].to_numpy()) >= 0.7
    assert roc_auc_score(label, truth["semantic_logit"].to_numpy()) >= 0.6
    assert roc_auc_score(label, truth["id_logit"].to_numpy()) >= 0.6
    s = summarize(tiny_world)
    assert 0.05 <= s["test_day_new_item_share"] <= 0.20
    assert s["items_created_on_test_day"] > 0


def test_popularity_has_a_long_tail(tiny_world: Path) -> None:
    imp = _read(tiny_world, "impressions")
    freq = np.bincount(imp["item_id"].to_numpy())
    freq = np.sort(freq[freq > 0])[::-1]
    top = freq[: max(1, len(freq) // 100)].sum() / freq.sum()
    assert top > 0.1  # the top 1 % of items get > 10 % of impressions
    assert np.median(freq) <= 0.2 * freq[0]  # a typical item is far below the head
    assert (freq <= 3).mean() > 0.2  # and many items are rarely seen


def test_histories_are_past_clicks_of_the_user(tiny_world: Path, tiny_manifest: Manifest) -> None:
    imp = _read(tiny_world, "impressions")
    items = _read(tiny_world, "items")
    created = np.zeros(tiny_manifest.id_ranges["item_id"], dtype=np.int64)
    created[items["item_id"].to_numpy()] = items["created_day"].to_numpy()
    day = imp["day"].to_numpy()
    users = imp["user_id"].to_numpy()
    hist = imp["history_item_ids"].to_pylist()
    label = imp["label"].to_numpy()
    item = imp["item_id"].to_numpy()
    assert max(len(h) for h in hist) <= tiny_manifest.max_history_len
    for d, h in zip(day, hist):
        assert all(created[x] < d for x in h) or all(created[x] <= d - 1 for x in h)
    # A user's history on day d+1 ends with their clicks of day d, in order.
    first, second = tiny_manifest.first_day, tiny_manifest.first_day + 1
    for u in np.unique(users[(day == first) & (label == 1)])[:50]:
        clicks = item[(users == u) & (day == first) & (label == 1)].tolist()
        later = [h for h, uu, d in zip(hist, users, day) if uu == u and d == second]
        for h in later:
            want = clicks[-tiny_manifest.max_history_len :]
            assert h[len(h) - len(want) :] == want


def test_items_have_content_from_their_semantics(tiny_world: Path, tiny_manifest: Manifest) -> None:
    items = _read(tiny_world, "items")
    nouns = leaf_nouns()
    titles = items["title"].to_pylist()
    for cat, brand, title in zip(items["category_id"].to_pylist(), items["brand_id"].to_pylist(), titles):
        words = title.split()
        assert any(n in words for n in nouns[cat]), title
        assert brand_name(brand) in words
    imgs = [decode_png(b) for b in items["image"].to_pylist()[:200]]
    assert all(im.shape == (tiny_manifest.image_size,) * 2 + (3,) for im in imgs)
    # Same category and colour look alike: nearer on average than other pairs.
    truth = pq.read_table(tiny_world / TRUTH_DIR / "items.parquet")
    key = np.array(items["category_id"].to_numpy()[:200]) * 100 + truth["colour"].to_numpy()[:200]
    flat = np.stack([im.astype(np.float32).ravel() / 255 for im in imgs])
    d = ((flat[:, None, :] - flat[None, :, :]) ** 2).mean(axis=2)
    same = key[:, None] == key[None, :]
    off = ~np.eye(len(key), dtype=bool)
    assert d[same & off].mean() < d[~same].mean()


def test_search_sessions_give_semantic_pairs(tiny_world: Path) -> None:
    s = _read(tiny_world, "searches")
    items = _read(tiny_world, "items")
    title = dict(zip(items["item_id"].to_pylist(), items["title"].to_pylist()))
    image = dict(zip(items["item_id"].to_pylist(), items["image"].to_pylist()))
    n_hard = 0
    for row in s.to_pylist():
        p = row["purchased_item_id"]
        assert p in row["shown_item_ids"]
        assert p not in row["clicked_item_ids"]
        assert set(row["clicked_item_ids"]) <= set(row["shown_item_ids"])
        assert len(set(row["shown_item_ids"])) == len(row["shown_item_ids"])
        assert row["query_text"] != title[p]
        assert row["query_image"] != image[p]
        assert decode_png(row["query_image"]).shape[2] == 3
        n_hard += len(row["clicked_item_ids"])
    assert n_hard > len(s) // 2


def test_unknown_preset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        generate_world(tmp_path / "x", "huge", 0)
