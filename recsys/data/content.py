"""Content rules of the public format: one function per rule, called by ``mmctr validate`` and by every stage.

A rule takes one value and raises :class:`ContentError` with a message that
says what was wrong and what was expected, naming no file or row: the
caller prefixes where the value came from (:func:`where`: file, column,
row). ``mmctr validate`` applies each rule to every row first; the stages
keep applying the same function (defence in depth), so the two cannot
drift: a value a stage refuses is one validate has refused, in the same words.

The image and text rules apply to the content columns a dataset declares
(``manifest.features.content``, :func:`content_columns`): a dataset of titles
alone has no ``image``/``query_image`` column to check, one of images alone
no ``title``/``query_text``; and the search log is optional.

The refusals about a dataset's content made by the stages that read one,
and what ``mmctr validate`` (``recsys/data/validate.py``) says first
(``F`` the file, ``C`` the column, ``r`` the row within the file):

- **Images** (:func:`check_image`): bytes present, decoded by PIL,
  converted to RGB, exactly ``image_size`` x ``image_size`` px. Refused by
  ``pretrain/data.py`` ``decode_images`` (items and search queries),
  ``pretrain/evaluate.py`` (held-out queries), ``serving/embedder.py`` (feed
  items, at the encoder's size: a recorded failure). Validate:
  ``F: column 'image'|'query_image', row r: <the rule's message>``.
- **Titles and queries** (:func:`check_text`): not null, not blank after
  ``str.strip``. Refused by ``pretrain/data.py`` (``load_item_content``,
  ``load_search_pairs``), ``pretrain/evaluate.py`` (held-out queries),
  ``serving/embedder.py`` (feed titles). Validate:
  ``F: column 'title'|'query_text', row r: <the rule's message>``.
- **No nulls**, inside lists too: ``recsys/data/side.py`` ``read_column``,
  ``recsys/data/reader.py`` (``history_item_ids``). Validate:
  ``F: column C, row r: null value [in list]``.
- **Dense values finite as float32, within their transform's domain**:
  ``side.py`` ``read_column`` / ``SideTable.read`` (``finite_fault``,
  ``dense_fault``: no NaN or inf, ``|v|`` within float32's range, ``> -1``
  under ``log1p``), used by ``reader.py`` and validate alike:
  ``F: column C, row r: value v, expected ...``.
- **IDs within** ``[0, id_ranges[kind])``: ``side.py`` ``check_range`` (side
  keys and columns, joined IDs), ``reader.py`` (histories), ``stats.py``
  (``train_item_counts``, ``new_item_mask``). Validate:
  ``F: column C, row r: ID v outside [0, R)``. ``reader.py``'s
  ``out_of_range="refuse"`` refuses IDs at or past a table's rows, which
  are ``id_ranges`` unless training asks for smaller tables (a training
  choice, not the dataset's fault).
- **Each item and user listed once**: ``side.py`` ``SideTable.read``,
  ``pretrain/data.py`` ``load_item_content``. Validate:
  ``F: column 'item_id'|'user_id', row r: K v appears more than once``.
- **Every user and item named has its row** (impressions, histories,
  searches' purchases and clicks): ``side.py`` ``SideTable.join``,
  ``pretrain/data.py`` ``load_search_pairs``. Validate:
  ``F: column C, row r: unknown K v (no row in T/)``.
- **Columns present**: ``reader.py`` ``_column``. Validate (from the
  footer): ``F: missing column 'C' (expected T)``.
- **Labels exactly 0 or 1** (no NaN): ``side.py`` ``label_fault``, used by
  ``reader.py`` (so ``mmctr train`` refuses them without validate) and by
  validate: ``F: column 'label', row r: value v, expected 0.0 or 1.0``;
  ``recsys/eval/metrics.py`` checks the scored labels again.

Not content rules, so validate does not check them: ``recsys/world/summary.py``,
``pretrain/train.py``, ``recsys/train/retrain.py`` and ``recsys/eval``
refuse only arguments, configs and run folders (``--day`` outside the
world, a checkpoint of another method); open_clip's tokenizer refuses no
text (it truncates to ``context_length``). Pre-training needs at least one
item with content, and SCL one search session (``pretrain-eval`` scores
recall on the test day's sessions when there are searches): needs of that
stage, not faults of a dataset used for CTR alone.
``truth/`` (generator-only, read by evaluation reports) is not part of the
public format.

Example::

    >>> import io
    >>> from PIL import Image
    >>> png = io.BytesIO(); Image.new("L", (128, 128)).save(png, format="PNG")
    >>> try:
    ...     check_image(png.getvalue(), 64)
    ... except ContentError as e:
    ...     print(where("items/part-00000.parquet", "image", 3) + f": {e}")
    items/part-00000.parquet: column 'image', row 3: image is 128x128 px, expected 64x64 (the manifest's image_size)
    >>> png = io.BytesIO(); Image.new("L", (4, 4)).save(png, format="PNG")
    >>> decode_image(png.getvalue(), 4).shape  # grayscale: any mode PIL converts to RGB is accepted
    (4, 4, 3)
    >>> check_text("  ", "title")
    Traceback (most recent call last):
    ...
    recsys.data.content.ContentError: title is blank ('  '); expected text with a non-space character
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

# Columns holding text that must not be blank (the towers' text inputs), per table, when the
# dataset has titles; :func:`text_columns` gives those of a dataset's declared content.
TEXT_COLUMNS: dict[str, tuple[str, ...]] = {"items": ("title",), "searches": ("query_text",)}
# The column of each kind of declared content (``manifest.features.content``), per table, in
# the schema's column order: an item's title and image, a search's query text and query image.
CONTENT_COLUMNS: dict[str, dict[str, str]] = {
    "items": {"title": "title", "image": "image"},
    "searches": {"title": "query_text", "image": "query_image"},
}


def content_columns(table: str, content: Sequence[str]) -> tuple[str, ...]:
    """The columns of ``table`` that hold the declared ``content``, in the schema's order.

    A dataset's ``features.content`` (``title``, ``image``, both or none)
    says which content columns exist: a titles-only dataset has no ``image``
    in ``items`` and no ``query_image`` in ``searches``. The content rules
    apply to these columns and no other.

    Args:
        table (str): ``items`` or ``searches`` (other tables hold no content: ``()``).
        content (Sequence[str]): the declared content.

    Example::

        >>> content_columns("searches", ("title",)), content_columns("items", ("image", "title"))
        (('query_text',), ('title', 'image'))
        >>> content_columns("users", ("title", "image"))
        ()
    """
    columns = CONTENT_COLUMNS.get(table, {})
    return tuple(column for kind, column in columns.items() if kind in content)


def text_columns(table: str, content: Sequence[str]) -> tuple[str, ...]:
    """The columns of ``table`` that :func:`check_text` applies to, given the declared ``content``."""
    return content_columns(table, [c for c in content if c == "title"])


def image_columns(table: str, content: Sequence[str]) -> tuple[str, ...]:
    """The columns of ``table`` that :func:`check_image` applies to, given the declared ``content``."""
    return content_columns(table, [c for c in content if c == "image"])


class ContentError(ValueError):
    """A value that breaks a content rule; the message names the rule, not the place (see :func:`where`)."""


def where(path: str, column: str, row: int) -> str:
    """The place of a value, as validate and the stages name it: ``path: column 'c', row r``."""
    return f"{path}: column '{column}', row {row}"


def _rgb(data: bytes | None, size: int) -> Image.Image:
    """The decoded picture in RGB, checked against ``size`` (see :func:`decode_image`)."""
    if not data:
        raise ContentError("image missing (no bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size  # from the header: no pixels decoded yet
            if (w, h) != (size, size):
                raise ContentError(f"image is {w}x{h} px, expected {size}x{size} (the manifest's image_size)")
            im.load()
            return im if im.mode == "RGB" else im.convert("RGB")
    except ContentError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure means "does not decode"
        raise ContentError(f"image does not decode to RGB (PIL: {type(e).__name__})") from None


def decode_image(data: bytes | None, size: int) -> np.ndarray:
    """The picture every stage feeds the image tower: uint8 array of shape (size, size, 3).

    The header's size is checked before any pixel is decoded; then the whole
    image is decoded and converted to RGB (any mode PIL converts is accepted).

    Args:
        data (bytes | None): encoded image (PNG, or any format PIL reads).
        size (int): the side it must have, in pixels (the manifest's ``image_size``).

    Raises:
        ContentError: no bytes, bytes PIL cannot decode or convert to RGB, or a
            picture that is not ``size`` x ``size``.
    """
    pixels = np.asarray(_rgb(data, size))
    if pixels.shape != (size, size, 3):  # a decoder that disagrees with its own header
        raise ContentError(f"image decodes to shape {pixels.shape}, expected ({size}, {size}, 3)")
    return pixels


def check_image(data: bytes | None, size: int) -> None:
    """Raises :class:`ContentError` where :func:`decode_image` would; returns nothing.

    Decodes every pixel as the stages do, but skips the copy into numpy.
    """
    _rgb(data, size)


def check_text(text: str | None, what: str) -> None:
    """Raises :class:`ContentError` if ``text`` is missing or blank (only whitespace, ``str.strip``).

    Args:
        text (str | None): the value.
        what (str): what it is, for the message (the column: ``title``, ``query_text``).
    """
    if text is None:
        raise ContentError(f"{what} missing (null)")
    if not text.strip():
        raise ContentError(f"{what} is blank ({text!r}); expected text with a non-space character")


def first_fault(values: Sequence[object], rule: Callable[[object], None]) -> tuple[int, str] | None:
    """(index, message) of the first value ``rule`` refuses, or None when it accepts them all."""
    for i, value in enumerate(values):
        try:
            rule(value)
        except ContentError as e:
            return i, str(e)
    return None

