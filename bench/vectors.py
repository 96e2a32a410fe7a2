"""Item vector tables the benches write for a world: random unit vectors, or the world's hidden semantics.

Both are written with ``recsys.data.vectors.write_item_vectors`` (checked
like any export: one finite unit-norm row per item, keyed by the dataset's
item IDs, raw or not) into ``OUT/item_vectors.parquet``, a folder every
``--vectors`` argument takes:

* :func:`write_random_vectors`: ``D``-wide Gaussian directions, for speed
  measurements where only the width matters (e.g. 384-d, a sentence encoder's);
* :func:`write_truth_vectors`: the generator's hidden 32-d semantic vectors
  (``truth/items.parquet``, unit-normalised), the best content vectors a
  world can have, for a world with no pre-training run (a text-only world
  without searches: SCL needs searches, CLIP both content kinds).

Example::

    >>> import tempfile, pathlib
    >>> from recsys.data.vectors import load_vectors
    >>> from recsys.world.generate import generate_world
    >>> world = pathlib.Path(tempfile.mkdtemp()) / "w"
    >>> _ = generate_world(world, preset="tiny", seed=0)
    >>> load_vectors(write_random_vectors(world, pathlib.Path(tempfile.mkdtemp()), dim=384)).vectors.shape
    (1500, 384)
    >>> load_vectors(write_truth_vectors(world, pathlib.Path(tempfile.mkdtemp()))).dim
    32
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from recsys.data.schema import Manifest, read_table_file, table_files
from recsys.data.vectors import VECTORS_FILE, write_item_vectors

TRUTH_ITEMS = Path("truth") / "items.parquet"  # the generator's hidden item traits (recsys.world)


def world_items(world: Path) -> np.ndarray:
    """The item IDs of ``world``'s ``items/`` (as the dataset writes them), int64 (N,)."""
    key = Manifest.read(world).features.item_key
    return np.concatenate([read_table_file(f, [key]).column(key).to_numpy() for f in table_files(world, "items")])


def _write(out: Path, ids: np.ndarray, vectors: np.ndarray) -> Path:
    """``out/item_vectors.parquet`` of unit-normalised ``vectors`` (N, D); returns ``out``."""
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    out.mkdir(parents=True, exist_ok=True)
    write_item_vectors(out / VECTORS_FILE, ids.astype(np.int64), vectors.astype(np.float32), dim=vectors.shape[1])
    return out


def write_random_vectors(world: Path, out: Path, dim: int, seed: int = 0) -> Path:
    """Random unit vectors (D = ``dim``) for every item of ``world`` into ``out``; returns ``out``."""
    ids = world_items(world)
    return _write(out, ids, np.random.default_rng(seed).standard_normal((len(ids), dim)))


def write_truth_vectors(world: Path, out: Path) -> Path:
    """The world's hidden semantic vectors (D = 32), unit-normalised, into ``out``; returns ``out``.

    Raises:
        FileNotFoundError: ``world`` has no ``truth/items.parquet`` (not a generated world).
    """
    file = Path(world) / TRUTH_ITEMS
    if not file.exists():
        raise FileNotFoundError(f"{file}: no hidden item semantics (only `mmctr world` writes them)")
    table = pq.read_table(file, columns=["item_id", "semantic"])
    semantic = np.asarray(table["semantic"].combine_chunks().flatten().to_numpy()).reshape(table.num_rows, -1)
    return _write(out, table["item_id"].to_numpy(), semantic.astype(np.float64))
