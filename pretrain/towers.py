"""Image and text towers (open_clip, random init) and the item encoder over them.

An encoder has the towers its dataset's items need (``modalities``, a
subset of ``pretrain.config.MODALITIES``): both for items with an image and
a title, only the text tower for titles alone, only the image tower for
images alone. Towers are built as one open_clip ``CLIP`` (the same random
draws whatever the modalities, so a text-only encoder of a seed has the text
tower of the two-tower encoder of that seed) and the absent tower is then
removed, so it is neither trained nor saved. The item vector of a
one-tower encoder is that tower's unit vector (:func:`resolve_fusion`).

Notation:
    B: batch size.
    H, W: image height and width, pixels (``TowerConfig.image_size``).
    C: text context length in tokens (``TowerConfig.context_length``).
    D: embedding width (``TowerConfig.embed_dim``).

Example::

    >>> import torch
    >>> from pretrain.config import TowerConfig
    >>> cfg = TowerConfig(vision_width=32, vision_heads=2, text_width=32, text_heads=2, embed_dim=16)
    >>> _ = torch.manual_seed(0)
    >>> encoder = ItemEncoder(build_towers(cfg))
    >>> tokens = build_tokenizer(cfg)(["red cotton dress", "steel kettle 2l"])  # (B, C)
    >>> images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)  # (B, H, W, 3)
    >>> items = encoder(images, tokens)  # (B, D)
    >>> tuple(items.shape), bool(torch.allclose(items.norm(dim=-1), torch.ones(2)))
    ((2, 16), True)
    >>> titles_only = ItemEncoder(build_towers(cfg, ("text",)))  # items with a title and no image
    >>> titles_only.modalities, titles_only.fusion, titles_only.image_size
    (('text',), 'text', None)
    >>> tuple(titles_only(tokens=tokens).shape)
    (2, 16)
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from pretrain.config import FUSIONS, MODALITIES, TowerConfig

# Per-channel RGB mean and std of image normalisation: the single source, used
# inside ItemEncoder so that an exported encoder takes raw uint8 pixels.
# CLIP's constants; with random init any fixed values work, these are the usual.
IMAGE_MEAN: tuple[float, float, float] = OPENAI_DATASET_MEAN
IMAGE_STD: tuple[float, float, float] = OPENAI_DATASET_STD

# A built-in open_clip model name whose tokenizer is the plain BPE
# SimpleTokenizer (vocabulary shipped in the wheel: works offline).
TOKENIZER_MODEL = "ViT-B-32"

# The text tower's parts: open_clip.CLIP holds them directly (``clip.transformer`` ...), the image tower is ``clip.visual``.
_TEXT_MODULES = ("transformer", "token_embedding", "ln_final")
_TEXT_TENSORS = ("positional_embedding", "text_projection", "attn_mask")


def _check_modalities(modalities: tuple[str, ...]) -> None:
    if not modalities or any(m not in MODALITIES for m in modalities) or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must be a non-empty subset of {list(MODALITIES)}, got {list(modalities)}")


def build_towers(cfg: TowerConfig, modalities: tuple[str, ...] = MODALITIES) -> open_clip.CLIP:
    """A randomly initialised open_clip ``CLIP`` with the tower sizes of ``cfg`` and only the towers of ``modalities``.

    No weights are downloaded: ``open_clip.CLIP`` is built directly from
    ``CLIPVisionCfg``/``CLIPTextCfg`` values. Its ``logit_scale`` parameter is
    only used by the CLIP-style baseline. Both towers are drawn (so each
    tower's initial weights depend on the seed alone), then an absent one is
    set to ``None``: ``clip.visual`` for ``("text",)``; ``clip.transformer``,
    ``token_embedding``, ``positional_embedding``, ``ln_final`` and
    ``text_projection`` for ``("image",)``. Its ``state_dict`` holds only the
    present towers.

    Args:
        cfg (TowerConfig): tower sizes.
        modalities (tuple[str, ...]): the towers to keep, a non-empty subset of
            ``pretrain.config.MODALITIES``.

    Returns:
        open_clip.CLIP: ViT image tower and/or causal transformer text tower,
        projecting to ``cfg.embed_dim``.

    Raises:
        ValueError: ``modalities`` empty or naming an unknown tower.
    """
    modalities = tuple(modalities)
    _check_modalities(modalities)
    vision_cfg = open_clip.CLIPVisionCfg(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        width=cfg.vision_width,
        layers=cfg.vision_layers,
        head_width=cfg.vision_width // cfg.vision_heads,
    )
    text_cfg = open_clip.CLIPTextCfg(
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.text_width,
        layers=cfg.text_layers,
        heads=cfg.text_heads,
    )
    clip = open_clip.CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)
    if "image" not in modalities:
        clip.visual = None
    if "text" not in modalities:
        for name in _TEXT_MODULES + _TEXT_TENSORS:
            setattr(clip, name, None)  # a registered module, parameter or buffer may be set to None
    return clip


def tower_modalities(clip: open_clip.CLIP) -> tuple[str, ...]:
    """The towers a ``CLIP`` from :func:`build_towers` holds, in ``MODALITIES`` order."""
    present = {"image": clip.visual is not None, "text": clip.transformer is not None}
    return tuple(m for m in MODALITIES if present[m])


def state_modality(name: str) -> str | None:
    """The tower (``"image"``/``"text"``) an ``ItemEncoder.state_dict`` key belongs to; None for shared entries.

    Example::

        >>> state_modality("clip.visual.proj"), state_modality("clip.token_embedding.weight")
        ('image', 'text')
        >>> state_modality("clip.logit_scale"), state_modality("projection")
        (None, None)
    """
    parts = name.split(".")
    if len(parts) < 2 or parts[0] != "clip":
        return None
    if parts[1] == "visual":
        return "image"
    return "text" if parts[1] in _TEXT_MODULES + _TEXT_TENSORS else None


def resolve_fusion(fusion: str, modalities: tuple[str, ...]) -> str:
    """The fusion an encoder of ``modalities`` uses when asked for ``fusion``.

    Two towers: ``fusion`` itself. One tower: its own name (the item vector is
    that tower's unit vector), whether asked for ``mean``, ``concat`` (means
    and concatenations of one vector) or that name.

    Raises:
        ValueError: an unknown fusion, or one naming the absent tower.

    Example::

        >>> resolve_fusion("mean", ("image", "text")), resolve_fusion("concat", ("text",))
        ('mean', 'text')
        >>> resolve_fusion("image", ("text",))
        Traceback (most recent call last):
            ...
        ValueError: fusion 'image' takes the item vector from the image tower, but this encoder has only ['text']
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {list(FUSIONS)}, got {fusion!r}")
    _check_modalities(tuple(modalities))
    if len(modalities) == len(MODALITIES):
        return fusion
    if fusion in MODALITIES and fusion not in modalities:
        raise ValueError(f"fusion {fusion!r} takes the item vector from the {fusion} tower, "
                         f"but this encoder has only {list(modalities)}")  # fmt: skip
    return modalities[0]


def build_tokenizer(cfg: TowerConfig) -> SimpleTokenizer:
    """open_clip's BPE tokenizer with ``cfg.context_length``; needs no network.

    Calling it on a list of B strings gives an int64 tensor of shape (B, C):
    start token, BPE ids, end token, zero padding; longer texts are truncated
    and keep their end token.

    Args:
        cfg (TowerConfig): ``context_length`` and ``vocab_size`` are used.

    Returns:
        SimpleTokenizer: the tokenizer.

    Example::

        >>> from pretrain.config import TowerConfig
        >>> tokenize = build_tokenizer(TowerConfig(context_length=8))
        >>> tokenize(["red dress"]).tolist()
        [[49406, 736, 2595, 49407, 0, 0, 0, 0]]
    """
    tokenizer = open_clip.get_tokenizer(TOKENIZER_MODEL, context_length=cfg.context_length)
    if not isinstance(tokenizer, SimpleTokenizer):
        raise TypeError(f"open_clip.get_tokenizer({TOKENIZER_MODEL!r}) gave {type(tokenizer).__name__}, "
                        "expected SimpleTokenizer")
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"TowerConfig.vocab_size {cfg.vocab_size} is smaller than the tokenizer's "
                         f"vocabulary of {tokenizer.vocab_size} tokens")
    return tokenizer


class ItemEncoder(nn.Module):
    """Unit-norm image, text and fused item vectors from an open_clip ``CLIP``.

    Image normalisation (``IMAGE_MEAN``/``IMAGE_STD``) happens inside, so a
    traced or exported encoder takes raw uint8 pixels.

    ``modalities`` are the towers the ``CLIP`` holds (:func:`build_towers`);
    :meth:`forward` takes the inputs of those towers and no other. With one
    tower the fusion is that tower's name (:func:`resolve_fusion`) and the
    item vector is its unit vector; with both, fusion of the unit image
    vector ``v`` and unit text vector ``t``:

    - ``"mean"``: ``normalize(v + t)``, the L2-normalised mean; width D.
    - ``"image"``: ``v``; ``"text"``: ``t``; width D.
    - ``"concat"``: ``[v, t] / sqrt(2)``, unit norm, width 2D; its cosine is
      the mean of the image and text cosines.

    With ``reduced_dim`` K > 0 the fused vector ``u`` then becomes
    ``normalize(u @ P)``, ``P`` the (D', K) buffer ``projection``: a fixed
    principal basis fitted on the item table (``pretrain.reduce``), saved
    with the encoder, so items embedded later share the table's basis.

    Args:
        clip (open_clip.CLIP): the towers (see :func:`build_towers`).
        fusion (str): one of ``pretrain.config.FUSIONS``; resolved against the
            towers present (:func:`resolve_fusion`).
        reduced_dim (int): K, width of the item vectors after the projection;
            0: no projection.

    Example::

        >>> import torch
        >>> from pretrain.config import TowerConfig
        >>> cfg = TowerConfig(vision_width=32, vision_heads=2, text_width=32, text_heads=2, embed_dim=8)
        >>> enc = ItemEncoder(build_towers(cfg), fusion="concat")
        >>> enc.output_dim()
        16
        >>> x = torch.zeros(3, 64, 64, 3, dtype=torch.uint8)
        >>> tuple(enc.encode_image(x).shape)
        (3, 8)
        >>> reduced = ItemEncoder(enc.clip, fusion="concat", reduced_dim=4)
        >>> _ = reduced.projection.copy_(torch.eye(16, 4))
        >>> reduced.output_dim(), tuple(reduced(x, torch.zeros(3, 32, dtype=torch.long)).shape)
        (4, (3, 4))
    """

    def __init__(self, clip: open_clip.CLIP, fusion: str = "mean", reduced_dim: int = 0) -> None:
        super().__init__()
        self.modalities: tuple[str, ...] = tower_modalities(clip)
        self.fusion = resolve_fusion(fusion, self.modalities)
        self.clip = clip
        if "image" in self.modalities:
            self.embed_dim: int = int(clip.visual.output_dim)
            size = clip.visual.image_size
            self.image_size: tuple[int, int] | None = (int(size[0]), int(size[1]))
        else:
            self.embed_dim, self.image_size = int(clip.text_projection.shape[1]), None
        self.context_length: int | None = int(clip.context_length) if "text" in self.modalities else None
        fused_dim = 2 * self.embed_dim if self.fusion == "concat" else self.embed_dim
        if not 0 <= reduced_dim <= fused_dim:
            raise ValueError(f"reduced_dim must lie in [0, {fused_dim}] (0: none), got {reduced_dim}")
        self.reduced_dim = reduced_dim
        self._fused_dim = fused_dim
        # Persistent when set: the basis is part of the encoder (checkpoint, Triton export).
        self.register_buffer("projection", torch.zeros(fused_dim, reduced_dim) if reduced_dim else None)
        # Non-persistent: not in checkpoints, always from the constants above.
        self.register_buffer("image_mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def output_dim(self) -> int:
        """Width of :meth:`forward`'s item vectors: K if reduced, else D, or 2D for ``"concat"``."""
        return self.reduced_dim or self._fused_dim

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB pixels (B, H, W, 3) to normalised float (B, 3, H, W).

        A float tensor (B, 3, H, W) is taken as already normalised and returned as is.
        """
        self._needs("image")
        if images.dtype == torch.uint8:
            if images.dim() != 4 or images.shape[-1] != 3 or tuple(images.shape[1:3]) != self.image_size:
                raise ValueError(
                    f"uint8 images must have shape (B, {self.image_size[0]}, {self.image_size[1]}, 3), "
                    f"got {tuple(images.shape)}"
                )
            x = images.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W)
            return (x - self.image_mean) / self.image_std
        if images.is_floating_point():
            if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.image_size:
                raise ValueError(
                    f"float images must be normalised with shape (B, 3, {self.image_size[0]}, "
                    f"{self.image_size[1]}), got {tuple(images.shape)}"
                )
            return images
        raise TypeError(f"images must be uint8 (B, H, W, 3) or float (B, 3, H, W), got {images.dtype}")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image vectors.

        Args:
            images (Tensor): uint8 of shape (B, H, W, 3), or normalised float
                of shape (B, 3, H, W).

        Returns:
            Tensor: float of shape (B, D), unit L2 norm.
        """
        return F.normalize(self.clip.encode_image(self.preprocess(images)), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit text vectors.

        Args:
            tokens (Tensor): int64 token ids of shape (B, C) from :func:`build_tokenizer`.

        Returns:
            Tensor: float of shape (B, D), unit L2 norm.
        """
        self._needs("text")
        if tokens.dim() != 2 or tokens.shape[1] != self.context_length or tokens.is_floating_point():
            raise ValueError(
                f"tokens must be integer ids of shape (B, {self.context_length}), "
                f"got {tokens.dtype} {tuple(tokens.shape)}"
            )
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def _needs(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ValueError(f"this encoder has no {modality} tower (its modalities: {list(self.modalities)})")

    def fuse(self, image_vectors: torch.Tensor | None, text_vectors: torch.Tensor | None) -> torch.Tensor:
        """Item vectors from unit image and text vectors, each of shape (B, D) (None for an absent tower).

        Returns:
            Tensor: float of shape (B, ``output_dim()``), unit L2 norm.
        """
        if self.fusion == "mean":
            fused = F.normalize(image_vectors + text_vectors, dim=-1)
        elif self.fusion == "image":
            fused = image_vectors
        elif self.fusion == "text":
            fused = text_vectors
        else:  # "concat"
            fused = torch.cat([image_vectors, text_vectors], dim=-1) * (0.5**0.5)
        return self._reduce(fused)

    def _reduce(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, D') fused vectors to (B, K) unit vectors through ``projection``; as is without one."""
        return fused if self.projection is None else F.normalize(fused @ self.projection, dim=-1)

    def forward(self, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Fused item vectors from the inputs of the encoder's towers (those of the others are None).

        Args:
            images (Tensor | None): uint8 (B, H, W, 3) or normalised float (B, 3, H, W);
                None exactly when the encoder has no image tower.
            tokens (Tensor | None): int64 of shape (B, C); None exactly when it has no text tower.

        Returns:
            Tensor: float of shape (B, ``output_dim()``), unit L2 norm.

        Raises:
            ValueError: an input of a tower the encoder lacks, a missing input
                of one it has, or inputs of different batch sizes.
        """
        for modality, arg, given in (("image", "images", images), ("text", "tokens", tokens)):
            if given is not None and modality not in self.modalities:
                raise ValueError(f"this encoder has no {modality} tower (its modalities: {list(self.modalities)}): "
                                 f"leave out {arg}")  # fmt: skip
            if given is None and modality in self.modalities:
                raise ValueError(f"this encoder's {modality} tower needs {arg} (its modalities: {list(self.modalities)})")
        if images is not None and tokens is not None and images.shape[0] != tokens.shape[0]:
            raise ValueError(f"images and tokens differ in batch size: {images.shape[0]} vs {tokens.shape[0]}")
        if self.fusion == "image":
            return self._reduce(self.encode_image(images))
        if self.fusion == "text":
            return self._reduce(self.encode_text(tokens))
        return self.fuse(self.encode_image(images), self.encode_text(tokens))
