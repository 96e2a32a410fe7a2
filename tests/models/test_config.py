"""ModelConfig validation, the YAML/TOML loader and table sizes from the manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.data.spec import world_spec

SINGLE_FEATURES = world_spec().sparse_keys()
from recsys.data.schema import Manifest
from recsys.models.config import ModelConfig, load_model_config, table_sizes


def test_toml_and_yaml_give_the_same_config(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text('variant = "make"\nmake_hidden = [32, 16]\nmake_frozen = false\n')
    (tmp_path / "m.yaml").write_text("variant: make\nmake_hidden: [32, 16]\nmake_frozen: false\n")
    cfg = load_model_config(tmp_path / "m.toml")
    assert cfg == load_model_config(tmp_path / "m.yaml")
    assert cfg == ModelConfig(variant="make", make_hidden=(32, 16), make_frozen=False)


@pytest.mark.parametrize(
    "text, message",
    [
        ("variant: nope\n", "variant must be one of"),
        ("mlp_hidden: []\n", "mlp_hidden must be a non-empty tuple"),
        ("simtier_tiers: 0\n", "simtier_tiers must be a positive int"),
        ("make_frozen: 1\n", "make_frozen must be a bool"),
        ("embeding_dim: 8\n", "unknown key(s) ['embeding_dim']"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"m\.yaml") as info:
        load_model_config(tmp_path / "m.yaml")
    assert message in str(info.value)


def test_simtier_form_is_the_variants_unless_set(tmp_path: Path) -> None:
    from recsys.models.config import SIMTIER_ALONE, SIMTIER_FORMS, VARIANTS

    form = lambda c: (c.simtier_soft, c.simtier_learned_metric, c.simtier_tiers)  # noqa: E731
    assert form(ModelConfig(variant="simtier_make")) == (False, False, 20) == SIMTIER_FORMS["simtier_make"]
    for variant in VARIANTS:
        assert form(ModelConfig(variant=variant)) == SIMTIER_FORMS.get(variant, SIMTIER_ALONE)
    assert form(ModelConfig(variant="simtier")) == (True, True, 50)
    # a field set is kept, the others take the variant's form; a learned metric alone turns soft tiers on
    assert form(ModelConfig(variant="simtier_make", simtier_tiers=50)) == (False, False, 50)
    assert form(ModelConfig(variant="simtier_make", simtier_learned_metric=True)) == (True, True, 20)
    assert form(ModelConfig(variant="simtier", simtier_soft=False, simtier_learned_metric=False)) == (False, False, 50)
    assert form(ModelConfig(variant="simtier", simtier_soft=False)) == (False, False, 50)
    with pytest.raises(ValueError, match="needs simtier_soft"):
        ModelConfig(variant="simtier", simtier_soft=False, simtier_learned_metric=True)
    (tmp_path / "m.yaml").write_text("variant: simtier_make\nsimtier_tiers: 30\n")
    assert form(load_model_config(tmp_path / "m.yaml")) == (False, False, 30)


def test_table_sizes_from_manifest() -> None:
    ranges = {k: i + 2 for i, k in enumerate(SINGLE_FEATURES)}
    m = Manifest(format_version=1, preset="t", seed=0, counts={}, id_ranges=ranges,
                 first_day=0, last_day=1, max_history_len=4, image_size=8)
    assert table_sizes(m) == ranges
    del ranges["brand_id"]
    with pytest.raises(ValueError, match="brand_id"):
        table_sizes(m)


def test_shipped_job_configs_load() -> None:
    from recsys.train.config import load_job_config

    files = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert files, "configs/ holds no job config"
    for file in files:
        model, _ = load_job_config(file, variant="simtier_make")
        assert model.variant == "simtier_make", file
    light, _ = load_job_config(files[0].parent / "light_make.yaml")
    assert ModelConfig(make_frozen=True, make_attention_hidden=(8,)) == light
