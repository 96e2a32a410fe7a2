"""Renders item and query images from discrete semantics, vectorised.

Shape comes from the top category, an inner mark from the leaf, fill colour
from the colour attribute, a fill pattern from the pattern attribute, surface
texture from the material, and background and outline from the style. Each
image then gets its own position and scale jitter and pixel noise, so two
renderings of the same semantics differ while keeping what a shopper sees.

Notation: ``N`` images, ``H`` = ``W`` image side.

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> sem = {"leaf": np.array([0, 7]), "colour": np.array([1, 2]),
    ...        "material": np.array([0, 3]), "style": np.array([1, 4]),
    ...        "pattern": np.array([2, 0])}
    >>> images = render_images(rng, sem, size=64)
    >>> images.shape, images.dtype
    ((2, 64, 64, 3), dtype('uint8'))
    >>> decode_png(encode_png(images[0])).shape
    (64, 64, 3)
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from recsys.world.catalog import COLOURS, TOP_CATEGORIES

_PER_TOP = len(next(iter(TOP_CATEGORIES.values())))
_PALETTE = np.array([rgb for _, rgb, _ in COLOURS], dtype=np.float32)  # (n_colours, 3)
# Background per style: light grey, warm white, pale blue, beige, white, sand.
_BACKGROUNDS = np.array(
    [[200, 200, 200], [245, 240, 230], [205, 225, 245], [225, 210, 180], [250, 250, 250], [215, 190, 150]],
    dtype=np.float32,
)
_OUTLINE = np.array([0.0, 3.0, 0.0, 1.5, 0.0, 1.0], dtype=np.float32)  # outline width per style, px/64
_TEXTURE = np.array([6.0, 14.0, 2.0, 22.0, 1.0, 10.0], dtype=np.float32)  # noise amplitude per material
_GLOSS = np.array([0.0, 0.15, 0.35, 0.0, 0.25, 0.45], dtype=np.float32)  # highlight per material


def _by_kind(kind: np.ndarray, fns: tuple, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Applies ``fns[k]`` to the images of kind k only; stacks back in order."""
    out = None
    for k, fn in enumerate(fns):
        sel = np.flatnonzero(kind == k)
        if sel.size == 0:
            continue
        part = fn(a[sel], b[sel])
        if out is None:
            out = np.empty(a.shape, dtype=part.dtype)
        out[sel] = part
    return out


def _shape_masks(top: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inside-ness and distance-to-edge proxy of each top category's shape.

    x, y: (N, H, W) coordinates in shape units (the shape fills |x|,|y| < 1).
    Returns (inside bool (N, H, W), edge float (N, H, W): 1 at the edge, <1 inside).
    """
    kinds = (
        lambda x, y: np.sqrt(x * x + y * y),  # circle
        lambda x, y: np.maximum(np.abs(x), np.abs(y)),  # square
        lambda x, y: np.maximum(-y, (np.abs(x) * 1.8 + y) * 0.75),  # triangle, apex down
        lambda x, y: np.abs(x) + np.abs(y),  # diamond
        lambda x, y: np.abs(np.sqrt(x * x + y * y) - 0.7) / 0.3,  # ring
    )
    edge = _by_kind(top, kinds, x, y)
    return edge < 1.0, edge


def _inner_mark(leaf_in_top: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The leaf's mark inside the shape: none, bar, column, cross, dot. Bool (N, H, W)."""
    marks = (
        lambda x, y: np.zeros(x.shape, dtype=bool),
        lambda x, y: np.abs(y) < 0.15,  # bar
        lambda x, y: np.abs(x) < 0.15,  # column
        lambda x, y: (np.abs(y) < 0.15) | (np.abs(x) < 0.15),  # cross
        lambda x, y: (x * x + y * y) < 0.09,  # dot
    )
    return _by_kind(leaf_in_top, marks, x, y)


def _pattern(pattern: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Brightness multiplier of the fill pattern, float (N, H, W)."""
    kinds = (
        lambda u, v: np.ones_like(u),  # plain
        lambda u, v: 0.65 + 0.35 * (np.sin(u * 10.0) > 0),  # stripes
        lambda u, v: 1.0 - 0.45 * ((np.sin(u * 9.0) * np.sin(v * 9.0)) > 0.55),  # dots
        lambda u, v: 0.7 + 0.3 * ((np.sin(u * 7.0) > 0) ^ (np.sin(v * 7.0) > 0)),  # checks
        lambda u, v: 0.55 + 0.45 * (u + 1.5) / 3.0,  # gradient
    )
    return _by_kind(pattern, kinds, u, v).astype(np.float32)


def draw_jitter(rng: np.random.Generator, n: int, size: int) -> dict[str, np.ndarray]:
    """Every random draw of :func:`render_images` for ``n`` images, in its order.

    Drawing them without rendering leaves ``rng`` where rendering would, so a
    world written without images draws the same titles and queries.

    Returns:
        dict[str, np.ndarray]: ``cx``, ``cy`` (centre shift), ``scale``, ``angle``
        (pattern rotation, rad), each float32 of shape (N, 1, 1); ``noise``
        float32 (N, H, W); ``base``, ``bg`` (fill and background colour shifts,
        RGB levels) float64 (N, 3).
    """
    return {
        "cx": rng.uniform(-0.2, 0.2, (n, 1, 1)).astype(np.float32),
        "cy": rng.uniform(-0.2, 0.2, (n, 1, 1)).astype(np.float32),
        "scale": rng.uniform(0.5, 0.78, (n, 1, 1)).astype(np.float32),
        "angle": rng.uniform(-0.3, 0.3, (n, 1, 1)).astype(np.float32),
        "noise": rng.standard_normal((n, size, size), dtype=np.float32),
        "base": rng.normal(0.0, 12.0, (n, 3)),
        "bg": rng.normal(0.0, 8.0, (n, 3)),
    }


def render_images(rng: np.random.Generator, sem: dict[str, np.ndarray], size: int = 64) -> np.ndarray:
    """Renders one RGB image per row of ``sem``.

    Args:
        rng (np.random.Generator): draws the jitter and noise of each image.
        sem (dict[str, np.ndarray]): int arrays of shape (N,): ``leaf``,
            ``colour``, ``material``, ``style``, ``pattern``.
        size (int): image side H = W.

    Returns:
        np.ndarray: uint8 of shape (N, H, W, 3).
    """
    leaf = np.asarray(sem["leaf"])
    n = leaf.shape[0]
    top, leaf_in_top = leaf // _PER_TOP, leaf % _PER_TOP
    colour, material = np.asarray(sem["colour"]), np.asarray(sem["material"])
    style, pattern = np.asarray(sem["style"]), np.asarray(sem["pattern"])

    j = draw_jitter(rng, n, size)
    cx, cy, scale = j["cx"], j["cy"], j["scale"]
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0  # [-1, 1]
    gx, gy = grid[None, None, :], grid[None, :, None]
    x = (gx - cx) / scale  # (N, H, W) in shape units
    y = (gy - cy) / scale
    x = np.ascontiguousarray(np.broadcast_to(x, (n, size, size)))
    y = np.ascontiguousarray(np.broadcast_to(y, (n, size, size)))
    inside, edge = _shape_masks(top, x, y)
    mark = _inner_mark(leaf_in_top, x, y) & inside

    # Pattern coordinates rotate a little per image.
    angle = j["angle"]
    u = x * np.cos(angle) - y * np.sin(angle)
    v = x * np.sin(angle) + y * np.cos(angle)
    shade = _pattern(pattern, u, v)
    shade = shade + _GLOSS[material][:, None, None] * np.clip(1.0 - ((x + 0.4) ** 2 + (y + 0.4) ** 2) * 3.0, 0, 1)

    shade = np.where(mark, shade * 0.35, shade)
    outline_w = _OUTLINE[style][:, None, None] * 2.0 / size / scale
    body = inside & (edge <= 1.0 - outline_w)  # fill, not outline
    # Material texture inside the shape; the background stays smooth.
    texture = np.where(body, j["noise"] * _TEXTURE[material][:, None, None], 0.0).astype(np.float32)
    base = (_PALETTE[colour] + j["base"]).astype(np.float32)  # (N, 3)
    bg = (_BACKGROUNDS[style] + j["bg"]).astype(np.float32)
    shade_b = (shade * body)[..., None]  # (N, H, W, 1)
    img = shade_b * base[:, None, None, :] + texture[..., None]
    img += (1.0 - inside[..., None]) * bg[:, None, None, :] + (inside[..., None] & ~body[..., None]) * 20.0
    return np.clip(img, 0, 255).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of one uint8 (H, W, 3) image.

    A plain 8-bit RGB PNG with filter type 0 and zlib level 1: half the time
    of Pillow's adaptive-filter encoder on these images, and any PNG reader
    (Pillow in ``decode_png``) decodes it.
    """
    h, w, c = image.shape
    if c != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
    raw = np.empty((h, 1 + w * 3), dtype=np.uint8)
    raw[:, 0] = 0  # filter type None on every row
    raw[:, 1:] = image.reshape(h, w * 3)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit truecolour
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 1))
        + _png_chunk(b"IEND", b"")
    )


def decode_png(data: bytes) -> np.ndarray:
    """uint8 (H, W, 3) of PNG (or any PIL-readable) bytes."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))
