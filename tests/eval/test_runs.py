"""Run folders the evaluation refuses, each named with its run and field; baseline choice; the CLI's exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recsys.cli import main
from recsys.eval.runs import RunError, choose_baseline, load_run
from recsys.train.checkpoint import LATEST_FILE, PROGRESS_FILE
from recsys.train.run_folder import CHECKPOINTS, TRAIN_LOG


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    return out


def _edit_log(run: Path, **changes: object) -> None:
    log = json.loads((run / TRAIN_LOG).read_text())
    log.update(changes)
    (run / TRAIN_LOG).write_text(json.dumps(log))


def test_a_finished_run_loads(tiny_world: Path, eval_runs: dict[str, Path]) -> None:
    run = load_run(eval_runs["simtier"], "simtier", tiny_world)
    assert run.variant == "simtier" and run.progress is not None and run.progress.finished
    assert run.vectors is not None and run.vectors.is_file() and run.curve
    runs = [run, load_run(eval_runs["id_only"], "id_only", tiny_world)]
    assert choose_baseline(runs, None) == 1 and choose_baseline(runs, "simtier") == 0
    with pytest.raises(RunError, match=r"--baseline 'vector' is neither a run name nor a variant.*\['simtier', 'id_only'\]"):
        choose_baseline(runs, "vector")


def test_unfinished_checkpoint_refused(tiny_world: Path, eval_runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy(eval_runs["simtier"], tmp_path)
    ckpt = run / CHECKPOINTS / (run / CHECKPOINTS / LATEST_FILE).read_text().strip()
    progress = json.loads((ckpt / PROGRESS_FILE).read_text())
    (ckpt / PROGRESS_FILE).write_text(json.dumps({**progress, "finished": False}))
    with pytest.raises(RunError, match=r"run mine: checkpoint .* has field 'finished' false in progress.json"):
        load_run(run, "mine", tiny_world)
    (run / CHECKPOINTS / LATEST_FILE).unlink()
    with pytest.raises(RunError, match=r"run mine: no complete checkpoint under .*checkpoints \(no LATEST file\)"):
        load_run(run, "mine", tiny_world)


def test_run_of_another_world_or_without_inputs_refused(tiny_world: Path, eval_runs: dict[str, Path], tmp_path: Path) -> None:
    run = _copy(eval_runs["simtier"], tmp_path)
    log = json.loads((run / TRAIN_LOG).read_text())
    _edit_log(run, world_manifest_sha="0123456789abcdef")
    with pytest.raises(RunError, match=r"run r: .*train_log.json: field 'world_manifest_sha' is 0123456789abcdef, but "
                                       r".*manifest.json hashes to [0-9a-f]{16}: the run was trained on another world"):
        load_run(run, "r", tiny_world)
    _edit_log(run, world_manifest_sha=log["world_manifest_sha"], vectors={"path": "gone/item_vectors.parquet"})
    with pytest.raises(RunError, match=r"field 'vectors.path' names gone/item_vectors.parquet, which does not exist"):
        load_run(run, "r", tiny_world)
    del log["config"]
    (run / TRAIN_LOG).write_text(json.dumps(log))
    with pytest.raises(RunError, match=r"train_log.json: no field 'config.model'"):
        load_run(run, "r", tiny_world)
    with pytest.raises(RunError, match=r"run x: .*train_log.json does not exist"):
        load_run(tmp_path, "x", tiny_world)


def test_cli_refuses_with_exit_code_1(tiny_world: Path, eval_runs: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    args = ["evaluate", "--world", str(tiny_world), "--models", str(eval_runs["id_only"]), "--out", str(tmp_path / "o")]
    assert main([*args, "--day", "99"]) == 1
    assert "mmctr evaluate: --day 99 is outside the world" in capsys.readouterr().err
    assert main([*args, "--models", str(tmp_path)]) == 1
    assert "train_log.json does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
