"""``mmctr export-ranker --torchscript``: the ranker as a TorchScript artefact, in two Triton repositories.

Writes, from ``serving.ranker_export``'s names and the run's feature spec::

    OUT/
      export.json                  the run, the artefact's check against eager, the repositories
      embedded/                    for `mmctr serve` (the bundled tritonserver: Python backend only)
        ranker/                    ensemble: user, history, candidates, <context> -> scores, version
          config.pbtxt
          1/                       (an ensemble's version folder is empty)
        ranker_features/           Python backend: the feature step (serving/triton_models/ranker_features.py)
          config.pbtxt
          V/model.py, V/ranker.json
        ranker_model/              Python backend running V/model.pt (serving/triton_models/torchscript.py)
          config.pbtxt
          V/model.py, V/model.pt
      production/                  for NVIDIA's Triton container
        ranker/, ranker_features/  the same
        ranker_model/              platform pytorch_libtorch on V/model.pt
          config.pbtxt
          V/model.pt

``V`` is the version (``--version``). The two repositories differ only in
what runs ``model.pt``, as the encoder's do (``serving.export``). The
ensemble's interface is the Python-backend ranker's (``serving.ranker_export``)
without Triton's batch dimension (``max_batch_size: 0``: the artefact's
inputs have one row per candidate and one per distinct history, which
Triton's batcher cannot stack), so ``user`` is INT64 [1], ``history`` and
``candidates`` INT64 [-1], a context feature [-1] (optional: 0 when left
out). :class:`~serving.ranker_client.RankerClient` reads the served shapes
and sends either. The artefact is checked after writing: ``torch.jit.load``
of ``model.pt`` on the test day's first requests must equal the eager
model's scores to ``ARTIFACT_TOL``, else the export fails.

Example::

    >>> from recsys.data.spec import world_spec
    >>> configs = production_configs(world_spec(), rx.RankerExportConfig(), "production", variant="simtier")
    >>> sorted(configs), configs["ranker_model"].platform, configs["ranker"].platform
    (['ranker', 'ranker_features', 'ranker_model'], 'pytorch_libtorch', 'ensemble')
    >>> [i.name for i in configs["ranker_model"].input]
    ['INPUT__0', 'INPUT__1', 'INPUT__2', 'INPUT__3', 'INPUT__4', 'INPUT__5', 'INPUT__6']
    >>> len(production_configs(world_spec(), rx.RankerExportConfig(), "embedded", variant="id_only")["ranker_model"].input)
    5
"""

from __future__ import annotations

import inspect
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from recsys.data.schema import Manifest
from recsys.eval.runs import load_run
from serving import ranker_export as rx
from serving.ranker import Ranker, RankRequest, context_features
from serving.ranker_script import ARTIFACT_INPUTS, ARTIFACT_PRECISIONS, ARTIFACT_TOL, ID_ONLY_INPUTS, load_artifact, script_ranker
from serving.triton_models import ranker_features, torchscript

TARGETS = ("embedded", "production")  # the Python backend runs model.pt; libtorch runs it
FEATURES_SUFFIX = "_features"
MODEL_SUFFIX = "_model"
ARTIFACT_FILE = "model.pt"
EXPORT_MANIFEST = "export.json"
CHECK_REQUESTS = 32  # test-day requests the artefact is checked on at export
# (dtype, dims) of each artefact input; -1: any size
_ARTIFACT_DIMS = {"dense": ("FP32", [-1, -1]), "pooled_rows": ("INT64", [-1, -1]), "target_rows": ("INT64", [-1, -1]),
                  "history_rows": ("INT64", [-1, -1, -1]), "history_of": ("INT64", [-1]),
                  "target_vector": ("FP32", [-1, -1]), "history_vector": ("FP32", [-1, -1, -1])}  # fmt: skip
_TYPES = {"INT64": mc.TYPE_INT64, "FP32": mc.TYPE_FP32}


def _io(cls: type, name: str, dtype: int, dims: list[int], optional: bool = False) -> object:
    t = cls(name=name, data_type=dtype, dims=dims)
    if optional:
        t.optional = True
    return t


def production_configs(spec: object, config: rx.RankerExportConfig, target: str, variant: str) -> dict[str, mc.ModelConfig]:
    """The three model configs of one repository (module docstring), keyed by model name.

    Args:
        spec (FeatureSpec): the dataset's features (context features become optional inputs).
        config (RankerExportConfig): the name, limits and instances (``max_batch_size`` and the queue delay
            do not apply: no batch dimension).
        target (str): ``"embedded"`` or ``"production"``.
        variant (str): the run's variant (``id_only`` reads no vectors: 5 artefact inputs, else 7).

    Raises:
        ValueError: an unknown target.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
    name, features, model = config.name, config.name + FEATURES_SUFFIX, config.name + MODEL_SUFFIX
    tensors = ARTIFACT_INPUTS[:ID_ONLY_INPUTS] if variant == "id_only" else ARTIFACT_INPUTS
    instances = [mc.ModelInstanceGroup(count=config.instances, kind=mc.ModelInstanceGroup.KIND_CPU)]
    sparse = {f.name for f in spec.sparse}  # type: ignore[attr-defined]
    request = [_io(mc.ModelInput, rx.USER_INPUT, mc.TYPE_INT64, [1]),
               _io(mc.ModelInput, rx.HISTORY_INPUT, mc.TYPE_INT64, [-1]),
               _io(mc.ModelInput, rx.CANDIDATES_INPUT, mc.TYPE_INT64, [-1])]  # fmt: skip
    request += [_io(mc.ModelInput, c, mc.TYPE_INT64 if c in sparse else mc.TYPE_FP32, [-1], optional=True)
                for c in context_features(spec)]  # type: ignore[arg-type]
    version = _io(mc.ModelOutput, rx.VERSION_OUTPUT, mc.TYPE_INT64, [1])
    scores = _io(mc.ModelOutput, rx.SCORES_OUTPUT, mc.TYPE_FP32, [-1])

    ens = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=0)
    ens.input.extend(request)
    ens.output.extend([scores, version])
    step = mc.ModelEnsembling.Step
    ens.ensemble_scheduling.step.append(step(
        model_name=features, model_version=-1, input_map={i.name: i.name for i in request},
        output_map={**{t: t for t in tensors}, rx.VERSION_OUTPUT: rx.VERSION_OUTPUT}))  # fmt: skip
    ens.ensemble_scheduling.step.append(step(
        model_name=model, model_version=-1, input_map={f"INPUT__{i}": t for i, t in enumerate(tensors)},
        output_map={"OUTPUT__0": rx.SCORES_OUTPUT}))  # fmt: skip

    feat = mc.ModelConfig(name=features, backend="python", max_batch_size=0, instance_group=instances)
    feat.input.extend(request)
    feat.output.extend([_io(mc.ModelOutput, t, _TYPES[_ARTIFACT_DIMS[t][0]], _ARTIFACT_DIMS[t][1]) for t in tensors])
    feat.output.append(version)
    for key, value in ((rx.PARAM_MAX_CANDIDATES, config.max_candidates), (rx.PARAM_THREADS, config.torch_threads)):
        feat.parameters[key].string_value = str(value)

    art = mc.ModelConfig(name=model, max_batch_size=0, instance_group=instances)
    art.input.extend([_io(mc.ModelInput, f"INPUT__{i}", _TYPES[_ARTIFACT_DIMS[t][0]], _ARTIFACT_DIMS[t][1])
                      for i, t in enumerate(tensors)])  # fmt: skip
    art.output.append(_io(mc.ModelOutput, "OUTPUT__0", mc.TYPE_FP32, [-1]))
    if target == "embedded":
        art.backend = "python"
        art.parameters["artifact"].string_value = ARTIFACT_FILE
        art.parameters[rx.PARAM_THREADS].string_value = str(config.torch_threads)
    else:
        art.platform = "pytorch_libtorch"
        art.default_model_filename = ARTIFACT_FILE
        art.parameters["INFERENCE_MODE"].string_value = "true"
    return {name: ens, features: feat, model: art}


def check_artifact(path: Path, ranker: Ranker, requests: list[RankRequest]) -> float:
    """``torch.jit.load(path)`` on the feature step's tensors against the eager model; returns the largest difference.

    Checks each request alone and all of them as one batch (shared histories).

    Raises:
        ValueError: a difference above ``ARTIFACT_TOL`` (naming the file), or scores of the wrong shape.
    """
    module = load_artifact(path)
    worst = 0.0
    with torch.inference_mode():
        for batch in [[r] for r in requests] + [requests]:
            want = np.concatenate(ranker.score_many(batch))
            got = module(*ranker.inputs(batch)).numpy()
            if got.shape != want.shape:
                raise ValueError(f"{path}: scores of shape {got.shape}, expected {want.shape}")
            worst = max(worst, float(np.abs(got - want).max()))
    if worst > ARTIFACT_TOL:
        raise ValueError(f"{path}: TorchScript differs from the eager model by {worst:.2e} (> {ARTIFACT_TOL})")
    return worst


def check_requests(world: Path, count: int = CHECK_REQUESTS) -> list[RankRequest]:
    """Up to ``count`` requests of the test day's impressions (``serving.ranker_online.sample_requests``), as logged."""
    from serving.ranker_online import day_impressions, sample_requests

    manifest = Manifest.read(Path(world))
    table = day_impressions(Path(world), manifest.test_day)
    return [r for r, _ in sample_requests(table, manifest.features, users=count, seed=0)][:count]


def export_torchscript_ranker(run: Path, world: Path, out: Path, version: int = 1,
                              config: rx.RankerExportConfig = rx.RankerExportConfig(), store: Path | None = None,
                              precision: str = "fp32") -> dict:
    """``mmctr export-ranker --torchscript``: writes (or adds version ``version`` to) ``out`` (module docstring).

    Args:
        run (Path): a finished ``mmctr train`` or ``mmctr retrain`` run folder.
        world (Path): the dataset it was trained on.
        out (Path): the export folder (``embedded/`` and ``production/`` in it; other versions' folders kept).
        version (int): the version folders to write (replaced if present).
        config (RankerExportConfig): the model's name, ``max_candidates``, instances, threads.
        store (Path | None): the vector store the feature step refreshes the frozen table from.
        precision (str): the artefact's ID tables, one of ``ARTIFACT_PRECISIONS`` (fp16 rows are widened after
            the lookup; int8 tables are the Python-backend ranker's, ``serving.ranker_export``).

    Returns:
        dict: what ``export.json`` records.

    Raises:
        RunError: the run cannot be served (``recsys.eval.runs.load_run``).
        ValueError: ``version`` < 1, an unknown precision, or an artefact that differs from the eager model.
    """
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    if precision not in ARTIFACT_PRECISIONS:
        raise ValueError(f"the TorchScript artefact holds {list(ARTIFACT_PRECISIONS)} tables, got {precision!r}")
    out = Path(out)
    spec = load_run(Path(run), Path(run).name, Path(world))
    ranker = Ranker.load(Path(run), Path(world), config.max_candidates, store, engine="eager")
    out.mkdir(parents=True, exist_ok=True)
    artifact = out / ARTIFACT_FILE
    script_ranker(ranker.model, ranker.spec, precision).save(str(artifact))
    try:
        diff = check_artifact(artifact, ranker if precision == "fp32" else _reference(ranker, precision), check_requests(world))
        entry = rx.RankerVersion(run=str(spec.path.resolve()), world=str(Path(world).resolve()), variant=spec.variant,
                                 version=version, store=None if store is None else str(Path(store).resolve()))
        for target in TARGETS:
            _write(out / target, production_configs(ranker.spec, config, target, spec.variant), config.name, version,
                   entry, artifact)
    finally:
        artifact.unlink()
    manifest = {"run": entry.run, "world": entry.world, "variant": spec.variant, "version": version,
                "precision": precision, "artifact_max_abs_diff": diff,
                "repositories": {t: str(out / t) for t in TARGETS}}  # fmt: skip
    (out / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _reference(ranker: Ranker, precision: str) -> Ranker:
    """The eager model with its ID tables rounded to ``precision`` and back (what a fp16 artefact computes)."""
    import copy

    ref = copy.copy(ranker)
    ref.model = copy.deepcopy(ranker.model)
    dtype = ARTIFACT_PRECISIONS[precision]
    with torch.no_grad():
        for table in (ref.model.id_model.sparse_arch.ebc, ref.model.id_model.sparse_arch.item_table):
            for bag in table.embedding_bags.values():
                bag.weight.copy_(bag.weight.to(dtype).float())
    return ref


def _write(root: Path, configs: dict[str, mc.ModelConfig], name: str, version: int, entry: rx.RankerVersion,
           artifact: Path) -> None:
    """One repository's three models: configs rewritten, version ``version``'s folders replaced, others kept."""
    sources = {name + FEATURES_SUFFIX: ranker_features, name + MODEL_SUFFIX: torchscript}
    for model, config in configs.items():
        folder = root / model / (str(version) if config.platform != "ensemble" else "1")
        if folder.exists() and config.platform != "ensemble":
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (root / model / "config.pbtxt").write_text(text_format.MessageToString(config))
        if config.backend == "python":
            shutil.copyfile(inspect.getsourcefile(sources[model]), folder / rx.MODEL_FILE)  # type: ignore[arg-type]
        if model == name + FEATURES_SUFFIX:
            (folder / rx.VERSION_FILE).write_text(json.dumps(asdict(entry), indent=2) + "\n")
        if model == name + MODEL_SUFFIX:
            shutil.copyfile(artifact, folder / ARTIFACT_FILE)
