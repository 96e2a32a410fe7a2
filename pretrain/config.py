"""Configuration of SCL pre-training: tower sizes and contrastive hyper-parameters.

Two frozen dataclasses, built from a small YAML or TOML file whose keys mirror
their fields: :class:`TowerConfig` (the open_clip image and text towers) and
:class:`SclConfig` (MoCo momentum, memory bank, InfoNCE, triplet loss,
optimiser, schedule, fusion), which holds a ``tower`` section.

Example::

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "scl.yaml"
    >>> _ = path.write_text("queue_size: 4096\\ntower:\\n  vision_width: 64\\n")
    >>> cfg = load_config(path)
    >>> cfg.queue_size, cfg.tower.vision_width, cfg.tower.embed_dim
    (4096, 64, 64)
    >>> _ = path.write_text("queue_sise: 4096\\n")
    >>> load_config(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: ...: unknown key(s) ['queue_sise'] in section 'scl'; known keys: [...]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recsys.config_file import check_positive, config_from_dict, read_config_file
from recsys.settings import setting

# How the item vector is formed from the image and text embeddings
# (see ``pretrain.towers.ItemEncoder.fuse``).
FUSIONS: tuple[str, ...] = ("mean", "image", "text", "concat")
# Pre-training recipes (``pretrain.train.Pretrainer``): SCL, the CLIP-style baseline, untrained towers.
METHODS: tuple[str, ...] = ("scl", "clip", "random")
# The towers an item encoder may have, in the order its forward takes their inputs (pixels, then tokens).
MODALITIES: tuple[str, ...] = ("image", "text")
# The tower that encodes each item content column (``recsys.data.spec.CONTENT``; search queries alike).
CONTENT_TOWER: dict[str, str] = {"image": "image", "title": "text"}


def content_modalities(content: Sequence[str]) -> tuple[str, ...]:
    """The towers a dataset's item content needs (``manifest.features.content``), in ``MODALITIES`` order.

    Args:
        content (Sequence[str]): content columns, a subset of ``("title", "image")``.

    Returns:
        tuple[str, ...]: a subset of ``MODALITIES``; empty when the items carry no content.

    Raises:
        ValueError: a content name that is neither ``title`` nor ``image``.

    Example::

        >>> content_modalities(("title",)), content_modalities(["title", "image"]), content_modalities(())
        (('text',), ('image', 'text'), ())
    """
    unknown = sorted(set(content) - set(CONTENT_TOWER))
    if unknown:
        raise ValueError(f"unknown item content {unknown}; known: {sorted(CONTENT_TOWER)}")
    towers = {CONTENT_TOWER[c] for c in content}
    return tuple(m for m in MODALITIES if m in towers)


@dataclass(frozen=True)
class TowerConfig:
    """Sizes of the open_clip image (ViT) and text (transformer) towers.

    The defaults are small on purpose: the ``small`` world (100k items, 40k
    search sessions) must pre-train in at most 10 minutes on 2 CPU cores.
    ViT-B-32 is ~70x slower than these towers (STACK.md). Measured with one
    thread on a loaded 2-core machine (torch 2.14.1): one SCL step (B=64,
    3 hard negatives each, all through the key encoder) ~0.5 s, so ~315 s per
    epoch of 40k sessions; a CLIP-style step (B=64) ~0.21 s; embedding the
    100k-item catalogue ~120 s (~800 items/s). A vision width of 64 halves
    these. Item images are 64x64 pixels.

    Args:
        image_size (int): side of the square input images, pixels.
        patch_size (int): side of a ViT patch; ``image_size`` must be a multiple.
        vision_width (int): ViT hidden width.
        vision_layers (int): ViT transformer blocks.
        vision_heads (int): ViT attention heads; must divide ``vision_width``.
        context_length (int): text tokens per title or query, start and end
            tokens included (longer texts are truncated by the tokenizer).
        vocab_size (int): token vocabulary; at least the tokenizer's 49,408.
        text_width (int): text transformer hidden width.
        text_layers (int): text transformer blocks.
        text_heads (int): text attention heads; must divide ``text_width``.
        embed_dim (int): D, the width of the image, text and item vectors.
    """

    image_size: int = 64  # world manifest image_size of the `tiny` and `small` presets
    patch_size: int = 8  # 8x8 = 64 patches + CLS token: enough detail, cheap attention
    vision_width: int = 128  # STACK.md's timed 2-layer width-128 ViT; fits the budget above
    vision_layers: int = 2  # depth dominates CPU time; 2 blocks fit the 10-minute budget
    vision_heads: int = 4  # head width 32
    context_length: int = 32  # world titles and queries are < 20 words; CLIP uses 77
    vocab_size: int = 49408  # open_clip SimpleTokenizer's BPE vocabulary, ids 0..49407
    text_width: int = 64  # titles are bags of ~10 words: a narrow tower suffices
    text_layers: int = 2  # as the vision tower
    text_heads: int = 2  # head width 32
    embed_dim: int = 64  # D: the default item vector width

    def __post_init__(self) -> None:
        check_positive(self, [f.name for f in dataclasses.fields(self)])
        if self.image_size % self.patch_size:
            raise ValueError(
                f"TowerConfig.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.vision_width % self.vision_heads:
            raise ValueError(
                f"TowerConfig.vision_heads {self.vision_heads} does not divide vision_width {self.vision_width}"
            )
        if self.text_width % self.text_heads:
            raise ValueError(
                f"TowerConfig.text_heads {self.text_heads} does not divide text_width {self.text_width}"
            )
        if self.context_length < 3:
            raise ValueError(
                f"TowerConfig.context_length must be >= 3 (start, one word, end), got {self.context_length}"
            )


@dataclass(frozen=True)
class SclConfig:
    """Hyper-parameters of SCL pre-training (and of the CLIP-style baseline).

    Args:
        tower (TowerConfig): the image and text towers.
        momentum (float): m of the MoCo key encoder update
            ``key = m * key + (1 - m) * query``, in [0, 1].
        queue_size (int): K, keys in the memory bank of negatives.
        temperature (float): tau of InfoNCE (SCL and, as the initial logit
            scale ``1 / tau``, the CLIP baseline).
        triplet_margin (float): alpha, margin of the cosine-distance triplet loss.
        triplet_weight (float): lambda, weight of the triplet loss added to InfoNCE.
        max_hard_negatives (int): Hn, hard negatives kept per session (the
            clicked-but-not-bought items; extra ones are dropped, missing ones
            masked).
        fusion (str): how the item vector is formed, one of ``FUSIONS``;
            with one modality the item vector is that tower's vector whatever
            the fusion (``pretrain.towers.resolve_fusion``).
        batch_size (int): B, sessions (SCL) or items (CLIP) per step and process.
        lr (float): peak AdamW learning rate.
        weight_decay (float): AdamW weight decay.
        warmup_steps (int): linear learning-rate warm-up steps.
        epochs (int): passes over the training sessions (SCL) or items (CLIP).
        max_steps (int | None): stop after this many steps if set (overrides
            ``epochs`` when it comes first).
        seed (int): seed of initialisation and data order.
        init_from (str | None): ``encoder.pt`` whose weights replace the
            random initialisation.
    """

    tower: TowerConfig = field(default_factory=TowerConfig)  # see TowerConfig
    momentum: float = 0.99  # MoCo uses 0.999 over 1M+ steps; our ~600 steps need a faster key encoder (measured: better than 0.995)
    # The paper's bank held 196,800 keys; the `small` world has 40k sessions, so
    # 8,192 keys are ~20% of an epoch and at most 8192/B = 128 steps stale.
    queue_size: int = 8192
    temperature: float = 0.07  # MoCo and CLIP's initial tau
    triplet_margin: float = 0.2  # alpha: cosine distances lie in [0, 2]
    triplet_weight: float = 0.5  # lambda: hard negatives help, InfoNCE leads
    max_hard_negatives: int = 3  # the world draws 0-3 clicked-not-bought items per session
    fusion: str = "mean"  # L2-normalised mean of image and text vectors (the default)
    batch_size: int = 64  # B: ~0.5 s per SCL step per CPU thread with the default towers
    lr: float = 5e-4  # AdamW peak lr, usual for small randomly initialised ViTs
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    warmup_steps: int = 100  # linear warm-up from 0, then cosine decay to 0
    epochs: int = 2  # two passes over the `small` world's ~37k training sessions: ~580 steps at 2 ranks, ~7 min
    max_steps: int | None = setting(None, "stop after N optimizer steps")  # None: no cap
    seed: int = 0  # torch.manual_seed of init and the data order
    # The paper fine-tunes SCL from a generic CLIP; here a `--method clip` run
    # stands in for that backbone (same TowerConfig).
    init_from: str | None = setting(None, "encoder.pt (or the run folder holding it) to start from, e.g. a clip run's, instead of random towers")

    def __post_init__(self) -> None:
        if not isinstance(self.tower, TowerConfig):
            raise TypeError(f"SclConfig.tower must be a TowerConfig, got {type(self.tower).__name__}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"SclConfig.momentum must be in [0, 1], got {self.momentum}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"SclConfig.fusion must be one of {list(FUSIONS)}, got {self.fusion!r}")
        for name in ("queue_size", "batch_size", "epochs", "max_hard_negatives"):
            if getattr(self, name) < 1:
                raise ValueError(f"SclConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("temperature", "lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SclConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("triplet_margin", "triplet_weight", "weight_decay", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"SclConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"SclConfig.max_steps must be >= 1 or null, got {self.max_steps}")


def load_config(path: str | Path) -> SclConfig:
    """Read an :class:`SclConfig` from a ``.yaml``/``.yml`` or ``.toml`` file.

    Keys mirror the dataclass fields; tower sizes go in a nested ``tower``
    section. Missing keys keep their defaults. Unknown keys and values of the
    wrong type raise ``ValueError`` naming the file, the section and the key
    (``recsys.config_file.config_from_dict``).

    Args:
        path (str | Path): the config file.

    Returns:
        SclConfig: the configuration.
    """
    return config_from_dict(SclConfig, read_config_file(path), source=str(path), section="scl")


@dataclass(frozen=True)
class PretrainJob:
    """The settings of one ``mmctr pretrain`` beside its :class:`SclConfig` (fields carry their help)."""

    method: str = setting("scl", "training recipe", choices=METHODS)
    checkpoint_every: int = setting(200, "steps between checkpoints")
    content_cache: Path | None = setting(None, "keep the items' decoded images and title tokens in this folder, and "
                                         "read them from there when the items and towers match (pretrain.content_cache)",
                                         metavar="DIR")
