"""The items' decoded content and title tokens, kept on disk between the pre-training runs of one dataset.

Every ``mmctr pretrain`` starts by decoding every item image and BPE-tokenizing
every title (``load_item_content`` and open_clip's tokenizer): on the
``small`` world's 100k items, 34 s and 26 s of each rank's start, 1 thread.
CLIP and then SCL (``mmctr pipeline``) did it twice. With a cache folder
(``mmctr pretrain --content-cache DIR``), the first run writes

    DIR/<key>/key.json      what the entry was made from (below)
    DIR/<key>/item_ids.npy  (N,) int64, ascending
    DIR/<key>/images.npy    (N, H, W, 3) uint8 (items with images)
    DIR/<key>/titles.npy    (N,) unicode (items with titles)
    DIR/<key>/tokens.npy    (N, C) int64: the titles' tokens (``build_tokenizer(tower)``)

and a later run on the same items reads them (memory-mapped) instead. The
key holds the dataset's manifest SHA-256, every ``items/`` file's name, size
and modification time, the image side, the context length, the tokenizer and
open_clip's version: a changed or rewritten items file, another tower
config or another tokenizer makes another entry, never a stale read. An
entry is written to a temporary folder and renamed into place, so a killed
run leaves no half entry; processes that race write the same content and
the first rename wins (``mmctr pretrain`` has rank 0 make the entry while
the other ranks wait, then every rank reads it); a folder under the entry's
name without that key is replaced. The content rules are checked when an entry is made
(``load_item_content``); an entry holds only content that passed them.

Example::

    >>> import tempfile, pathlib
    >>> from recsys.world.generate import generate_world
    >>> from pretrain.config import TowerConfig
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> _ = generate_world(tmp / "w", "tiny", 0)
    >>> items, tokens = item_content_and_tokens(tmp / "w", TowerConfig(), tmp / "cache")  # made
    >>> again, same = item_content_and_tokens(tmp / "w", TowerConfig(), tmp / "cache")  # read
    >>> bool((same == tokens).all()), again.titles == items.titles, len(list((tmp / "cache").iterdir()))
    (True, True, 1)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from pretrain.config import TowerConfig
from pretrain.data import ItemContent, load_item_content
from pretrain.towers import TOKENIZER_MODEL, build_tokenizer
from recsys.data.schema import manifest_sha, table_files

KEY_FILE = "key.json"


def cache_key(world: Path, tower: TowerConfig) -> dict:
    """What a cache entry is made from (module docstring); equal keys, equal content and tokens."""
    import open_clip

    files = [[str(f.relative_to(world)), f.stat().st_size, f.stat().st_mtime_ns] for f in table_files(world, "items")]
    return {"version": 1, "manifest_sha256": manifest_sha(world), "items_files": files,
            "image_size": tower.image_size, "context_length": tower.context_length,
            "tokenizer": TOKENIZER_MODEL, "open_clip": open_clip.__version__}


def item_content_and_tokens(world: Path, tower: TowerConfig, cache: Path | None = None) -> tuple[ItemContent, torch.Tensor | None]:
    """Every item's content (``load_item_content``) and its titles' tokens (N, C) int64 (None without titles).

    Args:
        world (Path): dataset directory.
        tower (TowerConfig): the towers' image side and context length.
        cache (Path | None): the cache folder (module docstring); None: computed, nothing kept.

    Raises:
        ValueError: as ``load_item_content`` (no content, an item breaking a content rule, naming file, row and item).
    """
    world = Path(world)
    if cache is None:
        return _computed(world, tower)
    key = cache_key(world, tower)
    entry = Path(cache) / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    if _holds(entry, key):
        return _read(entry)
    items, tokens = _computed(world, tower)
    _write(entry, key, items, tokens)
    return items, tokens


def _holds(entry: Path, key: dict) -> bool:
    try:
        return json.loads((entry / KEY_FILE).read_text()) == key
    except (OSError, ValueError):
        return False


def _computed(world: Path, tower: TowerConfig) -> tuple[ItemContent, torch.Tensor | None]:
    items = load_item_content(world)
    return items, None if items.titles is None else build_tokenizer(tower)(items.titles)


def _read(entry: Path) -> tuple[ItemContent, torch.Tensor | None]:
    def part(name: str) -> np.ndarray | None:
        file = entry / f"{name}.npy"
        return np.load(file, mmap_mode="c") if file.is_file() else None  # copy-on-write: writable, read lazily

    titles, tokens = part("titles"), part("tokens")
    items = ItemContent(np.array(part("item_ids")), part("images"), None if titles is None else titles.tolist())
    return items, None if tokens is None else torch.from_numpy(np.array(tokens))


def _write(entry: Path, key: dict, items: ItemContent, tokens: torch.Tensor | None) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        np.save(tmp / "item_ids.npy", items.item_ids)
        if items.images is not None:
            np.save(tmp / "images.npy", items.images)
        if items.titles is not None:
            np.save(tmp / "titles.npy", np.array(items.titles, dtype=str))
        if tokens is not None:
            np.save(tmp / "tokens.npy", tokens.numpy())
        (tmp / KEY_FILE).write_text(json.dumps(key, sort_keys=True))  # last: an entry with a key is whole
        if entry.exists() and not _holds(entry, key):  # not an entry of ours (tampered with): the cache is disposable
            shutil.rmtree(entry, ignore_errors=True)
        os.rename(tmp, entry)
    except OSError:
        if not _holds(entry, key):  # not another rank's finished entry: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
