"""Image and text towers (open_clip, random init) and the item encoder over them.

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
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from pretrain.config import FUSIONS, TowerConfig

# Per-channel RGB mean and std of image normalisation: the single source, used
# inside ItemEncoder so that an exported encoder takes raw uint8 pixels.
# CLIP's constants; with random init any fixed values work, these are the usual.
IMAGE_MEAN: tuple[float, float, float] = OPENAI_DATASET_MEAN
IMAGE_STD: tuple[float, float, float] = OPENAI_DATASET_STD

# A built-in open_clip model name whose tokenizer is the plain BPE
# SimpleTokenizer (vocabulary shipped in the wheel: works offline).
TOKENIZER_MODEL = "ViT-B-32"


def build_towers(cfg: TowerConfig) -> open_clip.CLIP:
    """A randomly initialised open_clip ``CLIP`` with the tower sizes of ``cfg``.

    No weights are downloaded: ``open_clip.CLIP`` is built directly from
    ``CLIPVisionCfg``/``CLIPTextCfg`` values. Its ``logit_scale`` parameter is
    only used by the CLIP-style baseline.

    Args:
        cfg (TowerConfig): tower sizes.

    Returns:
        open_clip.CLIP: ViT image tower and causal transformer text tower, both
        projecting to ``cfg.embed_dim``.
    """
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
    return open_clip.CLIP(embed_dim=cfg.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)


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

    Fusion of the unit image vector ``v`` and unit text vector ``t``:

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
        fusion (str): one of ``pretrain.config.FUSIONS``.
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
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {list(FUSIONS)}, got {fusion!r}")
        self.clip = clip
        self.fusion = fusion
        self.embed_dim: int = clip.text_projection.shape[1]
        size = clip.visual.image_size
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.context_length: int = int(clip.context_length)
        fused_dim = 2 * self.embed_dim if fusion == "concat" else self.embed_dim
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
        if tokens.dim() != 2 or tokens.shape[1] != self.context_length or tokens.is_floating_point():
            raise ValueError(
                f"tokens must be integer ids of shape (B, {self.context_length}), "
                f"got {tokens.dtype} {tuple(tokens.shape)}"
            )
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def fuse(self, image_vectors: torch.Tensor, text_vectors: torch.Tensor) -> torch.Tensor:
        """Item vectors from unit image and text vectors, each of shape (B, D).

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

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Fused item vectors.

        Args:
            images (Tensor): uint8 (B, H, W, 3) or normalised float (B, 3, H, W).
            tokens (Tensor): int64 of shape (B, C).

        Returns:
            Tensor: float of shape (B, ``output_dim()``), unit L2 norm.
        """
        if images.shape[0] != tokens.shape[0]:
            raise ValueError(f"images and tokens differ in batch size: {images.shape[0]} vs {tokens.shape[0]}")
        if self.fusion == "image":
            return self._reduce(self.encode_image(images))
        if self.fusion == "text":
            return self._reduce(self.encode_text(tokens))
        return self.fuse(self.encode_image(images), self.encode_text(tokens))
