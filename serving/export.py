"""``mmctr export``: the encoder checkpoint as two Triton model repositories.

Writes, from one :class:`~serving.constants.ServingSpec` (names from
:mod:`serving.constants`, sizes from the checkpoint's ``TowerConfig``)::

    OUT/
      export.json                      the spec, the encoder's SHA-256, the artifact check
      embedded/                        for `mmctr serve` (the tritonserver bundled in nvidia-pytriton:
        item_encoder/                    Python backend only)
          config.pbtxt                 ensemble: image, title -> embedding
          1/                           (an ensemble's version folder is empty)
        item_preprocess/               (none for an images-only encoder)
          config.pbtxt                 Python backend, dynamic batching
          1/model.py                   titles -> token ids (serving/triton_models/preprocess.py)
        item_encoder_torchscript/
          config.pbtxt                 Python backend, dynamic batching
          1/model.py                   runs model.pt (serving/triton_models/torchscript.py)
          1/model.pt                   TorchScript encoder: uint8 pixels + token ids -> unit vectors
      production/                      for a production Triton container (libtorch backend)
        item_encoder/, item_preprocess/   the same as above
        item_encoder_torchscript/
          config.pbtxt                 platform pytorch_libtorch, dynamic batching
          1/model.pt                   the same file

Both repositories share the ensemble and the preprocessing model; they
differ only in what runs ``model.pt``. The inputs are the encoder's towers'
(``ServingSpec.modalities``, from ``encoder.pt``): ``image`` and ``title``
for a two-tower encoder, ``title`` alone for a titles-only one, ``image``
alone for an images-only one. Configs are ``ModelConfig`` protobuf
messages (``tritonclient.grpc.model_config_pb2``) printed in text format, so
they parse by construction. ``model.pt`` is checked after writing:
``torch.jit.load`` of the file must equal the eager encoder to 1e-5 at
several batch sizes, else the export fails.

Example::

    >>> spec = ServingSpec(image_size=(8, 8), context_length=4, dim=2, tokenizer_model="ViT-B-32")
    >>> configs = model_configs(spec, "production")
    >>> sorted(configs)
    ['item_encoder', 'item_encoder_torchscript', 'item_preprocess']
    >>> print(configs["item_encoder_torchscript"].platform, configs["item_encoder"].max_batch_size)
    pytorch_libtorch 64
    >>> titles = model_configs(dataclasses.replace(spec, modalities=("text",)), "production")
    >>> [i.name for i in titles["item_encoder"].input], [i.name for i in titles["item_encoder_torchscript"].input]
    (['title'], ['INPUT__0'])
    >>> sorted(model_configs(dataclasses.replace(spec, modalities=("image",)), "embedded"))
    ['item_encoder', 'item_encoder_torchscript']
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from pretrain.encoder import encoder_file, encoder_tower, load_encoder
from pretrain.towers import ItemEncoder, build_tokenizer
from serving import constants as k
from serving.constants import ExportConfig, ServingSpec
from serving.triton_models import preprocess, torchscript

TARGETS = ("embedded", "production")
EXPORT_MANIFEST = "export.json"
ARTIFACT_TOL = 1e-5  # max |TorchScript - eager| allowed
CHECK_BATCH_SIZES = (1, 3, 8)  # the trace uses batch 2; these must match too
_TYPES = {"UINT8": mc.TYPE_UINT8, "BYTES": mc.TYPE_STRING, "INT64": mc.TYPE_INT64, "FP32": mc.TYPE_FP32}
_PYTHON_SOURCES = {k.PREPROCESS_MODEL: preprocess, k.TORCHSCRIPT_MODEL: torchscript}


def _tensor(cls: type, name: str, dtype: str, dims: tuple[int, ...]) -> object:
    """A ``ModelInput`` or ``ModelOutput`` (batch dimension left out: ``max_batch_size`` > 0)."""
    return cls(name=name, data_type=_TYPES[dtype], dims=list(dims))


def _set_params(config: mc.ModelConfig, values: dict[str, object]) -> None:
    """Adds string ``parameters`` to ``config``."""
    for name, value in values.items():
        config.parameters[name].string_value = str(value)


def _batched(name: str, spec: ServingSpec) -> mc.ModelConfig:
    """A model config with ``max_batch_size``, dynamic batching and one CPU instance."""
    return mc.ModelConfig(
        name=name,
        max_batch_size=spec.max_batch_size,
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=spec.queue_delay_us),
        instance_group=[mc.ModelInstanceGroup(count=k.INSTANCES, kind=mc.ModelInstanceGroup.KIND_CPU)],
    )


def model_configs(spec: ServingSpec, target: str, torch_threads: int = k.TORCH_THREADS) -> dict[str, mc.ModelConfig]:
    """The model configs of one repository (module docstring), keyed by model name.

    The ensemble takes the inputs of ``spec.modalities`` only: with text, a
    preprocessing step turns titles into tokens; an images-only encoder has
    no ``item_preprocess`` model.

    Args:
        spec (ServingSpec): names' sizes, batching and modalities.
        target (str): ``"embedded"`` (the encoder on the Python backend) or
            ``"production"`` (on ``pytorch_libtorch``).
        torch_threads (int): intra-op threads of the embedded encoder (0: torch's default).
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
    raw = {"image": (k.IMAGE_DTYPE, spec.image_shape), "text": (k.TITLE_DTYPE, (1,))}  # the ensemble's inputs
    fed = {"image": (k.IMAGE_DTYPE, spec.image_shape), "text": (k.TOKENS_DTYPE, (spec.context_length,))}  # the encoder's
    embedding = (k.EMBEDDING_DTYPE, (spec.dim,))
    encoder_inputs = k.encoder_inputs(spec.modalities)  # {modality: INPUT__i}
    configs: dict[str, mc.ModelConfig] = {}

    ens = mc.ModelConfig(name=k.ENCODER_MODEL, platform="ensemble", max_batch_size=spec.max_batch_size)
    ens.input.extend([_tensor(mc.ModelInput, k.MODALITY_INPUT[m], *raw[m]) for m in encoder_inputs])
    ens.output.append(_tensor(mc.ModelOutput, k.EMBEDDING_OUTPUT, *embedding))
    _set_params(ens, {k.PARAM_SHA256: spec.encoder_sha256, k.PARAM_DIM: spec.dim})
    configs[k.ENCODER_MODEL] = ens
    step = mc.ModelEnsembling.Step
    # The ensemble tensor each encoder input reads: pixels as sent, tokens from the preprocessing step.
    source = {"image": k.IMAGE_INPUT, "text": k.TOKENS}

    if "text" in spec.modalities:
        pre = _batched(k.PREPROCESS_MODEL, spec)
        pre.backend = "python"
        pre.input.append(_tensor(mc.ModelInput, k.TITLE_INPUT, k.TITLE_DTYPE, (1,)))
        pre.output.append(_tensor(mc.ModelOutput, k.TOKENS, *fed["text"]))
        _set_params(pre, {k.PARAM_TOKENIZER: spec.tokenizer_model, k.PARAM_CONTEXT_LENGTH: spec.context_length})
        configs[k.PREPROCESS_MODEL] = pre
        ens.ensemble_scheduling.step.append(step(model_name=k.PREPROCESS_MODEL, model_version=-1,
                                                 input_map={k.TITLE_INPUT: k.TITLE_INPUT}, output_map={k.TOKENS: k.TOKENS}))  # fmt: skip

    enc = _batched(k.TORCHSCRIPT_MODEL, spec)
    enc.input.extend([_tensor(mc.ModelInput, name, *fed[m]) for m, name in encoder_inputs.items()])
    enc.output.append(_tensor(mc.ModelOutput, k.ENCODER_OUTPUT, *embedding))
    _set_params(enc, {k.PARAM_SHA256: spec.encoder_sha256})
    warm = {"image": lambda: mc.ModelWarmup.Input(data_type=_TYPES[k.IMAGE_DTYPE], dims=list(spec.image_shape), random_data=True),
            "text": lambda: mc.ModelWarmup.Input(data_type=_TYPES[k.TOKENS_DTYPE], dims=[spec.context_length], zero_data=True)}  # fmt: skip
    for b in sorted({min(b, spec.max_batch_size) for b in k.WARMUP_BATCH_SIZES}):
        enc.model_warmup.append(mc.ModelWarmup(name=f"batch{b}", batch_size=b, count=2,
                                               inputs={name: warm[m]() for m, name in encoder_inputs.items()}))  # fmt: skip
    if target == "embedded":
        enc.backend = "python"
        _set_params(enc, {k.PARAM_ARTIFACT: k.ARTIFACT_FILE, k.PARAM_THREADS: torch_threads})
    else:
        enc.platform = "pytorch_libtorch"
        enc.default_model_filename = k.ARTIFACT_FILE
        _set_params(enc, {"INFERENCE_MODE": "true"})
    configs[k.TORCHSCRIPT_MODEL] = enc
    ens.ensemble_scheduling.step.append(step(model_name=k.TORCHSCRIPT_MODEL, model_version=-1,
                                             input_map={name: source[m] for m, name in encoder_inputs.items()},
                                             output_map={k.ENCODER_OUTPUT: k.EMBEDDING_OUTPUT}))  # fmt: skip
    return {name: configs[name] for name in (k.ENCODER_MODEL, k.PREPROCESS_MODEL, k.TORCHSCRIPT_MODEL) if name in configs}


def read_config(path: Path) -> mc.ModelConfig:
    """Parses a ``config.pbtxt`` (raises ``text_format.ParseError`` naming line and column)."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


class _Traceable(torch.nn.Module):
    """``ItemEncoder.forward`` on its towers' inputs, positionally in ``MODALITIES`` order (the artifact's
    ``INPUT__0``, ``INPUT__1``): uint8 pixels (B, H, W, 3) and/or int64 tokens (B, C)."""

    def __init__(self, encoder: ItemEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, first: torch.Tensor, second: torch.Tensor | None = None) -> torch.Tensor:
        if self.encoder.modalities == ("image", "text"):
            return self.encoder(first, second)
        if self.encoder.modalities == ("image",):
            return self.encoder(images=first)
        return self.encoder(tokens=first)


def sample_items(spec: ServingSpec, batch: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Random uint8 pixels (B, H, W, 3) and random word titles (B strings), as a client sends them."""
    rng = np.random.default_rng(seed)
    words = ["red", "cotton", "dress", "steel", "kettle", "2l", "slim", "wool", "lamp", "desk"]
    images = rng.integers(0, 256, (batch, *spec.image_shape), dtype=np.uint8)
    return images, [" ".join(rng.choice(words, 3 + b % 5)) for b in range(batch)]


def example_inputs(spec: ServingSpec, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """:func:`sample_items` as the artifact takes them: uint8 (B, H, W, 3) and/or int64 tokens (B, C),
    those of ``spec.modalities``, in ``MODALITIES`` order."""
    from pretrain.config import TowerConfig

    images, titles = sample_items(spec, batch, seed)
    inputs = {"image": lambda: torch.from_numpy(images),
              "text": lambda: build_tokenizer(TowerConfig(context_length=spec.context_length))(titles)}  # fmt: skip
    return tuple(inputs[m]() for m in k.encoder_inputs(spec.modalities))


def export_torchscript(encoder: ItemEncoder, spec: ServingSpec) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of the encoder in eval mode: (B, H, W, 3) uint8 and/or (B, C) int64 -> (B, D) float32."""
    encoder = encoder.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # input checks are constant in the trace
        warnings.simplefilter("ignore", FutureWarning)  # jit.trace is deprecated, but libtorch needs TorchScript
        return torch.jit.trace(_Traceable(encoder), example_inputs(spec, 2), check_trace=False)


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` on CPU, in eval mode (libtorch needs TorchScript: its deprecation warning is muted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


@torch.no_grad()
def check_artifact(path: Path, encoder: ItemEncoder, spec: ServingSpec) -> float:
    """``torch.jit.load(path)`` against the eager encoder; returns the largest difference.

    Raises:
        ValueError: a difference above ``ARTIFACT_TOL``, or outputs of the wrong shape.
    """
    module = load_torchscript(path)
    worst = 0.0
    eager = _Traceable(encoder.eval())
    for b in CHECK_BATCH_SIZES:
        inputs = example_inputs(spec, b, seed=b)
        got, want = module(*inputs), eager(*inputs)
        if tuple(got.shape) != (b, spec.dim):
            raise ValueError(f"{path}: output of shape {tuple(got.shape)} at batch {b}, expected ({b}, {spec.dim})")
        worst = max(worst, float((got - want).abs().max()))
    if worst > ARTIFACT_TOL:
        raise ValueError(f"{path}: TorchScript differs from the eager encoder by {worst:.2e} (> {ARTIFACT_TOL})")
    return worst


def write_repository(root: Path, configs: dict[str, mc.ModelConfig], artifact: Path) -> None:
    """One repository: ``<model>/config.pbtxt`` and ``<model>/1/`` with its files, replacing ``root``."""
    if root.exists():
        shutil.rmtree(root)
    for name, config in configs.items():
        version = root / name / str(k.MODEL_VERSION)
        version.mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(text_format.MessageToString(config))
        if config.backend == "python":
            source = inspect.getsourcefile(_PYTHON_SOURCES[name])
            shutil.copyfile(source, version / k.PYTHON_MODEL_FILE)
        if name == k.TORCHSCRIPT_MODEL:
            shutil.copyfile(artifact, version / k.ARTIFACT_FILE)


def export_repository(encoder_path: Path, out: Path, max_batch_size: int = k.MAX_BATCH_SIZE,
                      queue_delay_us: int = k.QUEUE_DELAY_US, torch_threads: int = k.TORCH_THREADS) -> ServingSpec:
    """``mmctr export``: writes ``out`` (module docstring) and returns the spec it used.

    Args:
        encoder_path (Path): ``encoder.pt`` from ``mmctr pretrain``, or the run folder holding it.
        out (Path): export folder (its ``embedded/`` and ``production/`` are replaced).
        max_batch_size (int): items per request and per dynamic batch.
        queue_delay_us (int): dynamic batching delay, microseconds.
        torch_threads (int): intra-op threads of the embedded encoder (0: torch's default).

    Raises:
        FileNotFoundError: no ``encoder.pt`` at ``encoder_path`` (nor in it).
        ValueError: the TorchScript artifact differs from the eager encoder (:func:`check_artifact`).
    """  # fmt: skip
    encoder_path, out = encoder_file(encoder_path), Path(out)
    tower = encoder_tower(encoder_path)
    encoder = load_encoder(encoder_path)
    digest = hashlib.sha256(encoder_path.read_bytes()).hexdigest()
    spec = ServingSpec.from_tower(tower, encoder.fusion, max_batch_size, queue_delay_us, digest, encoder.reduced_dim,
                                  encoder.modalities)
    out.mkdir(parents=True, exist_ok=True)
    artifact = out / k.ARTIFACT_FILE
    export_torchscript(encoder, spec).save(str(artifact))
    try:
        diff = check_artifact(artifact, encoder, spec)
        for target in TARGETS:
            write_repository(out / target, model_configs(spec, target, torch_threads), artifact)
    finally:
        artifact.unlink()
    manifest = {
        "spec": dataclasses.asdict(spec),
        "encoder": str(encoder_path),
        "artifact_max_abs_diff": diff,
        "repositories": {t: str(out / t) for t in TARGETS},
    }
    (out / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return spec


def embedded_repository(path: Path) -> Path:
    """The repository ``mmctr serve`` runs: ``path/embedded`` of an export folder, else ``path`` itself."""
    path = Path(path)
    if (path / EXPORT_MANIFEST).is_file():
        return path / "embedded"
    return path
