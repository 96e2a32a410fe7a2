"""Config defaults, file loading (YAML and TOML) and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.config import SclConfig, TowerConfig, load_config
from recsys.config_file import config_from_dict


def test_defaults_are_valid_and_frozen() -> None:
    cfg = SclConfig()
    assert cfg.tower == TowerConfig() and cfg.tower.embed_dim == 64
    assert (cfg.momentum, cfg.queue_size, cfg.temperature, cfg.triplet_margin, cfg.triplet_weight) == (
        0.99, 8192, 0.07, 0.2, 0.5,
    )
    with pytest.raises(AttributeError):
        cfg.momentum = 0.5  # type: ignore[misc]


def test_yaml_and_toml_give_the_same_config(tmp_path: Path) -> None:
    yaml_path = tmp_path / "a.yaml"
    yaml_path.write_text("momentum: 0.99\nlr: 1\nmax_steps: 10\nfusion: concat\ntower:\n  embed_dim: 32\n")
    toml_path = tmp_path / "a.toml"
    toml_path.write_text('momentum = 0.99\nlr = 1\nmax_steps = 10\nfusion = "concat"\n[tower]\nembed_dim = 32\n')
    a, b = load_config(yaml_path), load_config(toml_path)
    assert a == b
    assert a.lr == 1.0 and isinstance(a.lr, float) and a.max_steps == 10 and a.tower.embed_dim == 32
    assert a.tower.vision_width == TowerConfig().vision_width
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == SclConfig()


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"queue_sise": 1}, r"unknown key\(s\) \['queue_sise'\] in section 'scl'"),
        ({"tower": {"widht": 1}}, r"unknown key\(s\) \['widht'\] in section 'tower'"),
        ({"tower": 3}, "section 'tower' must be a mapping"),
        ({"queue_size": "big"}, r"scl.queue_size must be int"),
        ({"queue_size": 1.5}, r"scl.queue_size must be int"),
        ({"batch_size": True}, r"scl.batch_size must be int"),
        ({"max_steps": 0}, "max_steps must be >= 1 or null"),
        ({"momentum": 1.5}, r"momentum must be in \[0, 1\]"),
        ({"fusion": "sum"}, "fusion must be one of"),
        ({"tower": {"vision_width": 100, "vision_heads": 3}}, "does not divide"),
        ({"tower": {"image_size": 60}}, "not a multiple of patch_size"),
    ],
)
def test_bad_values_name_the_key(raw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        config_from_dict(SclConfig, raw, source="x.yaml", section="scl")


def test_unknown_format_and_error_names_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown config format"):
        load_config(tmp_path / "a.json")
    path = tmp_path / "b.yaml"
    path.write_text("temperature: 0\n")
    with pytest.raises(ValueError, match=f"{path}: SclConfig.temperature must be > 0"):
        load_config(path)
