"""mmctr pipeline on the tiny preset: killed midway, restarted, it resumes at the stage it stopped in and finishes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys.pipeline.config import PRESETS, Layout
from recsys.pipeline.jobs import PipelineError
from recsys.pipeline.run import leftover_processes, load_state, stop_leftovers
from recsys.pipeline.stages import stages

REPO = Path(__file__).resolve().parents[2]
KILL_AT = "train_id_only"  # a distributed stage: torchrun and its two ranks are running when the pipeline dies


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _pipeline(out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recsys.cli", "pipeline", "--preset", "tiny", "--out", str(out)],
                            cwd=REPO, env=_env(), stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _state(out: Path) -> dict:
    path = Layout(out).state
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


@pytest.mark.timeout(900)
def test_killed_pipeline_resumes_at_its_stage_and_finishes(tmp_path: Path) -> None:
    out, log = tmp_path / "run", tmp_path / "pipeline.log"
    first = _pipeline(out, log)
    deadline = time.monotonic() + 600
    while KILL_AT not in _state(out)["stages"]:
        assert first.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the pipeline never reached " + KILL_AT
        time.sleep(0.2)
    time.sleep(4)  # torchrun and its ranks start
    os.killpg(first.pid, signal.SIGKILL)  # the pipeline dies; the stage's TorchX processes are left running
    first.wait()
    before = _state(out)
    finished = [name for name, s in before["stages"].items() if s.get("done")]
    assert KILL_AT not in finished and finished[:2] == ["world", "pretrain_clip"]
    layout = Layout(out)
    kept = {p: p.stat().st_mtime_ns for p in (layout.world / "manifest.json", layout.pretrain_scl / "encoder.pt",
                                               layout.catalogue / "item_vectors.parquet")}

    second = _pipeline(out, log)
    assert second.wait(timeout=800) == 0, log.read_text()[-4000:]
    after = _state(out)
    start = after["starts"][-1]
    assert start["resumed_at"] == KILL_AT and start["skipped"] == finished
    assert start["stopped_leftovers"], "the killed stage's processes were still running"
    for name in finished:  # nothing finished was redone
        assert after["stages"][name] == before["stages"][name]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert all(s["done"] for s in after["stages"].values()) and set(after["stages"]) == {s.name for s in stages(PRESETS["tiny"])}

    summary = json.loads(layout.summary.read_text())
    assert set(summary["variants"]) == set(PRESETS["tiny"].variants)
    assert all(0.5 < v["auc"] < 1 and 0.5 < v["gauc"] < 1 for v in summary["variants"].values())
    assert summary["variants"]["id_only"]["gauc_lift"] == 0
    assert summary["pretraining"]["scl"]["text_recall@10"] > 0
    e = summary["embedder"]
    assert e["items"] > 0 and e["coverage"] >= 0.999 and e["served_vs_batch_max_abs"] < 1e-5
    assert summary["retrain"]["version"] == 2 and summary["retrain"]["vectors"]["store_version"] >= 1
    report = (layout.report / "report.html").read_text()
    assert "Serving: the test day" in report and "Production retrain" in report
    assert "mmctr pipeline (tiny)" in log.read_text() and "report: " in log.read_text()
    assert leftover_processes(out) == []  # Triton, the embedder and every stage are gone


def test_refuses_another_config_in_the_same_folder(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    state = load_state(layout, PRESETS["tiny"])
    layout.state.write_text(json.dumps(state))
    with pytest.raises(PipelineError, match=r"another config \(fields \['batch_size'"):
        load_state(layout, dataclasses.replace(PRESETS["tiny"], batch_size=512))


def test_stop_leftovers_stops_processes_naming_the_folder(tmp_path: Path) -> None:
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path / "x")])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "elsewhere"])
    try:
        assert stop_leftovers(tmp_path, timeout_s=5) == [stray.pid]
        assert stray.wait(timeout=5) is not None and other.poll() is None
    finally:
        other.kill()
        other.wait()
