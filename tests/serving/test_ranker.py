"""The online ranker: in-process and on a real Triton server, its scores against `mmctr evaluate`'s offline ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch.distributed as dist
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from recsys.cli import main
from recsys.data.schema import Manifest, table_files
from recsys.distributed import init_distributed
from recsys.eval.runs import load_run
from recsys.data.vectors import VECTORS_FILE, read_item_vectors
from recsys.eval.score import score_run
from recsys.pipeline.catalogue import write_catalogue
from recsys.models.config import VARIANTS, ModelConfig
from recsys.train.config import TrainConfig
from recsys.train.trainer import TrainJob, run_train
from serving.client import ClientConfig
from serving.ranker import Ranker, RankRequest, RankRequestError
from serving.ranker_client import RankerClient, RankerRequestError
from serving.ranker_export import RankerExportConfig, export_ranker, read_version
from serving.ranker_log import read_score_log, replay_requests
from serving.server import ServerConfig, TritonServer
from serving.store import VectorStore

TOL = 1e-5  # the issue's: served = offline to 1e-5
ROWS = 240  # test-day impressions compared per run


@pytest.fixture(scope="module")
def catalogue(tiny_world: Path, oracle_vectors: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The oracle vectors of items created before the test day (the pipeline's catalogue): the test day's new items lack one."""
    out = tmp_path_factory.mktemp("catalogue")
    write_catalogue(tiny_world, oracle_vectors.parent, Manifest.read(tiny_world).test_day, out)
    return out / VECTORS_FILE


@pytest.fixture(scope="module")
def runs(tiny_world: Path, catalogue: Path, eval_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """id_only and simtier (paper's SimTier) from the shared fixture, plus every other variant with the defaults
    on the catalogue (the test day's new items lack a vector)."""
    root = tmp_path_factory.mktemp("ranker-runs")
    out = {}
    for variant in VARIANTS:
        if variant not in eval_runs:
            out[variant] = root / variant
            run_train(TrainJob(world=tiny_world, out=out[variant], model=ModelConfig(variant=variant), vectors=catalogue,
                               quiet=True, train=TrainConfig(batch_size=256, make_max_epochs=1)))
    return {**eval_runs, **out}


@pytest.fixture(scope="module")
def offline(tiny_world: Path, runs: dict[str, Path]) -> dict[str, np.ndarray]:
    """Each run's offline scores of the test day's first ROWS impressions (file order: one rank, no shuffle)."""
    day = Manifest.read(tiny_world).test_day
    created = not dist.is_initialized()
    ctx = init_distributed(always=True)  # DMP needs a process group, even of one rank
    try:
        scores = {v: score_run(load_run(p, v, tiny_world), tiny_world, day, ctx)[2].predictions[:ROWS] for v, p in runs.items()}
    finally:
        if created:
            dist.destroy_process_group()
    return scores


def _impressions(world: Path) -> dict[str, np.ndarray | list]:
    """The test day's first ROWS impressions, as the files hold them."""
    day = Manifest.read(world).test_day
    files = [f for f in table_files(world, "impressions") if f"day-{day:04d}" in f.name]
    t = pq.read_table(files[0]).slice(0, ROWS)
    assert t.num_rows == ROWS
    return {"user": t["user_id"].to_numpy(), "item": t["item_id"].to_numpy(), "position": t["position"].to_numpy(),
            "history": t["history_item_ids"].to_pylist()}


def _requests(world: Path) -> list[tuple[RankRequest, np.ndarray]]:
    """The impressions grouped into requests: rows of one user with one history are one request's candidates
    (their logged positions as context); returns each request and its rows."""
    imp = _impressions(world)
    groups: dict[tuple, list[int]] = {}
    for i in range(ROWS):
        groups.setdefault((int(imp["user"][i]), tuple(imp["history"][i])), []).append(i)
    out = []
    for (user, history), rows in groups.items():
        idx = np.array(rows)
        out.append((RankRequest(user, np.array(history, dtype=np.int64), imp["item"][idx],
                                {"position": imp["position"][idx].astype(np.float64)}), idx))
    return out


def test_requests_cover_every_row_once(tiny_world: Path) -> None:
    rows = np.concatenate([idx for _, idx in _requests(tiny_world)])
    assert np.array_equal(np.sort(rows), np.arange(ROWS))
    assert max(len(idx) for _, idx in _requests(tiny_world)) > 1  # some requests rank several candidates


@pytest.mark.parametrize("engine", ["torchscript", "eager"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_in_process_scores_equal_offline(variant: str, engine: str, tiny_world: Path, runs: dict[str, Path],
                                         offline: dict[str, np.ndarray]) -> None:
    ranker = Ranker.load(runs[variant], tiny_world, engine=engine)
    assert (ranker.scripted is not None) == (engine == "torchscript")
    got = np.full(ROWS, np.nan)
    requests = _requests(tiny_world)
    for request, idx in requests[: len(requests) // 2]:  # one request at a time
        got[idx] = ranker.score(request)
    rest = requests[len(requests) // 2 :]
    for (_, idx), scores in zip(rest, ranker.score_many([r for r, _ in rest])):  # a dynamic batch of requests
        got[idx] = scores
    assert not np.isnan(got).any()
    assert np.abs(got - offline[variant]).max() <= TOL


def test_a_context_feature_left_out_is_zero(tiny_world: Path, runs: dict[str, Path]) -> None:
    ranker = Ranker.load(runs["id_only"], tiny_world)
    request, _ = _requests(tiny_world)[0]
    bare = RankRequest(request.user, request.history, request.candidates)
    zero = RankRequest(request.user, request.history, request.candidates, {"position": np.zeros(len(request.candidates))})
    assert np.array_equal(ranker.score(bare), ranker.score(zero))
    assert not np.array_equal(ranker.score(bare), ranker.score(request))  # position matters to this model


def test_in_process_refusals_name_the_field(tiny_world: Path, runs: dict[str, Path]) -> None:
    ranker = Ranker.load(runs["id_only"], tiny_world, max_candidates=4)
    with pytest.raises(RankRequestError, match="candidates: 5 items"):
        ranker.score(RankRequest(1, np.array([2]), np.arange(5)))
    with pytest.raises(RankRequestError, match="context feature 'slot'"):
        ranker.score(RankRequest(1, np.array([2]), np.arange(2), {"slot": np.zeros(2)}))
    with pytest.raises(RankRequestError, match="'position': shape"):
        ranker.score(RankRequest(1, np.array([2]), np.arange(2), {"position": np.zeros(3)}))
    with pytest.raises(ValueError, match="negative"):
        ranker.score(RankRequest(1, np.array([2]), np.array([-3])))


def test_cli_refuses_in_one_line_what_a_server_would_not_load(runs: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """export-ranker refuses a missing store and TorchScript on quantised tables before writing anything; rank
    refuses options of the other path and malformed --context, each in one line (no traceback)."""
    out = tmp_path / "repo"
    assert main(["export-ranker", "--run", str(runs["simtier"]), "--out", str(out), "--store", str(tmp_path / "no.sqlite")]) == 1
    assert main(["export-ranker", "--run", str(runs["simtier"]), "--out", str(out), "--engine", "torchscript",
                 "--precision", "int8"]) == 1
    assert not out.exists()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "no vector store" in err[0] and "fp32 tables" in err[1], err
    request = ["--user", "1", "--history", "2", "--candidates", "3", "4"]
    assert main(["rank", "--run", str(runs["id_only"]), "--url", "127.0.0.1:1", *request]) == 2
    assert main(["rank", "--precision", "int8", *request]) == 2
    for bad in ("position", "position=", "position=a,b"):
        assert main(["rank", "--run", str(runs["id_only"]), *request, "--context", bad]) == 1
    assert main(["rank", "--run", str(runs["id_only"]), *request, "--context", "position=0,1", "--context", "position=2,3"]) == 1
    assert main(["rank", "--run", str(runs["id_only"]), "--user", "-5", "--candidates", "3"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mmctr rank:")]
    assert len(err) == 7 and "NAME=V1,V2" in err[2] and "number" in err[4] and "twice" in err[5] and "negative" in err[6], err


def test_unknown_users_and_items_are_scored_and_counted(tiny_world: Path, runs: dict[str, Path]) -> None:
    """An unknown user scores as its folded ID with a zero profile; unknown items are counted, never an error."""
    from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

    ranker = Ranker.load(runs["simtier"], tiny_world)
    request, _ = _requests(tiny_world)[0]
    users = Manifest.read(tiny_world).id_ranges["user_id"]
    unknown = RankRequest(users * 250 + 7, request.history, request.candidates, request.context)
    got = ranker.score(unknown)
    n = len(request.candidates)
    assert ranker.unknown_counts == {"users": n, "items": 0, "history_items": 0, "folded": n}
    # the reference: the folded user's own rows, its profile features (source users) set to 0 in the KJT
    known = RankRequest(7, request.history, request.candidates, request.context)
    batch = ranker.reader.batch_of(ranker.rows(known))
    profile = {f.name for f in ranker.spec.sparse if f.source == "users"}
    jts = batch.sparse_features.to_dict()
    kjt = KeyedJaggedTensor.from_jt_dict({k: JaggedTensor(values=v.values() * 0, lengths=v.lengths()) if k in profile else v
                                          for k, v in jts.items()})
    import torch

    with torch.inference_mode():
        want = torch.sigmoid(ranker.model(batch.dense_features, kjt)).numpy()
    assert np.abs(got - want).max() <= TOL
    items = Manifest.read(tiny_world).id_ranges["item_id"]
    odd = RankRequest(7, np.array([items + 3]), np.array([items + 1, int(request.candidates[0])]))
    assert np.isfinite(ranker.score(odd)).all()
    counts = ranker.unknown_counts  # the unknown history item once per request, not once per candidate
    assert counts["items"] == 1 and counts["folded"] == n + 1 + 1


@pytest.fixture(scope="module")
def fresh_store(oracle_vectors: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty vector store bound to the oracle vectors' width: the embedder's, before any new item."""
    path = tmp_path_factory.mktemp("store") / "vectors.sqlite"
    with VectorStore(path) as store:
        store.bind(dim=read_item_vectors(oracle_vectors)[1].shape[1], encoder_sha256="")
    return path


@pytest.fixture(scope="module")
def repository(tiny_world: Path, runs: dict[str, Path], fresh_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One repository serving every run, each as its own model, and simtier_make reading the store as ranker_fresh
    (one instance each: a quicker start; the pipeline's test serves the default two)."""
    repo = tmp_path_factory.mktemp("ranker-repo")
    export_ranker(runs["simtier_make"], tiny_world, repo, config=RankerExportConfig(name="ranker_fresh", instances=1), store=fresh_store)
    for variant, run in runs.items():
        export_ranker(run, tiny_world, repo, config=RankerExportConfig(name=f"ranker_{variant}", max_candidates=64, instances=1))
    export_ranker(runs["simtier"], tiny_world, repo, config=RankerExportConfig(name="ranker_simtier_int8", precision="int8", instances=1))
    return repo


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[TritonServer]:
    with TritonServer(ServerConfig(repository=repository, model_control="explicit")) as s:  # hot updates: explicit
        yield s


def test_categorical_context_features_are_int64_inputs(unlike_log: Path) -> None:
    """A log's sparse context feature (``slot``) keeps 64-bit IDs on the wire; dense ones are FP32."""
    from tritonclient.grpc import model_config_pb2 as mc

    from serving.ranker_export import ranker_config

    spec = Manifest.read(unlike_log).features
    config = ranker_config(spec, RankerExportConfig())
    dtypes = {i.name: i.data_type for i in config.input}
    context = {f.name for f in spec.sparse if f.source == "impressions"} - {spec.user_key, spec.item_key}
    assert context and all(dtypes[name] == mc.TYPE_INT64 for name in context)
    assert all(dtypes[f.name] == mc.TYPE_FP32 for f in spec.dense if f.source == "impressions")


def test_export_writes_one_version_naming_the_run(repository: Path, runs: dict[str, Path]) -> None:
    entry = read_version(repository / "ranker_simtier_make" / "1")
    assert (entry.run, entry.variant, entry.version) == (str(runs["simtier_make"].resolve()), "simtier_make", 1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_served_scores_equal_offline(variant: str, tiny_world: Path, server: TritonServer, offline: dict[str, np.ndarray]) -> None:
    got = np.full(ROWS, np.nan)
    with RankerClient(ClientConfig(url=server.grpc_url, model=f"ranker_{variant}")) as client:
        for request, idx in _requests(tiny_world):
            ranked = client.rank(request.user, request.history, request.candidates, request.context)
            assert ranked.version == 1
            got[idx] = ranked.scores
    assert np.abs(got - offline[variant]).max() <= TOL


def test_served_int8_tables_score_as_in_process(tiny_world: Path, runs: dict[str, Path], server: TritonServer) -> None:
    ranker = Ranker.load(runs["simtier"], tiny_world, precision="int8")
    with RankerClient(ClientConfig(url=server.grpc_url, model="ranker_simtier_int8")) as client:
        for request, _ in _requests(tiny_world)[:20]:
            served = client.rank(request.user, request.history, request.candidates, request.context).scores
            assert np.abs(served - ranker.score(request)).max() <= TOL


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_quantised_id_tables_score_close_to_fp32_in_less_memory(precision: str, tiny_world: Path, runs: dict[str, Path]) -> None:
    fp32, quantised = (Ranker.load(runs["simtier"], tiny_world, precision=p) for p in ("fp32", precision))
    requests = [r for r, _ in _requests(tiny_world)]
    diff = np.abs(np.concatenate(quantised.score_many(requests)) - np.concatenate(fp32.score_many(requests))).max()
    assert 0 < diff <= 5e-3  # rows really quantised, scores barely moved
    manifest = Manifest.read(tiny_world)
    rows = manifest.features.table_rows(manifest.id_ranges)
    assert fp32.table_bytes() == sum(rows.values()) * ModelConfig().embedding_dim * 4  # the rows, as a plain count gives
    assert quantised.table_bytes() <= fp32.table_bytes() / 2


def _raw(server: TritonServer, model: str, arrays: dict[str, np.ndarray]) -> str:
    """Sends tensors as given (no client-side checks); returns the server's error message ('' if it answered)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = []
    for name, a in arrays.items():
        t = grpcclient.InferInput(name, list(a.shape), {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}[a.dtype])
        t.set_data_from_numpy(a)
        inputs.append(t)
    try:
        client.infer(model, inputs)
        return ""
    except InferenceServerException as e:
        return e.message()
    finally:
        client.close()


def test_bad_requests_refused_and_the_server_keeps_serving(server: TritonServer, tiny_world: Path) -> None:
    model = "ranker_id_only"
    user, hist = np.array([[1]], np.int64), np.array([[2, 3]], np.int64)
    cases = {
        "candidates: 65 items": {"user": user, "history": hist, "candidates": np.arange(65, dtype=np.int64)[None]},
        "candidates: empty": {"user": user, "history": hist, "candidates": np.zeros((1, 0), np.int64)},
        "unexpected shape for input 'user'": {"user": np.array([[1, 2]], np.int64), "history": hist, "candidates": hist},
        "negative": {"user": user, "history": hist, "candidates": np.array([[-4]], np.int64)},
        "'position': shape": {"user": user, "history": hist, "candidates": hist, "position": np.zeros((1, 3), np.float32)},
        "data-type": {"user": user, "history": hist, "candidates": hist.astype(np.float32)},
    }
    for expected, arrays in cases.items():
        message = _raw(server, model, arrays)
        assert expected in message, (expected, message)
    with RankerClient(ClientConfig(url=server.grpc_url, model=model, retries=0)) as client:
        with pytest.raises(RankerRequestError, match="candidates: 65 items"):
            client.rank(1, [2], np.arange(65))
        with pytest.raises(ValueError, match="candidates: empty"):
            client.rank(1, [2], [])
        assert client.ready()
        assert len(client.rank(1, [], [3, 4, 5]).scores) == 3  # still serving, an empty history too
    assert server.running()


def test_rank_cli_in_process_and_served_agree(tiny_world: Path, runs: dict[str, Path], server: TritonServer,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    request, _ = _requests(tiny_world)[0]
    common = ["--user", str(request.user), "--history", *map(str, request.history), "--candidates", *map(str, request.candidates),
              "--context", f"position={','.join(str(p) for p in request.context['position'])}"]
    assert main(["rank", "--run", str(runs["simtier"]), "--world", str(tiny_world), *common]) == 0
    local = capsys.readouterr().out
    assert main(["rank", "--url", server.grpc_url, "--name", "ranker_simtier", *common]) == 0
    served = capsys.readouterr().out
    parse = lambda out: [float(line.split()[1]) for line in out.splitlines() if line[:1].isdigit()]  # noqa: E731
    assert len(parse(local)) == len(request.candidates)
    assert np.allclose(parse(local), parse(served), atol=1e-5)


def test_hot_update_under_load_fails_no_request(tiny_world: Path, runs: dict[str, Path], server: TritonServer,
                                                repository: Path, tmp_path: Path) -> None:
    """Version 2 (another run) loaded while requests flow: every request answered, the version switches, v1 unloaded."""
    import threading
    import time

    name = "ranker_hot"
    logged = RankerExportConfig(name=name, score_log=tmp_path / "served", score_log_sample=1.0)  # every request logged
    export_ranker(runs["id_only"], tiny_world, repository, version=1, config=logged)
    request, _ = _requests(tiny_world)[0]
    answered: list[tuple[int, float]] = []  # (version, seconds)
    failed: list[str] = []
    stop = threading.Event()
    config = ClientConfig(url=server.grpc_url, model=name, retries=0)
    with RankerClient(config) as admin:
        admin.load()  # a new model of the running server, version 1

        def traffic() -> None:
            with RankerClient(config) as client:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    try:
                        ranked = client.rank(request.user, request.history, request.candidates, request.context)
                        answered.append((ranked.version, time.perf_counter() - t0))
                    except Exception as e:  # noqa: BLE001 - every failure counts
                        failed.append(repr(e))

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            while len(answered) < 5:
                time.sleep(0.05)
            export_ranker(runs["simtier"], tiny_world, repository, version=2, config=logged)
            admin.load()
            deadline = time.monotonic() + 60
            while (not answered or answered[-1][0] != 2) and time.monotonic() < deadline:
                time.sleep(0.05)
            n = len(answered)
            while len(answered) < n + 5:
                time.sleep(0.05)
            versions = admin.versions()
            served = admin.rank(request.user, request.history, request.candidates, request.context)
        finally:
            stop.set()
            thread.join()
        admin.unload()  # the last log file is written as the model unloads
        deadline = time.monotonic() + 60
        while set(admin.versions().values()) != {"UNAVAILABLE"} and time.monotonic() < deadline:
            time.sleep(0.1)
    assert failed == []
    seen = [v for v, _ in answered]
    assert seen[0] == 1 and seen[-1] == 2 and set(seen) == {1, 2}
    assert seen.index(2) > 0 and 1 not in seen[seen.index(2) + 5 :]  # no v1 answer well after the switch
    assert versions.get(2) == "READY" and versions.get(1) != "READY"  # the old version unloaded
    want = Ranker.load(runs["simtier"], tiny_world).score(request)
    assert served.version == 2 and np.abs(served.scores - want).max() <= TOL
    # the score log: every answered request once, by version; replayed offline, the same scores
    log = read_score_log(tmp_path / "served")
    assert log.num_rows == len(answered) + 1
    assert sorted(log["version"].to_pylist()) == sorted(seen + [2])
    for version, variant in ((1, "id_only"), (2, "simtier")):
        rows = log.filter(pc.equal(log["version"], version)).slice(0, 20)
        replayed = Ranker.load(runs[variant], tiny_world).score_many(replay_requests(rows))
        assert np.abs(np.concatenate(replayed) - np.concatenate(rows["scores"].to_numpy(zero_copy_only=False))).max() <= TOL


def test_a_new_item_is_scored_with_its_vector_once_the_store_holds_it(
    tiny_world: Path, oracle_vectors: Path, catalogue: Path, runs: dict[str, Path], server: TritonServer, fresh_store: Path
) -> None:
    """The embedder writes a new item's vector while the server runs: the next requests score it with that vector."""
    import time

    ids, vectors = read_item_vectors(oracle_vectors)
    new = ~np.isin(ids, read_item_vectors(catalogue)[0])
    fresh_ids, fresh = ids[new][:3], vectors[new][:3]
    request, _ = _requests(tiny_world)[0]
    request = RankRequest(request.user, request.history, np.concatenate([fresh_ids, request.candidates[:1]]))
    fallback = Ranker.load(runs["simtier_make"], tiny_world).score(request)  # no vector for the new items
    with RankerClient(ClientConfig(url=server.grpc_url, model="ranker_fresh")) as client:
        before = client.rank(request.user, request.history, request.candidates).scores
        with VectorStore(fresh_store) as store:
            store.write(fresh_ids, fresh, created_at=np.full(len(fresh_ids), time.time()))
        deadline = time.monotonic() + 60
        after = before
        while np.array_equal(after, before) and time.monotonic() < deadline:
            after = client.rank(request.user, request.history, request.candidates).scores
    assert np.abs(before - fallback).max() <= TOL
    with_vectors = Ranker.load(runs["simtier_make"], tiny_world, store=fresh_store).score(request)  # the offline score with them
    assert np.abs(after - with_vectors).max() <= TOL
    assert (np.abs(after[:3] - fallback[:3]) > 1e-4).all()  # each new item's vector moved its score


def test_online_eval_ranks_a_sample_as_evaluate_scores_it(tiny_world: Path, runs: dict[str, Path], server: TritonServer,
                                                         tmp_path: Path) -> None:
    """`mmctr online-eval`: 30 sampled users' test-day impressions ranked on the server equal `score_run`'s scores."""
    import json

    from serving.ranker_online import day_impressions, sample_requests

    out = tmp_path / "online.json"
    assert main(["online-eval", "--run", str(runs["simtier_make"]), "--world", str(tiny_world), "--url", server.grpc_url,
                 "--name", "ranker_simtier_make", "--max-candidates", "64", "--users", "30", "--seed", "4", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    manifest = Manifest.read(tiny_world)
    table = day_impressions(tiny_world, manifest.test_day)
    rows = np.concatenate([idx for _, idx in sample_requests(table, manifest.features, 30, 4, 64)])
    assert report["users"] == 30 and report["impressions"] == len(rows) and report["requests"] < len(rows)
    assert report["day"] == manifest.test_day and report["version"] == 1
    assert report["max_abs_diff"] <= TOL
    for metric in ("auc", "gauc", "ne"):
        assert abs(report["online"][metric] - report["offline"][metric]) <= 1e-4
    assert report["online"]["impressions"] == len(rows) and report["online"]["clicks"] == table["label"].to_numpy()[rows].sum()
    assert report["new_items_served_vector"] == 0  # no store given


def test_a_raw_id_log_scores_as_offline(unlike_log: Path, tmp_path: Path) -> None:
    """A log unlike the world (raw 64-bit IDs through managed collisions, a history carrying each item's category,
    a categorical context feature `slot`): 25 users' test-day impressions, grouped into requests by user and history
    (the history looked up once per request), score as `score_run` scores them offline."""
    from serving.ranker_online import day_impressions, sample_requests

    run = tmp_path / "id_only"
    run_train(TrainJob(world=unlike_log, out=run, model=ModelConfig(variant="id_only"), quiet=True,
                       train=TrainConfig(batch_size=256)))
    manifest = Manifest.read(unlike_log)
    table = day_impressions(unlike_log, manifest.test_day)
    requests = sample_requests(table, manifest.features, users=25, seed=1)
    assert max(len(idx) for _, idx in requests) > 1 and table["iid"].to_numpy().max() > 2**40
    ranker = Ranker.load(run, unlike_log)
    got = np.full(table.num_rows, np.nan)
    for (_, idx), scores in zip(requests, ranker.score_many([r for r, _ in requests])):
        got[idx] = scores
    created = not dist.is_initialized()
    ctx = init_distributed(always=True)
    try:
        _, users, scores = score_run(load_run(run, "id_only", unlike_log), unlike_log, manifest.test_day, ctx)
    finally:
        if created:
            dist.destroy_process_group()
    rows = np.concatenate([idx for _, idx in requests])
    assert np.array_equal(scores.item_ids[rows], table["iid"].to_numpy()[rows])
    assert np.abs(got[rows] - scores.predictions[rows]).max() <= TOL
