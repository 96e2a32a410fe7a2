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


@pytest.fixture(scope="session")
def tiny_encoder_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``encoder.pt`` of a small random ItemEncoder for the tiny world's 64 px images (D = 16, C = 16)."""
    import torch

    from pretrain.config import TowerConfig
    from pretrain.towers import ItemEncoder, build_towers
    from pretrain.encoder import save_encoder

    tower = TowerConfig(vision_width=32, vision_heads=2, vision_layers=1, text_width=32, text_heads=2,
                        text_layers=1, embed_dim=16, context_length=16)  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encoder") / "encoder.pt"
    save_encoder(path, ItemEncoder(build_towers(tower)).eval(), tower)
    return path


@pytest.fixture(scope="session")
def tiny_export(tiny_encoder_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mmctr export`` of ``tiny_encoder_file``: the folder holding embedded/ and production/."""
    from serving.export import export_repository

    out = tmp_path_factory.mktemp("triton") / "export"
    export_repository(tiny_encoder_file, out)
    return out
