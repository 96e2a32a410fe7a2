"""``RankerClient``: one user's candidates in, click probabilities and the scoring version out, over Triton gRPC.

A typed class over ``tritonclient.grpc`` for the ``ranker`` model of
``mmctr export-ranker`` (interface: ``serving.ranker_export``). Requests are
checked before sending (1-D integer IDs, a context value per candidate, whole-number IDs for
a categorical context feature: ``serving.ranker.context_ids``, never a silent cast);
retryable gRPC failures are retried with backoff as the encoder client does
(``serving.client.retrying``); a request the server refuses raises
:class:`RankerRequestError` with the server's message.

Example::

    >>> client = RankerClient(ClientConfig(url="127.0.0.1:1", model="ranker", retries=0, timeout_s=0.5))
    >>> client.rank(7, [1, 2], [])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    ValueError: candidates: empty; a request ranks at least one item
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import tritonclient.grpc as grpcclient

from serving import ranker_export as rx
from serving.client import ClientConfig, retrying
from serving.ranker import context_ids, item_ids, user_id


class RankerError(RuntimeError):
    """A failed rank call."""


class RankerUnavailable(RankerError):
    """The server did not answer within the retries."""


class RankerRequestError(RankerError):
    """The server refused the request (its message says why): not retried."""


@dataclass(frozen=True)
class Ranked:
    """A served ranking: ``scores`` float32 (N,) in candidate order, and the model ``version`` that scored them."""

    scores: np.ndarray
    version: int


def _ids(name: str, values: Sequence[int] | np.ndarray) -> np.ndarray:
    return item_ids(name, values).reshape(1, -1)


class RankerClient:
    """Ranks candidates on a served ``ranker`` (module docstring). A context manager.

    Args:
        config (ClientConfig): address, model name (``ranker``), deadline, retries.
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._grpc = grpcclient.InferenceServerClient(config.url)
        self._dtypes: dict[str, str] | None = None  # the model's input dtypes, read once from the server
        self._batched = True  # whether its inputs have Triton's batch dimension (read with the dtypes)

    def rank(self, user: int, history: Sequence[int] | np.ndarray, candidates: Sequence[int] | np.ndarray,
             context: dict[str, Sequence[float] | np.ndarray] | None = None) -> Ranked:
        """Click probabilities of ``candidates`` for ``user`` with behaviour ``history`` (oldest first).

        Args:
            user (int): the user ID.
            history (Sequence[int] | np.ndarray): L item IDs (L may be 0).
            candidates (Sequence[int] | np.ndarray): N >= 1 item IDs.
            context (dict[str, Sequence[float]] | None): per-candidate values (N,) of context features.

        Returns:
            Ranked: scores (N,) and the serving version.

        Raises:
            ValueError: a malformed request (nothing sent), e.g. a categorical context value 1.5.
            RankerRequestError: the server refused it (too many candidates, an unknown context feature...).
            RankerUnavailable: no answer within the retries.
        """  # fmt: skip
        cands, hist = _ids("candidates", candidates), _ids("history", history)
        n = cands.shape[1]
        if n == 0:
            raise ValueError("candidates: empty; a request ranks at least one item")
        arrays = {rx.USER_INPUT: np.array([[user_id(user)]], dtype=np.int64), rx.HISTORY_INPUT: hist, rx.CANDIDATES_INPUT: cands}
        dtypes, batched = self._inputs()
        for name, values in (context or {}).items():
            v = context_ids(name, values) if dtypes.get(name) == "INT64" else np.asarray(values, dtype=np.float32)
            if v.shape != (n,):
                raise ValueError(f"context feature {name!r}: shape {v.shape}, expected ({n},), one per candidate")
            arrays[name] = v.reshape(1, -1)
        if not batched:  # the TorchScript ranker's ensemble (serving.ranker_production): no batch dimension
            arrays = {name: a.reshape(-1) for name, a in arrays.items()}
        inputs = []
        for name, array in arrays.items():
            tensor = grpcclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(rx.SCORES_OUTPUT), grpcclient.InferRequestedOutput(rx.VERSION_OUTPUT)]
        result = retrying(self.config, f"rank {n} candidates of user {user}",
                          lambda: self._grpc.infer(self.config.model, inputs, outputs=outputs, client_timeout=self.config.timeout_s),
                          RankerRequestError, RankerUnavailable)  # fmt: skip
        return Ranked(scores=result.as_numpy(rx.SCORES_OUTPUT).reshape(-1), version=int(result.as_numpy(rx.VERSION_OUTPUT).reshape(-1)[0]))

    def _inputs(self) -> tuple[dict[str, str], bool]:
        """Each input's Triton dtype (``INT64``, ``FP32``) and whether the model has Triton's batch
        dimension (``candidates`` served as [-1, -1], else [-1]), from the served model's metadata (once)."""
        if self._dtypes is None:
            meta = retrying(self.config, f"metadata of {self.config.model!r}",
                            lambda: self._grpc.get_model_metadata(self.config.model, as_json=True),
                            RankerRequestError, RankerUnavailable)  # fmt: skip
            self._dtypes = {i["name"]: i["datatype"] for i in meta.get("inputs", [])}
            shapes = {i["name"]: i.get("shape", []) for i in meta.get("inputs", [])}
            self._batched = len(shapes.get(rx.CANDIDATES_INPUT, [-1, -1])) == 2
        return self._dtypes, self._batched

    def load(self) -> None:
        """Asks the server to (re)load the model: its newest version folder replaces the served one.

        Needs a server in explicit model control (``ServerConfig.model_control``). Triton loads the
        new version while the old one serves, then unloads the old one: requests never fail (tested).

        Raises:
            RankerRequestError: the server refused (not in explicit mode, or the new version failed to load).
        """
        retrying(self.config, f"load {self.config.model!r}", lambda: self._grpc.load_model(self.config.model),
                 RankerRequestError, RankerUnavailable)

    def unload(self) -> None:
        """Asks the server (explicit model control) to unload the model: in-flight requests finish first."""
        retrying(self.config, f"unload {self.config.model!r}", lambda: self._grpc.unload_model(self.config.model),
                 RankerRequestError, RankerUnavailable)

    def versions(self) -> dict[int, str]:
        """The model's versions the server knows and their state (``READY``, ``UNAVAILABLE``...)."""
        index = self._grpc.get_model_repository_index(as_json=True).get("models", [])
        return {int(m["version"]): m.get("state", "") for m in index if m.get("name") == self.config.model and m.get("version")}

    def ready(self) -> bool:
        """Whether the server answers that the ranker is ready (one attempt)."""
        try:
            return bool(self._grpc.is_model_ready(self.config.model, client_timeout=self.config.timeout_s))
        except Exception:
            return False

    def close(self) -> None:
        self._grpc.close()

    def __enter__(self) -> "RankerClient":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
