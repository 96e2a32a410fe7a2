"""Training stages side by side: at most ``parallel`` at once, each when ready, each recorded done, a failure cancels the rest.

The apps are real TorchX ``local_cwd`` apps (``utils.sh``) writing time stamps,
so what ran when is read back from their files, not from the scheduler.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from torchx.components.utils import sh
from torchx.runner import get_runner

from recsys.pipeline.config import PRESETS, Layout, TrainingSlots, training_slots
from recsys.pipeline.jobs import PipelineError
from recsys.pipeline.run import run_concurrent
from recsys.pipeline.stages import Context, Stage


def _stage(name: str, out: Path, seconds: float = 1.0, ready_after: str | None = None, fail: bool = False) -> Stage:
    """A stage whose one app stamps its start and end (epoch seconds) into OUT/NAME.json; ``fail``: exits 3."""
    script = (f"s=$(date +%s.%N); sleep {seconds}; " + ("exit 3; " if fail else "")
              + f"echo \"{{\\\"start\\\": $s, \\\"end\\\": $(date +%s.%N)}}\" > {out}/{name}.tmp && mv {out}/{name}.tmp {out}/{name}.json")
    (out / f"{name}.sh").write_text(script + "\n")
    ready = None if ready_after is None else (lambda c: (out / f"{ready_after}.json").exists())
    return Stage(name, apps=lambda c: [sh("sh", str(out / f"{name}.sh"))], concurrent=True, ready=ready)


def _context(tmp_path: Path, parallel: int) -> Context:
    layout = Layout(tmp_path / "run")
    layout.out.mkdir()
    slots = TrainingSlots(nproc=1, parallel=parallel, threads=1, why="test")
    return Context(PRESETS["tiny"], layout, {}, None, None, get_runner(), slots)


def _spans(out: Path, names: list[str]) -> dict[str, tuple[float, float]]:
    return {n: (d["start"], d["end"]) for n in names for d in [json.loads((out / f"{n}.json").read_text())]}


def _most_at_once(spans: dict[str, tuple[float, float]]) -> int:
    return max(sum(s <= t < e for s, e in spans.values()) for t, _ in spans.values())


def test_at_most_parallel_at_once_each_when_ready(tmp_path: Path) -> None:
    ctx, out = _context(tmp_path, parallel=2), tmp_path
    steps = [_stage("train_a", out, 4.0), _stage("train_b", out, 1.0), _stage("train_c", out, 1.0),
             _stage("train_d", out, 1.0, ready_after="train_a")]
    state, done = {"stages": {}}, []

    def on_done(name: str) -> None:  # called once a stage is recorded done, in the order they end
        assert state["stages"][name]["done"]
        done.append(name)

    try:
        run_concurrent(steps, ctx, state, quiet=True, on_done=on_done)
    finally:
        ctx.runner.close()
    spans = _spans(out, [s.name for s in steps])
    assert done == sorted(spans, key=lambda n: spans[n][1])
    assert _most_at_once(spans) == 2  # b and c ran one after the other beside a
    assert spans["train_c"][0] >= spans["train_b"][1]
    assert spans["train_d"][0] >= spans["train_a"][1]  # waited for a, though a slot was free before
    assert list(state["stages"]) == ["train_a", "train_b", "train_c", "train_d"]
    assert all(s["done"] and s["seconds"] > 0 and s["started_at"] <= s["finished_at"] for s in state["stages"].values())
    saved = json.loads(ctx.layout.state.read_text())["stages"]
    assert saved == json.loads(json.dumps(state["stages"]))


def test_failure_cancels_the_others_and_keeps_the_finished(tmp_path: Path) -> None:
    ctx, out = _context(tmp_path, parallel=3), tmp_path
    steps = [_stage("train_ok", out, 0.5), _stage("train_bad", out, 2.0, fail=True), _stage("train_long", out, 60.0)]
    state = {"stages": {}}
    t = time.monotonic()
    try:
        with pytest.raises(PipelineError, match="stage train_bad: .* ended FAILED"):
            run_concurrent(steps, ctx, state, quiet=True)
    finally:
        ctx.runner.close()
    assert time.monotonic() - t < 50  # train_long was cancelled, not waited for
    assert state["stages"]["train_ok"]["done"] and not state["stages"]["train_bad"]["done"]
    assert not state["stages"]["train_long"]["done"] and not (out / "train_long.json").exists()


def test_a_stage_that_can_never_start_is_an_error(tmp_path: Path) -> None:
    ctx, out = _context(tmp_path, parallel=2), tmp_path
    try:
        with pytest.raises(PipelineError, match="stage train_d: cannot start"):
            run_concurrent([_stage("train_a", out, 0.2), _stage("train_d", out, ready_after="nothing")], ctx,
                           {"stages": {}}, quiet=True)
    finally:
        ctx.runner.close()


@pytest.mark.parametrize(("cpus", "gpus", "nproc", "parallel", "expected"), [
    (2, 0, 0, 0, (1, 2, 1)), (16, 0, 0, 0, (1, 16, 1)), (16, 0, 2, 0, (2, 8, 1)), (16, 0, 0, 4, (1, 4, 4)),
    (16, 4, 0, 0, (4, 1, 4)), (3, 0, 0, 0, (1, 3, 1)), (1, 0, 2, 0, (2, 1, 1)),
])
def test_training_slots_fill_the_machine_once(cpus: int, gpus: int, nproc: int, parallel: int,
                                              expected: tuple[int, int, int]) -> None:
    from dataclasses import replace

    slots = training_slots(replace(PRESETS["small"], train_nproc=nproc, train_parallel=parallel), cpus=cpus, gpus=gpus)
    assert (slots.nproc, slots.parallel, slots.threads) == expected
    assert slots.nproc * slots.parallel * slots.threads <= max(cpus, slots.nproc * slots.parallel)
