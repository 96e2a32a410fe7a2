"""A real Triton Inference Server process on a model repository: start, readiness, stop, cleanup.

Runs the ``tritonserver`` binary bundled in ``nvidia-pytriton`` with its
Python backend (see ``../shared/STACK.md``):

- the backend folder is a temporary folder of links to the wheel's
  ``libtriton_python.so``, ``triton_python_backend_utils.py`` and the stub
  built for this interpreter's Python version;
- ``LD_LIBRARY_PATH`` holds this interpreter's ``LIBDIR`` (the stub must load
  the same libpython) and the wheel's ``nvidia_pytriton.libs``; ``PATH``
  starts with this interpreter's ``bin`` (the stub runs its ``python3``, so
  the models import this environment's torch and open_clip);
- HTTP and gRPC bind 127.0.0.1 by default, on free ports unless given;
  metrics are off;
- :meth:`TritonServer.start` returns once every model of the repository
  answers ready on ``/v2/models/<name>/ready`` (the server turns ready
  before its models load);
- the server runs in its own process group; its Python-backend shared
  memory regions carry a prefix unique to this object. :meth:`stop` sends
  SIGTERM, waits, kills what is left of the group, removes the regions and
  the temporary folder; it also cleans up after a server that crashed or was
  killed (:meth:`kill`), and a later :meth:`start` runs on the same ports;
  servers still running when the interpreter exits are stopped (``atexit``).

Example::

    >>> import tempfile
    >>> repo = Path(tempfile.mkdtemp())
    >>> (repo / "m").mkdir()
    >>> _ = (repo / "m" / "config.pbtxt").write_text('name: "m"')
    >>> server = TritonServer(ServerConfig(repository=repo, grpc_port=8101, http_port=8100))
    >>> server.grpc_url, server.models, server.running(), free_port() > 0
    ('127.0.0.1:8101', ['m'], False, True)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from recsys.settings import setting

SHM_DIR = Path("/dev/shm")
LOOPBACK = "127.0.0.1"  # where servers bind and clients call unless asked
GRPC_PORT = 8001  # Triton's own default ports: `mmctr serve` binds them, the client calls GRPC_PORT
HTTP_PORT = 8000
_RUNNING: "weakref.WeakSet[TritonServer]" = weakref.WeakSet()  # started and not yet stopped


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def triton_dist() -> Path:
    """The ``tritonserver`` folder inside the installed ``nvidia-pytriton`` wheel."""
    import pytriton

    path = Path(pytriton.__file__).parent / "tritonserver"
    if not (path / "bin" / "tritonserver").is_file():
        raise FileNotFoundError(f"{path}/bin/tritonserver: missing; is nvidia-pytriton==0.7.0 installed?")
    return path


def repository_models(repository: Path) -> list[str]:
    """Names of the models in a repository: its folders holding a ``config.pbtxt``."""
    repository = Path(repository)
    if not repository.is_dir():
        raise FileNotFoundError(f"{repository}: no such model repository")
    models = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
    if not models:
        raise ValueError(f"{repository}: no model folders with a config.pbtxt")
    return models


MODEL_CONTROL = ("none", "explicit")  # ServerConfig.model_control


@dataclass(frozen=True)
class ServerConfig:
    """Where and how a :class:`TritonServer` runs.

    Args:
        repository (Path): the model repository (e.g. ``OUT/embedded`` of ``mmctr export``).
        host (str): address HTTP and gRPC bind.
        grpc_port (int): gRPC port; 0 picks a free one.
        http_port (int): HTTP port (readiness polling); 0 picks a free one.
        ready_timeout_s (float): how long :meth:`TritonServer.start` waits for every model.
        exit_timeout_s (int): how long the server lets in-flight requests finish on SIGTERM.
        model_control (str): ``none``: the repository is loaded at start and fixed; ``explicit``:
            every model is loaded at start, and a client's load request (re)loads a model, e.g.
            a new version folder (Triton's explicit model control: the hot update of a ranker).
    """

    repository: Path  # model repository
    host: str = setting(LOOPBACK, "address to bind")  # loopback only unless asked
    grpc_port: int = setting(0, "gRPC port; 0 picks a free one")  # `mmctr serve`: GRPC_PORT
    http_port: int = setting(0, "HTTP port; 0 picks a free one")  # `mmctr serve`: HTTP_PORT
    # model loading takes 4-8 s on 2 cores
    ready_timeout_s: float = setting(120.0, "seconds to wait for every model", flag="--ready-timeout")
    exit_timeout_s: int = 5  # tritonserver --exit-timeout-secs
    model_control: str = setting("none", "Triton model control: none (fixed at start) or explicit (clients may "
                                 "load new versions: hot updates)", choices=MODEL_CONTROL)

    def __post_init__(self) -> None:
        if self.model_control not in MODEL_CONTROL:
            raise ValueError(f"ServerConfig.model_control must be one of {list(MODEL_CONTROL)}, got {self.model_control!r}")


class TritonServer:
    """One ``tritonserver`` process (module docstring); a context manager.

    Args:
        config (ServerConfig): repository, address, timeouts.
        log (Path | None): file for the server's output; None: a file in the
            temporary folder, shown (its tail) in errors and removed by :meth:`stop`.
    """

    def __init__(self, config: ServerConfig, log: Path | None = None) -> None:
        self.config = config
        self.grpc_port = config.grpc_port or free_port(config.host)
        self.http_port = config.http_port or free_port(config.host)
        self.log = log
        self.models = repository_models(config.repository)
        self.ready_seconds = float("nan")  # start to every model ready, of the last start
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None
        self._shm_prefix = ""

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.config.host}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- start --------------------------------------------------------------
    def _command(self, backends: Path) -> list[str]:
        c = self.config
        return [
            str(triton_dist() / "bin" / "tritonserver"),
            f"--model-repository={Path(c.repository).resolve()}",
            f"--backend-directory={backends}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--http-address={c.host}", f"--http-port={self.http_port}",
            f"--grpc-address={c.host}", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false", "--allow-gpu-metrics=false", "--allow-cpu-metrics=false",
            "--disable-auto-complete-config", "--strict-readiness=true", "--exit-on-error=true",
            "--pinned-memory-pool-byte-size=0", f"--exit-timeout-secs={c.exit_timeout_s}",
            f"--model-control-mode={c.model_control}", *(["--load-model=*"] if c.model_control == "explicit" else []),
        ]  # fmt: skip

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [sysconfig.get_config_var("LIBDIR"), str(triton_dist().parent.parent / "nvidia_pytriton.libs")]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def _backend_folder(self) -> Path:
        """``TMP/backends/python/``: links to the wheel's Python backend and this Python's stub."""
        dist = triton_dist()
        folder = self._tmp / "backends" / "python"
        folder.mkdir(parents=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise FileNotFoundError(f"{stub}: nvidia-pytriton has no Python backend stub for Python {version}")
        for source in (dist / "backends" / "python" / "libtriton_python.so",
                       dist / "backends" / "python" / "triton_python_backend_utils.py", stub):  # fmt: skip
            (folder / source.name).symlink_to(source)
        return folder.parent

    def start(self) -> "TritonServer":
        """Starts the server and waits until every model is ready.

        Raises:
            RuntimeError: the server exited or a model was not ready within
                ``ready_timeout_s`` (the server is stopped; the log's tail is in the message).
        """
        if self.running():
            raise RuntimeError(f"tritonserver already running (pid {self.pid}) on {self.grpc_url}")
        self._cleanup()
        t0 = time.perf_counter()
        self._tmp = Path(tempfile.mkdtemp(prefix="mmctr-triton-"))
        self._shm_prefix = f"mmctr-triton-{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        log = self.log or self._tmp / "tritonserver.log"
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(
                self._command(self._backend_folder()),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environment(),
                start_new_session=True,  # its own process group: the stubs are killed with it
            )
        _RUNNING.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.perf_counter() - t0
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_s
        pending = list(self.models)
        while pending:
            if self._proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self._proc.returncode} before its models "
                                   f"were ready:\n{self.log_tail()}")  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError(f"models {pending} not ready after {self.config.ready_timeout_s:.0f} s:\n{self.log_tail()}")
            url = f"http://{self.http_url}/v2/models/{pending[0]}/ready"
            try:
                with urllib.request.urlopen(url, timeout=1.0) as r:
                    if r.status == 200:
                        pending.pop(0)
                        continue
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or 400: not ready
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's output, after its earlier error lines (``E...``: why a
        model failed to load), CUDA/NVML noise left out."""
        log = self.log or (self._tmp / "tritonserver.log" if self._tmp else None)
        if log is None or not Path(log).is_file():
            return "(no log)"
        text = Path(log).read_text(errors="replace").splitlines()
        keep = [line for line in text if not any(s in line for s in ("CUDA", "NVML", "DCGM", "cuda"))]
        tail = keep[-lines:]
        errors = [line for line in keep[:-lines] if line.startswith("E")]  # Triton's error lines, before the tail
        return "\n".join(errors + tail)

    # -- stop -----------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL the server process alone, as a crash would (its workers and shared memory stay
        until :meth:`stop` or the next :meth:`start` cleans them up)."""
        if self.running():
            self._proc.kill()
            self._proc.wait()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL the process group; removes shared memory
        and the temporary folder. Returns the server's exit code (None if it never started)."""
        if self._proc is None:
            self._cleanup()
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(self._proc.pid)
                self._proc.wait()
        code = self._proc.returncode
        self._cleanup()
        _RUNNING.discard(self)
        return code

    def _cleanup(self) -> None:
        """Ends what is left of the last process group, removes its shared memory and temporary folder."""
        if self._proc is not None:
            _wait_group_gone(self._proc.pid, timeout_s=5.0)
            self._proc = None
        if self._shm_prefix:
            for region in SHM_DIR.glob(self._shm_prefix + "*"):
                region.unlink(missing_ok=True)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    """At interpreter exit, stops servers still running (a test or script that forgot to)."""
    for server in list(_RUNNING):
        server.stop()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already gone
        os.killpg(pgid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from ``/proc``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    """Waits for every process of group ``pgid`` to exit (Python-backend stubs exit after their
    server); SIGKILLs the group after ``timeout_s``, and waits as long again."""
    deadline = time.monotonic() + timeout_s
    killed = False
    while group_members(pgid):
        if time.monotonic() > deadline:
            if killed:
                raise RuntimeError(f"processes {group_members(pgid)} of group {pgid} survived SIGKILL")
            _kill_group(pgid)
            killed, deadline = True, time.monotonic() + timeout_s
        time.sleep(0.05)
