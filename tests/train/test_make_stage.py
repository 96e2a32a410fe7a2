"""MAKE stage 1's validation day: a day whose AUC is undefined is refused before training, never picked on (NaN)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from recsys.data.schema import Manifest, table_files
from recsys.data.vectors import VECTORS_FILE, write_item_vectors
from recsys.distributed import DistContext
from recsys.models.config import ModelConfig
from recsys.train import make_stage
from recsys.train.config import TrainConfig
from recsys.train.loop import EpochResult, Predictions
from recsys.train.make_stage import MAKE_LOG, EarlyStopping, MakeEpoch, MakeLog, Stage1Job
from recsys.train.checkpoint import Progress
from recsys.train.setup import split_days
from recsys.train.trainer import TrainJob, run_train

D = 8


def _vectors(world: Path, out: Path) -> Path:
    n = Manifest.read(world).id_ranges["item_id"]
    v = np.random.default_rng(0).standard_normal((n, D)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    write_item_vectors(out / VECTORS_FILE, np.arange(n), v, dim=D)
    return out / VECTORS_FILE


def _with_day(tiny_world: Path, dst: Path, day: int, keep: str) -> int:
    """A copy of the tiny world whose impressions of ``day`` are dropped (``keep="none"``) or all
    made non-clicks (``keep="non-clicks"``); returns how many impressions ``day`` holds in the copy."""
    shutil.copytree(tiny_world, dst)
    label = Manifest.read(dst).features.label
    rows = 0
    for f in table_files(dst, "impressions"):
        t = pq.read_table(f)
        on_day = pc.equal(t["day"], day)
        if keep == "none":
            t = t.filter(pc.invert(on_day))
        else:
            i = t.schema.get_field_index(label)
            t = t.set_column(i, label, pc.if_else(on_day, pa.scalar(0, t[label].type), t[label]))
        rows += int(pc.sum(pc.equal(t["day"], day)).as_py() or 0)
        pq.write_table(t, f)
    return rows


@pytest.mark.parametrize("keep", ["none", "non-clicks"])
def test_validation_day_without_auc_refused_before_training(tiny_world: Path, tmp_path: Path, keep: str) -> None:
    day = split_days(Manifest.read(tiny_world)).validation  # the day before the test day
    world = tmp_path / "world"
    rows = _with_day(tiny_world, world, day, keep)
    t = pq.read_table(world / "impressions", columns=["day", "label"])
    y = t["label"].to_numpy()[t["day"].to_numpy() == day]  # the day's labels as written, read another way
    assert len(y) == rows and (rows == 0 if keep == "none" else (rows > 0 and not y.any()))
    held = "no impressions" if keep == "none" else f"{len(y)} impressions, all non-clicks"
    out = tmp_path / "run"
    job = TrainJob(world=world, out=out, model=ModelConfig(variant="make"), vectors=_vectors(world, tmp_path),
                   train=TrainConfig(batch_size=256), quiet=True)
    refused = rf"impressions: MAKE stage 1 validates on day {day} .*which holds {held}\b.*: its validation AUC.*undefined"
    with pytest.raises(ValueError, match=refused):
        run_train(job)
    stage1 = out / "make_stage1"
    assert not (stage1 / MAKE_LOG).exists() and not any((stage1 / "checkpoints").glob("*"))  # nothing trained


def test_nan_validation_auc_refused_and_make_json_never_bare_nan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a log with a value that is not a number is written as valid JSON, with null
    log = MakeLog(epochs=(MakeEpoch(0, 0.6, float("nan"), 10.0),), best_epoch=0, best_val_auc=0.6)
    log.write(tmp_path / MAKE_LOG)
    raw = json.loads((tmp_path / MAKE_LOG).read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert raw["epochs"][0]["loss"] is None and MakeLog.read(tmp_path / MAKE_LOG).epochs[0].loss is None

    # a validation day of one class gives a NaN AUC: the early stopping raises instead of comparing with it
    labels = np.zeros(5)
    scored = Predictions(np.full(5, 0.5), labels, np.arange(5), np.arange(5))
    monkeypatch.setattr(make_stage, "predict", lambda *a, **k: scored)
    job = Stage1Job(world=tmp_path, out=tmp_path, model=ModelConfig(variant="make"), train=TrainConfig())
    state = SimpleNamespace(ctx=DistContext(0, 1, torch.device("cpu")), model=None)
    hook = EarlyStopping(job, state, None, day=7, mm_dim=D)  # type: ignore[arg-type]
    result = EpochResult(Progress(epoch=1, step=3, world_size=1), [{"loss": 0.5}], 5, 1.0, False)
    (tmp_path / MAKE_LOG).unlink()
    with pytest.raises(ValueError, match=rf"day 7 is undefined \({len(labels)} impressions, {int(labels.sum())} clicks\)"):
        hook.after_epoch(0, result, None)  # type: ignore[arg-type]
    assert hook.log == MakeLog() and not (tmp_path / MAKE_LOG).exists() and not hook.best_file.exists()


def test_stage1_of_another_form_is_refused_naming_the_fields(tmp_path: Path) -> None:
    # a stage-1 folder (make.pt + make.json) of a DIN-attention MAKE, given to a job of another MAKE form
    from dataclasses import asdict

    from recsys.data.spec import world_spec
    from recsys.models.make import MakeModel

    trained = ModelConfig(variant="simtier_make", make_hidden=(6,), fused_kernels=False)
    model = MakeModel(trained, world_spec(), num_items=5, mm_dim=4)
    torch.save({"state_dict": model.make.state_dict(), "mm_dim": 4}, tmp_path / make_stage.MAKE_FILE)
    MakeLog(config={"model": asdict(trained), "train": asdict(TrainConfig())}).write(tmp_path / MAKE_LOG)
    same = make_stage.load_make_state(tmp_path, 4, ModelConfig(variant="simtier_make", make_hidden=(6,)))
    assert same.keys() == model.make.state_dict().keys()  # fused_kernels is a runtime switch: no difference
    with pytest.raises(ValueError, match=r"make\.pt: MAKE stage 1 was trained in another form \(attention: 'din' there, "
                                         r"'bilinear' now; attention_hidden: \(32,\) there, \(\) now; hidden: \(6,\) "
                                         r"there, \(64,\) now\)"):
        make_stage.load_make_state(tmp_path, 4, ModelConfig(variant="simtier_make", make_attention="bilinear"))
    with pytest.raises(ValueError, match="attention_softmax: False there, True now"):  # same weights, other arithmetic
        make_stage.load_make_state(tmp_path, 4, ModelConfig(make_hidden=(6,), attention_softmax=True))
    with pytest.raises(ValueError, match="trained on D=4 vectors, these vectors have D=8"):
        make_stage.load_make_state(tmp_path, 8, trained)
    MakeLog().write(tmp_path / MAKE_LOG)  # a log that records no config: nothing to compare against
    assert make_stage.load_make_state(tmp_path, 4, ModelConfig(make_attention="bilinear")).keys() == same.keys()


def test_bilinear_stage1_ignores_the_din_unit_width_and_a_stopped_one_resumes_only_in_its_form(tmp_path: Path) -> None:
    from dataclasses import asdict

    from recsys.data.spec import world_spec
    from recsys.models.make import MakeModel

    bilinear = ModelConfig(variant="simtier_make", make_attention="bilinear")
    model = MakeModel(bilinear, world_spec(), num_items=5, mm_dim=4)
    torch.save({"state_dict": model.make.state_dict(), "mm_dim": 4}, tmp_path / make_stage.MAKE_FILE)
    MakeLog(config={"model": asdict(bilinear), "train": asdict(TrainConfig())}).write(tmp_path / MAKE_LOG)
    # the DIN unit's width is not part of a bilinear MAKE: configs differing only there share a stage 1
    narrow = ModelConfig(variant="simtier_make", make_attention="bilinear", make_attention_hidden=(8,))
    assert make_stage.load_make_state(tmp_path, 4, narrow).keys() == model.make.state_dict().keys()
    # a stopped stage 1 (make.json, no make.pt yet) is not resumed in another form: refused before any work
    (tmp_path / make_stage.MAKE_FILE).unlink()
    job = Stage1Job(world=tmp_path / "no-world", out=tmp_path, model=ModelConfig(variant="simtier_make"),
                    train=TrainConfig())
    with pytest.raises(ValueError, match=rf"{tmp_path}: MAKE stage 1 was trained in another form \(attention: "
                                         r"'bilinear' there, 'din' now; attention_hidden: \(\) there, \(32,\) now\)"):
        make_stage.train_make(job, None, None, None)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == [MAKE_LOG]  # nothing written


def test_a_stopped_stage1_resumes_only_on_the_table_it_began_on(tiny_world: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib
    from dataclasses import replace

    first, other = tmp_path / "a", tmp_path / "b"
    first.mkdir(), other.mkdir()
    table = _vectors(tiny_world, first)
    moved = pq.read_table(table)  # the same items and width, other vectors: a table re-exported by another encoder
    n = moved.num_rows
    v = np.random.default_rng(1).standard_normal((n, D)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    write_item_vectors(other / VECTORS_FILE, moved["item_id"].to_numpy(), v, dim=D)
    sha = hashlib.sha256(table.read_bytes()).hexdigest()
    out = tmp_path / "run"
    job = TrainJob(world=tiny_world, out=out, model=ModelConfig(variant="make"), vectors=table,
                   train=TrainConfig(batch_size=256, make_max_epochs=1), quiet=True)
    assert run_train(job) is not None
    stage1 = out / "make_stage1"
    log = MakeLog.read(stage1 / MAKE_LOG)
    assert log.table_sha256 == sha and len(log.epochs) == 1
    # stage 1 as it stood after epoch 1 of 2: its log (not stopped), its best weights, its checkpoint; no make.pt
    (stage1 / make_stage.MAKE_FILE).rename(stage1 / f".{make_stage.MAKE_FILE}.best")
    replace(log, stopped=None).write(stage1 / MAKE_LOG)
    for p in out.iterdir():  # the ID model's part goes: only stage 1 is resumed
        if p.name != "make_stage1":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    before = (stage1 / MAKE_LOG).read_bytes()
    two = replace(job, train=replace(job.train, make_max_epochs=2))
    moved_sha = hashlib.sha256((other / VECTORS_FILE).read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=rf"{stage1}: MAKE stage 1 began on another vector table \(SHA-256 "
                                         rf"{sha[:12]}\.\.\., its make\.json\), but {other / VECTORS_FILE} now has "
                                         rf"{moved_sha[:12]}\.\.\."):
        run_train(replace(two, vectors=other / VECTORS_FILE))
    assert (stage1 / MAKE_LOG).read_bytes() == before and not (stage1 / make_stage.MAKE_FILE).exists()
    assert run_train(two) is not None  # on its own table it resumes and finishes its second epoch
    resumed = MakeLog.read(stage1 / MAKE_LOG)
    assert [e.epoch for e in resumed.epochs] == [0, 1] and resumed.table_sha256 == sha
    capsys.readouterr()
    # a finished stage 1 given to a run on another table is loaded, and said
    run_train(TrainJob(world=tiny_world, out=tmp_path / "other-run", model=ModelConfig(variant="make"),
                       vectors=other / VECTORS_FILE, make_from=stage1, train=TrainConfig(batch_size=256), quiet=True))
    said = capsys.readouterr().err
    assert f"MAKE stage 1 in {stage1} was trained on another vector table (SHA-256 {sha[:12]}...)" in said
    assert f"({moved_sha[:12]}...); stage 2 loads it as trained" in said
