"""The encoder file, ``encoder.pt``: the item encoder a pre-training run exports.

Its one writer (:func:`save_encoder`) and reader (:func:`load_encoder`), so
that whatever needs the encoder (Triton export, ``reduce-vectors``,
``pretrain-eval``, fine-tuning with ``init_from``) reads it without the trainer.

The file is a ``torch.save`` dict (loaded with ``weights_only=True``)::

    tower        dict     the TowerConfig fields of the towers
    modalities   list     the towers it has: ["image", "text"], ["text"] or ["image"]
                          (absent in files written before one-tower encoders: both)
    fusion       str      how image and text vectors fuse (pretrain.config.FUSIONS);
                          a one-tower encoder's is that tower's name
    reduced_dim  int      K of a reduced encoder (pretrain.reduce), 0 if none
    state_dict   dict     the ItemEncoder's weights (and its projection, if reduced);
                          only the present towers' (``pretrain.towers.build_towers``)

Every reader takes the file or the run folder holding it (:func:`encoder_file`).

Example::

    >>> import tempfile
    >>> from pretrain.config import MODALITIES, SclConfig, TowerConfig
    >>> tower = TowerConfig(vision_width=32, vision_heads=2, text_width=32, text_heads=2, embed_dim=8)
    >>> run = Path(tempfile.mkdtemp())
    >>> digest = save_encoder(run / ENCODER_FILE, build_encoder(SclConfig(tower=tower)), tower)
    >>> len(digest), load_encoder(run).output_dim(), encoder_tower(run / ENCODER_FILE) == tower
    (64, 8, True)
    >>> _ = save_encoder(run / "titles.pt", build_encoder(SclConfig(tower=tower), ("text",)), tower)
    >>> titles = load_encoder(run / "titles.pt")
    >>> titles.modalities, titles.fusion, any(k.startswith("clip.visual.") for k in titles.state_dict())
    (('text',), 'text', False)
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from pretrain.config import MODALITIES, SclConfig, TowerConfig
from pretrain.towers import ItemEncoder, build_towers
from recsys.data.paths import artefact_path

ENCODER_FILE = "encoder.pt"
# The per-modality item vectors a run exports beside the encoder (pretrain-eval reads them): float32 (N, D) each.
MODALITY_FILES = {"image": "item_image_vectors.npy", "text": "item_text_vectors.npy"}


def build_encoder(cfg: SclConfig, modalities: tuple[str, ...] = MODALITIES) -> ItemEncoder:
    """Fresh towers of ``cfg.tower`` fused by ``cfg.fusion``, initialised under ``torch.manual_seed(cfg.seed)``.

    Args:
        cfg (SclConfig): tower sizes, fusion and seed.
        modalities (tuple[str, ...]): the towers to build (``pretrain.config.content_modalities``
            of the dataset); with one, the item vector is that tower's.

    Raises:
        ValueError: ``cfg.fusion`` names a tower not in ``modalities``.
    """
    torch.manual_seed(cfg.seed)
    return ItemEncoder(build_towers(cfg.tower, modalities), fusion=cfg.fusion)


def save_encoder(path: Path, encoder: ItemEncoder, tower: TowerConfig) -> str:
    """Writes ``encoder.pt`` atomically and returns its SHA-256.

    Args:
        path (Path): the file to write (replaced).
        encoder (ItemEncoder): the encoder; its modalities, fusion and ``reduced_dim`` are recorded.
        tower (TowerConfig): the config its towers were built from.

    Returns:
        str: the hex SHA-256 of the written file.
    """
    payload = {
        "tower": dataclasses.asdict(tower),
        "modalities": list(encoder.modalities),
        "fusion": encoder.fusion,
        "reduced_dim": encoder.reduced_dim,
        "state_dict": encoder.state_dict(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def encoder_file(path: Path) -> Path:
    """The ``encoder.pt`` a user named: the file itself, or the run folder holding it.

    Raises:
        FileNotFoundError: no such file, naming the path looked at.
    """
    file = artefact_path(path, ENCODER_FILE)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no encoder checkpoint (expected {ENCODER_FILE} from `mmctr pretrain`, "
                                "or the run folder holding it)")  # fmt: skip
    return file


def _payload(path: Path) -> dict:
    return torch.load(encoder_file(path), map_location="cpu", weights_only=True)


def encoder_tower(path: Path) -> TowerConfig:
    """The ``TowerConfig`` an ``encoder.pt`` (or the run folder holding it) was built from.

    Raises:
        FileNotFoundError: see :func:`encoder_file`.
    """
    return TowerConfig(**_payload(path)["tower"])


def load_encoder(path: Path) -> ItemEncoder:
    """The encoder saved by :func:`save_encoder`, on CPU, in eval mode.

    Args:
        path (Path): ``encoder.pt``, or the run folder holding it.

    Raises:
        FileNotFoundError: see :func:`encoder_file`.
    """
    payload = _payload(path)
    tower = TowerConfig(**payload["tower"])
    modalities = tuple(payload.get("modalities", MODALITIES))  # files from before one-tower encoders: both
    clip = build_towers(tower, modalities)
    encoder = ItemEncoder(clip, fusion=payload["fusion"], reduced_dim=int(payload.get("reduced_dim", 0)))
    encoder.load_state_dict(payload["state_dict"])
    return encoder.eval()
