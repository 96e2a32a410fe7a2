"""The stage config files the presets write: the towers' section (image side, patch) as the dataset allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.config import TowerConfig, load_config
from recsys.pipeline.config import PRESETS, Layout, write_configs


@pytest.mark.parametrize(
    ("preset", "image_size", "tower"),
    [
        ("small", 64, TowerConfig(patch_size=16)),  # the demo's lighter ViT: 16 patches of 16x16
        ("small", 40, TowerConfig(image_size=40)),  # 16 does not divide 40: TowerConfig's patch of 8
        ("small", None, TowerConfig()),  # no images: no tower section
        ("tiny", 64, TowerConfig()),
    ],
)
def test_clip_and_scl_share_the_towers_the_preset_and_the_images_allow(
    preset: str, image_size: int | None, tower: TowerConfig, tmp_path: Path
) -> None:
    paths = write_configs(PRESETS[preset], Layout(tmp_path), image_size=image_size)
    clip, scl = load_config(paths["clip"]), load_config(paths["scl"])
    assert clip.tower == scl.tower == tower
    assert scl.init_from == str(tmp_path / "pretrain-clip" / "encoder.pt")
    assert (clip.epochs, scl.epochs, scl.queue_size, scl.triplet_weight) == (
        PRESETS[preset].clip_epochs, PRESETS[preset].scl_epochs, 512, 0.0)
    assert (clip.max_steps, scl.max_steps) == (PRESETS[preset].clip_max_steps, None)
