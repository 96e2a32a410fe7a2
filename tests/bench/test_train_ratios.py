"""``bench.train``'s step-time candidates: each is the configuration its label names."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bench.train import LIGHT_MAKE_CONFIG, Run, _ratio_candidates
from recsys.models.config import ModelConfig
from recsys.train.config import load_job_config


def test_candidates_build_the_configurations_they_name(tmp_path: Path) -> None:
    base = Run(world="w", vectors="v", variant="id_only", steps=1, warmup=0, batch_size=8)
    runs = _ratio_candidates(base, narrow_vectors=str(tmp_path / "missing"))
    configs = {label: run.model_config() for label, run in runs.items()}
    assert configs["defaults"] == ModelConfig(variant="simtier_make")
    light = load_job_config(LIGHT_MAKE_CONFIG)[0]
    projected = [c for label, c in configs.items() if "projected" in label]
    assert sorted(c.mm_width for c in projected) == [16, 32]
    for config in projected:  # the light MAKE, the rest the defaults
        assert config == replace(ModelConfig(variant="simtier_make"), make_frozen=light.make_frozen,
                                 make_attention_hidden=light.make_attention_hidden, mm_width=config.mm_width)
    assert all(run.variant == "simtier_make" for run in runs.values())
    (soft,) = [c for label, c in configs.items() if label.startswith("SimTier soft")]
    assert (soft.simtier_soft, soft.simtier_learned_metric, soft.simtier_tiers) == (True, True, 50)
    assert soft == replace(ModelConfig(variant="simtier_make"), simtier_soft=True, simtier_learned_metric=True, simtier_tiers=50)
    assert configs["defaults"].simtier_soft is False  # the paper's form: simtier_make's default
    (attention,) = [c for label, c in configs.items() if label.startswith("MAKE's attention") and "stage 2" in label]
    default = ModelConfig(variant="simtier_make")
    assert attention == replace(default, make_attention_frozen=not default.make_attention_frozen)
    (bilinear,) = [c for label, c in configs.items() if "bilinear" in label]
    assert bilinear == replace(default, make_attention="bilinear") and default.make_attention == "din"
