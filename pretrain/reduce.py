"""Narrower item vectors: a fixed principal-subspace projection fitted on the item vector table.

Notation:

* ``N``: items; ``D``: width of the encoder's item vectors; ``K``: the reduced width.

SCL vectors use few of their D directions: on the ``small`` world's run
(D = 64) the top 16 principal directions hold 95 % of the energy, and the
cosine of two items after projecting onto them and re-normalising correlates
0.999 with the original. Every multimodal part of the CTR model works on
(B, L, K) histories, so K = 16 gives them a quarter of the data to pass over
(README, "Narrower vectors and a light MAKE": what it costs and buys).

The basis (``recsys.data.projection``: the top-K right singular vectors of
the uncentred table, which keep the cosine) is fitted once and then belongs
to the encoder (``pretrain.towers.ItemEncoder``'s ``projection``): new items
embedded later, by Triton or in process, go through the same basis as the
table did. A CTR run projects wider vectors itself (``ModelConfig.mm_width``);
this command is for narrowing the encoder too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from recsys.data.projection import principal_basis, project, retained_energy

__all__ = ["principal_basis", "project", "reduce_run", "retained_energy"]


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
    if not 1 <= dim <= vectors.shape[1]:
        raise ValueError(f"{files[VECTORS_FILE]}: {vectors.shape[1]}-d vectors; --dim must be in 1..{vectors.shape[1]}, "
                         f"got {dim}")  # fmt: skip
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
