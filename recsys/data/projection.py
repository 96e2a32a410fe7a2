"""A fixed principal-subspace projection of item vectors: wide input vectors made K wide, once.

Notation:

* ``N``: items; ``D``: width of the input item vectors; ``K``: the projected width.

Every multimodal part of the CTR model passes over (B, L, K) histories, so
the table's width sets their step cost; users bring vectors from their own
encoders, 384-d or 768-d. The projection keeps the CTR step's cost at that of
a K-wide table whatever D is.

The basis is the top-K right singular vectors of the (uncentred) table: the
least-squares best K-dimensional subspace for dot products. A CTR run keeps
the projected rows ``v B`` as they are (:func:`project_rows`), not
re-normalised: their dot products are then the best rank-K approximation of
the input cosines, which SimTier's tiers read. Re-normalising would inflate
every cosine by the share of the norm the basis drops (MiniLM title vectors,
384 -> 32: the mean |error| of a pair's cosine is 0.029 kept as they are,
0.195 re-normalised, README "Wide vectors"). :func:`cosine_fidelity`
measures what a basis keeps: the Pearson correlation of item-pair cosines
before and the dot products after. Zero rows (items without a vector) stay
zero. It is fitted once, on the training run's table, and saved with the run
(:func:`save_projection`), so that evaluation, the daily retrain and served
vectors of new items go through the same basis as the table the model
trained on. :func:`project` (re-normalised rows) is what ``mmctr
reduce-vectors`` writes: an encoder's output table, unit rows by contract.

Example::

    >>> v = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 0.0]])
    >>> basis = principal_basis(v, 1)  # the direction between the two vectors
    >>> basis.shape, bool(basis[0, 0] > basis[1, 0] > 0 == basis[2, 0])
    ((3, 1), True)
    >>> project(v, basis).tolist()  # unit rows; a zero row (no vector) stays zero
    [[1.0], [1.0], [0.0]]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

PROJECTION_FILE = "projection.npz"  # in a CTR run folder: the basis its frozen table went through
FIDELITY_PAIRS = 20_000  # random item pairs of cosine_fidelity


def principal_basis(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The top-``dim`` right singular vectors of an item vector table, as columns.

    Args:
        vectors (np.ndarray): float array of shape (N, D), unit or zero rows.
        dim (int): K, 1 <= K <= D.

    Returns:
        np.ndarray: float32 array of shape (D, K), orthonormal columns, each
        signed so that its largest-magnitude entry is positive (the same
        basis from any LAPACK).

    Raises:
        ValueError: a non-finite row, fewer than K rows, or K outside [1, D].
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


def project_rows(vectors: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Item vectors onto the basis, as they fall (not re-normalised): ``v B``, norms <= the input's.

    Args:
        vectors (np.ndarray): float array of shape (N, D).
        basis (np.ndarray): float array of shape (D, K), orthonormal columns.

    Returns:
        np.ndarray: float32 array of shape (N, K); zero rows stay zero.

    Example::

        >>> project_rows(np.array([[0.6, 0.8], [0.0, 0.0]]), np.array([[1.0], [0.0]])).tolist()
        [[0.6000000238418579], [0.0]]
    """
    return (np.asarray(vectors, dtype=np.float64) @ np.asarray(basis, dtype=np.float64)).astype(np.float32)


def cosine_fidelity(vectors: np.ndarray, basis: np.ndarray, pairs: int = FIDELITY_PAIRS, seed: int = 0) -> float:
    """Pearson correlation of item-pair cosines before and dot products after :func:`project_rows`, in [-1, 1].

    Pairs of distinct non-zero rows are drawn at random (with replacement,
    ``seed`` fixed); 1.0 when fewer than two such rows or no spread.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> v = rng.standard_normal((200, 8)) * np.array([4.0, 3.0, 2.0, 1.0, 0.1, 0.1, 0.1, 0.1])
        >>> v /= np.linalg.norm(v, axis=1, keepdims=True)
        >>> [round(cosine_fidelity(v, principal_basis(v, k)), 2) for k in (1, 2, 4)]  # 4 directions hold it all
        [0.77, 0.95, 1.0]
    """
    x = np.asarray(vectors, dtype=np.float64)
    live = np.flatnonzero(np.linalg.norm(x, axis=1) > 0)
    if len(live) < 2:
        return 1.0
    rng = np.random.default_rng(seed)
    a, b = rng.choice(live, pairs), rng.choice(live, pairs)
    keep = a != b
    a, b = a[keep], b[keep]
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    before = (unit[a] * unit[b]).sum(axis=1)
    y = project_rows(unit, basis).astype(np.float64)
    after = (y[a] * y[b]).sum(axis=1)
    if before.std() == 0 or after.std() == 0:
        return 1.0
    return float(np.corrcoef(before, after)[0, 1])


@dataclass(frozen=True)
class ProjectionInfo:
    """What a projection was fitted on and what it kept (``train_log.json``'s ``vectors.projection``).

    Args:
        source (str): the vectors file the basis was fitted on.
        source_dim (int): D.
        dim (int): K.
        items (int): rows it was fitted on.
        retained_energy (float): :func:`retained_energy` on them, in [0, 1].
        cosine_fidelity (float): :func:`cosine_fidelity` on them.
    """

    source: str
    source_dim: int
    dim: int
    items: int
    retained_energy: float
    cosine_fidelity: float


def fit_projection(vectors: np.ndarray, dim: int, source: str) -> tuple[np.ndarray, ProjectionInfo]:
    """The basis of :func:`principal_basis` and its :class:`ProjectionInfo`.

    Args:
        vectors (np.ndarray): float array of shape (N, D), unit or zero rows.
        dim (int): K, 1 <= K <= D.
        source (str): where the vectors came from (recorded).

    Returns:
        tuple[np.ndarray, ProjectionInfo]: basis (D, K) float32, and its record.
    """
    basis = principal_basis(vectors, dim)
    info = ProjectionInfo(source=str(source), source_dim=int(np.shape(vectors)[1]), dim=int(dim), items=len(vectors),
                          retained_energy=retained_energy(vectors, basis), cosine_fidelity=cosine_fidelity(vectors, basis))
    return basis, info


def save_projection(path: Path, basis: np.ndarray, info: ProjectionInfo) -> None:
    """Writes the basis and its record to ``path`` (an ``.npz``; atomically: a temporary file, then renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, basis=np.asarray(basis, dtype=np.float32), info=np.array(json.dumps(asdict(info))))
    tmp.replace(path)


def load_projection(path: Path) -> tuple[np.ndarray, ProjectionInfo]:
    """Reads what :func:`save_projection` wrote (no pickles: ``allow_pickle=False``).

    Raises:
        FileNotFoundError: no file there.
        ValueError: the basis is not (D, K) with K <= D, or disagrees with its record.
    """
    with np.load(Path(path), allow_pickle=False) as npz:
        basis = npz["basis"]
        info = ProjectionInfo(**json.loads(str(npz["info"])))
    if basis.ndim != 2 or basis.shape != (info.source_dim, info.dim) or info.dim > info.source_dim:
        raise ValueError(f"{path}: basis of shape {basis.shape} does not match its record "
                         f"(D={info.source_dim}, K={info.dim})")  # fmt: skip
    return basis, info
