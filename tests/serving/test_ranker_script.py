"""The ranker's TorchScript artefact: torch.jit.load of it against the eager model, its repositories, served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.data.schema import Manifest, table_files
from recsys.models.config import ModelConfig
from recsys.models.ctr_model import CtrModel
from serving.client import ClientConfig
from serving.ranker import Ranker, RankRequest
from serving.ranker_client import RankerClient, RankerRequestError
from serving.ranker_export import RankerExportConfig
from serving.ranker_production import check_artifact, check_requests, export_torchscript_ranker
from serving.ranker_script import ARTIFACT_INPUTS, load_artifact, script_ranker
from serving.server import ServerConfig, TritonServer
from tests.serving.test_ranker import _raw

TOL = 1e-5


def _random_ranker(world: Path, config: ModelConfig, dim: int = 8, seed: int = 0) -> Ranker:
    """An untrained model of ``config`` on ``world`` (random ID tables and layers, random unit vectors for every
    other item, none for the rest) behind the serving joins: the artefact is checked on its arithmetic, not its skill."""
    torch.manual_seed(seed)
    manifest = Manifest.read(world)
    spec = manifest.features
    sizes = spec.table_rows(manifest.id_ranges)
    items = pq.read_table(table_files(world, "items"), columns=[spec.item_key])[spec.item_key].to_numpy()
    raw = spec.table(spec.table_of(spec.item_key)).ids != "identity"
    model = CtrModel(config, spec, sizes, mm_dim=dim, history_slots=manifest.max_history_len,
                     mm_rows=len(items) + 1 if raw else None).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)  # bigger than the init, so every input moves the score
    if model.mm_arch is not None:
        rng = np.random.default_rng(seed)
        keep = np.sort(items[::2])
        vectors = rng.normal(size=(len(keep), dim))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        if raw:
            model.mm_arch.load_raw(keep, vectors)
        else:
            model.mm_arch.load_rows(keep, vectors)
    stats = {f.name: (1.0, 2.0) for f in spec.dense if "standardize" in f.transform}  # any moments: the same for both
    reader = ImpressionReader(world, ReaderConfig(batch_size=500, table_sizes=sizes, dense_stats=stats or None))
    return Ranker(model, reader, "random")


def _compare(ranker: Ranker, requests: list[RankRequest], tmp_path: Path) -> float:
    """Saves the scripted model, loads it, and returns its largest difference from the eager scores,
    request by request and as one batch."""
    path = tmp_path / "model.pt"
    script_ranker(ranker.model, ranker.spec).save(str(path))
    module = load_artifact(path)
    worst = 0.0
    for batch in [[r] for r in requests] + [requests]:
        want = np.concatenate(ranker.score_many(batch))
        with torch.inference_mode():
            got = module(*ranker.inputs(batch)).numpy()
        assert got.shape == want.shape and np.isfinite(got).all()
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


@pytest.mark.parametrize("config", [
    ModelConfig(variant="id_only"),
    ModelConfig(variant="simtier"),  # soft tiers, learned metric
    ModelConfig(variant="simtier", simtier_soft=False, simtier_learned_metric=False),  # the paper's
    ModelConfig(variant="make", attention_softmax=True),
    ModelConfig(variant="simtier_make"),
    ModelConfig(variant="make", make_attention="bilinear"),
    ModelConfig(variant="vector"),
    ModelConfig(variant="simscore"),
], ids=["id_only", "simtier", "simtier_paper", "make_softmax", "simtier_make", "make_bilinear", "vector", "simscore"])
def test_scripted_equals_eager_for_every_variant(config: ModelConfig, tiny_world: Path, tmp_path: Path) -> None:
    ranker = _random_ranker(tiny_world, config)
    requests = check_requests(tiny_world, 12)
    requests.append(RankRequest(requests[0].user, np.array([], dtype=np.int64), requests[0].candidates[:3]))  # no history
    requests.append(RankRequest(10**9, np.array([10**9, 1]), np.array([10**9, 2])))  # unknown user and items, folded
    assert _compare(ranker, requests, tmp_path) <= TOL


def test_scripted_equals_eager_on_a_raw_id_log(unlike_log: Path, tmp_path: Path) -> None:
    """Raw 64-bit IDs through managed collisions, the history carrying each item's category (2 target-group
    tables), a categorical context feature, and a raw-ID multimodal table."""
    ranker = _random_ranker(unlike_log, ModelConfig(variant="simtier_make"))
    requests = check_requests(unlike_log, 12)
    inputs = ranker.inputs(requests)
    assert inputs[ARTIFACT_INPUTS.index("history_rows")].shape[2] == 2  # item and category per position
    assert max(int(r.candidates.max()) for r in requests) > 2**40
    assert (inputs[ARTIFACT_INPUTS.index("target_vector")].norm(dim=1) > 0).any()  # some candidates have a vector
    assert (inputs[ARTIFACT_INPUTS.index("target_vector")].norm(dim=1) == 0).any()  # and some lack one
    assert _compare(ranker, requests, tmp_path) <= TOL


def test_a_history_shared_by_candidates_is_sent_once(tiny_world: Path) -> None:
    ranker = _random_ranker(tiny_world, ModelConfig(variant="simtier"))
    requests = [r for r in check_requests(tiny_world, 20) if len(r.history) > 0][:3]
    inputs = dict(zip(ARTIFACT_INPUTS, ranker.inputs(requests)))
    n = sum(len(r.candidates) for r in requests)
    assert inputs["history_rows"].shape[:2] == (3, max(len(r.history) for r in requests))
    assert inputs["history_of"].tolist() == np.repeat(np.arange(3), [len(r.candidates) for r in requests]).tolist()
    assert inputs["dense"].shape[0] == n and inputs["history_vector"].shape[0] == 3
    lengths = (inputs["history_rows"][:, :, 0] >= 0).sum(1).tolist()
    assert lengths == [len(r.history) for r in requests]


@pytest.fixture(scope="module")
def exported(tiny_world: Path, eval_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ts-ranker")
    export_torchscript_ranker(eval_runs["simtier"], tiny_world, out, config=RankerExportConfig(instances=1))
    export_torchscript_ranker(eval_runs["id_only"], tiny_world, out, config=RankerExportConfig(name="ranker_id", instances=1))
    return out


def test_export_writes_both_repositories_and_checks_the_artefact(exported: Path, eval_runs: dict[str, Path],
                                                                  tiny_world: Path) -> None:
    for target in ("embedded", "production"):
        for name, count in (("ranker", 7), ("ranker_id", 5)):
            model = text_format.Parse((exported / target / f"{name}_model" / "config.pbtxt").read_text(), mc.ModelConfig())
            assert len(model.input) == count and model.max_batch_size == 0
            assert (model.platform == "pytorch_libtorch") == (target == "production")
            assert (model.backend == "python") == (target == "embedded")
            module = load_artifact(exported / target / f"{name}_model" / "1" / "model.pt")
            # what Triton's PyTorch backend checks at load: one forward argument per input, each a Tensor
            arguments = module.forward.schema.arguments[1:]  # after self
            assert len(arguments) == len(model.input) and all(str(a.type) == "Tensor" for a in arguments)
            ens = text_format.Parse((exported / target / name / "config.pbtxt").read_text(), mc.ModelConfig())
            steps = [s.model_name for s in ens.ensemble_scheduling.step]
            assert ens.platform == "ensemble" and steps == [f"{name}_features", f"{name}_model"]
    artefact = exported / "production" / "ranker_model" / "1" / "model.pt"
    ranker = Ranker.load(eval_runs["simtier"], tiny_world, engine="eager")
    assert check_artifact(artefact, ranker, check_requests(tiny_world, 4)) <= TOL
    with torch.no_grad():  # the check can fail: the run's model changed after the export
        next(iter(ranker.model.id_model.sparse_arch.ebc.embedding_bags.values())).weight.add_(0.5)
    with pytest.raises(ValueError, match="differs from the eager model"):
        check_artifact(artefact, ranker, check_requests(tiny_world, 4))


def test_fp16_tables_score_close_to_fp32(eval_runs: dict[str, Path], tiny_world: Path, tmp_path: Path) -> None:
    done = export_torchscript_ranker(eval_runs["simtier"], tiny_world, tmp_path, precision="fp16")
    assert done["artifact_max_abs_diff"] <= TOL  # against the eager model with its tables rounded to fp16
    fp16 = load_artifact(tmp_path / "production" / "ranker_model" / "1" / "model.pt")
    ranker = Ranker.load(eval_runs["simtier"], tiny_world, engine="eager")
    requests = check_requests(tiny_world, 16)
    with torch.inference_mode():
        got = fp16(*ranker.inputs(requests)).numpy()
    diff = np.abs(got - np.concatenate(ranker.score_many(requests))).max()
    assert 0 < diff <= 5e-3
    with pytest.raises(ValueError, match="int8"):
        export_torchscript_ranker(eval_runs["simtier"], tiny_world, tmp_path / "x", precision="int8")


def test_the_embedded_ensemble_serves_the_artefact_as_offline(exported: Path, eval_runs: dict[str, Path],
                                                              tiny_world: Path) -> None:
    """The ensemble (feature step, then model.pt) on a real server: the eager model's scores, refusals that
    name the field, and the server still serving afterwards."""
    requests = check_requests(tiny_world, 16)
    eager = {n: Ranker.load(eval_runs[v], tiny_world, engine="eager") for n, v in (("ranker", "simtier"), ("ranker_id", "id_only"))}
    with TritonServer(ServerConfig(repository=exported / "embedded")) as server:
        for name, ranker in eager.items():
            with RankerClient(ClientConfig(url=server.grpc_url, model=name)) as client:
                for r in requests:
                    ranked = client.rank(r.user, r.history, r.candidates, r.context)
                    assert ranked.version == 1
                    assert np.abs(ranked.scores - ranker.score(r)).max() <= TOL
        with RankerClient(ClientConfig(url=server.grpc_url, model="ranker", retries=0)) as client:
            r = requests[0]
            with pytest.raises(RankerRequestError, match="candidates: 501 items"):
                client.rank(r.user, r.history, np.arange(501))
            n = len(r.candidates)
            message = _raw(server, "ranker", {"user": np.array([r.user]), "history": r.history.astype(np.int64),
                                                       "candidates": r.candidates, "position": np.zeros(n + 1, np.float32)})
            assert f"context feature 'position': shape ({n + 1},), expected ({n},)" in message
            bare = RankRequest(r.user, r.history, r.candidates)  # position left out: 0
            assert np.abs(client.rank(r.user, r.history, r.candidates).scores - eager["ranker"].score(bare)).max() <= TOL



@pytest.mark.parametrize("variant", ["id_only", "simtier_make", "vector", "simscore"])
def test_scripted_equals_eager_with_shared_tables_and_own_widths(variant: str) -> None:
    """A spec the fixtures lack: two pooled features reading one table with a feature of another table between
    them (the pooled EBC's output is table by table, not in spec order), tables of their own widths, a history
    side feature, and shared histories of which one is empty."""
    import dataclasses

    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from recsys.data.spec import Table, world_spec
    from serving.ranker import share_history
    from serving.ranker_script import artifact_inputs

    torch.manual_seed(1)
    base = world_spec()
    shared = {"age_bucket": "profile", "city_id": "profile"}
    sparse = tuple(dataclasses.replace(f, table=shared.get(f.name, f.table)) for f in base.sparse)
    names = sorted({f.table or f.name for f in sparse})
    assert {"age_bucket", "city_id"} <= set(base.pooled()) and "profile" in names
    widths = {"user_id": 4, "profile": 6, "item_id": 8, "category_id": 3}
    spec = dataclasses.replace(base, sparse=sparse, tables=tuple(Table(n, dim=widths.get(n)) for n in names),
                               history_side=("category_id",))
    rows = 10
    model = CtrModel(ModelConfig(variant=variant, attention_softmax=True), spec, {n: rows for n in names}, mm_dim=8).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
        if model.mm_arch is not None:
            n, d = model.mm_arch.table_weight().shape
            keep = np.array([r for r in range(n) if r % 3])  # every third item without a vector
            model.mm_arch.load_rows(keep, torch.nn.functional.normalize(torch.randn(len(keep), d), dim=1))
    B, histories = 5, [3, 3, 0, 0, 2]  # requests of 2, 2 and 1 candidates; the second has no history
    single = len(spec.sparse_keys())
    lengths = torch.tensor([1] * (single * B) + histories * len(spec.history_keys()))
    kjt = KeyedJaggedTensor(keys=list(spec.kjt_keys()), values=torch.randint(0, rows, (int(lengths.sum()),)), lengths=lengths)
    dense = torch.randn(B, len(spec.dense))
    shared_kjt, history_of = share_history(kjt, spec.history_keys(), [2, 2, 1])
    with torch.no_grad():
        eager = torch.sigmoid(model(dense, shared_kjt, history_of=history_of))
        got = script_ranker(model, spec)(*artifact_inputs(model, spec, dense, kjt, history_of))
    assert float((eager - got).abs().max()) <= TOL
    assert float(eager.std()) > 1e-3  # the rows differ, so the comparison compares something
