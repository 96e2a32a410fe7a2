"""mmctr pipeline on the tiny preset: killed midway, restarted, it resumes at the stage it stopped in and finishes."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsys.pipeline.config import PRESETS, Layout, training_slots
from recsys.pipeline.jobs import PipelineError
from recsys.pipeline.run import leftover_processes, load_state, pipeline_inputs, stop_leftovers

REPO = Path(__file__).resolve().parents[2]
KILL_AT = "train_id_only"  # a distributed stage: torchrun and its two ranks are running when the pipeline dies
TODAYS_STAGES = ["world", "pretrain_clip", "pretrain_scl", "catalogue", "train_make", "train_simtier_make", "train_simtier",
                 "train_id_only", "export", "pretrain_eval", "embed", "evaluate", "retrain", "rank_online", "report"]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _pipeline(out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recsys.cli", "pipeline", "--preset", "tiny", "--out", str(out)],
                            cwd=REPO, env=_env(), stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _state(out: Path) -> dict:
    path = Layout(out).state
    return json.loads(path.read_text()) if path.exists() else {"stages": {}}


def _stage_rank_running(out: Path) -> bool:
    """Whether a rank of the KILL_AT stage (``recsys.cli train`` on the id_only run folder) runs."""
    for pid in leftover_processes(out):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"recsys.cli" in argv and b"train" in argv and str(Layout(out).ctr("id_only")).encode() in argv:
            return True
    return False


@pytest.mark.timeout(900)
def test_killed_pipeline_resumes_at_its_stage_and_finishes(tmp_path: Path) -> None:
    out, log = tmp_path / "run", tmp_path / "pipeline.log"
    pipelines = [_pipeline(out, log)]
    try:
        _kill_midway_then_resume(out, log, pipelines)
    finally:
        for p in pipelines:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        stop_leftovers(out)


def _kill_midway_then_resume(out: Path, log: Path, pipelines: list[subprocess.Popen]) -> None:
    first = pipelines[0]
    deadline = time.monotonic() + 600
    while not _stage_rank_running(out):
        assert first.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the pipeline never reached " + KILL_AT
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the pipeline dies; the stage's TorchX processes are left running
    first.wait()
    before = _state(out)
    finished = [name for name, s in before["stages"].items() if s.get("done")]
    assert KILL_AT not in finished and finished[:2] == ["world", "pretrain_clip"]
    layout = Layout(out)
    kept = {p: p.stat().st_mtime_ns for p in (layout.world / "manifest.json", layout.pretrain_scl / "encoder.pt",
                                               layout.catalogue / "item_vectors.parquet")}

    second = _pipeline(out, log)
    pipelines.append(second)
    assert second.wait(timeout=800) == 0, log.read_text()[-4000:]
    after = _state(out)
    start = after["starts"][-1]
    unfinished = [name for name in TODAYS_STAGES if name not in finished]
    assert start["resumed_at"] == unfinished[0] and start["skipped"] == finished  # train_make ran beside KILL_AT
    assert start["stopped_leftovers"], "the killed stage's processes were still running"
    for name in finished:  # nothing finished was redone
        assert after["stages"][name] == before["stages"][name]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    # every planned stage done (recorded in the order they started: simtier_make waits for MAKE's stage 1)
    assert all(s["done"] for s in after["stages"].values()) and sorted(after["stages"]) == sorted(after["plan"]["stages"])
    assert after["plan"]["stages"] == TODAYS_STAGES and after["plan"]["skipped"] == {}  # `--preset` runs as it did

    summary = json.loads(layout.summary.read_text())
    assert set(summary["variants"]) == set(PRESETS["tiny"].variants)
    assert all(0.5 < v["auc"] < 1 and 0.5 < v["gauc"] < 1 for v in summary["variants"].values())
    assert summary["variants"]["id_only"]["gauc_lift"] == 0
    assert summary["vectors"] == "scl (fine-tuned from clip)" and summary["skipped"] == {}
    assert summary["pretraining"]["scl"]["text_recall@10"] > 0
    e = summary["embedder"]
    assert e["items"] > 0 and e["with_vector"] == e["items"] and e["coverage"] == 1.0
    assert e["served_vs_batch_max_abs"] < 1e-5
    assert summary["retrain"]["version"] == 2 and summary["retrain"]["vectors"]["store_version"] >= 1
    stage1 = json.loads((layout.ctr("make") / "make_stage1" / "make.json").read_text())
    m = summary["make_stage1"]  # MAKE stage 1's time and its share of the pipeline's, from its own log
    assert m["epochs"] == len(stage1["epochs"]) >= 1 and m["stopped"] == stage1["stopped"] is not None
    assert m["seconds"] == sum(e["seconds"] for e in stage1["epochs"]) > 0
    assert m["share"] == m["seconds"] / summary["wall_s"] < 1
    # the training stages ran side by side: the wall time is their spans merged, below the sum of the stages' times
    assert summary["training"] == dataclasses.asdict(training_slots(PRESETS["tiny"]))
    spans = {k: after["stages"][k] for k in TODAYS_STAGES if k.startswith("train_")}
    if summary["training"]["parallel"] > 1:
        assert spans["train_simtier"]["started_at"] < spans["train_make"]["finished_at"]
        assert summary["wall_s"] < sum(summary["stages"].values())
    (triton,) = [s for s in after["spans"] if s["what"] == "triton start"]  # started once export had written its repository
    assert after["stages"]["export"]["finished_at"] <= triton["started_at"] <= after["stages"]["embed"]["started_at"]
    assert "[triton] starting (export done)" in log.read_text()  # submitted from the group, not at embed
    started = datetime.datetime.fromisoformat(spans["train_simtier_make"]["started_at"]).timestamp()
    assert started + 1 >= (layout.ctr("make") / "make_stage1" / "make.json").stat().st_mtime  # after the shared stage 1
    o = summary["online"]  # the retrained simtier_make served: a sample of the test day ranked online
    assert o["run"] == str(layout.retrain / f"simtier_make-day-{summary['test_day']}") and o["version"] == 1
    assert o["users"] == PRESETS["tiny"].online_users and o["online"]["impressions"] == o["impressions"] > o["requests"]
    assert o["max_abs_diff"] <= 1e-5 and abs(o["online"]["gauc"] - o["offline"]["gauc"]) <= 1e-4
    assert o["new_items"] > 0 and o["new_items_served_vector"] == o["new_items"]  # the embedder's vectors, served
    report = (layout.report / "report.html").read_text()
    assert "Serving: the test day" in report and "Production retrain" in report and "Online ranking" in report
    assert "mmctr pipeline (tiny)" in log.read_text() and "report: " in log.read_text()
    assert leftover_processes(out) == []  # Triton, the embedder and every stage are gone


def test_refuses_another_config_in_the_same_folder(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    state = load_state(layout, PRESETS["tiny"])
    layout.state.write_text(json.dumps(state))
    with pytest.raises(PipelineError, match=r"another config \(fields \['batch_size'"):
        load_state(layout, dataclasses.replace(PRESETS["tiny"], batch_size=512))


def test_refuses_another_world_or_vectors_in_the_same_folder(tmp_path: Path) -> None:
    worlds = []
    for name in ("a", "b"):
        worlds.append(tmp_path / name)
        worlds[-1].mkdir()
        (worlds[-1] / "manifest.json").write_text(json.dumps({"format_version": 2, "first_day": 0, "last_day": 3, "preset": name}))
    layout = Layout(tmp_path / "run")
    inputs = pipeline_inputs(worlds[0], None)
    layout.out.mkdir()
    layout.state.write_text(json.dumps(load_state(layout, PRESETS["tiny"], inputs)))
    assert load_state(layout, PRESETS["tiny"], inputs)["inputs"]["world"] == str(worlds[0])  # the same world resumes
    with pytest.raises(PipelineError, match=rf"ran on world {worlds[0]} \(manifest \w+\), not on world {worlds[1]} "):
        load_state(layout, PRESETS["tiny"], pipeline_inputs(worlds[1], None))
    with pytest.raises(PipelineError, match="not on the preset's generated world; use another --out"):
        load_state(layout, PRESETS["tiny"])
    (worlds[0] / "manifest.json").write_text(json.dumps({"format_version": 2, "first_day": 0, "last_day": 4}))
    with pytest.raises(PipelineError, match=r"\(manifest \w+\), not on world .*a \(manifest \w+\)"):  # edited since
        load_state(layout, PRESETS["tiny"], pipeline_inputs(worlds[0], None))
    vectors = tmp_path / "item_vectors.parquet"
    vectors.touch()
    with pytest.raises(PipelineError, match=f"with --vectors {vectors}; use another --out"):
        load_state(layout, PRESETS["tiny"], pipeline_inputs(worlds[0], vectors))
    for world, vec, message in ((tmp_path / "none", None, "--world .*none: no manifest.json there"),
                                (None, tmp_path / "missing.parquet", "--vectors .*missing.parquet: no such file")):
        with pytest.raises(PipelineError, match=message):
            pipeline_inputs(world, vec)
    assert "\n" not in str(pytest.raises(PipelineError, load_state, layout, PRESETS["tiny"]).value)  # one line


def test_stop_leftovers_stops_only_pipeline_programs_naming_the_folder(tmp_path: Path) -> None:
    sleep = "import time; time.sleep(60)"
    out = tmp_path / "run"
    stray = subprocess.Popen([sys.executable, "-c", sleep, "recsys.cli", f"--out={out / 'ctr'}"])
    others = [
        subprocess.Popen([sys.executable, "-c", sleep, "recsys.cli", str(tmp_path / "run2")]),  # another folder
        subprocess.Popen([sys.executable, "-c", sleep, str(out / "logs")]),  # names it, but not a pipeline program
    ]
    try:
        assert stop_leftovers(out, timeout_s=5) == [stray.pid]
        assert stray.wait(timeout=5) is not None and all(p.poll() is None for p in others)
    finally:
        for p in others:
            p.kill()
            p.wait()


def test_a_second_pipeline_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    import fcntl

    from recsys.pipeline.run import run_pipeline

    with open(tmp_path / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(PipelineError, match="another `mmctr pipeline` runs on this folder"):
            run_pipeline("tiny", tmp_path, quiet=True)
