"""``mmctr export-ranker``: a finished CTR run as a Triton model repository, one numbered version per run.

Writes, from the names below and the run's feature spec::

    REPO/
      ranker/               (the model's name: --name, default ranker)
        config.pbtxt        Python backend; ragged dynamic batching of whole requests;
                            the newest version served (version_policy latest 1)
        1/                  version 1: the run given first
          model.py          serving/triton_models/ranker.py
          ranker.json       RankerVersion: the run folder, the dataset, the limits
        2/ ...              a later export with --version 2 (a retrain): hot update

The interface (one request = one user's candidates)::

    user        INT64 [1, 1]   the user ID
    history     INT64 [1, L]   the user's behaviour history, oldest first (L >= 0)
    candidates  INT64 [1, N]   the items to rank, 1 <= N <= max_candidates
    <context>   FP32  [1, N]   optional, one input per context feature (``serving.ranker.context_features``);
                               INT64 for a categorical (sparse) one
    ->
    scores      FP32  [1, N]   click probabilities, candidate order
    version     INT64 [1, 1]   the model version that scored them

The leading 1 is Triton's batch dimension: requests of different N go
through the dynamic batcher together (``allow_ragged_batch``), and the
model scores a dynamic batch's requests in one forward pass.

Example::

    >>> from recsys.data.spec import world_spec
    >>> config = ranker_config(world_spec(), RankerExportConfig())
    >>> [i.name for i in config.input], [o.name for o in config.output], config.backend
    (['user', 'history', 'candidates', 'position'], ['scores', 'version'], 'python')
"""

from __future__ import annotations

import inspect
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from recsys.data.schema import Manifest
from recsys.data.vectors import open_store
from recsys.eval.runs import load_run
from recsys.settings import setting
from serving.ranker import ENGINES, MAX_CANDIDATES, PRECISIONS, context_features
from serving.triton_models import ranker as ranker_model

RANKER_MODEL = "ranker"  # the model's folder and name
USER_INPUT = "user"
HISTORY_INPUT = "history"
CANDIDATES_INPUT = "candidates"
SCORES_OUTPUT = "scores"
VERSION_OUTPUT = "version"
VERSION_FILE = "ranker.json"  # RankerVersion, in each version folder
MODEL_FILE = "model.py"
PARAM_MAX_CANDIDATES = "max_candidates"
PARAM_THREADS = "torch_threads"
PARAM_PRECISION = "precision"
PARAM_ENGINE = "engine"
PARAM_SCORE_LOG = "score_log"  # "" = no log
PARAM_SCORE_LOG_SAMPLE = "score_log_sample"


@dataclass(frozen=True)
class RankerExportConfig:
    """Name, limits and batching of a served ranker (``mmctr export-ranker``'s settings)."""

    name: str = setting(RANKER_MODEL, "the model's name (folder) in the repository; one repository may serve several")
    max_candidates: int = setting(MAX_CANDIDATES, "the most candidates one request may hold")
    # 4 and 2 instances: bench.ranking's best p99 at concurrency 8 on 2 cores (README, "Benchmark")
    max_batch_size: int = setting(4, "requests the dynamic batcher scores in one forward pass")
    queue_delay_us: int = setting(1000, "dynamic batching delay, microseconds")
    torch_threads: int = setting(1, "intra-op threads of the served ranker; 0: torch's default")
    instances: int = setting(2, "model instances (one CPU worker process each)")
    precision: str = setting("fp32", "how the served ID tables hold their rows", choices=tuple(PRECISIONS))
    engine: str = setting("auto", "what runs the served model: its TorchScript (serving.ranker_script), the eager "
                          "model, or auto (TorchScript for fp32 tables)", choices=ENGINES)
    score_log: Path | None = setting(None, "log served requests and scores to this Parquet directory (serving.ranker_log)")
    score_log_sample: float = setting(0.01, "the share of requests logged, in [0, 1]")

    def __post_init__(self) -> None:
        for name in ("max_candidates", "max_batch_size", "instances"):
            if getattr(self, name) < 1:
                raise ValueError(f"RankerExportConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.score_log_sample <= 1.0:
            raise ValueError(f"RankerExportConfig.score_log_sample must lie in [0, 1], got {self.score_log_sample}")
        if self.queue_delay_us < 0 or self.torch_threads < 0:
            raise ValueError(f"RankerExportConfig: queue_delay_us and torch_threads must be >= 0, got {self}")
        if self.engine == "torchscript" and self.precision != "fp32":  # what Ranker.load would refuse at load time
            raise ValueError(f"RankerExportConfig: engine 'torchscript' serves fp32 tables; {self.precision} tables are "
                             f"TorchRec's quantised modules, served by engine 'eager' or 'auto'")


@dataclass(frozen=True)
class RankerVersion:
    """What one version folder serves (its ``ranker.json``; paths absolute)."""

    run: str  # the finished run folder
    world: str  # the dataset whose users and items tables the server joins
    variant: str  # the run's ModelConfig.variant
    version: int  # this folder's number
    store: str | None = None  # the vector store new items' vectors are read from while serving (mmctr embed-new's)


def _tensor(cls: type, name: str, dtype: int, ragged: bool = False, optional: bool = False) -> object:
    t = cls(name=name, data_type=dtype, dims=[-1] if name != USER_INPUT and name != VERSION_OUTPUT else [1])
    if ragged:
        t.allow_ragged_batch = True
    if optional:
        t.optional = True
    return t


def ranker_config(spec: object, config: RankerExportConfig) -> mc.ModelConfig:
    """The ranker's ``config.pbtxt`` message for a dataset's feature spec (module docstring).

    Args:
        spec (FeatureSpec): the dataset's features (its context features become optional inputs).
        config (RankerExportConfig): limits and batching.
    """
    c = mc.ModelConfig(
        name=config.name,
        backend="python",
        max_batch_size=config.max_batch_size,
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=config.queue_delay_us),
        instance_group=[mc.ModelInstanceGroup(count=config.instances, kind=mc.ModelInstanceGroup.KIND_CPU)],
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
    )
    c.input.append(_tensor(mc.ModelInput, USER_INPUT, mc.TYPE_INT64))
    c.input.append(_tensor(mc.ModelInput, HISTORY_INPUT, mc.TYPE_INT64, ragged=True))
    c.input.append(_tensor(mc.ModelInput, CANDIDATES_INPUT, mc.TYPE_INT64, ragged=True))
    sparse = {f.name for f in spec.sparse}  # type: ignore[attr-defined]
    for name in context_features(spec):  # type: ignore[arg-type]
        # a categorical context feature keeps its 64-bit IDs (FP32 holds integers exactly only up to 2**24)
        dtype = mc.TYPE_INT64 if name in sparse else mc.TYPE_FP32
        c.input.append(_tensor(mc.ModelInput, name, dtype, ragged=True, optional=True))
    c.output.append(_tensor(mc.ModelOutput, SCORES_OUTPUT, mc.TYPE_FP32))
    c.output.append(_tensor(mc.ModelOutput, VERSION_OUTPUT, mc.TYPE_INT64))
    log = "" if config.score_log is None else str(Path(config.score_log).resolve())
    for name, value in ((PARAM_MAX_CANDIDATES, config.max_candidates), (PARAM_THREADS, config.torch_threads),
                        (PARAM_PRECISION, config.precision), (PARAM_ENGINE, config.engine),
                        (PARAM_SCORE_LOG, log), (PARAM_SCORE_LOG_SAMPLE, config.score_log_sample)):
        c.parameters[name].string_value = str(value)
    return c


def read_version(folder: Path) -> RankerVersion:
    """A version folder's ``ranker.json``."""
    return RankerVersion(**json.loads((Path(folder) / VERSION_FILE).read_text()))


def export_ranker(run: Path, world: Path, out: Path, version: int = 1, config: RankerExportConfig = RankerExportConfig(),
                  store: Path | None = None) -> RankerVersion:
    """``mmctr export-ranker``: writes (or adds a version to) the repository ``out`` (module docstring).

    The run is checked as ``mmctr evaluate`` checks it (finished, trained on
    ``world``, its vectors and MAKE folder present). ``config.pbtxt`` is
    rewritten; other versions' folders are kept, so a server in explicit
    model-control mode loads the new version on its next load request.

    Args:
        run (Path): a finished ``mmctr train`` or ``mmctr retrain`` run folder.
        world (Path): the dataset it was trained on (its users and items tables are joined at serving time).
        out (Path): the model repository.
        version (int): the version folder to write (replaced if present).
        config (RankerExportConfig): limits and batching.
        store (Path | None): a vector store (``mmctr embed-new --store``): new items' vectors join the
            frozen table while serving, within ``serving.ranker.REFRESH_INTERVAL_S`` of being written.

    Raises:
        RunError: the run cannot be served (``recsys.eval.runs.load_run``).
        ValueError: ``version`` < 1, or ``store`` of another format.
        FileNotFoundError: ``store`` is not a vector store (a run with vectors; ``id_only`` reads none).
    """
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    spec = load_run(Path(run), Path(run).name, Path(world))
    manifest = Manifest.read(Path(world))
    if store is not None and spec.vectors is not None:  # refused here, not when the server loads the model
        open_store(Path(store)).close()
    model_dir = Path(out) / config.name
    folder = model_dir / str(version)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copyfile(inspect.getsourcefile(ranker_model), folder / MODEL_FILE)  # type: ignore[arg-type]
    entry = RankerVersion(run=str(spec.path.resolve()), world=str(Path(world).resolve()), variant=spec.variant,
                          version=version, store=None if store is None else str(Path(store).resolve()))
    (folder / VERSION_FILE).write_text(json.dumps(asdict(entry), indent=2) + "\n")
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(ranker_config(manifest.features, config)))
    return entry
