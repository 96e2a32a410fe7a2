"""Triton Python-backend model ``ranker``: a finished CTR run scoring requests (``serving.ranker.Ranker``).

Loads the run its version folder's ``ranker.json`` names (written by
``serving.ranker_export``) once, at load time; the interface is that
module's. The requests of a dynamic batch are scored in one forward pass;
a malformed request (wrong shape, no or too many candidates, an unknown
context input, an ID the dataset refuses) gets its own error and the
others of the batch are scored. Config parameters: ``max_candidates``,
``torch_threads`` (0 keeps torch's default), ``precision`` (the ID tables'), ``engine``
(``serving.ranker.ENGINES``), ``score_log`` and
``score_log_sample`` (served scores to Parquet, ``serving.ranker_log``;
the last file is written when the model unloads).

Example::

    >>> import numpy as np
    >>> flat(np.array([[3, 4, 5]])).tolist(), flat(np.zeros((1, 0), np.int64)).shape
    ([3, 4, 5], (0,))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def flat(array: np.ndarray) -> np.ndarray:
    """One request's tensor without Triton's batch dimension: (1, N) -> (N,); anything else as it is, flattened."""
    return np.asarray(array).reshape(-1)


def _pb() -> Any:
    """The Python backend's utilities; importable only inside Triton's stub process."""
    import triton_python_backend_utils

    return triton_python_backend_utils


def parse_request(request: Any, context: tuple[str, ...]) -> Any:
    """A ``RankRequest`` from a Triton request (``RankRequestError`` if malformed); ``context``: the
    ranker's context features, each read if the request holds it."""
    from serving import ranker_export as rx
    from serving.ranker import RankRequest, RankRequestError

    pb = _pb()
    user = flat(pb.get_input_tensor_by_name(request, rx.USER_INPUT).as_numpy())
    if user.shape != (1,):
        raise RankRequestError(f"{rx.USER_INPUT}: one user ID per request, got {user.size}")
    values = {}
    for name in context:
        tensor = pb.get_input_tensor_by_name(request, name)
        if tensor is not None:
            values[name] = flat(tensor.as_numpy())
    return RankRequest(
        user=int(user[0]),
        history=flat(pb.get_input_tensor_by_name(request, rx.HISTORY_INPUT).as_numpy()),
        candidates=flat(pb.get_input_tensor_by_name(request, rx.CANDIDATES_INPUT).as_numpy()),
        context=values,
    )


def refusal(model: str, message: str) -> Any:
    """A refused request's response: INVALID_ARGUMENT where the backend has error codes (else INTERNAL),
    the message led by ``model`` (its name and version)."""
    pb = _pb()
    code = getattr(pb.TritonError, "INVALID_ARG", None)
    error = pb.TritonError(f"{model}: {message}") if code is None else pb.TritonError(f"{model}: {message}", code)
    return pb.InferenceResponse(output_tensors=[], error=error)


def load_ranker(args: dict[str, str], engine: str | None = None) -> tuple[dict, dict[str, str], Any]:
    """The Python backend's ``initialize`` arguments to (the model config, its string parameters, the
    ``Ranker`` its version folder's ``ranker.json`` names); sets torch's threads (``torch_threads``).
    ``engine``: overrides the config's (``serving.ranker.ENGINES``)."""
    import torch

    from serving import ranker_export as rx
    from serving.ranker import Ranker

    config = json.loads(args["model_config"])
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    threads = int(params.get(rx.PARAM_THREADS, "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    entry = rx.read_version(Path(args["model_repository"]) / args["model_version"])
    store = None if entry.store is None else Path(entry.store)
    ranker = Ranker.load(Path(entry.run), Path(entry.world), int(params[rx.PARAM_MAX_CANDIDATES]), store,
                         params.get(rx.PARAM_PRECISION, "fp32"), engine or params.get(rx.PARAM_ENGINE, "auto"))
    return config, params, ranker


class TritonPythonModel:
    """One forward pass per dynamic batch of requests (the Python backend's model interface)."""

    def initialize(self, args: dict[str, str]) -> None:
        from serving import ranker_export as rx

        config, params, self.ranker = load_ranker(args)
        self.rx = rx
        self.name: str = config["name"]
        self.version = int(args["model_version"])
        self.inputs = {i["name"] for i in config["input"]}
        self.log = None
        if params.get(rx.PARAM_SCORE_LOG):
            from serving.ranker_log import ScoreLog

            self.log = ScoreLog(Path(params[rx.PARAM_SCORE_LOG]), float(params[rx.PARAM_SCORE_LOG_SAMPLE]),
                                seed=self.version)

    def finalize(self) -> None:
        if self.log is not None:
            self.log.close()

    def _request(self, request: Any) -> Any:
        return parse_request(request, self.ranker.context)

    def _response(self, scores: np.ndarray) -> Any:
        pb = _pb()
        return pb.InferenceResponse(output_tensors=[
            pb.Tensor(self.rx.SCORES_OUTPUT, scores.astype(np.float32).reshape(1, -1)),
            pb.Tensor(self.rx.VERSION_OUTPUT, np.array([[self.version]], dtype=np.int64)),
        ])  # fmt: skip

    def _error(self, message: str) -> Any:
        return refusal(f"{self.name} v{self.version}", message)

    def execute(self, requests: list[Any]) -> list[Any]:
        from serving.ranker import check_request

        parsed: list[Any] = []
        responses: list[Any] = [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                r = self._request(request)
                check_request(r, self.ranker.context, self.ranker.max_candidates)  # before it joins the batch
                parsed.append((i, r))
            except ValueError as e:
                responses[i] = self._error(str(e))
        if parsed:
            try:
                for (i, r), scores in zip(parsed, self.ranker.score_many([r for _, r in parsed])):
                    responses[i] = self._response(scores)
                    if self.log is not None:
                        self.log.add(r, scores, self.version)
            except ValueError:  # an ID one request's user or items refuse: score them one by one to name it
                for i, r in parsed:
                    try:
                        scores = self.ranker.score(r)
                        responses[i] = self._response(scores)
                        if self.log is not None:
                            self.log.add(r, scores, self.version)
                    except ValueError as e:
                        responses[i] = self._error(str(e))
        return responses
