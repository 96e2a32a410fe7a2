"""Narrower item vectors: a fixed principal-subspace projection fitted on the item vector table.

Notation:

* ``N``: items; ``D``: width of the encoder's item vectors; ``K``: the reduced width.

SCL vectors use few of their D directions: on the ``small`` world's run
(D = 64) the top 16 principal directions hold 95 % of the energy, and the
cosine of two items after projecting onto them and re-normalising correlates
0.999 with the original. Every multimodal part of the CTR model works on
(B, L, K) histories, so K = 16 gives them a quarter of the data to pass over
(README, "Narrower vectors and a light MAKE": what it costs and buys).

The basis is the top-K right singular vectors of the (uncentred) table, the
least-squares best K-dimensional subspace for dot products, so cosine is
what it keeps. It is fitted once and then belongs to the encoder
(``pretrain.towers.ItemEncoder``'s ``projection``): new items embedded later,
by Triton or in process, go through the same basis as the table did.

Example::

    >>> import numpy as np
    >>> v = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 0.0]])
    >>> basis = principal_basis(v, 1)  # the direction between the two vectors
    >>> basis.shape, bool(basis[0, 0] > basis[1, 0] > 0 == basis[2, 0])
    ((3, 1), True)
    >>> project(v, basis).tolist()  # unit rows; a zero row (no vector) stays zero
    [[1.0], [1.0], [0.0]]
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch


def principal_basis(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The top-``dim`` right singular vectors of an item vector table, as columns.

    Args:
        vectors (np.ndarray): float array of shape (N, D), unit or zero rows.
        dim (int): K, 1 <= K <= D.

    Returns:
        np.ndarray: float32 array of shape (D, K), orthonormal columns, each
        signed so that its largest-magnitude entry is positive (the same
        basis from any LAPACK).
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or not 1 <= dim <= x.shape[1]:
        raise ValueError(f"need vectors of shape (N, D) and 1 <= dim <= D; got shape {x.shape} and dim={dim}")
    if not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise ValueError(f"item vector row {bad} is not finite; cannot fit a basis")
    if len(x) < dim:
        raise ValueError(f"{len(x)} item vectors cannot span a basis of {dim} directions")
    _, _, vt = np.linalg.svd(x, full_matrices=False)  # (D, D) rows: directions by singular value
    basis = vt[:dim].T  # (D, K)
    signs = np.sign(basis[np.abs(basis).argmax(axis=0), np.arange(dim)])
    return (basis * signs).astype(np.float32)


def retained_energy(vectors: np.ndarray, basis: np.ndarray) -> float:
    """Share of the table's squared norm the basis keeps, in [0, 1]."""
    x = np.asarray(vectors, dtype=np.float64)
    total = float((x**2).sum())
    return float(((x @ basis.astype(np.float64)) ** 2).sum() / total) if total > 0 else 1.0


def project(vectors: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Item vectors onto the basis, re-normalised to unit rows; zero rows stay zero.

    Args:
        vectors (np.ndarray): float array of shape (N, D).
        basis (np.ndarray): float array of shape (D, K).

    Returns:
        np.ndarray: float32 array of shape (N, K).
    """
    y = np.asarray(vectors, dtype=np.float64) @ np.asarray(basis, dtype=np.float64)
    norms = np.linalg.norm(y, axis=1, keepdims=True)
    return np.divide(y, norms, out=np.zeros_like(y), where=norms > 0).astype(np.float32)


def reduce_run(run: Path, dim: int, out: Path) -> dict:
    """``mmctr reduce-vectors``: a pre-training run's encoder and item table made K wide.

    Fits the basis on ``run``'s item table and writes to ``out`` the three
    files a pre-training run exports: the projected table, the encoder with
    the basis as its ``projection`` (so Triton and in-process embedding of
    new items agree with the table), and ``vectors.json`` (``dim`` K, the new
    encoder's hash, and ``reduced_from``: the source run, its D and encoder
    hash, the energy kept). ``vectors.json`` is written last: a folder
    without it is unfinished. The per-modality image and text files stay
    with the source run. The reduced encoder keeps the source's towers
    (both, or the one of a titles-only or images-only run): the basis
    projects whatever item vector they make.

    Args:
        run (Path): a ``mmctr pretrain`` run folder.
        dim (int): K.
        out (Path): the new run folder: not ``run``, and holding none of the three files.

    Returns:
        dict: the new ``vectors.json``.
    """
    from pretrain.encoder import ENCODER_FILE, encoder_tower, load_encoder, save_encoder
    from pretrain.towers import ItemEncoder
    from recsys.data.vectors import VECTORS_FILE, VECTORS_MANIFEST, load_vectors, write_item_vectors

    run, out = Path(run), Path(out)
    files = {name: run / name for name in (ENCODER_FILE, VECTORS_FILE, VECTORS_MANIFEST)}
    for file in files.values():
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing; {run} is not a finished `mmctr pretrain` run")
    if out.resolve() == run.resolve():
        raise ValueError(f"{out}: the reduced run needs a folder of its own, not the source run's")
    taken = [name for name in files if (out / name).exists()]
    if taken:
        raise ValueError(f"{out}: already holds {taken}; write the reduced run to a new folder")
    source = load_encoder(files[ENCODER_FILE])
    if source.reduced_dim:
        raise ValueError(f"{files[ENCODER_FILE]}: already reduced to {source.reduced_dim}; reduce the original run")
    table = load_vectors(files[VECTORS_FILE])
    item_ids, vectors = table.item_ids, table.vectors
    if vectors.shape[1] != source.output_dim():
        raise ValueError(f"{files[VECTORS_FILE]}: vectors of width {vectors.shape[1]}, "
                         f"but {files[ENCODER_FILE]} makes {source.output_dim()}")  # fmt: skip
    basis = principal_basis(vectors, dim)
    encoder = ItemEncoder(source.clip, fusion=source.fusion, reduced_dim=dim)
    with torch.no_grad():
        encoder.projection.copy_(torch.from_numpy(basis))
    tower = encoder_tower(files[ENCODER_FILE])
    out.mkdir(parents=True, exist_ok=True)
    write_item_vectors(out / VECTORS_FILE, item_ids, project(vectors, basis), dim)
    digest = save_encoder(out / ENCODER_FILE, encoder.eval(), tower)
    meta = json.loads(files[VECTORS_MANIFEST].read_text())
    meta.update(
        dim=dim,
        items=int(len(item_ids)),
        encoder_sha256=digest,
        reduced_from={
            "run": str(run),
            "dim": int(vectors.shape[1]),
            "encoder_sha256": hashlib.sha256(files[ENCODER_FILE].read_bytes()).hexdigest(),
            "retained_energy": retained_energy(vectors, basis),
        },
    )
    tmp = out / (VECTORS_MANIFEST + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(out / VECTORS_MANIFEST)
    return meta
