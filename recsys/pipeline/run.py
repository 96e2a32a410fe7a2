"""``mmctr pipeline --preset P --out DIR``: every stage of the system as TorchX jobs, resumable by stage.

Each stage (``recsys.pipeline.stages``) runs as TorchX apps on the
``local_cwd`` scheduler (distributed stages with ``nproc`` ranks under
torchrun), waits for them, and is marked done in ``OUT/pipeline.json`` with
its wall time. A pipeline started again with the same ``--out``:

* refuses another preset or config (it would mix two runs' outputs);
* stops processes an earlier, killed run left behind (any process whose
  command line names this ``--out`` folder);
* skips the stages marked done, and starts at the first one that is not.
  That stage resumes itself: ``mmctr pretrain``/``train``/``retrain`` continue
  from their newest checkpoint in the same folder, the embedder from its
  store, and the world and the export are redone whole.

Logs of every app go to ``OUT/logs``; a failed app stops the pipeline with
the tail of its log. Triton runs (as a TorchX app) only while a stage that
needs it is pending, on free ports on 127.0.0.1. ``OUT/.lock`` keeps a second
pipeline off the folder, and however the pipeline ends, it stops every
process of its own (``OUR_PROGRAMS``) that names the folder.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from torchx.runner import Runner, get_runner

from recsys.data.schema import Manifest
from recsys.pipeline.config import PRESETS, Layout, PipelineConfig, config_dict, write_configs
from recsys.pipeline.jobs import PipelineError, Server, run_apps, start_server, stop
from recsys.pipeline.stages import Context, Stage, stages


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def load_state(layout: Layout, cfg: PipelineConfig) -> dict:
    """The run folder's ``pipeline.json`` (a new one if absent); refuses another config."""
    wanted = config_dict(cfg)
    if not layout.state.exists():
        return {"config": wanted, "stages": {}, "starts": []}
    state = json.loads(layout.state.read_text())
    differs = sorted(k for k in set(wanted) | set(state["config"]) if wanted.get(k) != state["config"].get(k))
    if differs:
        raise PipelineError(
            f"{layout.state}: this folder holds a pipeline with another config (fields {differs}: "
            f"{[state['config'].get(k) for k in differs]} there, {[wanted.get(k) for k in differs]} now); "
            "use another --out"
        )
    return state


def save_state(layout: Layout, state: dict) -> None:
    layout.out.mkdir(parents=True, exist_ok=True)
    tmp = layout.state.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(layout.state)


# Programs a pipeline starts: its stages (``python -m recsys.cli ...``, under torchrun) and Triton's processes.
OUR_PROGRAMS: tuple[str, ...] = ("recsys.cli", "torchrun", "torch.distributed.run", "tritonserver", "triton_python_backend_stub")


def _names_folder(argv: list[str], folder: str) -> bool:
    """Whether an argument is ``folder`` or a path inside it (also as ``--flag=PATH``)."""
    for arg in argv:
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        if value == folder or value.startswith(folder + "/"):
            return True
    return False


def _alive(pid: int) -> bool:
    """Running (zombies, which only wait to be reaped, count as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def leftover_processes(out: Path) -> list[int]:
    """PIDs of pipeline programs (``OUR_PROGRAMS``; not this process nor its ancestors) whose arguments name ``out``."""
    mine = {os.getpid()}
    pid = os.getppid()
    while pid > 1:
        mine.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    folder = str(Path(out).resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(p in a for a in argv for p in OUR_PROGRAMS) and _names_folder(argv, folder) and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def stop_leftovers(out: Path, timeout_s: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL, the processes an earlier run left behind; returns their PIDs."""
    pids = leftover_processes(out)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with suppress(ProcessLookupError):  # already gone
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
    return pids


@contextmanager
def _exclusive(layout: Layout) -> Iterator[None]:
    """Holds ``OUT/.lock``: a second pipeline on the same folder is refused, not raced."""
    layout.out.mkdir(parents=True, exist_ok=True)
    with open(layout.out / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(f"{layout.out}: another `mmctr pipeline` runs on this folder") from None
        yield


def run_pipeline(preset: str, out: Path, quiet: bool = False) -> dict:
    """Runs (or resumes) the pipeline of ``preset`` into ``out``; returns the final state."""
    if preset not in PRESETS:
        raise ValueError(f"unknown pipeline preset {preset!r}; choose one of {sorted(PRESETS)}")
    layout = Layout(Path(out).resolve())
    with _exclusive(layout):
        try:
            return _run(PRESETS[preset], preset, layout, quiet)
        finally:
            stop_leftovers(layout.out)  # whatever happened, no stage, embedder or Triton outlives the pipeline


def _run(cfg: PipelineConfig, preset: str, layout: Layout, quiet: bool) -> dict:
    state = load_state(layout, cfg)
    stopped = stop_leftovers(layout.out)
    all_stages = stages(cfg)
    done = [s.name for s in all_stages if state["stages"].get(s.name, {}).get("done")]
    todo = [s for s in all_stages if s.name not in done]
    state["starts"].append({"at": _now(), "skipped": done, "resumed_at": todo[0].name if todo else None,
                            "stopped_leftovers": stopped})
    save_state(layout, state)
    _say(quiet, f"pipeline {preset} -> {layout.out}: " + (
        f"{len(done)} stage(s) already done ({', '.join(done)}); resuming at {todo[0].name}" if done and todo
        else "every stage already done" if not todo else f"{len(todo)} stages"))
    if stopped:
        _say(quiet, f"stopped {len(stopped)} process(es) left by an earlier run: {stopped}")
    configs = write_configs(cfg, layout)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # torchrun, python
    last_needing_server = max((i for i, s in enumerate(todo) if s.needs_server), default=-1)
    runner = get_runner()
    server: Server | None = None
    try:
        for i, stage in enumerate(todo):
            if stage.needs_server and server is None:
                t = time.monotonic()
                server = start_server(runner, layout.triton, layout.logs)
                state["server_start_s"] = time.monotonic() - t
                _say(quiet, f"[triton] ready at {server.url} in {state['server_start_s']:.1f} s")
            _run_stage(stage, cfg, layout, configs, server, runner, state, quiet)
            if server is not None and i == last_needing_server:
                stop(runner, server.handle)
                server = None
                _say(quiet, "[triton] stopped")
    finally:
        try:
            if server is not None:
                stop(runner, server.handle)
                _say(quiet, "[triton] stopped")
        finally:
            runner.close()
    return state


def _run_stage(stage: Stage, cfg: PipelineConfig, layout: Layout, configs: dict[str, Path], server: Server | None,
               runner: Runner, state: dict, quiet: bool) -> None:
    manifest = layout.world / "manifest.json"
    test_day = Manifest.read(layout.world).last_day if manifest.exists() else None
    ctx = Context(cfg, layout, configs, test_day, server, runner)
    _say(quiet, f"[{stage.name}] started")
    t = time.monotonic()
    state["stages"][stage.name] = {"done": False, "started_at": _now()}
    save_state(layout, state)
    if stage.local is not None:
        stage.local(ctx)
    else:
        assert stage.apps is not None
        run_apps(runner, stage.apps(ctx), layout.logs, f"stage {stage.name}")
    seconds = time.monotonic() - t
    state["stages"][stage.name] = {"done": True, "seconds": round(seconds, 1), "finished_at": _now()}
    save_state(layout, state)
    _say(quiet, f"[{stage.name}] done in {seconds:.1f} s")


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)
