"""Running the pipeline's TorchX apps: submit, wait, cancel, find their logs; the Triton server app.

Every app runs on TorchX's ``local_cwd`` scheduler with its logs under the
pipeline's ``logs/`` folder; on a cluster the same components take
``-s kubernetes``/``slurm`` (README, "The main job").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torchx.runner import Runner
from torchx.specs import AppDef, AppState

SCHEDULER = "local_cwd"
SERVER_READY_TIMEOUT_S = 300.0


class PipelineError(RuntimeError):
    """A stage failed, or the run folder belongs to another pipeline."""


def submit(runner: Runner, app: AppDef, logs: Path) -> str:
    """Starts one app; returns its handle. ``.torchxconfig``'s ``[local_cwd]`` options apply (``log_dir`` is ours)."""
    from torchx.runner import config

    cfg: dict = {"log_dir": str(logs)}
    config.apply(SCHEDULER, cfg, dirs=[str(Path.cwd())])
    return runner.run(app, SCHEDULER, cfg=cfg)


def log_tail(logs: Path, handle: str, lines: int = 30) -> str:
    """What an app's stderr log says about its failure: its first traceback (a rank's, under torchrun) and its end."""
    app_id = handle.rsplit("/", 1)[-1]
    found = sorted(Path(logs).glob(f"**/{app_id}/**/stderr.log"), key=lambda p: p.stat().st_mtime)
    if not found:
        return f"(no log found under {logs} for {app_id})"
    text = found[-1].read_text(errors="replace").splitlines()
    first = next((i for i, line in enumerate(text) if "Traceback (most recent call last)" in line), None)
    if first is None or first >= len(text) - lines:
        return f"{found[-1]}:\n" + "\n".join(text[-lines:])
    return f"{found[-1]}:\n" + "\n".join(text[first : first + lines] + ["..."] + text[-10:])


def _check(runner: Runner, handle: str, logs: Path, what: str, must_run: bool) -> bool:
    """Whether the app ended successfully; raises if it failed (or ended at all, with ``must_run``)."""
    status = runner.status(handle)
    if status is None or not status.is_terminal():
        return False
    if status.state != AppState.SUCCEEDED or must_run:
        raise PipelineError(f"{what}: {handle} ended {status.state.name}\n{log_tail(logs, handle)}")
    return True


def finished(runner: Runner, handles: list[str], logs: Path, what: str) -> bool:
    """Whether every app has ended successfully; raises (with its log's tail) if one failed."""
    return all([_check(runner, h, logs, what, must_run=False) for h in handles])


def run_apps(runner: Runner, apps: list[AppDef], logs: Path, what: str) -> None:
    """Runs the apps together and waits for all; the first failure cancels the rest and raises."""
    handles = [submit(runner, app, logs) for app in apps]
    try:
        while not finished(runner, handles, logs, what):
            time.sleep(0.5)
    except BaseException:
        for handle in handles:
            runner.cancel(handle)
        raise


def wait_until(
    condition: Callable[[], bool], runner: Runner, handles: str | tuple[str, ...], logs: Path, what: str, timeout_s: float
) -> None:
    """Polls ``condition`` while the (long-running) apps stay up; raises if one ends or time runs out."""
    handles = (handles,) if isinstance(handles, str) else handles
    deadline = time.monotonic() + timeout_s
    while not condition():
        for handle in handles:
            _check(runner, handle, logs, what, must_run=True)
        if time.monotonic() > deadline:
            raise PipelineError(f"{what}: not done within {timeout_s:.0f} s\n{log_tail(logs, handles[0])}")
        time.sleep(0.2)


def stop(runner: Runner, handle: str) -> None:
    """Cancels an app (SIGTERM, then SIGKILL after TorchX's grace period) and waits for it."""
    runner.cancel(handle)
    runner.wait(handle, wait_interval=0.2)


@dataclass(frozen=True)
class Server:
    """A running ``mmctr serve`` app."""

    handle: str
    url: str  # gRPC HOST:PORT


def submit_server(runner: Runner, repository: Path, logs: Path) -> Server:
    """Starts Triton on an exported repository (free ports, 127.0.0.1) and returns at once (:func:`wait_ready` waits)."""
    import torchx_components.serving as serving_components
    from serving.server import free_port

    grpc_port, http_port = free_port(), free_port()
    handle = submit(runner, serving_components.serve(repository=str(repository), grpc_port=grpc_port, http_port=http_port), logs)
    return Server(handle, f"127.0.0.1:{grpc_port}")


def wait_ready(runner: Runner, server: Server, logs: Path) -> Server:
    """``server`` once every model of its repository is ready.

    Raises:
        PipelineError: the server ended, or was not ready within ``SERVER_READY_TIMEOUT_S`` (it is cancelled).
    """
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.url)

    def ready() -> bool:
        try:
            index = client.get_model_repository_index().models
        except Exception:  # noqa: BLE001 (not up yet: connection refused and the like)
            return False
        return bool(index) and all(m.state == "READY" for m in index)

    try:
        wait_until(ready, runner, server.handle, logs, "Triton start", SERVER_READY_TIMEOUT_S)
    except BaseException:
        runner.cancel(server.handle)
        raise
    return server


def start_server(runner: Runner, repository: Path, logs: Path) -> Server:
    """Starts Triton on an exported repository (free ports, 127.0.0.1); returns once every model is ready."""
    return wait_ready(runner, submit_server(runner, repository, logs), logs)
