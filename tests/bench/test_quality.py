"""The selection protocol of ``bench.quality``: valid grids, and the test day read only by the chosen configurations."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bench import quality
from bench.peer import PeerConfig
from bench.quality import GRIDS, MODELS, PEERS, Dataset, Protocol, Score, run_dataset
from recsys.data.schema import Manifest
from recsys.models.config import VARIANTS, ModelConfig
from recsys.train.config import TrainConfig


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_every_candidate_is_a_valid_configuration(grid: str) -> None:
    assert set(GRIDS[grid]) == set(MODELS) == set(VARIANTS) | set(PEERS)
    for model, candidates in GRIDS[grid].items():
        assert candidates, model
        for overrides in candidates.values():
            if model in PEERS:
                replace(PeerConfig(), **overrides)
            else:
                model_fields, train_fields = quality.split_overrides(overrides)
                ModelConfig(variant=model, **model_fields)
                TrainConfig(**train_fields)
                assert set(train_fields) <= quality.TRAIN_KEYS and not set(model_fields) & quality.TRAIN_KEYS
    paper = {"simtier_soft": False, "simtier_learned_metric": False, "simtier_tiers": 20}
    assert paper in GRIDS[grid]["simtier"].values()


def test_selection_reads_the_validation_day_and_the_test_day_only_for_the_chosen(
    tiny_world: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    T = Manifest.read(tiny_world).test_day
    calls: list[tuple[str, tuple, int, int]] = []

    def fake(self: Protocol, model: str, overrides: dict, seed: int, until: int) -> Score:
        calls.append((model, tuple(sorted(overrides.items())), seed, until))
        score = 0.7 if until == T - 1 else 0.6 + 0.01 * len(str(overrides))  # the test day's scores never decide
        return Score(gauc=score, auc=score, samples_per_s=1.0)

    monkeypatch.setattr(Protocol, "score", fake)
    data = Dataset(str(tiny_world), tiny_world, vectors=tmp_path / "unused")
    record = run_dataset(data, ["id_only", "simtier", "peer"], "quick", [0, 1], [0, 1, 2], 256, tmp_path)
    selection = [c for c in calls if c[3] == T - 2]
    test = [c for c in calls if c[3] == T - 1]
    assert len(calls) == len(selection) + len(test)  # no other day: the test day is scored from until = T - 1 only
    assert calls.index(test[0]) == len(selection)  # every selection run before the first test run
    assert len(selection) == 2 * sum(len(GRIDS["quick"][m]) for m in ("id_only", "simtier", "peer"))
    for model in ("id_only", "simtier", "peer"):
        candidates = GRIDS["quick"][model]
        best = max(candidates, key=lambda name: len(str(candidates[name])))
        assert record["chosen"][model] == best
        assert {c[1:3] for c in test if c[0] == model} == {(tuple(sorted(candidates[best].items())), s) for s in (0, 1, 2)}
    assert record["validation_day"] == T - 1 and record["test_day"] == T


def test_no_vectors_runs_id_only_and_the_peer(tiny_world: Path) -> None:
    data = Dataset.parse(str(tiny_world), Path("/nonexistent"))
    assert [m for m in MODELS if data.runs(m)] == ["id_only", "peer"]
    assert quality.BASELINE == "id_only"
