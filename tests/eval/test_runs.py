"""Run folders the evaluation refuses, each named with its run and field; baseline choice; the CLI's exit codes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from recsys.cli import main
from recsys.data.vectors import VECTORS_FILE, read_item_vectors, write_item_vectors
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
    _edit_log(run, world_schema_sha="0123456789abcdef")
    with pytest.raises(RunError, match=r"run r: .*train_log.json: field 'world_schema_sha' is 0123456789abcdef, but the "
                                       r"schema of .*manifest.json .* hashes to [0-9a-f]{16}: the run was trained on a "
                                       r"world of another schema"):
        load_run(run, "r", tiny_world)
    legacy = {k: v for k, v in log.items() if k != "world_schema_sha"}  # a run logged before the schema hash
    (run / TRAIN_LOG).write_text(json.dumps({**legacy, "world_manifest_sha": "0123456789abcdef"}))
    with pytest.raises(RunError, match=r"run r: .*train_log.json: field 'world_manifest_sha' is 0123456789abcdef, but "
                                       r".*manifest.json hashes to [0-9a-f]{16}: the run was trained on another world"):
        load_run(run, "r", tiny_world)
    (run / TRAIN_LOG).write_text(json.dumps(log))
    _edit_log(run, vectors={"path": "gone/item_vectors.parquet"})
    with pytest.raises(RunError, match=r"field 'vectors.path' names gone/item_vectors.parquet, which does not exist"):
        load_run(run, "r", tiny_world)
    del log["config"]
    (run / TRAIN_LOG).write_text(json.dumps(log))
    with pytest.raises(RunError, match=r"train_log.json: no field 'config.model'"):
        load_run(run, "r", tiny_world)
    with pytest.raises(RunError, match=r"run x: .*train_log.json does not exist"):
        load_run(tmp_path, "x", tiny_world)


def test_a_vector_table_changed_since_training_is_refused(tiny_world: Path, eval_runs: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """The run records its table's SHA-256; the same bytes load, another table at the same path (same items, same
    width: nothing else would tell) is refused, naming the field and the file."""
    run = _copy(eval_runs["simtier"], tmp_path)
    log = json.loads((run / TRAIN_LOG).read_text())
    trained_on = Path(log["vectors"]["path"])
    assert log["vectors"]["table_sha256"] == hashlib.sha256(trained_on.read_bytes()).hexdigest()
    table = tmp_path / "vectors" / VECTORS_FILE
    table.parent.mkdir()
    shutil.copyfile(trained_on, table)
    _edit_log(run, vectors={**log["vectors"], "path": str(table)})
    assert load_run(run, "r", tiny_world).vectors == table  # the same bytes elsewhere
    ids, vectors = read_item_vectors(table)
    write_item_vectors(table, ids, vectors[::-1].copy(), vectors.shape[1])  # the rows of other items
    with pytest.raises(RunError, match=rf"run r: .*train_log.json: field 'vectors.table_sha256': {table} has changed "
                                       r"since the run trained on it \(sha256 [0-9a-f]{12}\.\.\. then"):
        load_run(run, "r", tiny_world)


def test_cli_refuses_with_exit_code_1(tiny_world: Path, eval_runs: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    args = ["evaluate", "--world", str(tiny_world), "--models", str(eval_runs["id_only"]), "--out", str(tmp_path / "o")]
    assert main([*args, "--day", "99"]) == 1
    assert "mmctr evaluate: --day 99 is outside the world" in capsys.readouterr().err
    assert main([*args, "--models", str(tmp_path)]) == 1
    assert "train_log.json does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_run_scores_on_its_log_grown_by_a_day_not_on_changed_days(tiny_world: Path, eval_runs: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    """The daily routine: a day lands (manifest rewritten, last_day, counts); the run still loads. Its days' rows
    changed, or another schema: refused, naming what differs."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from recsys.data.schema import Manifest, table_files

    world = tmp_path / "grown"
    shutil.copytree(tiny_world, world)
    m = Manifest.read(world)
    log = json.loads((eval_runs["id_only"] / TRAIN_LOG).read_text())
    assert log["days"] and max(log["days"]) < m.last_day and log["rows_in_days"] > 0
    last = [f for f in table_files(world, "impressions") if f.name.startswith(f"day-{m.last_day:04d}")]
    assert last
    for f in last:  # tomorrow's file: the last day's rows one day later
        t = pq.read_table(f)
        t = t.set_column(t.schema.get_field_index("day"), "day", pc.add(t["day"], pa.scalar(1, t["day"].type)))
        pq.write_table(t, f.with_name(f.name.replace(f"day-{m.last_day:04d}", f"day-{m.last_day + 1:04d}")))
    raw = json.loads((world / "manifest.json").read_text())
    raw.update(last_day=m.last_day + 1, test_day=m.last_day + 1, counts={**raw["counts"], "impressions": -1})
    (world / "manifest.json").write_text(json.dumps(raw))  # other whitespace, other counts: the same schema
    assert load_run(eval_runs["id_only"], "r", world).variant == "id_only"
    first = next(f for f in table_files(world, "impressions") if f.name.startswith(f"day-{log['days'][0]:04d}"))
    t = pq.read_table(first)
    pq.write_table(t.slice(0, t.num_rows - 3), first)  # three rows of a trained day gone
    with pytest.raises(RunError, match=rf"run r: .*the run trained on {log['rows_in_days']} impressions of days "
                                       rf"{log['days'][0]}..{log['days'][-1]} \(field 'rows_in_days'\), but "
                                       rf".*impressions now holds {log['rows_in_days'] - 3} on those days"):
        load_run(eval_runs["id_only"], "r", world)
    pq.write_table(t, first)
    raw["max_history_len"] = raw.get("max_history_len", 50) + 1  # not a growing field: another schema
    (world / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(RunError, match=r"world of another schema"):
        load_run(eval_runs["id_only"], "r", world)
