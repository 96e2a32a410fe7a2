"""``mmctr serve`` and ``TritonServer``: ready on every model, SIGTERM, nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from serving.client import ClientConfig, EncoderClient
from serving.server import SHM_DIR, ServerConfig, TritonServer, free_port, group_members

pytestmark = pytest.mark.timeout(240)


def _leftovers(prefix: str) -> tuple[list[str], list[str]]:
    """Shared memory regions and temporary folders whose names start with ``prefix``."""
    shm = sorted(p.name for p in SHM_DIR.glob(prefix + "*"))
    tmp = sorted(p.name for p in Path(tempfile.gettempdir()).glob("mmctr-triton-*"))
    return shm, tmp


def test_serve_command_is_ready_serves_and_stops_on_sigterm_leaving_nothing(tiny_export: Path) -> None:
    tmp_before = _leftovers("")[1]
    grpc, http = free_port(), free_port()
    cmd = [sys.executable, "-m", "recsys.cli", "serve", "--repository", str(tiny_export),
           "--grpc-port", str(grpc), "--http-port", str(http)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # printed once every model is ready
        assert line.startswith("ready: item_encoder, item_encoder_torchscript, item_preprocess"), line + proc.stderr.read()
        assert f"gRPC 127.0.0.1:{grpc}" in line and f"HTTP 127.0.0.1:{http}" in line
        pid = int(re.search(r"pid (\d+)", line).group(1))
        assert len(group_members(pid)) == 3  # tritonserver and one Python-backend stub per Python model
        assert _leftovers(f"mmctr-triton-{proc.pid}-")[0], "the Python backend's shared memory regions"
        with EncoderClient(ClientConfig(url=f"127.0.0.1:{grpc}")) as client:
            assert client.encode(np.zeros((2, 64, 64, 3), np.uint8), ["a", "b"]).shape == (2, 16)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.strip().endswith("stopped")
    assert group_members(pid) == []
    shm, tmp = _leftovers(f"mmctr-triton-{proc.pid}-")
    assert shm == [] and tmp == tmp_before


def test_failed_start_reports_the_log_and_cleans_up(tmp_path: Path) -> None:
    model = tmp_path / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "python"\nmax_batch_size: 4\n'
        'input [{ name: "x", data_type: TYPE_FP32, dims: [1] }]\noutput [{ name: "y", data_type: TYPE_FP32, dims: [1] }]\n'
    )
    (model / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('no weights here')\n"
    )
    tmp_before = _leftovers("")[1]
    server = TritonServer(ServerConfig(repository=tmp_path / "repo", ready_timeout_s=60))
    t = time.monotonic()
    with pytest.raises(RuntimeError, match="(?s)exited with code.*no weights here"):
        server.start()
    assert time.monotonic() - t < 60
    assert not server.running() and server.pid is None
    assert _leftovers(f"mmctr-triton-{os.getpid()}-")[0] == [] and _leftovers("")[1] == tmp_before
