"""A raw 64-bit ID context feature end to end: logged int64 IDs reach the ranker exactly, in-process and on Triton.

The log: an ``impressions``-sourced categorical feature ``page_id`` (a ``hash`` table of 64 rows) whose values
are raw IDs in [2**60, 2**62); the clicks depend on the page. A float64 keeps only an ID's top 53 bits, so an ID
sent through a float lands on another row of the table (row 0 for every page here) and scores another page.
``mmctr online-eval``'s refusals (a day outside the world or without impressions, a server down) are here too.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.cli import main, rank_context
from recsys.data.schema import Manifest
from recsys.data.spec import FeatureSpec, Sparse, Table
from recsys.models.config import ModelConfig
from recsys.train.config import TrainConfig
from recsys.train.trainer import TrainJob, run_train
from serving.client import ClientConfig
from serving.ranker import Ranker, RankRequest, RankRequestError, context_ids
from serving.ranker_client import RankerClient
from serving.ranker_export import RankerExportConfig, export_ranker
from serving.ranker_online import _offline_scores, day_impressions, sample_requests
from serving.server import ServerConfig, TritonServer

TOL = 1e-5  # served = offline (test_ranker.py's)
DAY = 2  # the test day


@pytest.fixture(scope="module")
def page_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Days 0..2 of 300 impressions; ``page_id``: 64 raw IDs in [2**60, 2**62), even rows of the table click more."""
    w = tmp_path_factory.mktemp("pages") / "world"
    rng = np.random.default_rng(0)
    users = np.arange(30, dtype=np.int64) * 1_000_003 + 11
    items = np.arange(40, dtype=np.int64) * 1_000_000_007 + 5
    n = 900
    page = rng.integers(2**60, 2**62, 64)
    pidx = rng.integers(0, 64, n)
    click = (rng.random(n) < np.where(page[pidx] % 2 == 0, 0.6, 0.1)).astype(np.float32)  # the page's own row matters
    for t in ("users", "items", "impressions"):
        (w / t).mkdir(parents=True)
    pq.write_table(pa.table({"uid": users}), w / "users/u.parquet")
    pq.write_table(pa.table({"sku": items}), w / "items/i.parquet")
    pq.write_table(pa.table({"ds": np.repeat([0, 1, 2], n // 3).astype(np.int32), "uid": users[rng.integers(0, 30, n)],
                             "sku": items[rng.integers(0, 40, n)], "page_id": page[pidx], "is_click": click}),
                   w / "impressions/a.parquet")
    spec = FeatureSpec(user_key="uid", item_key="sku", label="is_click", day="ds", history=None,
                       sparse=(Sparse("uid", "impressions"), Sparse("sku", "impressions"), Sparse("page_id", "impressions")),
                       tables=(Table("uid", ids="managed", rows=31), Table("sku", ids="managed", rows=41),
                               Table("page_id", ids="hash", rows=64)), content=())
    Manifest(format_version=2, first_day=0, last_day=DAY, features=spec).write(w)
    return w


@pytest.fixture(scope="module")
def page_run(page_log: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("page_runs") / "id_only"
    run_train(TrainJob(world=page_log, out=run, model=ModelConfig(variant="id_only"), quiet=True,
                       train=TrainConfig(batch_size=64, epochs=3)))
    return run


@pytest.fixture(scope="module")
def offline(page_log: Path, page_run: Path) -> np.ndarray:
    """`mmctr evaluate`'s scores of every test-day impression, in ``day_impressions`` order."""
    scores, _, items = _offline_scores(page_run, page_log, DAY)
    assert np.array_equal(items, day_impressions(page_log, DAY)["sku"].to_numpy())
    return scores


def _rounded(request: RankRequest) -> RankRequest:
    """The request with ``page_id`` through a float64, as online-eval sent it before (now refused)."""
    return dataclasses.replace(request, context={"page_id": request.context["page_id"].astype(np.float64)})


def _cast(request: RankRequest) -> RankRequest:
    """The rounded request cast back to int64: what the ranker silently scored before it refused floats."""
    return dataclasses.replace(request, context={"page_id": _rounded(request).context["page_id"].astype(np.int64)})


def test_sampled_requests_carry_the_logged_int64_ids(page_log: Path) -> None:
    table = day_impressions(page_log, DAY)
    logged = table["page_id"].to_numpy()
    assert logged.dtype == np.int64 and logged.min() >= 2**60
    for request, idx in sample_requests(table, Manifest.read(page_log).features, users=30, seed=0):
        assert request.context["page_id"].dtype == np.int64
        assert request.context["page_id"].tolist() == logged[idx].tolist()  # exact, as Python ints


def test_sampled_requests_score_in_process_as_offline(page_log: Path, page_run: Path, offline: np.ndarray) -> None:
    table = day_impressions(page_log, DAY)
    requests = sample_requests(table, Manifest.read(page_log).features, users=30, seed=0)
    ranker = Ranker.load(page_run, page_log)
    rows = np.concatenate([idx for _, idx in requests])
    got = np.full(table.num_rows, np.nan)
    for (_, idx), scores in zip(requests, ranker.score_many([r for r, _ in requests])):
        got[idx] = scores
    assert np.abs(got[rows] - offline[rows]).max() <= TOL
    # the test sees the bug: the IDs through a float64 score other pages; the ranker now refuses such a request
    rounded = np.concatenate([ranker.score(_cast(r)) for r, _ in requests])
    assert np.abs(rounded - offline[np.concatenate([idx for _, idx in requests])]).max() > 1e-3
    with pytest.raises(RankRequestError, match=r"context feature 'page_id': candidate 0's value .* is not an integer ID"):
        ranker.score(_rounded(requests[0][0]))


def test_a_categorical_context_value_is_never_cast(page_log: Path, page_run: Path) -> None:
    """A fractional, NaN or > 2**53 float ID is refused by the in-process ranker, naming the feature and the
    candidate; a whole-number float below 2**53 is the ID it spells (the same scores as the int64 request)."""
    ranker = Ranker.load(page_run, page_log)
    table = day_impressions(page_log, DAY)
    request = sample_requests(table, Manifest.read(page_log).features, users=1, seed=0)[0][0]
    n = len(request.candidates)
    small = np.arange(n, dtype=np.int64) * 7 + 3  # IDs a float64 holds exactly
    exact = ranker.score(dataclasses.replace(request, context={"page_id": small}))
    as_float = ranker.score(dataclasses.replace(request, context={"page_id": small.astype(np.float64)}))
    assert np.array_equal(exact, as_float)
    for bad, shown in ((1.5, "1.5"), (np.nan, "nan"), (float(2**60), str(float(2**60)))):
        values = small.astype(np.float64)
        values[n - 1] = bad
        with pytest.raises(RankRequestError, match=rf"'page_id': candidate {n - 1}'s value {re.escape(shown)} is not"):
            ranker.score(dataclasses.replace(request, context={"page_id": values}))
    with pytest.raises(RankRequestError, match="'page_id': IDs must be integers, got dtype <U"):
        ranker.score(dataclasses.replace(request, context={"page_id": np.array(["a"] * n)}))
    with pytest.raises(RankRequestError, match=r"candidate 1's value 9223372036854775809"):
        context_ids("page_id", np.array([1, 2**63 + 1], dtype=np.uint64))  # would wrap to a negative int64


def test_rank_context_keeps_a_sparse_id_exact() -> None:
    pid = 2**61 + 12345  # odd: no float64 holds it
    assert rank_context([f"page_id={pid},{pid + 1}"], sparse={"page_id"})["page_id"].tolist() == [pid, pid + 1]
    assert rank_context([f"page_id={pid}"])["page_id"].tolist() == [pid]  # a served ranker: integers stay int64
    dense = rank_context(["position=3"], sparse={"page_id"})["position"]
    assert dense.dtype == np.float64 and dense.tolist() == [3.0]
    with pytest.raises(ValueError, match=r"--context 'page_id=1.5': page_id is a categorical feature"):
        rank_context(["page_id=1.5"], sparse={"page_id"})
    with pytest.raises(ValueError, match="categorical"):
        rank_context([f"page_id={2**63}"], sparse={"page_id"})  # beyond int64


def test_an_id_past_int64_is_refused_never_wrapped(page_log: Path, page_run: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A platform's uint64 user or item ID at or past 2**63 would wrap into another (negative) int64 ID: the ranker,
    `mmctr rank` and the client refuse it, naming the field and the ID as given."""
    ranker = Ranker.load(page_run, page_log)
    request = sample_requests(day_impressions(page_log, DAY), Manifest.read(page_log).features, users=1, seed=0)[0][0]
    big = 2**63 + 5
    with pytest.raises(RankRequestError, match=rf"user: ID {big} is outside int64"):
        ranker.score(dataclasses.replace(request, user=big))
    wide = np.append(request.candidates.astype(np.uint64), np.uint64(big))
    with pytest.raises(RankRequestError, match=rf"candidates: item ID {big} \(position {len(wide) - 1}\) is outside int64"):
        ranker.score(dataclasses.replace(request, candidates=wide))
    for flag, value in (("--user", big), ("--candidates", 2**64 + 7)):
        args = {"--user": str(request.user), "--candidates": str(int(request.candidates[0]))}
        args[flag] = str(value)
        assert main(["rank", "--run", str(page_run), "--world", str(page_log), *[x for kv in args.items() for x in kv]]) == 1
        err = _err_line(capsys, "rank")
        assert str(value) in err and "outside int64" in err
    with pytest.raises(RankRequestError, match="outside int64"):
        RankerClient(ClientConfig(url="127.0.0.1:1", model="ranker")).rank(big, request.history, request.candidates)


def _printed_scores(out: str) -> list[float]:
    return [float(line.split()[1]) for line in out.splitlines() if line[:1].isdigit()]


def test_rank_cli_scores_a_raw_id_context_as_the_ranker(page_log: Path, page_run: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    table = day_impressions(page_log, DAY)
    request, idx = sample_requests(table, Manifest.read(page_log).features, users=1, seed=0)[0]
    ids = request.context["page_id"]
    assert main(["rank", "--run", str(page_run), "--world", str(page_log), "--user", str(request.user),
                 "--candidates", *map(str, request.candidates), "--context", f"page_id={','.join(map(str, ids))}"]) == 0
    printed = _printed_scores(capsys.readouterr().out)
    exact = Ranker.load(page_run, page_log).score(RankRequest(request.user, request.history, request.candidates,
                                                              {"page_id": table["page_id"].to_numpy()[idx]}))
    assert np.allclose(printed, exact, atol=1e-6)


@pytest.fixture(scope="module")
def page_server(page_log: Path, page_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("page_repo")
    export_ranker(page_run, page_log, repo, config=RankerExportConfig(instances=1))
    with TritonServer(ServerConfig(repository=repo)) as s:
        yield s


def test_online_eval_on_triton_equals_offline(page_log: Path, page_run: Path, page_server: TritonServer,
                                              offline: np.ndarray, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`mmctr online-eval` sends the logged IDs as INT64 inputs: the served scores are `mmctr evaluate`'s; and
    `mmctr rank --url --context page_id=...` scores as the in-process ranker."""
    out = tmp_path / "online.json"
    assert main(["online-eval", "--run", str(page_run), "--world", str(page_log), "--url", page_server.grpc_url,
                 "--users", "30", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["day"] == DAY and report["impressions"] == day_impressions(page_log, DAY).num_rows
    assert report["max_abs_diff"] <= TOL
    capsys.readouterr()
    table = day_impressions(page_log, DAY)
    request, idx = sample_requests(table, Manifest.read(page_log).features, users=1, seed=0)[0]
    context = f"page_id={','.join(map(str, table['page_id'].to_numpy()[idx]))}"
    assert main(["rank", "--url", page_server.grpc_url, "--user", str(request.user), "--candidates",
                 *map(str, request.candidates), "--context", context]) == 0
    assert np.allclose(_printed_scores(capsys.readouterr().out), offline[idx], atol=1e-5)
    # a fractional ID is refused before anything is sent, in one line naming the feature (it was cast to 1)
    bad = ",".join(["1.5"] * len(request.candidates))
    assert main(["rank", "--url", page_server.grpc_url, "--user", str(request.user), "--candidates",
                 *map(str, request.candidates), "--context", f"page_id={bad}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "context feature 'page_id': candidate 0's value 1.5 is not an integer ID" in err
    with RankerClient(ClientConfig(url=page_server.grpc_url, model="ranker")) as client:
        ids = table["page_id"].to_numpy()[idx]
        served = client.rank(request.user, request.history, request.candidates, {"page_id": ids}).scores
        assert np.allclose(served, offline[idx], atol=TOL)
        with pytest.raises(ValueError, match="'page_id'"):
            client.rank(request.user, request.history, request.candidates, {"page_id": ids.astype(np.float64)})


def _err_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"mmctr {command}: "), err
    return err.strip().removeprefix(f"mmctr {command}: ")


def test_online_eval_refuses_a_day_outside_the_world_as_evaluate_does(page_log: Path, page_run: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--world", str(page_log), "--day", "9"]
    assert main(["online-eval", "--run", str(page_run), "--url", "127.0.0.1:1", *common]) == 1
    online = _err_line(capsys, "online-eval")
    assert main(["evaluate", "--models", str(page_run), *common]) == 1
    assert online == _err_line(capsys, "evaluate")
    assert online.startswith("--day 9 is outside the world") and "0..2" in online


def test_online_eval_refuses_a_day_without_impressions(page_log: Path, page_run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    world = tmp_path / "world"
    shutil.copytree(page_log, world)
    dataclasses.replace(Manifest.read(world), last_day=3, test_day=DAY).write(world)  # day 3: no impressions
    assert main(["online-eval", "--run", str(page_run), "--world", str(world), "--url", "127.0.0.1:1", "--day", "3"]) == 1
    assert _err_line(capsys, "online-eval") == (f"--day 3: day 3 has no impressions in {world / 'impressions'}; "
                                                f"nothing to rank online")


def test_online_eval_names_a_server_that_is_down(page_log: Path, page_run: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["online-eval", "--run", str(page_run), "--world", str(page_log), "--url", "127.0.0.1:1"]) == 1
    assert _err_line(capsys, "online-eval").startswith("127.0.0.1:1: ")
