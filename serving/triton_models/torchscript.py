"""Triton Python-backend model ``item_encoder_torchscript``: the TorchScript encoder on CPU.

Runs ``1/model.pt`` (written by :func:`serving.export.export_torchscript`),
the same file the production repository serves with the ``pytorch_libtorch``
backend, under the same tensor names: ``INPUT__0`` uint8 pixels (B, H, W, 3),
``INPUT__1`` int64 token ids (B, C) -> ``OUTPUT__0`` float32 unit vectors
(B, D). The requests of a dynamic batch go through one forward pass and are
split back; a model without a batch dimension (``max_batch_size: 0``, the
TorchScript ranker of ``serving.ranker_production``, whose inputs and output
are its own) runs each request alone. Config parameters: ``artifact``, the file name in the version
folder; ``torch_threads``, torch's intra-op threads (0 keeps torch's default).

Example::

    >>> import numpy as np
    >>> split_rows(np.arange(10).reshape(5, 2), [2, 3])[1].tolist()
    [[4, 5], [6, 7], [8, 9]]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def split_rows(batch: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """The rows of ``batch`` (N, ...) cut into consecutive pieces of ``sizes`` (summing to N)."""
    return np.split(batch, np.cumsum(sizes)[:-1])


def _pb() -> Any:
    """The Python backend's utilities; importable only inside Triton's stub process."""
    import triton_python_backend_utils

    return triton_python_backend_utils


class TritonPythonModel:
    """One forward pass per dynamic batch (the Python backend's model interface)."""

    def initialize(self, args: dict[str, str]) -> None:
        import torch

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        threads = int(params.get("torch_threads", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        self.name: str = config["name"]
        # INPUT__0, INPUT__1, ...: forward's arguments in order.
        self.inputs = sorted((i["name"] for i in config["input"]), key=lambda n: int(n.rsplit("__", 1)[1]))
        self.output: str = config["output"][0]["name"]
        self.batched = int(config.get("max_batch_size", 0)) > 0  # 0: each request is its own call (the ranker's)
        artifact = Path(args["model_repository"]) / args["model_version"] / params["artifact"]
        self.module = torch.jit.load(str(artifact), map_location="cpu").eval()

    def execute(self, requests: list[Any]) -> list[Any]:
        import torch

        pb = _pb()
        if not self.batched and len(requests) > 1:
            return [response for r in requests for response in self.execute([r])]
        columns = [[pb.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.inputs]
        sizes = [len(a) for a in columns[0]]
        try:
            with torch.inference_mode():
                out = self.module(*(torch.from_numpy(np.concatenate(c)) for c in columns)).numpy()  # (N, D)
        except Exception as e:  # a failed forward fails this batch's requests, not the server
            error = pb.TritonError(f"{self.name}: forward failed: {e}")
            return [pb.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        return [pb.InferenceResponse(output_tensors=[pb.Tensor(self.output, rows)]) for rows in split_rows(out, sizes)]
