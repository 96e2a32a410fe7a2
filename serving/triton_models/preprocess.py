"""Triton Python-backend model ``item_preprocess``: UTF-8 titles to open_clip token ids.

Input: its config's only input, BYTES of shape (B, 1). Output: its only
output, INT64 of shape (B, C), C the ``context_length`` parameter; the
tokenizer is ``open_clip.get_tokenizer(tokenizer_model, context_length)``,
the same call as ``pretrain.towers.build_tokenizer``. Each request of a
dynamic batch is answered on its own, so one bad request (an empty batch, a
title that is not UTF-8) fails alone and the others are served.

Example::

    >>> import numpy as np
    >>> titles_from_bytes(np.array([[b"red dress"], ["steel kettle".encode()]], dtype=object))
    ['red dress', 'steel kettle']
    >>> titles_from_bytes(np.array([[b"ok"], [b"\\xff\\xfe"]], dtype=object))
    Traceback (most recent call last):
        ...
    ValueError: title of row 1 is not UTF-8: b'\\xff\\xfe'
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def titles_from_bytes(column: np.ndarray) -> list[str]:
    """B titles from a BYTES tensor of shape (B, 1).

    Raises:
        ValueError: an empty batch, a shape other than (B, 1), or a title
            that does not decode as UTF-8 (naming its row).
    """
    if column.ndim != 2 or column.shape[1] != 1:
        raise ValueError(f"titles must have shape (B, 1), got {column.shape}")
    if column.shape[0] == 0:
        raise ValueError("empty batch: a request needs at least one item")
    titles = []
    for row, value in enumerate(column[:, 0]):
        if isinstance(value, str):
            titles.append(value)
            continue
        try:
            titles.append(bytes(value).decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"title of row {row} is not UTF-8: {bytes(value)[:40]!r}") from None
    return titles


def _pb() -> Any:
    """The Python backend's utilities; importable only inside Triton's stub process."""
    import triton_python_backend_utils

    return triton_python_backend_utils


class TritonPythonModel:
    """Tokenizes every request's titles (the Python backend's model interface)."""

    def initialize(self, args: dict[str, str]) -> None:
        import open_clip

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name: str = config["name"]
        self.input: str = config["input"][0]["name"]
        self.output: str = config["output"][0]["name"]
        self.context_length = int(params["context_length"])
        self.tokenizer = open_clip.get_tokenizer(params["tokenizer_model"], context_length=self.context_length)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = _pb()
        responses = []
        for request in requests:
            try:
                titles = titles_from_bytes(pb.get_input_tensor_by_name(request, self.input).as_numpy())
            except ValueError as e:
                error = pb.TritonError(f"{self.name}: {e}", pb.TritonError.INVALID_ARG)  # the client's fault: not retried
                responses.append(pb.InferenceResponse(output_tensors=[], error=error))
                continue
            tokens = self.tokenizer(titles).numpy().astype(np.int64)  # (B, C)
            responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(self.output, tokens)]))
        return responses
