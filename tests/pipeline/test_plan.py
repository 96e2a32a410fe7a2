"""The stage plan: which stages run on a dataset and why the others are skipped, from a Manifest and counts only."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from recsys.data.schema import Manifest
from recsys.data.spec import world_spec
from recsys.pipeline.config import PRESETS, Layout
from recsys.pipeline.plan import DataFacts, Plan, data_facts, plan_stages, vectors_source

CFG = PRESETS["tiny"]
FULL = DataFacts(searches_before_test_day=900, searches_on_test_day=200, items_new_on_test_day=60)
NO_SEARCHES = dataclasses.replace(FULL, searches_before_test_day=0, searches_on_test_day=0)
WORLD = Path("/data/log")
TODAY = ["pretrain_clip", "pretrain_scl", "catalogue", "train_make", "train_simtier_make", "train_simtier", "train_id_only",
         "export", "pretrain_eval", "embed", "evaluate", "retrain", "rank_online", "report"]  # fmt: skip


def _manifest(content: tuple[str, ...] = ("title", "image"), test_day: int | None = None) -> Manifest:
    return Manifest(format_version=2, first_day=10, last_day=14, test_day=test_day, features=world_spec(content=content),
                    image_size=64 if "image" in content else None)  # fmt: skip


def _plan(manifest: Manifest, facts: DataFacts = FULL, vectors: Path | None = None, world: Path | None = WORLD) -> Plan:
    return plan_stages(manifest, facts, CFG, world=world, vectors=vectors)


def test_preset_world_runs_todays_stages() -> None:
    plan = _plan(_manifest(), world=None)
    assert plan.run_names() == ["world", *TODAY] and plan.skipped() == {}
    assert plan.vectors == "scl (fine-tuned from clip)" and plan.vectors_from == "pretrain_scl"
    assert (plan.test_day, plan.train_until, plan.catalogue_before) == (14, 13, 14)
    assert plan.variants == CFG.variants and plan.retrain_variant == "simtier_make"


def test_given_world_is_validated_not_generated() -> None:
    plan = _plan(_manifest())
    assert plan.run_names() == ["validate", *TODAY]
    assert plan.skipped() == {"world": "--world /data/log: the dataset is given, not generated"}


def test_no_searches_clip_only() -> None:
    plan = _plan(_manifest(), NO_SEARCHES)
    why = "no search log (searches/ absent, or no session before the test day 14)"
    assert plan.skipped() == {"world": plan.skipped()["world"], "pretrain_scl": why, "pretrain_eval": why}
    assert plan.vectors == "clip (no search log)" and plan.vectors_from == "pretrain_clip"
    assert plan.runs("pretrain_clip") and plan.runs("export") and plan.runs("embed")
    assert vectors_source(plan, Layout(Path("out"))) == Path("out/pretrain-clip")  # catalogue, export, summary read it


def test_searches_only_on_the_test_day_are_no_search_log() -> None:
    plan = _plan(_manifest(), dataclasses.replace(FULL, searches_before_test_day=0))
    assert plan.vectors == "clip (no search log)" and not plan.runs("pretrain_scl")


def test_no_test_day_searches_skip_only_pretrain_eval() -> None:
    plan = _plan(_manifest(), dataclasses.replace(FULL, searches_on_test_day=0))
    assert plan.runs("pretrain_scl") and plan.vectors == "scl (fine-tuned from clip)"
    assert plan.skipped()["pretrain_eval"] == "no search session on the test day 14 to score recall on"


def test_text_only_without_searches_random_towers() -> None:
    plan = _plan(_manifest(("title",)), NO_SEARCHES)
    skipped = plan.skipped()
    assert skipped["pretrain_clip"] == "CLIP aligns images with titles; the dataset has title only"
    assert skipped["pretrain_scl"].startswith("no search log")
    assert "export" not in skipped and plan.runs("export") and plan.runs("embed")  # a text-only encoder serves titles
    assert plan.run_names()[:3] == ["validate", "pretrain_random", "catalogue"]
    assert plan.vectors == "random (title only, no search log: untrained towers)" and plan.vectors_from == "pretrain_random"
    assert plan.variants == CFG.variants  # random vectors still feed every variant
    assert plan.catalogue_before == 14  # the test day: its new items come from the embedder


def test_one_modality_with_searches_scl_from_random_towers() -> None:
    plan = _plan(_manifest(("image",)))
    assert plan.runs("pretrain_scl") and not plan.runs("pretrain_clip") and not plan.runs("pretrain_random")
    assert plan.vectors == "scl (image only: from random towers, no CLIP start)"
    assert plan.skipped()["pretrain_eval"] == "SCL against CLIP needs image and title; the dataset has image only"


def test_no_content_only_id_only() -> None:
    plan = _plan(_manifest(()), NO_SEARCHES)
    assert plan.run_names() == ["validate", "train_id_only", "evaluate", "retrain", "rank_online", "report"]
    skipped = plan.skipped()
    assert set(skipped) == {"world", "pretrain_clip", "pretrain_scl", "pretrain_eval", "catalogue", "train_make",
                            "train_simtier", "train_simtier_make", "export", "embed"}  # fmt: skip
    assert skipped["train_simtier"] == "no item vectors: no item content, no --vectors"
    assert skipped["pretrain_clip"] == "no item content (features.content is empty): nothing to pre-train on"
    assert plan.variants == ("id_only",) and plan.retrain_variant == "id_only"
    assert plan.vectors == "none (no item content, no --vectors)"
    with pytest.raises(ValueError, match="no item vectors"):
        vectors_source(plan, Layout(Path("out")))


@pytest.mark.parametrize("content", [("title", "image"), ()])
def test_own_vectors_skip_pretraining_and_serving(content: tuple[str, ...]) -> None:
    file = Path("/vec/item_vectors.parquet")
    plan = _plan(_manifest(content), vectors=file)
    skipped = plan.skipped()
    for name in ("pretrain_clip", "pretrain_scl", "pretrain_eval"):
        assert skipped[name] == f"--vectors {file}: the item vectors are given"
    assert skipped["export"] == skipped["embed"] == f"--vectors {file}: no encoder of ours to embed the new items with"
    assert plan.run_names() == ["validate", "catalogue", *(f"train_{v}" for v in ("make", "simtier_make", "simtier",
                                "id_only")), "evaluate", "retrain", "rank_online", "report"]  # fmt: skip
    assert plan.vectors == f"{file} (--vectors)" and vectors_source(plan, Layout(Path("out"))) == file
    assert plan.retrain_variant == "simtier_make" and plan.catalogue_before == 15


def test_declared_test_day_before_the_last() -> None:
    plan = _plan(_manifest(test_day=12))
    assert (plan.test_day, plan.train_until, plan.catalogue_before) == (12, 11, 12)
    assert plan.skipped() == {"world": plan.skipped()["world"]}
    assert plan.as_dict()["test_day"] == 12 and plan.as_dict()["train_until"] == 11


def test_no_new_items_on_the_test_day_skip_serving() -> None:
    plan = _plan(_manifest(), dataclasses.replace(FULL, items_new_on_test_day=0))
    assert plan.skipped()["export"] == plan.skipped()["embed"] == "no item created on the test day 14"
    assert plan.catalogue_before == 15 and plan.runs("pretrain_scl")


def test_test_day_needs_two_training_days() -> None:
    with pytest.raises(ValueError, match="test_day 11 leaves 1 day"):
        _plan(_manifest(test_day=11))


def test_data_facts_of_a_world_without_searches(tiny_world: Path, tmp_path: Path) -> None:
    facts = data_facts(tiny_world, Manifest.read(tiny_world).test_day)
    assert facts.searches_before_test_day > 0 and facts.searches_on_test_day > 0 and facts.items_new_on_test_day > 0
    world = tmp_path / "w"
    shutil.copytree(tiny_world, world, ignore=shutil.ignore_patterns("searches"))
    assert data_facts(world, 14) == dataclasses.replace(facts, searches_before_test_day=0, searches_on_test_day=0)
