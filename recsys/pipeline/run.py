"""``mmctr pipeline --preset P [--world DIR] [--vectors FILE] --out OUT``: every stage as TorchX jobs, resumable by stage.

The preset's world is generated first (the ``world`` stage), or ``--world
DIR`` is taken as it is; from its manifest and data the plan
(``recsys.pipeline.plan``) decides which stages run and records each one
skipped, with its reason, in ``OUT/pipeline.json`` (``"plan"``). Each stage
(``recsys.pipeline.stages``) runs as TorchX apps on the
``local_cwd`` scheduler (distributed stages with ``nproc`` ranks under
torchrun; the training stages side by side as ``config.training_slots``
chooses and prints, with ``pretrain_eval`` and ``export``, which need only
the pre-training runs, in the same slots), waits for them, and is marked done in
``OUT/pipeline.json`` with its wall time. A pipeline started again with the same ``--out``:

* refuses another preset or config, or another ``--world`` or ``--vectors``
  (or a world whose manifest changed): it would mix two runs' outputs;
* stops processes an earlier, killed run left behind (any process whose
  command line names this ``--out`` folder);
* skips the stages marked done, and starts at the first one that is not.
  That stage resumes itself: ``mmctr pretrain``/``train``/``retrain`` continue
  from their newest checkpoint in the same folder, the embedder from its
  store, and the world and the export are redone whole.

Logs of every app go to ``OUT/logs``; a failed app stops the pipeline with
the tail of its log. Triton runs (as a TorchX app) only while a stage that
needs it is pending, on free ports on 127.0.0.1; when ``export`` runs in
the same start of the pipeline, Triton starts as soon as it has written its
repository, beside the stages still running, so its start-up overlaps them. ``OUT/.lock`` keeps a second
pipeline off the folder, and however the pipeline ends, it stops every
process of its own (``OUR_PROGRAMS``) that names the folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from torchx.runner import Runner, get_runner

from recsys.data.schema import Manifest, manifest_sha
from recsys.pipeline.config import PRESETS, Layout, PipelineConfig, config_dict, training_slots, write_configs
from recsys.pipeline.jobs import PipelineError, Server, finished, run_apps, stop, submit, submit_server, wait_ready
from recsys.pipeline.plan import Plan, data_facts, plan_stages
from recsys.pipeline.stages import Context, Stage, stage, stages


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Inputs:
    """The data a pipeline runs on, as ``pipeline.json`` records it (``"inputs"``); a resume must name the same."""

    world: str | None = None  # --world DIR (absolute); None: the preset's world, generated into OUT/world
    world_manifest_sha: str | None = None  # recsys.data.schema.manifest_sha of --world DIR
    vectors: str | None = None  # --vectors FILE (absolute)

    def describe(self) -> str:
        world = "the preset's generated world" if self.world is None else f"world {self.world} (manifest {self.world_manifest_sha})"
        return world + ("" if self.vectors is None else f" with --vectors {self.vectors}")


def pipeline_inputs(world: Path | None, vectors: Path | None) -> Inputs:
    """The run's :class:`Inputs`, checked: ``world`` holds a ``manifest.json``, ``vectors`` exists.

    Raises:
        PipelineError: naming the flag and the path.
    """
    sha = None
    if world is not None:
        try:
            sha = manifest_sha(world)
        except FileNotFoundError:
            raise PipelineError(f"--world {world}: no manifest.json there; give a dataset folder in the public format") from None
    if vectors is not None and not Path(vectors).exists():
        raise PipelineError(f"--vectors {vectors}: no such file (an item_vectors.parquet, or the folder holding it)")
    return Inputs(None if world is None else str(Path(world).resolve()), sha,
                  None if vectors is None else str(Path(vectors).resolve()))


def load_state(layout: Layout, cfg: PipelineConfig, inputs: Inputs = Inputs()) -> dict:
    """The run folder's ``pipeline.json`` (a new one if absent); refuses another config or other inputs."""
    wanted = config_dict(cfg)
    if not layout.state.exists():
        return {"config": wanted, "inputs": dataclasses.asdict(inputs), "stages": {}, "starts": []}
    state = json.loads(layout.state.read_text())
    had = Inputs(**state.get("inputs", {}))  # a pipeline.json from before --world: the preset's world
    if had != inputs:
        raise PipelineError(f"{layout.state}: this folder's pipeline ran on {had.describe()}, not on {inputs.describe()}; "
                            "use another --out")
    differs = sorted(k for k in set(wanted) | set(state["config"]) if wanted.get(k) != state["config"].get(k))
    if differs:
        raise PipelineError(
            f"{layout.state}: this folder holds a pipeline with another config (fields {differs}: "
            f"{[state['config'].get(k) for k in differs]} there, {[wanted.get(k) for k in differs]} now); "
            "use another --out"
        )
    state["inputs"] = dataclasses.asdict(inputs)
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


def run_pipeline(preset: str, out: Path, quiet: bool = False, world: Path | None = None,
                 vectors: Path | None = None) -> dict:
    """Runs (or resumes) the pipeline into ``out``; returns the final state.

    Args:
        preset (str): ``PRESETS`` name: the recipe, and the world generated when ``world`` is None.
        out (Path): the run folder.
        quiet (bool): no stage messages.
        world (Path | None): a dataset to run on instead of generating the preset's world.
        vectors (Path | None): item vectors to use instead of pre-training.

    Raises:
        ValueError: an unknown preset.
        PipelineError: a refused input or run folder, or a failed stage (one line, or the stage's log tail).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown pipeline preset {preset!r}; choose one of {sorted(PRESETS)}")
    inputs = pipeline_inputs(world, vectors)
    layout = Layout(Path(out).resolve(), None if inputs.world is None else Path(inputs.world))
    with _exclusive(layout):
        try:
            return _run(PRESETS[preset], preset, layout, inputs, quiet)
        finally:
            stop_leftovers(layout.out)  # whatever happened, no stage, embedder or Triton outlives the pipeline


def make_plan(cfg: PipelineConfig, layout: Layout, inputs: Inputs) -> Plan:
    """The plan of the run's dataset (its manifest and :func:`recsys.pipeline.plan.data_facts`).

    Raises:
        PipelineError: the manifest or the test day is refused (one line naming it).
    """
    try:
        manifest = Manifest.read(layout.world)
        return plan_stages(manifest, data_facts(layout.world, manifest.test_day), cfg,
                           None if inputs.world is None else layout.world,
                           None if inputs.vectors is None else Path(inputs.vectors))
    except (ValueError, FileNotFoundError) as e:
        raise PipelineError(f"{layout.world}: {e}") from None


def _done(state: dict, name: str) -> bool:
    return bool(state["stages"].get(name, {}).get("done"))


def _run(cfg: PipelineConfig, preset: str, layout: Layout, inputs: Inputs, quiet: bool) -> dict:
    state = load_state(layout, cfg, inputs)
    stopped = stop_leftovers(layout.out)
    done = [name for name, s in state["stages"].items() if s.get("done")]
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # torchrun, python
    runner = get_runner()
    server: Server | None = None  # up while a stage needs it
    starting: tuple[Server, float, str] | None = None  # submitted, not yet ready: (server, monotonic, ISO time)
    try:
        generate = inputs.world is None and not _done(state, "world")  # the plan reads the world: make it first
        if generate:
            state["starts"].append({"at": _now(), "skipped": done, "resumed_at": "world", "stopped_leftovers": stopped})
            _say(quiet, f"pipeline {preset} -> {layout.out}: generating the world first")
            _run_stage(stage("world"), Context(cfg, layout, {}, None, None, runner), state, quiet)
        plan = make_plan(cfg, layout, inputs)
        todo = [s for s in stages(plan) if not _done(state, s.name)]
        if not generate:
            state["starts"].append({"at": _now(), "skipped": done, "resumed_at": todo[0].name if todo else None,
                                    "stopped_leftovers": stopped})
            _say(quiet, f"pipeline {preset} -> {layout.out}" + (f" on {layout.world}" if inputs.world else "") + ": " + (
                f"{len(done)} stage(s) already done ({', '.join(done)}); resuming at {todo[0].name}" if done and todo
                else "every stage already done" if not todo else f"{len(todo)} stages"))
        state["plan"] = plan.as_dict()
        save_state(layout, state)
        _announce(plan, len(todo) if generate else None, stopped, quiet)
        configs = _write_configs(cfg, layout, plan)
        slots = training_slots(cfg)
        state["training"] = dataclasses.asdict(slots)
        if any(s.concurrent for s in todo):
            _say(quiet, slots.describe())
        last_needing_server = max((i for i, s in enumerate(todo) if s.needs_server), default=-1)
        i = 0
        while i < len(todo):
            step = todo[i]
            if step.needs_server and server is None:
                if starting is None:
                    starting = (submit_server(runner, layout.triton, layout.logs), time.monotonic(), _now())
                server = wait_ready(runner, starting[0], layout.logs)
                state["server_start_s"] = time.monotonic() - starting[1]
                # outside every stage (it may overlap the last ones), inside the wall time (summary.wall_seconds)
                state.setdefault("spans", []).append({"what": "triton start", "started_at": starting[2], "finished_at": _now()})
                starting = None
                _say(quiet, f"[triton] ready at {server.url} in {state['server_start_s']:.1f} s")
            ctx = Context(cfg, layout, configs, plan, server, runner, slots)
            together = list(itertools.takewhile(lambda s: s.concurrent, todo[i:]))
            if together:
                after = todo[i + len(together)] if i + len(together) < len(todo) else None
                early = server is None and after is not None and after.needs_server

                def start_early(name: str) -> None:  # the encoder's repository is written: Triton starts beside the rest
                    nonlocal starting
                    if early and name == "export" and starting is None:
                        try:
                            starting = (submit_server(runner, layout.triton, layout.logs), time.monotonic(), _now())
                        except Exception as e:  # noqa: BLE001 (the jobs beside it go on; it is tried again before embed)
                            _say(quiet, f"[triton] could not start yet ({type(e).__name__}: {e}); trying again before embed")
                            return
                        _say(quiet, "[triton] starting (export done)")

                run_concurrent(together, ctx, state, quiet, start_early)
            else:
                _run_stage(step, ctx, state, quiet)
            i += max(1, len(together))
            if server is not None and i > last_needing_server:
                stop(runner, server.handle)
                server = None
                _say(quiet, "[triton] stopped")
    finally:
        try:
            for up in (server, None if starting is None else starting[0]):
                if up is not None:
                    stop(runner, up.handle)
                    _say(quiet, "[triton] stopped")
        finally:
            runner.close()
    return state


def _announce(plan: Plan, more: int | None, stopped: list[int], quiet: bool) -> None:
    """The plan's lines: the stages left after the world (``more``), each skipped stage and why, the vectors."""
    if more is not None:
        _say(quiet, f"plan: {more} more stages")
    for name, why in plan.skipped().items():
        _say(quiet, f"[{name}] skipped: {why}")
    _say(quiet, f"test day {plan.test_day}; item vectors: {plan.vectors}")
    if stopped:
        _say(quiet, f"stopped {len(stopped)} process(es) left by an earlier run: {stopped}")


def _write_configs(cfg: PipelineConfig, layout: Layout, plan: Plan) -> dict[str, Path]:
    """The stages' config files for this plan and dataset (SCL from the CLIP run if it runs; the images' size)."""
    manifest = Manifest.read(layout.world)
    image_size = manifest.image_size if "image" in manifest.features.content else None
    return write_configs(cfg, layout, scl_from_clip=plan.runs("pretrain_clip"), image_size=image_size)


def _started(step: Stage, ctx: Context, state: dict, quiet: bool) -> float:
    _say(quiet, f"[{step.name}] started")
    state["stages"][step.name] = {"done": False, "started_at": _now()}
    save_state(ctx.layout, state)
    return time.monotonic()


def _done_now(step: Stage, ctx: Context, state: dict, quiet: bool, t: float) -> None:
    seconds = time.monotonic() - t
    state["stages"][step.name] = {"done": True, "seconds": round(seconds, 1),
                                  "started_at": state["stages"][step.name]["started_at"], "finished_at": _now()}
    save_state(ctx.layout, state)
    _say(quiet, f"[{step.name}] done in {seconds:.1f} s")


def _run_stage(step: Stage, ctx: Context, state: dict, quiet: bool) -> None:
    t = _started(step, ctx, state, quiet)
    if step.local is not None:
        step.local(ctx)
    else:
        assert step.apps is not None
        run_apps(ctx.runner, step.apps(ctx), ctx.layout.logs, f"stage {step.name}")
    _done_now(step, ctx, state, quiet, t)


def run_concurrent(steps: list[Stage], ctx: Context, state: dict, quiet: bool,
                   on_done: Callable[[str], None] | None = None) -> None:
    """Runs app stages side by side, at most ``ctx.training.parallel`` at once, each once it is ``ready``.

    A stage starts in plan order among the ready ones; each is recorded done
    as it ends (a restart redoes only the unfinished ones), then ``on_done``
    is called with its name. The first failure cancels the others and raises.

    Raises:
        PipelineError: a stage failed, or one can never start (nothing runs and it is not ready).
    """
    pending, running = list(steps), {}  # name -> (stage, app handles, start time)
    try:
        while pending or running:
            for step in list(pending):
                if len(running) < ctx.training.parallel and (step.ready is None or step.ready(ctx)):
                    assert step.apps is not None
                    t = _started(step, ctx, state, quiet)
                    running[step.name] = (step, [submit(ctx.runner, a, ctx.layout.logs) for a in step.apps(ctx)], t)
                    pending.remove(step)
            if pending and not running:
                raise PipelineError(f"stage {pending[0].name}: cannot start (what it waits for did not happen)")
            for name, (step, handles, t) in list(running.items()):
                if finished(ctx.runner, handles, ctx.layout.logs, f"stage {name}"):
                    del running[name]
                    _done_now(step, ctx, state, quiet, t)
                    if on_done is not None:
                        on_done(name)
            time.sleep(0.5)
    except BaseException:
        for _, handles, _ in running.values():
            for handle in handles:
                ctx.runner.cancel(handle)
        raise


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)
