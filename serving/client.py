"""``EncoderClient``: raw pixels and titles in, unit item vectors out, over Triton's gRPC API.

A small typed class over ``tritonclient.grpc``:

- the served model's inputs and sizes (``image`` and/or ``title``; H, W, D,
  max batch size, encoder SHA-256) come from the server's own model config,
  generated from :mod:`serving.constants`; only the inputs the model takes
  are sent (a titles-only encoder gets titles, ``images=None``);
- inputs are checked before sending (dtype, shape, count), with a message
  naming what was wrong;
- a call is cut into requests of at most ``max_batch_size`` items, up to
  ``max_in_flight`` of them in flight at once, results back in input order;
- each request has a deadline (``timeout_s``) and is retried with
  exponential backoff when the server is unreachable, overloaded or slow
  (gRPC UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED,
  CANCELLED); a request the server refuses (INVALID_ARGUMENT and the like)
  is not retried;
- failures raise :class:`EncoderUnavailable` (retries used up) or
  :class:`EncoderRequestError` (the server refused), never ``sys.exit``.

Notation: ``B`` items, ``H``/``W`` pixels, ``D`` embedding width.

Example::

    >>> backoff_delays(ClientConfig(retries=4, backoff_s=0.1, max_backoff_s=0.5))
    [0.1, 0.2, 0.4, 0.5]
    >>> client = EncoderClient(ClientConfig(url="127.0.0.1:1", retries=0, timeout_s=0.5))
    >>> client.encode(np.zeros((1, 64, 64, 3), np.uint8), ["red dress"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    serving.client.EncoderUnavailable: 127.0.0.1:1: model config of 'item_encoder' failed after 1 attempt(s): ...
    >>> client.close()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from recsys.settings import setting
from serving import constants as k
from serving.server import GRPC_PORT, LOOPBACK

T = TypeVar("T")

# gRPC status codes worth a retry: the server is down, restarting, overloaded or slow.
RETRYABLE = frozenset(
    f"StatusCode.{s}" for s in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "CANCELLED")
)
_MAX_MESSAGE = 2**31 - 1  # Triton's gRPC message limit (tritonclient's default)


class EncoderError(RuntimeError):
    """A failed encode call."""


class EncoderUnavailable(EncoderError):
    """The server did not answer (down, restarting, overloaded) within the retries."""


class EncoderRequestError(EncoderError):
    """The server refused a request (bad dtype, shape, batch size, undecodable title...): not retried."""


@dataclass(frozen=True)
class ClientConfig:
    """Where the encoder is served and how hard to try.

    Args:
        url (str): ``HOST:PORT`` of Triton's gRPC endpoint.
        model (str): the model to call (``item_encoder``, the ensemble).
        timeout_s (float): deadline of one request.
        retries (int): further attempts of a request after a retryable failure.
        backoff_s (float): wait before the first retry; doubles each time.
        max_backoff_s (float): longest wait between attempts.
        max_in_flight (int): requests of one :meth:`EncoderClient.encode` call in flight at once.
    """

    url: str = setting(f"{LOOPBACK}:{GRPC_PORT}", "Triton gRPC HOST:PORT")  # Triton's default gRPC port
    model: str = k.ENCODER_MODEL  # the ensemble
    # a batch of 64 takes ~0.1 s on 2 cores
    timeout_s: float = setting(10.0, "deadline of one Triton request, seconds", flag="--timeout")
    retries: int = 5  # with the backoff below: ~3 s of retrying, then EncoderUnavailable
    backoff_s: float = 0.1  # first wait
    max_backoff_s: float = 1.0  # cap of the doubling
    max_in_flight: int = 4  # parallel requests of one call (dynamic batching merges them)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"ClientConfig: timeout_s must be > 0 and backoffs >= 0, got {self}")
        if self.retries < 0 or self.max_in_flight < 1:
            raise ValueError(f"ClientConfig: retries must be >= 0 and max_in_flight >= 1, got {self}")


def backoff_delays(config: ClientConfig) -> list[float]:
    """Seconds to wait before each retry: ``backoff_s`` doubling, capped at ``max_backoff_s``."""
    return [min(config.backoff_s * 2**i, config.max_backoff_s) for i in range(config.retries)]


def retrying(config: ClientConfig, what: str, call: Callable[[], T], refused: type[Exception],
             unavailable: type[Exception]) -> T:
    """``call()``, retried with :func:`backoff_delays` on retryable gRPC failures (``RETRYABLE``).

    Raises:
        refused: the server refused the call (a status not in ``RETRYABLE``): not retried.
        unavailable: the retries are used up.
    """
    delays = backoff_delays(config)
    for attempt in range(len(delays) + 1):
        try:
            return call()
        except InferenceServerException as e:
            status = str(e.status())
            if status not in RETRYABLE:
                raise refused(f"{config.url}: {what}: refused ({status}): {e.message()}") from None
            if attempt == len(delays):
                raise unavailable(f"{config.url}: {what} failed after {attempt + 1} attempt(s): "
                                  f"{status}: {e.message()}") from None  # fmt: skip
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class ServedModel:
    """What the server says about the model (from its ``config.pbtxt``)."""

    image_shape: tuple[int, int, int] | None  # (H, W, 3); None: the model takes no images
    dim: int  # D
    max_batch_size: int  # items per request
    encoder_sha256: str  # the encoder.pt the artifact came from
    takes_titles: bool = True  # whether the model has a title input

    @property
    def takes_images(self) -> bool:
        return self.image_shape is not None

    @property
    def inputs(self) -> tuple[str, ...]:
        """The model's inputs, as the client sends them: ``image`` and/or ``title``."""
        return tuple(n for n, on in ((k.IMAGE_INPUT, self.takes_images), (k.TITLE_INPUT, self.takes_titles)) if on)


class EncoderClient:
    """Encodes items on a Triton server (module docstring). Thread-safe; a context manager.

    Args:
        config (ClientConfig): address, deadline, retries.
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            # Reconnect soon after a restart (gRPC's own default backs off up to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        self._grpc = grpcclient.InferenceServerClient(config.url, channel_args=options)
        self._model: ServedModel | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- the served model ---------------------------------------------------------
    def model(self) -> ServedModel:
        """The served model's sizes, read once from the server (with retries)."""
        if self._model is None:
            timeout = self.config.timeout_s
            response = self._retrying(
                f"model config of {self.config.model!r}",
                lambda: self._grpc.get_model_config(self.config.model, client_timeout=timeout),
            )
            c = response.config
            images = next((i for i in c.input if i.name == k.IMAGE_INPUT), None)
            titles = next((i for i in c.input if i.name == k.TITLE_INPUT), None)
            output = next((o for o in c.output if o.name == k.EMBEDDING_OUTPUT), None)
            if (images is None and titles is None) or output is None or len(output.dims) != 1 or (
                images is not None and len(images.dims) != 3
            ):
                raise EncoderError(f"{self.config.url}: model {c.name!r} has no {k.IMAGE_INPUT!r} (H, W, 3) or "
                                   f"{k.TITLE_INPUT!r} input, or no {k.EMBEDDING_OUTPUT!r} (D,) output; "
                                   "is it an `mmctr export` repository?")  # fmt: skip
            sha = c.parameters[k.PARAM_SHA256].string_value if k.PARAM_SHA256 in c.parameters else ""
            shape = None if images is None else tuple(int(d) for d in images.dims)
            self._model = ServedModel(shape, int(output.dims[0]), int(c.max_batch_size), sha, titles is not None)
        return self._model

    def ready(self) -> bool:
        """Whether the server answers that the model is ready (one attempt, no retries)."""
        try:
            return bool(self._grpc.is_model_ready(self.config.model, client_timeout=self.config.timeout_s))
        except InferenceServerException:
            return False

    # -- encode -----------------------------------------------------------------------
    def check_inputs(self, images: np.ndarray | None, titles: Sequence[str] | None) -> None:
        """Raises ``ValueError`` naming what is wrong with a batch before anything is sent.

        The batch holds the inputs the served model takes, and no other
        (``ServedModel.inputs``): an input it does not take must be None.
        """
        m = self.model()
        for name, given, takes in ((k.IMAGE_INPUT, images, m.takes_images), (k.TITLE_INPUT, titles, m.takes_titles)):
            if given is not None and not takes:
                raise ValueError(f"the served model takes no {name} (its inputs: {list(m.inputs)}): pass {name}s=None")
            if given is None and takes:
                raise ValueError(f"the served model takes {name}s (its inputs: {list(m.inputs)}), got None")
        if images is not None:
            if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
                got = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
                raise ValueError(f"images must be a uint8 numpy array of shape (B, {m.image_shape[0]}, "
                                 f"{m.image_shape[1]}, 3), got {got}")  # fmt: skip
            if images.ndim != 4 or tuple(images.shape[1:]) != m.image_shape:
                raise ValueError(f"images must have shape (B, {', '.join(map(str, m.image_shape))}), got {images.shape}")
        if titles is None:
            if len(images) == 0:
                raise ValueError("empty batch: encode needs at least one item")
            return
        if images is not None and (isinstance(titles, str) or len(titles) != len(images)):
            raise ValueError(f"expected a sequence of {len(images)} titles (one per image), got {len(titles)}")
        if isinstance(titles, str):
            raise ValueError("titles must be a sequence of str, one per item, got a single str")
        if len(titles) == 0:
            raise ValueError("empty batch: encode needs at least one item")
        for i, title in enumerate(titles):
            if not isinstance(title, str):
                raise ValueError(f"title {i} is {type(title).__name__}, expected str")
            try:
                title.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"title {i} cannot be sent as UTF-8: {e}") from None

    def encode(self, images: np.ndarray | None, titles: Sequence[str] | None) -> np.ndarray:
        """Item vectors of B items.

        Args:
            images (np.ndarray | None): uint8 RGB pixels of shape (B, H, W, 3);
                None when the served model takes no images.
            titles (Sequence[str] | None): B titles; None when it takes no titles.

        Returns:
            np.ndarray: float32 of shape (B, D), unit L2 norm, in input order.

        Raises:
            ValueError: inputs of the wrong dtype, shape or count, or an input
                the model does not take or a missing one (nothing sent).
            EncoderRequestError: the server refused a request (e.g. a title it cannot decode).
            EncoderUnavailable: no answer within ``retries`` (server down or overloaded).
        """
        self.check_inputs(images, titles)
        step, n = self.model().max_batch_size, len(images) if images is not None else len(titles)
        chunks = [(a, min(a + step, n)) for a in range(0, n, step)]
        if len(chunks) == 1 or self.config.max_in_flight == 1:
            return np.concatenate([self._encode_chunk(images, titles, a, b) for a, b in chunks])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.config.max_in_flight, thread_name_prefix="encoder-client")
        futures = [self._pool.submit(self._encode_chunk, images, titles, a, b) for a, b in chunks]
        return np.concatenate([f.result() for f in futures])

    def _encode_chunk(self, images: np.ndarray | None, titles: Sequence[str] | None, a: int, b: int) -> np.ndarray:
        inputs = []
        if images is not None:
            image = grpcclient.InferInput(k.IMAGE_INPUT, [b - a, *images.shape[1:]], k.IMAGE_DTYPE)
            image.set_data_from_numpy(np.ascontiguousarray(images[a:b]))
            inputs.append(image)
        if titles is not None:
            title = grpcclient.InferInput(k.TITLE_INPUT, [b - a, 1], k.TITLE_DTYPE)
            title.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in titles[a:b]], dtype=np.object_))
            inputs.append(title)
        output = grpcclient.InferRequestedOutput(k.EMBEDDING_OUTPUT)
        result = self._retrying(
            f"items {a}..{b - 1}",
            lambda: self._grpc.infer(self.config.model, inputs, outputs=[output], client_timeout=self.config.timeout_s),
        )
        return result.as_numpy(k.EMBEDDING_OUTPUT)

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, retried on retryable gRPC failures with backoff."""
        return retrying(self.config, what, call, EncoderRequestError, EncoderUnavailable)

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._grpc.close()

    def __enter__(self) -> "EncoderClient":
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
