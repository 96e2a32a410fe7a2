"""``recsys.data.content``: each content rule against a plain PIL reference, and its wording."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from recsys.data.content import (
    ContentError,
    check_image,
    check_text,
    content_columns,
    decode_image,
    first_fault,
    image_columns,
    text_columns,
    where,
)


def _png(mode: str, width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    out = io.BytesIO()
    (rgb if mode == "RGB" else rgb.convert(mode)).save(out, format="PNG")
    return out.getvalue()


def test_an_rgb_image_decodes_to_its_pixels() -> None:
    data = _png("RGB", 8, 8)
    reference = np.asarray(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(decode_image(data, 8), reference)
    assert check_image(data, 8) is None


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "1", "I;16"])
def test_any_mode_pil_converts_to_rgb_is_accepted_as_its_conversion(mode: str) -> None:
    data = _png(mode, 6, 6)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    pixels = decode_image(data, 6)
    assert pixels.shape == (6, 6, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, reference)


@pytest.mark.parametrize(("width", "height"), [(128, 128), (32, 32), (64, 63), (63, 64)])
def test_an_image_of_another_size_is_refused_naming_both_sizes(width: int, height: int) -> None:
    with pytest.raises(ContentError, match=rf"^image is {width}x{height} px, expected 64x64 \(the manifest's image_size\)$"):
        check_image(_png("RGB", width, height), 64)


def test_the_size_is_read_from_the_header_before_any_pixel() -> None:
    truncated = _png("RGB", 300, 300)[:200]  # a header, then too little data to decode
    with pytest.raises(ContentError, match="^image is 300x300 px"):
        check_image(truncated, 64)
    with pytest.raises(ContentError, match="^image does not decode to RGB"):
        check_image(_png("RGB", 64, 64)[:200], 64)


@pytest.mark.parametrize(
    ("data", "message"),
    [(None, "image missing (no bytes)"), (b"", "image missing (no bytes)"),
     (b"\x89PNG not really", "image does not decode to RGB (PIL: "), (b"nope", "image does not decode to RGB (PIL: ")],
)  # fmt: skip
def test_missing_or_undecodable_bytes_are_refused(data: bytes | None, message: str) -> None:
    with pytest.raises(ContentError) as e:
        check_image(data, 8)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("text", ["  ", "", "\t\n", "\u3000", "\u00a0 "])
def test_blank_text_is_refused(text: str) -> None:
    with pytest.raises(ContentError) as e:
        check_text(text, "title")
    assert str(e.value) == f"title is blank ({text!r}); expected text with a non-space character"
    assert not text.strip()  # the rule is str.strip's, as the stages had it


def test_null_text_is_refused_and_words_pass() -> None:
    with pytest.raises(ContentError, match="^query_text missing"):
        check_text(None, "query_text")
    for text in ("a", " red dress ", "\u3000kettle"):
        check_text(text, "title")


def test_first_fault_and_where() -> None:
    texts = ["ok", "fine", " ", ""]
    assert first_fault(texts, lambda t: check_text(t, "title")) == (2, "title is blank (' '); expected text with a non-space character")
    assert first_fault(texts[:2], lambda t: check_text(t, "title")) is None
    assert where("items/part-00001.parquet", "image", 7) == "items/part-00001.parquet: column 'image', row 7"


@pytest.mark.parametrize(
    ("content", "items", "searches"),
    [(("title", "image"), ("title", "image"), ("query_text", "query_image")), (("title",), ("title",), ("query_text",)),
     (("image",), ("image",), ("query_image",)), ((), (), ())],
)  # fmt: skip
def test_the_rules_apply_to_the_declared_content_columns_only(
    content: tuple[str, ...], items: tuple[str, ...], searches: tuple[str, ...]
) -> None:
    assert content_columns("items", content) == items and content_columns("searches", content) == searches
    assert text_columns("items", content) == tuple(c for c in items if c == "title")
    assert text_columns("searches", content) == tuple(c for c in searches if c == "query_text")
    assert image_columns("items", content) == tuple(c for c in items if c == "image")
    assert image_columns("searches", content) == tuple(c for c in searches if c == "query_image")
    assert content_columns("impressions", content) == content_columns("users", content) == ()
