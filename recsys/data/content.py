"""Content rules of the public format: one function per rule, called by ``mmctr validate`` and by every stage.

A rule takes one value and raises :class:`ContentError` with a message that
says what was wrong and what was expected, naming no file or row: the
caller prefixes where the value came from (:func:`where`: file, column,
row). ``mmctr validate`` applies each rule to every row first; the stages
keep applying the same function (defence in depth), so the two cannot
drift: a value a stage refuses is one validate has refused, in the same words.

The refusals about a dataset's content made by the stages that read one,
and what ``mmctr validate`` (``recsys/data/validate.py``) says first
(``F`` the file, ``r`` the row within it)::

    rule                                  stage that refuses it                        validate says
    ------------------------------------  -------------------------------------------  ----------------------------------------------
    image bytes present, decode with PIL, pretrain/data.py decode_images (items and    F: column 'image'|'query_image', row r:
      convert to RGB, exactly image_size  searches), pretrain/evaluate.py held-out       + check_image's message
      x image_size px (check_image)       queries; serving/embedder.py (feed items,
                                          the server's image size: a failure)
    title not blank (check_text)          pretrain/data.py load_item_content;          F: column 'title', row r: + check_text's
                                          serving/embedder.py (feed items: a failure)
    query_text not blank (check_text)     pretrain/data.py load_search_pairs           F: column 'query_text', row r: + check_text's
    no nulls (lists included)             recsys/data/side.py read_column;             F: column C, row r: null value [in list]
                                          recsys/data/reader.py history_item_ids
    no NaN                                side.py read_column                          integer columns only, but labels: value nan,
                                                                                       expected 0.0 or 1.0
    IDs within [0, id_ranges[kind])       side.py check_range (side keys and           F: column C, row r: ID v outside [0, R)
                                          columns, joined IDs), reader.py histories,
                                          stats.py train_item_counts / new_item_mask
    IDs < the ID table's rows             reader.py _fit_table (out_of_range=refuse)   the rows default to id_ranges: as above
                                                                                       (smaller table_sizes are a training choice)
    each item and user listed once        side.py SideTable.read,                      F: column 'item_id'|'user_id', row r:
                                          pretrain/data.py load_item_content           K v appears more than once
    every user/item an impression or      side.py SideTable.join (impressions);        F: column C, row r: unknown K v (no row in T/)
      search names has its row            pretrain/data.py (purchased, clicked)
    impression columns present            reader.py _column                            F: missing column 'C' (footer check)
    labels 0 or 1                         recsys/eval/metrics.py (labels scored)       F: column 'label', row r: value v, ...

Not content rules, so validate does not check them: ``recsys/world/summary.py``,
``pretrain/train.py``, ``recsys/train/retrain.py`` and ``recsys/eval``
refuse only arguments, configs and run folders (``--day`` outside the
world, a checkpoint of another method); open_clip's tokenizer refuses no
text (it truncates to ``context_length``). Pre-training needs at least one
item and one search session (and ``pretrain-eval`` one on the test day):
a need of that stage, not a fault of a dataset used for CTR alone.
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

# Columns holding text that must not be blank (the towers' text inputs), per table.
TEXT_COLUMNS: dict[str, tuple[str, ...]] = {"items": ("title",), "searches": ("query_text",)}


class ContentError(ValueError):
    """A value that breaks a content rule; the message names the rule, not the place (see :func:`where`)."""


def where(path: str, column: str, row: int) -> str:
    """The place of a value, as validate and the stages name it: ``path: column 'c', row r``."""
    return f"{path}: column '{column}', row {row}"


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
    if not data:
        raise ContentError("image missing (no bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size  # from the header: no pixels decoded yet
            if (w, h) != (size, size):
                raise ContentError(f"image is {w}x{h} px, expected {size}x{size} (the manifest's image_size)")
            pixels = np.asarray(im.convert("RGB"))
    except ContentError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure means "does not decode"
        raise ContentError(f"image does not decode to RGB (PIL: {type(e).__name__})") from None
    if pixels.shape != (size, size, 3):  # a decoder that disagrees with its own header
        raise ContentError(f"image decodes to shape {pixels.shape}, expected ({size}, {size}, 3)")
    return pixels


def check_image(data: bytes | None, size: int) -> None:
    """Raises :class:`ContentError` where :func:`decode_image` would; returns nothing."""
    decode_image(data, size)


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

