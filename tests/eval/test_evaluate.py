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
