"""``mmctr export``: configs generated from the constants, version folders, the TorchScript artifact."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tritonclient.grpc import model_config_pb2 as mc

from pretrain.config import TowerConfig
from pretrain.encoder import load_encoder
from pretrain.towers import build_tokenizer
from recsys.cli import main as cli_main
from serving import constants as k
from serving.constants import ServingSpec
from serving.export import (
    EXPORT_MANIFEST,
    TARGETS,
    check_artifact,
    embedded_repository,
    example_inputs,
    load_torchscript,
    model_configs,
    read_config,
)
from serving.triton_models.preprocess import titles_from_bytes

D, C = 16, 16  # the tiny encoder of tests/conftest.py


@pytest.fixture(scope="module")
def spec(tiny_export: Path) -> ServingSpec:
    raw = json.loads((tiny_export / EXPORT_MANIFEST).read_text())["spec"]
    return ServingSpec(**{**raw, "image_size": tuple(raw["image_size"])})


def test_spec_comes_from_the_checkpoint(spec: ServingSpec, tiny_encoder_file: Path) -> None:
    assert spec.image_shape == (64, 64, 3) and spec.dim == D and spec.context_length == C
    assert spec.max_batch_size == k.MAX_BATCH_SIZE
    assert spec.encoder_sha256 == hashlib.sha256(tiny_encoder_file.read_bytes()).hexdigest()
    concat = ServingSpec.from_tower(TowerConfig(embed_dim=8), fusion="concat")
    assert concat.dim == 16
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        ServingSpec(image_size=(8, 8), context_length=4, dim=2, tokenizer_model="x", max_batch_size=0)


@pytest.mark.parametrize("target", TARGETS)
def test_written_configs_parse_and_equal_the_generated_ones(tiny_export: Path, spec: ServingSpec, target: str) -> None:
    repo = tiny_export / target
    want = model_configs(spec, target)
    assert sorted(p.name for p in repo.iterdir()) == sorted(want)
    for name, config in want.items():
        assert read_config(repo / name / "config.pbtxt") == config
        assert (repo / name / str(k.MODEL_VERSION)).is_dir()
        assert config.max_batch_size == spec.max_batch_size
        if name != k.ENCODER_MODEL:  # an ensemble has no scheduler of its own: its steps batch
            assert config.HasField("dynamic_batching")
            assert config.dynamic_batching.max_queue_delay_microseconds == spec.queue_delay_us
    enc = want[k.TORCHSCRIPT_MODEL]
    if target == "embedded":
        assert enc.backend == "python" and (repo / k.TORCHSCRIPT_MODEL / "1" / k.PYTHON_MODEL_FILE).is_file()
    else:
        assert enc.platform == "pytorch_libtorch" and enc.default_model_filename == k.ARTIFACT_FILE
        assert not (repo / k.TORCHSCRIPT_MODEL / "1" / k.PYTHON_MODEL_FILE).exists()
    assert (repo / k.PREPROCESS_MODEL / "1" / k.PYTHON_MODEL_FILE).is_file()


def _dims(t: mc.ModelInput | mc.ModelOutput) -> tuple[int, ...]:
    return tuple(t.dims)


def test_ensemble_wiring_matches_its_steps(spec: ServingSpec) -> None:
    configs = model_configs(spec, "production")
    ens = configs[k.ENCODER_MODEL]
    assert [(i.name, i.data_type, _dims(i)) for i in ens.input] == [
        (k.IMAGE_INPUT, mc.TYPE_UINT8, spec.image_shape), (k.TITLE_INPUT, mc.TYPE_STRING, (1,))]  # fmt: skip
    assert [(o.name, o.data_type, _dims(o)) for o in ens.output] == [(k.EMBEDDING_OUTPUT, mc.TYPE_FP32, (D,))]
    tensors = {t.name: (t.data_type, _dims(t)) for t in ens.input}
    for step in ens.ensemble_scheduling.step:
        model = configs[step.model_name]
        inputs = {t.name: (t.data_type, _dims(t)) for t in model.input}
        assert set(step.input_map) == set(inputs)
        for model_input, tensor in step.input_map.items():
            assert tensors[tensor] == inputs[model_input], (step.model_name, model_input)
        outputs = {t.name: (t.data_type, _dims(t)) for t in model.output}
        tensors.update({tensor: outputs[model_output] for model_output, tensor in step.output_map.items()})
    assert tensors[k.EMBEDDING_OUTPUT] == (mc.TYPE_FP32, (D,))
    assert ens.parameters[k.PARAM_SHA256].string_value == spec.encoder_sha256


def test_production_artifact_equals_eager(tiny_export: Path, tiny_encoder_file: Path, spec: ServingSpec) -> None:
    artifact = tiny_export / "production" / k.TORCHSCRIPT_MODEL / "1" / k.ARTIFACT_FILE
    embedded = tiny_export / "embedded" / k.TORCHSCRIPT_MODEL / "1" / k.ARTIFACT_FILE
    assert artifact.read_bytes() == embedded.read_bytes()
    encoder = load_encoder(tiny_encoder_file)
    module = load_torchscript(artifact)
    for b in (1, 2, 5, spec.max_batch_size):
        images, tokens = example_inputs(spec, b, seed=100 + b)
        with torch.no_grad():
            got, want = module(images, tokens), encoder(images, tokens)
        assert got.dtype == torch.float32 and got.shape == (b, D)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.norm(dim=-1), torch.ones(b), atol=1e-5, rtol=0)
    assert check_artifact(artifact, encoder, spec) <= 1e-5


def test_check_artifact_refuses_another_encoder(tiny_export: Path, spec: ServingSpec) -> None:
    from pretrain.towers import ItemEncoder, build_towers

    torch.manual_seed(1)
    other = ItemEncoder(build_towers(TowerConfig(vision_width=32, vision_heads=2, vision_layers=1, text_width=32,
                                                 text_heads=2, text_layers=1, embed_dim=16, context_length=16)))  # fmt: skip
    artifact = tiny_export / "production" / k.TORCHSCRIPT_MODEL / "1" / k.ARTIFACT_FILE
    with pytest.raises(ValueError, match="differs from the eager encoder"):
        check_artifact(artifact, other, spec)


def test_preprocess_model_tokenizes_like_pretraining() -> None:
    titles = ["red cotton dress", "été kettle 2l", "word " * 40]
    column = np.array([[t.encode()] for t in titles], dtype=object)
    got = build_tokenizer(TowerConfig(context_length=C))(titles_from_bytes(column))
    want = build_tokenizer(TowerConfig(context_length=C))(titles)
    assert torch.equal(got, want) and got.shape == (3, C)
    with pytest.raises(ValueError, match="empty batch"):
        titles_from_bytes(np.zeros((0, 1), dtype=object))


def test_export_command_and_errors(tiny_encoder_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert cli_main(["export", "--encoder", str(tiny_encoder_file), "--out", str(out), "--max-batch-size", "8"]) == 0
    assert read_config(out / "embedded" / k.ENCODER_MODEL / "config.pbtxt").max_batch_size == 8
    assert embedded_repository(out) == out / "embedded"
    assert embedded_repository(out / "production") == out / "production"
    with pytest.raises(FileNotFoundError, match="no encoder checkpoint"):
        cli_main(["export", "--encoder", str(tmp_path / "missing.pt"), "--out", str(out)])


def test_a_reduced_encoder_exports_its_projection(tiny_encoder_file: Path, tmp_path: Path) -> None:
    from pretrain.towers import ItemEncoder
    from pretrain.encoder import save_encoder
    from serving.export import export_repository

    payload = torch.load(tiny_encoder_file, weights_only=True)
    full = load_encoder(tiny_encoder_file)
    reduced = ItemEncoder(full.clip, fusion=full.fusion, reduced_dim=4)
    reduced.projection.copy_(torch.linalg.qr(torch.randn(D, 4, generator=torch.Generator().manual_seed(0)))[0])
    encoder_file = tmp_path / "encoder.pt"
    save_encoder(encoder_file, reduced.eval(), TowerConfig(**payload["tower"]))
    spec = export_repository(tmp_path, tmp_path / "export")  # the run folder holding encoder.pt
    assert spec.dim == 4
    images, tokens = example_inputs(spec, 3, seed=5)
    served = load_torchscript(tmp_path / "export" / "embedded" / k.TORCHSCRIPT_MODEL / str(k.MODEL_VERSION) / k.ARTIFACT_FILE)
    with torch.no_grad():
        torch.testing.assert_close(served(images, tokens), reduced(images, tokens), atol=1e-5, rtol=0)
