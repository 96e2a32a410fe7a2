"""The encoder file: build, save and load ``encoder.pt``, named by the file or by its run folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from pretrain.config import SclConfig, TowerConfig
from pretrain.encoder import ENCODER_FILE, build_encoder, encoder_file, encoder_tower, load_encoder, save_encoder
from pretrain.towers import ItemEncoder, build_tokenizer

TOWER = TowerConfig(vision_width=32, vision_heads=2, vision_layers=1, text_width=32, text_heads=2, text_layers=1,
                    embed_dim=8, context_length=8)  # fmt: skip
CFG = SclConfig(tower=TOWER, fusion="concat", seed=3)


def _inputs(b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, 64, 64, 3), generator=g, dtype=torch.uint8)
    return images, build_tokenizer(TOWER)(["red dress", "steel kettle", "wool lamp"][:b])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding the encoder.pt of ``build_encoder(CFG)``."""
    folder = tmp_path_factory.mktemp("run")
    save_encoder(folder / ENCODER_FILE, build_encoder(CFG), TOWER)
    return folder


def test_build_encoder_is_deterministic_for_a_seed() -> None:
    a, b = build_encoder(CFG).state_dict(), build_encoder(CFG).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert build_encoder(CFG).fusion == "concat" and build_encoder(CFG).output_dim() == 2 * TOWER.embed_dim


def test_save_returns_the_files_sha256_and_load_restores_the_encoder(run: Path) -> None:
    file = run / ENCODER_FILE
    digest = save_encoder(run / "again.pt", build_encoder(CFG), TOWER)
    assert digest == hashlib.sha256((run / "again.pt").read_bytes()).hexdigest()
    assert not (run / "again.tmp").exists()
    loaded, want = load_encoder(file), build_encoder(CFG).eval()
    assert not loaded.training and loaded.fusion == "concat" and loaded.reduced_dim == 0
    with torch.no_grad():
        torch.testing.assert_close(loaded(*_inputs()), want(*_inputs()), rtol=0, atol=0)
    assert encoder_tower(file) == TOWER


def test_the_run_folder_and_its_file_load_alike(run: Path) -> None:
    assert encoder_file(run) == encoder_file(run / ENCODER_FILE) == run / ENCODER_FILE
    by_folder, by_file = load_encoder(run).state_dict(), load_encoder(run / ENCODER_FILE).state_dict()
    assert by_folder.keys() == by_file.keys() and all(torch.equal(by_folder[k], by_file[k]) for k in by_file)
    assert encoder_tower(run) == TOWER


def test_a_missing_encoder_names_the_file_looked_for(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / ENCODER_FILE}: no encoder checkpoint"):
        load_encoder(tmp_path)  # a folder without encoder.pt
    with pytest.raises(FileNotFoundError, match="missing.pt: no encoder checkpoint .*or the run folder holding it"):
        load_encoder(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="no encoder checkpoint"):
        encoder_tower(tmp_path)


def test_a_reduced_encoder_keeps_its_projection(run: Path, tmp_path: Path) -> None:
    full = load_encoder(run)
    reduced = ItemEncoder(full.clip, fusion=full.fusion, reduced_dim=4)
    with torch.no_grad():
        reduced.projection.copy_(torch.linalg.qr(torch.randn(16, 4, generator=torch.Generator().manual_seed(1)))[0])
    save_encoder(tmp_path / ENCODER_FILE, reduced.eval(), TOWER)
    loaded = load_encoder(tmp_path)
    assert loaded.reduced_dim == 4 and loaded.output_dim() == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded(*_inputs()), reduced(*_inputs()), rtol=0, atol=0)
