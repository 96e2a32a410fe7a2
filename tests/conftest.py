"""Shared fixtures: one tiny world per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.data.schema import Manifest
from recsys.world.generate import generate_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated `tiny` world (seed 0). Read-only: copy it before changing it."""
    out = tmp_path_factory.mktemp("worlds") / "tiny"
    generate_world(out, preset="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_manifest(tiny_world: Path) -> Manifest:
    return Manifest.read(tiny_world)
