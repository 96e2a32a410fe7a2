"""Serving one-tower encoders: a titles-only encoder exports, serves (real Triton) and embeds new
items from titles alone; an images-only one exports without a preprocessing model."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tritonclient.grpc import model_config_pb2 as mc

from pretrain.config import TowerConfig
from pretrain.encoder import ENCODER_FILE, load_encoder, save_encoder
from pretrain.towers import ItemEncoder, build_tokenizer, build_towers
from recsys.data.schema import table_files
from serving import constants as k
from serving.client import ClientConfig, EncoderClient
from serving.embedder import Embedder, EmbedderConfig
from serving.export import EXPORT_MANIFEST, example_inputs, export_repository, load_torchscript, read_config
from serving.feed import append, list_files, publish_world_items, read_file
from serving.server import ServerConfig, TritonServer
from serving.store import VectorStore

pytestmark = pytest.mark.timeout(300)
D, C = 16, 16
TOWER = TowerConfig(vision_width=32, vision_heads=2, vision_layers=1, text_width=32, text_heads=2,
                    text_layers=1, embed_dim=D, context_length=C)  # fmt: skip


def _encoder_file(folder: Path, modalities: tuple[str, ...]) -> Path:
    torch.manual_seed(0)
    save_encoder(folder / ENCODER_FILE, ItemEncoder(build_towers(TOWER, modalities)).eval(), TOWER)
    return folder / ENCODER_FILE


@pytest.fixture(scope="module")
def text_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mmctr export`` of a titles-only encoder (its run folder holds encoder.pt)."""
    run = tmp_path_factory.mktemp("text-run")
    _encoder_file(run, ("text",))
    export_repository(run, run / "export")
    return run


@pytest.fixture(scope="module")
def text_server(text_export: Path) -> Iterator[TritonServer]:
    with TritonServer(ServerConfig(repository=text_export / "export" / "embedded")) as s:
        yield s


def _ios(config: mc.ModelConfig) -> tuple[list[tuple[str, int, tuple[int, ...]]], ...]:
    return tuple([(t.name, t.data_type, tuple(t.dims)) for t in ts] for ts in (config.input, config.output))


def _in_process(run: Path, titles: list[str]) -> np.ndarray:
    with torch.no_grad():
        return load_encoder(run)(tokens=build_tokenizer(TOWER)(titles)).numpy()


def test_a_titles_only_encoder_exports_a_titles_only_model(text_export: Path) -> None:
    out = text_export / "export"
    spec = json.loads((out / EXPORT_MANIFEST).read_text())["spec"]
    assert spec["modalities"] == ["text"] and spec["dim"] == D
    for target in ("embedded", "production"):
        repo = out / target
        assert sorted(p.name for p in repo.iterdir()) == [k.ENCODER_MODEL, k.TORCHSCRIPT_MODEL, k.PREPROCESS_MODEL]
        ens = read_config(repo / k.ENCODER_MODEL / "config.pbtxt")
        assert _ios(ens) == ([(k.TITLE_INPUT, mc.TYPE_STRING, (1,))], [(k.EMBEDDING_OUTPUT, mc.TYPE_FP32, (D,))])
        enc = read_config(repo / k.TORCHSCRIPT_MODEL / "config.pbtxt")
        assert _ios(enc)[0] == [("INPUT__0", mc.TYPE_INT64, (C,))]
        assert [dict(s.input_map) for s in ens.ensemble_scheduling.step] == [{k.TITLE_INPUT: k.TITLE_INPUT}, {"INPUT__0": k.TOKENS}]
        assert list(enc.model_warmup[0].inputs) == ["INPUT__0"]
    artifact = load_torchscript(out / "production" / k.TORCHSCRIPT_MODEL / "1" / k.ARTIFACT_FILE)
    (tokens,) = example_inputs(load_spec(out), 5, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(artifact(tokens), load_encoder(text_export)(tokens=tokens), atol=1e-5, rtol=0)


def load_spec(out: Path) -> k.ServingSpec:
    raw = json.loads((out / EXPORT_MANIFEST).read_text())["spec"]
    return k.ServingSpec(**{**raw, "image_size": tuple(raw["image_size"])})


def test_an_images_only_encoder_exports_without_a_preprocessing_model(tmp_path: Path) -> None:
    _encoder_file(tmp_path, ("image",))
    spec = export_repository(tmp_path, tmp_path / "export")
    assert spec.modalities == ("image",) and spec.inputs == (k.IMAGE_INPUT,)
    repo = tmp_path / "export" / "embedded"
    assert sorted(p.name for p in repo.iterdir()) == [k.ENCODER_MODEL, k.TORCHSCRIPT_MODEL]
    ens = read_config(repo / k.ENCODER_MODEL / "config.pbtxt")
    assert _ios(ens)[0] == [(k.IMAGE_INPUT, mc.TYPE_UINT8, (64, 64, 3))]
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [k.TORCHSCRIPT_MODEL]
    artifact = load_torchscript(repo / k.TORCHSCRIPT_MODEL / "1" / k.ARTIFACT_FILE)
    (images,) = example_inputs(spec, 3, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(artifact(images), load_encoder(tmp_path)(images=images), atol=1e-5, rtol=0)


def test_triton_serves_the_titles_only_encoder_as_in_process(text_server: TritonServer, text_export: Path) -> None:
    titles = [f"red cotton dress {i}" if i % 2 else f"été kettle {i} ✓" for i in range(k.MAX_BATCH_SIZE + 6)]
    with EncoderClient(ClientConfig(url=text_server.grpc_url)) as client:
        m = client.model()
        assert m.image_shape is None and m.takes_titles and m.inputs == (k.TITLE_INPUT,) and m.dim == D
        got = client.encode(None, titles)  # two requests
        assert got.shape == (len(titles), D) and got.dtype == np.float32
        np.testing.assert_allclose(got, _in_process(text_export, titles), atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        images = np.zeros((2, 64, 64, 3), np.uint8)
        with pytest.raises(ValueError, match=r"the served model takes no image \(its inputs: \['title'\]\): pass images=None"):
            client.encode(images, titles[:2])
        with pytest.raises(ValueError, match="takes titles"):
            client.encode(None, None)
        with pytest.raises(ValueError, match="empty batch"):
            client.encode(None, [])


def test_the_embedder_embeds_a_titles_only_catalogue(
    text_server: TritonServer, text_export: Path, content_world: Callable[..., Path], tmp_path: Path
) -> None:
    world, feed = content_world(("title",)), tmp_path / "feed"
    n = publish_world_items(world, feed, per_file=25, limit=60)
    assert read_file(list_files(feed)[0])["image"].null_count == 25  # no images in the catalogue
    bare = feed / "part-99999999999999999999-bare.parquet"  # a producer that leaves the image column out
    pq.write_table(pa.table({"item_id": pa.array([10**9, 10**9 + 1], pa.int64()), "title": ["steel lamp", "  "],
                             "created_at": pa.array([time.time()] * 2, pa.float64())}), bare)  # fmt: skip
    append(feed, [10**9 + 2], ["wool desk"], [b"not an image: never read"], [time.time()])
    with EncoderClient(ClientConfig(url=text_server.grpc_url)) as client, VectorStore(tmp_path / "s.sqlite") as store:
        report = Embedder(feed, store, client, EmbedderConfig(exit_when_idle_s=0.2)).run()
        snap = store.read()
        failures = store.failures()
    assert report.written == n + 2 and report.failed == 1 and list(failures) == [10**9 + 1]
    assert "title is blank" in failures[10**9 + 1]
    items = pa.concat_tables([pq.read_table(f, columns=["item_id", "title"]) for f in table_files(world, "items")])
    title_of = dict(zip(items["item_id"].to_pylist(), items["title"].to_pylist()))
    title_of.update({10**9: "steel lamp", 10**9 + 2: "wool desk"})
    want = _in_process(text_export, [title_of[int(i)] for i in snap.item_ids])
    np.testing.assert_allclose(snap.vectors, want, atol=1e-5, rtol=0)
