"""The encoder served by a real Triton server over gRPC: equal to the in-process encoder, bad
requests refused while the server keeps serving, and the client's deadlines and retries across a
real stop and restart."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from pretrain.config import TowerConfig
from pretrain.encoder import load_encoder
from pretrain.towers import build_tokenizer
from serving import constants as k
from serving.client import ClientConfig, EncoderClient, EncoderError, EncoderRequestError, EncoderUnavailable
from serving.server import TritonServer

pytestmark = pytest.mark.timeout(240)
H = W = 64
D, C = 16, 16  # the tiny encoder of tests/conftest.py
TITLES = ["red cotton dress", "été — kettle 2l ✓", "", "word " * 40, "steel lamp", "wool desk"]


def _items(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8), [TITLES[i % len(TITLES)] + f" {i}" for i in range(n)]


def _in_process(encoder_file: Path, images: np.ndarray, titles: list[str]) -> np.ndarray:
    encoder = load_encoder(encoder_file)
    tokens = build_tokenizer(TowerConfig(context_length=C))(titles)
    with torch.no_grad():
        return encoder(torch.from_numpy(images), tokens).numpy()


@pytest.fixture(scope="module")
def client(server: TritonServer) -> EncoderClient:
    with EncoderClient(ClientConfig(url=server.grpc_url)) as c:
        yield c


def test_served_embeddings_equal_the_in_process_encoder(client: EncoderClient, tiny_encoder_file: Path) -> None:
    images, titles = _items(k.MAX_BATCH_SIZE + 6, seed=0)  # two requests, in flight together
    got = client.encode(images, titles)
    assert got.dtype == np.float32 and got.shape == (len(titles), D)
    np.testing.assert_allclose(got, _in_process(tiny_encoder_file, images, titles), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(
    client: EncoderClient, tiny_encoder_file: Path
) -> None:
    images, titles = _items(48, seed=1)
    cuts = [(a, a + 1 + a % 3) for a in range(0, 45, 3)]  # 15 requests of 1-3 items
    with ThreadPoolExecutor(16) as pool:
        parts = list(pool.map(lambda ab: client.encode(images[ab[0] : ab[1]], titles[ab[0] : ab[1]]), cuts))
    rows = np.concatenate([np.arange(a, b) for a, b in cuts])
    want = _in_process(tiny_encoder_file, images[rows], [titles[r] for r in rows])
    np.testing.assert_allclose(np.concatenate(parts), want, atol=1e-5, rtol=0)


def test_client_reads_the_model_from_the_server(client: EncoderClient, tiny_export: Path) -> None:
    from serving.export import read_config

    m = client.model()
    assert (m.image_shape, m.dim, m.max_batch_size) == ((H, W, 3), D, k.MAX_BATCH_SIZE)
    ens = read_config(tiny_export / "embedded" / k.ENCODER_MODEL / "config.pbtxt")
    assert m.encoder_sha256 == ens.parameters[k.PARAM_SHA256].string_value != ""
    assert client.ready()


def _raw(url: str, images: np.ndarray, titles: np.ndarray, image_dtype: str = k.IMAGE_DTYPE) -> np.ndarray:
    c = grpcclient.InferenceServerClient(url)
    image = grpcclient.InferInput(k.IMAGE_INPUT, list(images.shape), image_dtype)
    image.set_data_from_numpy(images)
    title = grpcclient.InferInput(k.TITLE_INPUT, list(titles.shape), k.TITLE_DTYPE)
    title.set_data_from_numpy(titles)
    try:
        return c.infer(k.ENCODER_MODEL, [image, title], client_timeout=30).as_numpy(k.EMBEDDING_OUTPUT)
    finally:
        c.close()


def _titles(n: int) -> np.ndarray:
    return np.array([[b"red dress"]] * n, dtype=object).reshape(n, 1)


BAD_REQUESTS = {
    "wrong dtype": (lambda: (np.zeros((2, H, W, 3), np.float32), _titles(2), "FP32"), "data-type is 'FP32'"),
    "wrong shape": (lambda: (np.zeros((2, 32, 32, 3), np.uint8), _titles(2), "UINT8"), "unexpected shape"),
    "title shape": (lambda: (np.zeros((2, H, W, 3), np.uint8), _titles(2).reshape(2), "UINT8"), "unexpected shape"),
    "batch sizes differ": (lambda: (np.zeros((2, H, W, 3), np.uint8), _titles(3), "UINT8"), "batch size does not match"),
    "empty batch": (lambda: (np.zeros((0, H, W, 3), np.uint8), _titles(0), "UINT8"), "got 0"),
    "batch above maximum": (
        lambda: (np.zeros((k.MAX_BATCH_SIZE + 1, H, W, 3), np.uint8), _titles(k.MAX_BATCH_SIZE + 1), "UINT8"),
        f"batch-size must be <= {k.MAX_BATCH_SIZE}",
    ),
    "undecodable title": (
        lambda: (np.zeros((2, H, W, 3), np.uint8), np.array([[b"ok"], [b"\xff\xfe"]], dtype=object), "UINT8"),
        "title of row 1 is not UTF-8",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_REQUESTS))
def test_bad_request_gets_an_error_and_the_server_keeps_serving(server: TritonServer, kind: str) -> None:
    make, message = BAD_REQUESTS[kind]
    images, titles, dtype = make()
    with pytest.raises(InferenceServerException) as info:
        _raw(server.grpc_url, images, titles, dtype)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and message in info.value.message()
    good = _raw(server.grpc_url, np.zeros((2, H, W, 3), np.uint8), _titles(2))
    assert good.shape == (2, D) and server.running()


def test_client_refuses_bad_inputs_before_sending(client: EncoderClient) -> None:
    images, titles = _items(2, seed=2)
    cases = [
        (images.astype(np.float32), titles, "uint8 numpy array"),
        (images[:, :32], titles, r"shape \(B, 64, 64, 3\)"),
        (images, titles[:1], "expected a sequence of 2 titles"),
        (images[:0], [], "empty batch"),
        (images, ["ok", b"bytes"], "title 1 is bytes"),
        (images, ["ok", "\ud800"], "title 1 cannot be sent as UTF-8"),
    ]
    for bad_images, bad_titles, message in cases:
        with pytest.raises(ValueError, match=message):
            client.encode(bad_images, bad_titles)


def test_refusals_and_wrong_models_are_not_retried(server: TritonServer) -> None:
    with EncoderClient(ClientConfig(url=server.grpc_url, model=k.PREPROCESS_MODEL, retries=50, backoff_s=1.0)) as c:
        t = time.monotonic()
        with pytest.raises(EncoderError, match="has no 'image'"):
            c.model()  # a model without the encoder's interface
        with pytest.raises(EncoderRequestError, match="refused"):
            c._retrying("a call", lambda: c._grpc.get_model_config("no_such_model"))
        assert time.monotonic() - t < 5.0  # no backoff sleeps


def test_deadline_exceeded_is_retried_then_reported(server: TritonServer) -> None:
    images, titles = _items(k.MAX_BATCH_SIZE, seed=3)
    with EncoderClient(ClientConfig(url=server.grpc_url, timeout_s=1e-4, retries=2, backoff_s=0.01)) as c:
        with pytest.raises(EncoderUnavailable, match="after 3 attempt.*DEADLINE_EXCEEDED"):
            c.encode(images, titles)
    assert server.running()


def test_retries_span_a_real_stop_and_restart(server: TritonServer, tiny_encoder_file: Path) -> None:
    images, titles = _items(3, seed=4)
    want = _in_process(tiny_encoder_file, images, titles)
    server.stop()
    with EncoderClient(ClientConfig(url=server.grpc_url, timeout_s=2.0, retries=2, backoff_s=0.05)) as quick:
        t = time.monotonic()
        with pytest.raises(EncoderUnavailable, match="after 3 attempt.*UNAVAILABLE"):
            quick.encode(images, titles)
        assert time.monotonic() - t < 10.0
    # A patient client keeps retrying while the server comes back on the same ports.
    patient = EncoderClient(ClientConfig(url=server.grpc_url, timeout_s=5.0, retries=200, backoff_s=0.1, max_backoff_s=0.5))
    restart = threading.Thread(target=lambda: (time.sleep(1.0), server.start()))
    restart.start()
    try:
        got = patient.encode(images, titles)
    finally:
        restart.join()
        patient.close()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert server.running()
