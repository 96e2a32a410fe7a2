"""``mmctr validate``: a good world passes; each kind of bad file is named precisely."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.schema import table_files
from recsys.data.validate import DatasetError, validate_dataset


def test_generated_world_is_valid(tiny_world: Path, tiny_manifest) -> None:  # noqa: ANN001
    assert validate_dataset(tiny_world) == {t: tiny_manifest.counts[t] for t in ("users", "items", "impressions", "searches")}


def _broken(world: Path, tmp: Path, table: str, edit: Callable[[pa.Table], pa.Table], file_index: int = 0) -> tuple[Path, str]:
    out = tmp / "w"
    shutil.copytree(world, out)
    f = table_files(out, table)[file_index]
    pq.write_table(edit(pq.read_table(f)), f)
    return out, str(f.relative_to(out))


def _set(column: str, row: int, value: object, type_: pa.DataType | None = None) -> Callable[[pa.Table], pa.Table]:
    def edit(t: pa.Table) -> pa.Table:
        values = t[column].to_pylist()
        values[row] = value
        i = t.schema.get_field_index(column)
        field = pa.field(column, t.schema.field(i).type if type_ is None else type_)  # nullable
        return t.set_column(i, field, pa.array(values, type=field.type))

    return edit


def _drop(column: str) -> Callable[[pa.Table], pa.Table]:
    return lambda t: t.drop_columns([column])


def _cast(column: str, type_: pa.DataType) -> Callable[[pa.Table], pa.Table]:
    def edit(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index(column)
        return t.set_column(i, pa.field(column, type_), t[column].cast(type_))

    return edit


CASES = [
    ("impressions", _drop("label"), "missing column 'label'"),
    ("impressions", _cast("user_id", pa.float64()), "column 'user_id' has type double, expected int64"),
    ("impressions", _set("item_id", 7, -3), "column 'item_id', row 7: ID -3 outside"),
    ("impressions", _set("user_id", 9, 10**6), "column 'user_id', row 9: ID 1000000 outside"),
    ("items", _set("shop_id", 4, 10**6), "column 'shop_id', row 4: ID 1000000 outside"),
    ("impressions", _set("label", 11, float("nan")), "column 'label', row 11: value nan"),
    ("impressions", _set("label", 12, 0.5), "column 'label', row 12: value 0.5, expected 0.0 or 1.0"),
    ("impressions", _set("history_item_ids", 5, list(range(21))), "column 'history_item_ids', row 5: length 21 > max_history_len 20"),
    ("items", _set("image", 6, b"\x89PNG broken"), "column 'image', row 6: image does not decode"),
    ("searches", _set("query_image", 8, b"nope"), "column 'query_image', row 8: image does not decode"),
    ("items", _set("title", 2, None), "column 'title', row 2: null value"),
    ("searches", _set("purchased_item_id", 3, -1), "column 'purchased_item_id', row 3: ID -1 outside"),
]


@pytest.mark.parametrize(("table", "edit", "message"), CASES, ids=[c[2].split(":")[0][:40] for c in CASES])
def test_bad_files_are_named(tiny_world: Path, tmp_path: Path, table: str, edit, message: str) -> None:  # noqa: ANN001
    world, path = _broken(tiny_world, tmp_path, table, edit)
    with pytest.raises(DatasetError) as e:
        validate_dataset(world)
    assert str(e.value).startswith(path + ": "), str(e.value)
    assert message in str(e.value)


def test_unknown_item_in_history(tiny_world: Path, tmp_path: Path) -> None:
    # An item ID inside the range but without a row in items/: drop an item no
    # impression or search mentions, then mention it in one history.
    world = tmp_path / "w"
    shutil.copytree(tiny_world, world)
    used: set[int] = set()
    for f in table_files(world, "impressions"):
        t = pq.read_table(f, columns=["item_id", "history_item_ids"])
        used.update(t["item_id"].to_pylist())
        used.update(pa.compute.list_flatten(t["history_item_ids"]).to_pylist())
    for f in table_files(world, "searches"):
        t = pq.read_table(f, columns=["shown_item_ids", "purchased_item_id"])
        used.update(t["purchased_item_id"].to_pylist())
        used.update(pa.compute.list_flatten(t["shown_item_ids"]).to_pylist())
    items_file = table_files(world, "items")[0]
    items = pq.read_table(items_file)
    missing = next(i for i in items["item_id"].to_pylist() if i not in used)
    pq.write_table(items.filter(pa.compute.not_equal(items["item_id"], missing)), items_file)
    imp_file = table_files(world, "impressions")[0]
    pq.write_table(_set("history_item_ids", 4, [missing])(pq.read_table(imp_file)), imp_file)
    with pytest.raises(DatasetError, match=rf"column 'history_item_ids', row 4: unknown item_id {missing} \(not in items/\)"):
        validate_dataset(world)


def test_count_mismatch_and_missing_manifest(tiny_world: Path, tmp_path: Path) -> None:
    world = tmp_path / "w"
    shutil.copytree(tiny_world, world)
    raw = json.loads((world / "manifest.json").read_text())
    raw["counts"]["searches"] += 1
    (world / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match=r"searches/: 1200 rows, manifest.json counts says 1201"):
        validate_dataset(world)
    (world / "manifest.json").unlink()
    with pytest.raises(DatasetError, match="manifest.json: missing"):
        validate_dataset(world)


def test_duplicate_item_is_named(tiny_world: Path, tmp_path: Path) -> None:
    world, path = _broken(tiny_world, tmp_path, "items", _set("item_id", 5, 4))
    with pytest.raises(DatasetError, match=r"column 'item_id', row 5: item_id 4 appears more than once"):
        validate_dataset(world)


def test_cli_exit_codes(tiny_world: Path, tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "recsys.cli", "validate", str(tiny_world), "--quiet"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: ")
    world, path = _broken(tiny_world, tmp_path, "impressions", _set("label", 3, 2.0))
    bad = subprocess.run([sys.executable, "-m", "recsys.cli", "validate", str(world), "--quiet"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert f"{path}: column 'label', row 3: value 2.0" in bad.stderr
