"""The pre-training content cache: read back equal to a fresh decode and tokenization, never stale, never half written."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pretrain.config import TowerConfig
from pretrain.content_cache import KEY_FILE, item_content_and_tokens
from pretrain.data import load_item_content
from pretrain.towers import build_tokenizer
from recsys.data.schema import table_files


def _fresh(world: Path, tower: TowerConfig) -> tuple:
    items = load_item_content(world)
    return items, None if items.titles is None else build_tokenizer(tower)(items.titles)


def _assert_same(got: tuple, expected: tuple) -> None:
    (items, tokens), (ref, ref_tokens) = got, expected
    np.testing.assert_array_equal(items.item_ids, ref.item_ids)
    assert (items.images is None) == (ref.images is None) and (items.titles is None) == (ref.titles is None)
    if ref.images is not None:
        np.testing.assert_array_equal(items.images, ref.images)
        assert items.images.dtype == np.uint8 and items.images.flags.writeable  # torch.from_numpy takes it as is
    if ref.titles is not None:
        assert items.titles == ref.titles
        torch.testing.assert_close(tokens, ref_tokens, rtol=0, atol=0)


@pytest.mark.parametrize("content", [("image", "title"), ("title",), ("image",)])
def test_read_back_equals_a_fresh_decode(content: tuple[str, ...], content_world: Callable[..., Path],
                                         tmp_path: Path) -> None:
    world, tower, cache = content_world(content), TowerConfig(), tmp_path / "cache"
    expected = _fresh(world, tower)
    _assert_same(item_content_and_tokens(world, tower, cache), expected)  # made
    (entry,) = [p for p in cache.iterdir()]
    assert (entry / KEY_FILE).is_file() and not [p for p in cache.iterdir() if p.name.startswith(".")]
    _assert_same(item_content_and_tokens(world, tower, cache), expected)  # read
    assert len(list(cache.iterdir())) == 1


def test_a_rewritten_items_file_or_another_tower_makes_another_entry(tiny_world: Path, tmp_path: Path) -> None:
    world, cache, tower = tmp_path / "w", tmp_path / "cache", TowerConfig()
    shutil.copytree(tiny_world, world)
    item_content_and_tokens(world, tower, cache)
    file = table_files(world, "items")[0]
    t = pq.read_table(file)
    titles = t["title"].to_pylist()
    titles[0] = "a title changed after the cache was made"
    pq.write_table(t.set_column(t.schema.get_field_index("title"), "title", [titles]), file)
    items, tokens = item_content_and_tokens(world, tower, cache)
    assert items.titles == _fresh(world, tower)[0].titles and "changed after" in " ".join(items.titles)
    narrow = TowerConfig(context_length=8)
    _assert_same(item_content_and_tokens(world, narrow, cache), _fresh(world, narrow))
    assert item_content_and_tokens(world, narrow, cache)[1].shape[1] == 8
    assert len(list(cache.iterdir())) == 3  # the first entry, the rewritten file's, the narrow tower's


def test_an_entry_without_its_key_is_made_again(tiny_world: Path, tmp_path: Path) -> None:
    cache, tower = tmp_path / "cache", TowerConfig()
    expected = _fresh(tiny_world, tower)
    item_content_and_tokens(tiny_world, tower, cache)
    (entry,) = list(cache.iterdir())
    (entry / KEY_FILE).unlink()  # a folder left without its key (written last) is not an entry
    np.save(entry / "tokens.npy", np.zeros((1, 1), dtype=np.int64))
    _assert_same(item_content_and_tokens(tiny_world, tower, cache), expected)  # computed, the folder replaced
    _assert_same(item_content_and_tokens(tiny_world, tower, cache), expected)  # read from the new entry
    assert (entry / KEY_FILE).is_file() and np.load(entry / "tokens.npy").shape == expected[1].shape
    (entry / KEY_FILE).write_text(json.dumps({"not": "the key"}))  # a key of other content is not read either
    _assert_same(item_content_and_tokens(tiny_world, tower, cache), expected)
    assert len(list(cache.iterdir())) == 1
