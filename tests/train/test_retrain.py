"""mmctr retrain: a 3-day chain of warm-started retrains beats the stale models; lineage; MAKE kept or retrained."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys.data.schema import Manifest
from recsys.data.vectors import VECTORS_FILE, write_item_vectors
from recsys.eval.evaluate import EvalJob, run_evaluate
from recsys.train.make_stage import MAKE_FILE
from recsys.train.retrain import RetrainJob, retrain_summary, retrain_train_job, run_retrain
from recsys.train.run_folder import Lineage, RunFolder
from recsys.world.config import PRESETS
from recsys.world.generate import generate_world
from tests.train.test_trainer import full_checkpoint, torchrun_train

D = 8


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny-sized world with 7 impression days (10..16), 15k impressions a day, random unit vectors.

    Smaller days leave the retrained-vs-stale difference within noise (measured: 8k a day flips one of three).
    """
    world = tmp_path_factory.mktemp("week") / "world"
    generate_world(world, dataclasses.replace(PRESETS["tiny"], n_days=7, n_users=1500, n_items=3000, n_impressions=105_000), seed=1)
    n = Manifest.read(world).id_ranges["item_id"]
    v = np.random.default_rng(0).standard_normal((n, D)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    write_item_vectors(world.parent / VECTORS_FILE, np.arange(n), v, dim=D)
    return world, world.parent / VECTORS_FILE


def _make_weights(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state["model"].items() if ".make." in f".{k}"}


def test_three_day_chain_beats_stale_models(week: tuple[Path, Path], tmp_path: Path) -> None:
    world, vectors = week
    base = tmp_path / "v1"
    # yesterday's model: 2 ranks, row-wise, trained on days 10..12 (MAKE stage 1 on 10..11, validated on 12)
    torchrun_train(2, "--world", str(world), "--vectors", str(vectors), "--variant", "simtier_make",
                   "--sharding", "row_wise", "--train-until", "12", "--out", str(base))
    parent, lifts = base, []
    for version, day in enumerate((13, 14, 15), start=2):
        out = tmp_path / f"v{version}"
        metrics = run_retrain(RetrainJob(parent=parent, day=day, out=out, quiet=True))  # 1 rank: resharded warm start
        assert metrics is not None and metrics.test_day == day + 1 and metrics.train_days == (day, day)
        assert metrics == RunFolder(out).read_metrics() and "retrained GAUC" in retrain_summary(metrics)
        assert metrics.metrics is not None and metrics.warm_start_metrics is not None
        new, stale = metrics.metrics["all"]["gauc"], metrics.warm_start_metrics["all"]["gauc"]
        lifts.append(new - stale)
        assert new >= stale, f"day {day + 1}: retrained GAUC {new:.4f} < stale {stale:.4f}"
        lineage = RunFolder(out).read_lineage()
        assert lineage.version == version and lineage.parent == str(parent)
        assert lineage.all_days == tuple(range(10, day + 1)) and lineage.days == (day,)
        assert lineage.retrain is not None and lineage.retrain.new_item_ids > 0 and lineage.retrain.new_item_ids_hashed == 0
        assert lineage.vectors["path"] == str(vectors.resolve()) and lineage.make == str((base / "make_stage1").resolve())
        raw = json.loads((out / "lineage.json").read_text())  # the format: flat keys, as before the records
        assert list(raw)[:2] == ["version", "run"] and list(raw)[-3:] == ["new_item_ids", "new_item_ids_hashed", "make_retrained"]
        parent = out
    assert len(lifts) == 3
    # The stale score is the parent's own: scored by `mmctr evaluate` on the same day, the 2-rank parent (MAKE
    # fine-tuned in stage 2, so its MAKE differs from stage 1's) equals the 1-rank warm start before training.
    report = run_evaluate(EvalJob(world=world, models=(base,), day=14, out=tmp_path / "eval", resamples=10, quiet=True))
    assert report is not None
    stale = json.loads((tmp_path / "v2" / "metrics.json").read_text())["warm_start_metrics"]["all"]
    parent_scored = report["models"]["v1"]["metrics"]["all"]
    assert parent_scored["gauc"] == pytest.approx(stale["gauc"], abs=1e-6)
    assert parent_scored["auc"] == pytest.approx(stale["auc"], abs=1e-6)


def test_warm_start_loads_parent_and_fresh_vectors(week: tuple[Path, Path], tmp_path: Path) -> None:
    world, vectors = week
    base = tmp_path / "base"
    torchrun_train(1, "--world", str(world), "--vectors", str(vectors), "--variant", "simtier_make",
                   "--train-until", "14", "--out", str(base), "--config", str(_frozen_make(tmp_path)))
    # today's vectors: another table; the retrain must use them, not the checkpoint's copy
    n = Manifest.read(world).id_ranges["item_id"]
    v = np.random.default_rng(5).standard_normal((n, D)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    fresh = tmp_path / "fresh" / VECTORS_FILE
    fresh.parent.mkdir()
    write_item_vectors(fresh, np.arange(n), v, dim=D)
    kept = tmp_path / "kept"
    run_retrain(RetrainJob(parent=base, day=15, out=kept, vectors=fresh, quiet=True))
    parent_state, kept_state = full_checkpoint(base, tmp_path), full_checkpoint(kept, tmp_path)
    (mm_key,) = [k for k in kept_state["model"] if k.endswith("embedding_bags.mm_item.weight")]
    torch.testing.assert_close(kept_state["model"][mm_key], torch.from_numpy(v), rtol=0, atol=0)
    for k, w in _make_weights(parent_state).items():  # MAKE frozen and kept: the parent's stage-1 weights
        torch.testing.assert_close(kept_state["model"][k], w, rtol=0, atol=0)
    assert RunFolder(kept).read_lineage().vectors["path"] == str(fresh.resolve())

    again = tmp_path / "remade"
    run_retrain(RetrainJob(parent=base, day=15, out=again, retrain_make=True, quiet=True))
    assert (again / "make_stage1" / MAKE_FILE).exists()
    assert json.loads((again / "make_stage1" / "make.json").read_text())["epochs"]
    remade = _make_weights(full_checkpoint(again, tmp_path))
    assert any(not torch.equal(remade[k], w) for k, w in _make_weights(parent_state).items())


def test_refuses_days_already_trained_and_unfinished_parents(week: tuple[Path, Path], tmp_path: Path) -> None:
    world, vectors = week
    base = tmp_path / "base"
    torchrun_train(1, "--world", str(world), "--variant", "id_only", "--train-until", "12", "--out", str(base))
    with pytest.raises(ValueError, match="already trained up to day 12"):
        retrain_train_job(RetrainJob(parent=base, day=12, out=tmp_path / "x"))
    with pytest.raises(ValueError, match="outside the retrainable days"):
        retrain_train_job(RetrainJob(parent=base, day=17, out=tmp_path / "x"))
    with pytest.raises(FileNotFoundError, match="no training log"):
        retrain_train_job(RetrainJob(parent=tmp_path / "nothing", day=13, out=tmp_path / "x"))
    # a day with impressions between the parent's last and --day is never left out with no word
    days = pq.read_table(world / "impressions", columns=["day"])["day"].to_numpy()
    rows13 = int((days == 13).sum())
    assert rows13 > 0
    with pytest.raises(ValueError, match=rf"--day 14 skips day\(s\) 13 of {world / 'impressions'} \({rows13} "
                                         rf"impressions\) after {base}'s last trained day 12: .*--skip-days"):
        retrain_train_job(RetrainJob(parent=base, day=14, out=tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    job = retrain_train_job(RetrainJob(parent=base, day=14, out=tmp_path / "x", skip_days=True))
    assert job.retrain.skipped_days == (13,) and job.days == (14,)
    lineage = RunFolder(base).read_lineage()
    noted = dataclasses.replace(lineage, retrain=job.retrain)
    assert Lineage.from_json(noted.to_json(), "x") == noted and noted.to_json()["skipped_days"] == [13]
    unskipped = dataclasses.replace(lineage, retrain=dataclasses.replace(job.retrain, skipped_days=()))
    assert "skipped_days" not in unskipped.to_json()
    # rows appended late to a day an ancestor trained on (base's day 11, not the parent's 13): refused, named
    child = tmp_path / "v2"
    run_retrain(RetrainJob(parent=base, day=13, out=child, quiet=True))
    grown = tmp_path / "grown"
    shutil.copytree(world, grown)
    late = pq.read_table(grown / "impressions").filter(days == 11).slice(0, 10)
    pq.write_table(late, grown / "impressions" / "zz-late.parquet")
    with pytest.raises(ValueError, match=rf"{base / 'train_log.json'} \(an ancestor of this retrain's parent\)"):
        retrain_train_job(RetrainJob(parent=child, day=14, out=tmp_path / "z", world=grown))
    assert retrain_train_job(RetrainJob(parent=child, day=14, out=tmp_path / "z")).days == (14,)  # as it was: taken
    cut = tmp_path / "cut"
    torchrun_train(1, "--world", str(world), "--variant", "id_only", "--train-until", "12", "--out", str(cut),
                   "--stop-after-steps", "2")
    with pytest.raises(FileNotFoundError, match="lineage"):
        run_retrain(RetrainJob(parent=cut, day=13, out=tmp_path / "y"))


def _frozen_make(tmp: Path) -> Path:
    path = tmp / "frozen.yaml"
    path.write_text("model:\n  make_frozen: true\ntrain:\n  make_max_epochs: 2\n")
    return path


def test_refuses_a_day_without_impressions(tiny_world: Path, eval_runs: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Before any work: no run folder, the parent's lineage as it was; the CLI exits 1 naming day and folder."""
    from recsys.cli import main
    from tests.eval.test_evaluate import _impressions_per_day, world_without_day

    parent, day = eval_runs["id_only"], Manifest.read(tiny_world).last_day
    assert day > max(RunFolder(parent).read_lineage().all_days)  # a day the parent may be retrained on
    world = world_without_day(tiny_world, day, tmp_path / "world")
    assert day not in _impressions_per_day(world)
    lineage = (parent / "lineage.json").read_text()
    message = f"--day {day}: day {day} has no impressions in {world / 'impressions'}; nothing to retrain on"
    out = tmp_path / "retrained"
    with pytest.raises(ValueError) as refused:
        run_retrain(RetrainJob(parent=parent, day=day, out=out, world=world, quiet=True))
    assert str(refused.value) == message and not out.exists()
    assert main(["retrain", "--from", str(parent), "--day", str(day), "--out", str(out), "--world", str(world)]) == 1
    assert capsys.readouterr().err.strip() == f"mmctr retrain: {message}" and not out.exists()
    assert (parent / "lineage.json").read_text() == lineage


def test_day_rows_counts_from_metadata_as_a_full_read_does(tiny_world: Path, tmp_path: Path) -> None:
    """Per-day counts match the day column read in full: per-day files; days mixed in row groups, with and without stats."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.data.schema import table_files
    from recsys.data.stats import day_rows
    from tests.eval.test_evaluate import _impressions_per_day

    m = Manifest.read(tiny_world)
    days = range(m.first_day - 1, m.last_day + 2)  # and a day before and after the world's
    assert {d: day_rows(tiny_world, d) for d in days} == {d: _impressions_per_day(tiny_world).get(d, 0) for d in days}
    files = table_files(tiny_world, "impressions")
    t = pa.concat_tables([pq.read_table(f) for f in files])
    t = t.filter(pa.array(t.column(m.features.day).to_numpy() != m.last_day - 1))  # a day inside every row group's range
    t = t.take(np.random.default_rng(0).permutation(t.num_rows))
    for stats in (True, False):
        world = tmp_path / f"mixed-{stats}"
        (world / "impressions").mkdir(parents=True)
        (world / "manifest.json").write_bytes((tiny_world / "manifest.json").read_bytes())
        pq.write_table(t, world / "impressions" / "all.parquet", row_group_size=997, write_statistics=stats)
        assert pq.read_metadata(world / "impressions" / "all.parquet").row_group(0).column(0).is_stats_set is stats
        expected = {d: _impressions_per_day(world).get(d, 0) for d in days}
        assert expected[m.last_day - 1] == 0 and {d: day_rows(world, d) for d in days} == expected


def test_refuses_a_world_of_another_schema(tiny_world: Path, eval_runs: dict[str, Path], tmp_path: Path) -> None:
    """Another schema (here the history length; the spec, first day or seed alike): refused before any work."""
    import json
    import shutil

    parent, day = eval_runs["id_only"], Manifest.read(tiny_world).last_day
    world = tmp_path / "other"
    shutil.copytree(tiny_world, world)
    raw = json.loads((world / "manifest.json").read_text())
    (world / "manifest.json").write_text(json.dumps({**raw, "max_history_len": raw.get("max_history_len", 50) + 1}))
    out = tmp_path / "retrained"
    with pytest.raises(ValueError, match=r"train_log.json: field 'world_schema_sha' is [0-9a-f]{16}, but the schema of "
                                         r".*other/manifest.json .*: the run was trained on a world of another schema"):
        run_retrain(RetrainJob(parent=parent, day=day, out=out, world=world, quiet=True))
    assert not out.exists()
