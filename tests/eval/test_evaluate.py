"""`mmctr evaluate`: its TorchX component on 2 processes gives the 1-process report; a store serves new items."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.eval.report import REPORT_HTML, REPORT_JSON
from torchx_components.evaluate import evaluate

REPO = Path(__file__).resolve().parents[2]


def test_component_validates() -> None:
    from torchx.specs.file_linter import validate

    assert validate(str(REPO / "torchx_components" / "evaluate.py"), "evaluate") == []
    app = evaluate(world="w", models=["a", "b"], nproc=2)
    assert app.roles[0].args[-1].endswith("recsys.cli evaluate --world w --models a b --quiet")  # bootstrap: the CLI default


def test_torchx_two_processes_match_one(tiny_world: Path, eval_runs: dict[str, Path], eval_report: tuple[dict, Path],
                                        tmp_path: Path) -> None:
    one, _ = eval_report
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [str(Path(sys.executable).parent / "torchx"), "run", "-s", "local_cwd", "torchx_components/evaluate.py:evaluate",
           "--world", str(tiny_world), "--models", ",".join(str(p) for p in eval_runs.values()),
           "--out", str(out), "--bootstrap", str(one["bootstrap"]["resamples"]), "--nproc", "2"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    two = json.loads((out / REPORT_JSON).read_text())
    assert (out / REPORT_HTML).is_file() and two["world_size"] == 2 and one["world_size"] == 1
    assert two["impressions"] == one["impressions"] and two["baseline"] == one["baseline"]
    for name, model in one["models"].items():
        for subset, values in model["metrics"].items():
            for key, value in values.items():
                assert two["models"][name]["metrics"][subset][key] == pytest.approx(value, abs=1e-6, nan_ok=True)
        for subset, v in model["vs_baseline"].items():  # same per-user AUCs, same draws: same intervals
            assert two["models"][name]["vs_baseline"][subset]["gauc_lift_ci"] == pytest.approx(list(v["gauc_lift_ci"]), abs=1e-6)


def test_store_gives_new_items_their_served_vectors(tiny_world: Path, oracle_vectors: Path, tmp_path: Path) -> None:
    """A run trained without the test day's items scores them as the full-table run does once a store holds them."""
    import numpy as np

    from recsys.data.schema import Manifest
    from recsys.eval.evaluate import EvalJob, run_evaluate
    from recsys.data.vectors import VECTORS_FILE, read_item_vectors, write_item_vectors
    from recsys.models.config import ModelConfig
    from recsys.pipeline.catalogue import write_catalogue
    from recsys.train.config import TrainConfig
    from recsys.train.trainer import TrainJob, run_train
    from serving.store import VectorStore

    test_day = Manifest.read(tiny_world).last_day
    kept = write_catalogue(tiny_world, oracle_vectors.parent, test_day, tmp_path / "catalogue")
    ids, vectors = read_item_vectors(oracle_vectors)
    catalogue_ids, _ = read_item_vectors(tmp_path / "catalogue" / VECTORS_FILE)
    new = ~np.isin(ids, catalogue_ids)
    assert kept < len(ids) and new.any()
    with VectorStore(tmp_path / "vectors.sqlite") as store:  # what the embedder would have written
        store.bind(dim=vectors.shape[1], encoder_sha256="")
        store.write(ids[new], vectors[new], created_at=np.zeros(int(new.sum())))
    model = ModelConfig(variant="simtier")
    runs = {}
    for name, table in (("catalogue", tmp_path / "catalogue"), ("full", oracle_vectors)):
        runs[name] = tmp_path / name / "run"
        run_train(TrainJob(world=tiny_world, out=runs[name], model=model, vectors=table, quiet=True,
                           train=TrainConfig(batch_size=256)))
    reports = {}
    for label, run, store in (("without", runs["catalogue"], None), ("with", runs["catalogue"], tmp_path / "vectors.sqlite"),
                              ("full", runs["full"], None)):
        reports[label] = run_evaluate(EvalJob(world=tiny_world, models=(run,), out=tmp_path / f"eval-{label}",
                                              resamples=10, quiet=True, store=store))["models"]["run"]["metrics"]["new_items"]
    # same training data (no training day shows a test-day item), so the same weights; only the frozen table differs
    assert reports["with"]["auc"] == pytest.approx(reports["full"]["auc"], abs=1e-6)
    assert reports["without"]["auc"] != pytest.approx(reports["full"]["auc"], abs=1e-4)


def world_without_day(world: Path, day: int, dst: Path) -> Path:
    """A copy of ``world`` whose impressions keep every row but those of ``day`` (its files stay, emptied)."""
    import shutil

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from recsys.data.schema import Manifest, table_files

    shutil.copytree(world, dst)
    column = Manifest.read(dst).features.day
    for f in table_files(dst, "impressions"):
        t = pq.read_table(f)
        pq.write_table(t.filter(pc.not_equal(t[column], day)), f)
    return dst


def _impressions_per_day(world: Path) -> dict[int, int]:
    """Rows per day, from every impression's day column (the full read ``day_rows`` avoids)."""
    import numpy as np
    import pyarrow.parquet as pq

    from recsys.data.schema import Manifest, table_files

    column = Manifest.read(world).features.day
    days = np.concatenate([pq.read_table(f, columns=[column]).column(0).to_numpy() for f in table_files(world, "impressions")])
    values, counts = np.unique(days, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def test_day_in_training_names_the_runs_that_trained_on_the_day(tiny_world: Path, eval_runs: dict[str, Path],
                                                                tmp_path: Path) -> None:
    """A retrain on the test day makes that day in-sample for it (not for its parent); its parents' days count too."""
    from recsys.data.schema import Manifest
    from recsys.eval.evaluate import EvalJob, run_evaluate
    from recsys.train.retrain import RetrainJob, run_retrain

    test_day = Manifest.read(tiny_world).test_day
    parent, retrained = eval_runs["id_only"], tmp_path / "retrained"
    run_retrain(RetrainJob(parent=parent, day=test_day, out=retrained, quiet=True))

    def logged(run: Path) -> set[int]:  # the days a run's own train_log.json records
        return set(json.loads((run / "train_log.json").read_text())["days"])

    behind = {"id_only": logged(parent), "retrained": logged(parent) | logged(retrained)}  # a retrain's log: its day only
    assert test_day not in behind["id_only"] and test_day in behind["retrained"]
    for day in (test_day, test_day - 1):  # the test day (in-sample for the retrain only), a day both trained on
        out = tmp_path / f"eval-{day}"
        report = run_evaluate(EvalJob(world=tiny_world, models=(parent, retrained), day=day, out=out, resamples=10,
                                      quiet=True))
        assert report is not None
        expected = [name for name in ("id_only", "retrained") if day in behind[name]]
        written = json.loads((out / REPORT_JSON).read_text())
        for r in (report, written):
            assert r["day_in_training"] is True and r["models_trained_on_day"] == expected
            assert {name: set(m["trained_days"]) for name, m in r["models"].items()} == behind
        page = (out / REPORT_HTML).read_text()
        assert "in-sample" in page and f"In-sample on day {day}: trained on it by {', '.join(expected)}" in page
    assert expected == ["id_only", "retrained"]  # day test_day - 1: the retrain's log has only test_day; its lineage counts


def test_refuses_a_day_without_impressions(tiny_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before any run is read: the day and the impressions folder named; the CLI exits 1 with the message."""
    from recsys.cli import main
    from recsys.data.schema import Manifest
    from recsys.eval.evaluate import EvalJob, run_evaluate
    from recsys.data.stats import day_rows

    m = Manifest.read(tiny_world)
    empty = m.test_day - 1
    world = world_without_day(tiny_world, empty, tmp_path / "world")
    rows = _impressions_per_day(world)
    assert empty not in rows and set(rows) == set(range(m.first_day, m.last_day + 1)) - {empty}
    assert {d: day_rows(world, d) for d in rows} == rows and day_rows(world, empty) == 0
    message = f"--day {empty}: day {empty} has no impressions in {world / 'impressions'}; nothing to evaluate"
    no_run = tmp_path / "no-run"  # would be refused (RunError) if the day check came later
    with pytest.raises(ValueError) as refused:
        run_evaluate(EvalJob(world=world, models=(no_run,), day=empty, out=tmp_path / "out", quiet=True))
    assert str(refused.value) == message and not (tmp_path / "out").exists()
    assert main(["evaluate", "--world", str(world), "--models", str(no_run), "--day", str(empty)]) == 1
    assert capsys.readouterr().err.strip() == f"mmctr evaluate: {message}"
