"""A real Triton server per test module, on free ports, over the tiny encoder's export."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.server import ServerConfig, TritonServer


@pytest.fixture(scope="module")
def server(tiny_export: Path) -> Iterator[TritonServer]:
    """Started before the module's first test that asks for it, stopped (and cleaned up) after its last."""
    with TritonServer(ServerConfig(repository=tiny_export / "embedded")) as s:
        yield s
