"""mmctr pipeline --world: a dataset of the user's, here a log unlike the world (``unlike_log``).

Its own feature names, raw 64-bit IDs (managed and hashed tables), titles
only, no search log, no creation days, a declared test day before the last:
no CLIP (one modality), no SCL and no pretrain_eval (skipped, with the
reason, in pipeline.json and the summary); the vectors are untrained text
towers'; the text-only encoder is served on Triton to the test day's new
items; every other stage runs to the end. Resuming the folder with another world is refused in
one line by ``mmctr pipeline``. The MAKE variants are left out of the recipe
here: ``test_pipeline.py`` runs them, and this test stays near 3 minutes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.pipeline.config import PRESETS, Layout
from recsys.pipeline.run import leftover_processes, run_pipeline, stop_leftovers

REPO = Path(__file__).resolve().parents[2]
NO_SEARCH_LOG = "no search log (searches/ absent, or no session before the test day 13)"


def _pipeline(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "recsys.cli", "pipeline", "--preset", "tiny", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=840, start_new_session=True)  # fmt: skip


@pytest.mark.timeout(900)
def test_a_log_unlike_the_world_runs_every_stage_it_allows(
    unlike_log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world, out = tmp_path / "log", tmp_path / "run"
    shutil.copytree(unlike_log, world)
    monkeypatch.setitem(PRESETS, "tiny", dataclasses.replace(PRESETS["tiny"], variants=("id_only", "simtier"),
                                                             retrain_variant="simtier"))  # fmt: skip
    monkeypatch.setenv("PATH", os.environ["PATH"])  # run_pipeline puts the venv's bin first; restored after
    try:
        state = run_pipeline("tiny", out, world=world)
    finally:
        stop_leftovers(out)
    log = capsys.readouterr().out
    plan = state["plan"]
    assert plan["skipped"] == {"world": f"--world {world}: the dataset is given, not generated",
                               "pretrain_clip": "CLIP aligns images with titles; the dataset has title only",
                               "pretrain_scl": NO_SEARCH_LOG,
                               "pretrain_eval": "SCL against CLIP needs image and title; the dataset has title only"}  # fmt: skip
    assert plan["test_day"] == 13 and plan["train_until"] == 12  # declared, not the last day (14)
    assert plan["stages"] == ["validate", "pretrain_random", "catalogue", "train_simtier", "train_id_only", "export",
                              "embed", "evaluate", "retrain", "rank_online", "report"]  # fmt: skip
    assert list(state["stages"]) == plan["stages"] and all(s["done"] for s in state["stages"].values())
    assert state["inputs"]["world"] == str(world) and not (out / "world").exists()
    assert f"[pretrain_scl] skipped: {NO_SEARCH_LOG}" in log

    summary = json.loads(Layout(out).summary.read_text())
    assert summary["vectors"].startswith("random (title only") and summary["world"] == str(world)
    assert summary["skipped"] == plan["skipped"] and summary["test_day"] == 13
    assert summary["retrain"]["run"].endswith("simtier-day-13")
    # a constant predictor scores AUC 0.5; untrained (random) towers give simtier little, id_only learns the IDs
    assert summary["variants"]["id_only"]["auc"] > 0.6 and summary["variants"]["simtier"]["auc"] > 0.55
    # the text-only encoder on Triton embedded every new item of the test day as the batch run did
    assert summary["embedder"]["coverage"] == 1.0 and summary["embedder"]["served_vs_batch_max_abs"] < 1e-5
    # the retrained simtier served on Triton: raw 64-bit IDs through managed collisions, online = offline
    o = summary["online"]
    assert o["run"] == summary["retrain"]["run"] and o["impressions"] > o["requests"] and o["max_abs_diff"] <= 1e-5
    assert o["new_items"] > 0 and o["new_items_served_vector"] == o["new_items"]
    assert "skipped: " + NO_SEARCH_LOG in (out / "report" / "report.html").read_text()
    assert leftover_processes(out) == []
    other = tmp_path / "other"
    shutil.copytree(world, other)
    refused = _pipeline("--world", str(other), "--out", str(out))  # the command: one line, exit 1
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"ran on world {world} (manifest " in refused.stderr and f"not on world {other} " in refused.stderr
