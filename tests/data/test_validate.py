"""``recsys.data.validate``: a good dataset passes; each kind of fault is named by file, column and row."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from recsys.data import validate
from recsys.data.schema import ID_COLUMNS, IMPRESSIONS, ITEMS, SEARCHES, TABLES, USERS, Manifest, table_files
from recsys.data.spec import world_spec
from recsys.data.validate import DatasetError, main, validate_dataset

if TYPE_CHECKING:
    from pretrain.data import ItemContent

REPO = Path(__file__).resolve().parents[2]
N_ITEMS, N_USERS = 12, 6  # rows; the ID ranges are larger, so IDs 12, 13 and 6, 7 have no row
ID_RANGES = {
    "item_id": 14,
    "user_id": 8,
    "category_id": 4,
    "shop_id": 3,
    "brand_id": 3,
    "price_bucket": 5,
    "age_bucket": 3,
    "gender": 2,
    "city_id": 4,
}
DAYS = (3, 4)
IMPRESSIONS_PER_DAY = 20
N_SEARCHES = 6
MAX_HISTORY = 5
Edit = Callable[[pa.Table], pa.Table]


def _png(seed: int, side: int = 8, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=8)  # several row groups per file


def _write_dataset(root: Path) -> None:
    rng = np.random.default_rng(0)
    ids = np.arange(N_ITEMS)
    items = pa.table(
        {
            "item_id": ids,
            "category_id": ids % 4,
            "shop_id": ids % 3,
            "brand_id": (ids + 1) % 3,
            "price_bucket": ids % 5,
            "created_day": np.zeros(N_ITEMS, dtype=np.int32),
            "title": [f"item {i}" for i in ids],
            "image": [_png(int(i)) for i in ids],
        },
        schema=ITEMS,
    )
    _write(items.slice(0, 6), root / "items" / "part-00000.parquet")
    _write(items.slice(6), root / "items" / "part-00001.parquet")
    users = pa.table(
        {
            "user_id": np.arange(N_USERS),
            "age_bucket": [0, 1, 2, 0, 1, 2],
            "gender": [0, 1] * 3,
            "city_id": [0, 1, 2, 3, 0, 1],
        },
        schema=USERS,
    )
    _write(users, root / "users" / "part-00000.parquet")
    for day in DAYS:
        n = IMPRESSIONS_PER_DAY
        impressions = pa.table(
            {
                "day": np.full(n, day, dtype=np.int32),
                "user_id": rng.integers(0, N_USERS, n),
                "item_id": rng.integers(0, N_ITEMS, n),
                "history_item_ids": [rng.integers(0, N_ITEMS, i % (MAX_HISTORY + 1)).tolist() for i in range(n)],
                "position": rng.integers(0, 4, n).astype(np.int32),
                "label": (rng.random(n) < 0.3).astype(np.float32),
            },
            schema=IMPRESSIONS,
        )
        _write(impressions, root / "impressions" / f"day-{day:04d}-part-00000.parquet")
    searches = pa.table(
        {
            "session_id": np.arange(N_SEARCHES),
            "day": np.full(N_SEARCHES, DAYS[0], dtype=np.int32),
            "user_id": np.arange(N_SEARCHES) % N_USERS,
            "query_text": [f"query {i}" for i in range(N_SEARCHES)],
            "query_image": [_png(100 + i) for i in range(N_SEARCHES)],
            "shown_item_ids": [[i, i + 1, i + 2] for i in range(N_SEARCHES)],
            "clicked_item_ids": [[i + 1] for i in range(N_SEARCHES)],
            "purchased_item_id": np.arange(N_SEARCHES),
        },
        schema=SEARCHES,
    )
    _write(searches, root / "searches" / "part-00000.parquet")
    n_impressions = IMPRESSIONS_PER_DAY * len(DAYS)
    counts = {"items": N_ITEMS, "users": N_USERS, "impressions": n_impressions, "searches": N_SEARCHES}
    Manifest(format_version=2, preset="hand", seed=0, counts=counts, id_ranges=ID_RANGES, first_day=DAYS[0],
             last_day=DAYS[-1], max_history_len=MAX_HISTORY, image_size=8).write(root)  # features: world_spec()


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """A small valid dataset, written by hand; each test may change it."""
    root = tmp_path / "ds"
    _write_dataset(root)
    return root


@pytest.fixture()
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches and image chunks of a few rows, so row numbers cross batch boundaries."""
    monkeypatch.setattr(validate, "BATCH_ROWS", 3)
    monkeypatch.setattr(validate, "IMAGE_BATCH_ROWS", 4)
    monkeypatch.setattr(validate, "IMAGE_CHUNK", 3)


def _edit(root: Path, rel: str, edit: Edit) -> None:
    pq.write_table(edit(pq.read_table(root / rel)), root / rel)


def _set(column: str, row: int, value: object) -> Edit:
    def edit(t: pa.Table) -> pa.Table:
        values = t[column].to_pylist()
        values[row] = value
        i = t.schema.get_field_index(column)
        field = pa.field(column, t.schema.field(i).type)  # nullable, so a test can write a null
        return t.set_column(i, field, pa.array(values, type=field.type))

    return edit


def _cast(column: str, type_: pa.DataType) -> Edit:
    def edit(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index(column)
        return t.set_column(i, pa.field(column, type_), t[column].cast(type_))

    return edit


def _drop(column: str) -> Edit:
    return lambda t: t.drop_columns([column])


def _then(*edits: Edit) -> Edit:
    def edit(t: pa.Table) -> pa.Table:
        for e in edits:
            t = e(t)
        return t

    return edit


IMP3 = "impressions/day-0003-part-00000.parquet"
IMP4 = "impressions/day-0004-part-00000.parquet"
ITEMS0, ITEMS1 = "items/part-00000.parquet", "items/part-00001.parquet"
USERS0, SEARCHES0 = "users/part-00000.parquet", "searches/part-00000.parquet"
TRUNCATED_PNG = _png(7)[:60]

# (file, edit, what the message says after "<file>: ")
CASES = [
    (IMP4, _drop("label"), "missing column 'label' (expected an integer, float or bool: features.label)"),
    (USERS0, _drop("city_id"), "missing column 'city_id' (expected int32 or int64: features.sparse 'city_id' (source users))"),
    (IMP3, _cast("user_id", pa.float64()), "column 'user_id' has type double, expected int32 or int64 (features.user_key)"),
    (IMP4, _cast("history_item_ids", pa.list_(pa.float64())), "column 'history_item_ids' has type list<element: double>, expected a list of int32 or int64 (features.history)"),
    (IMP4, _cast("position", pa.string()), "column 'position' has type string, expected a number (integer or float) (features.dense 'position' (source impressions))"),
    (ITEMS0, _cast("title", pa.binary()), "column 'title' has type binary, expected string (features.content 'title')"),
    (ITEMS1, _set("title", 3, None), "column 'title', row 3: null value"),
    (SEARCHES0, _set("shown_item_ids", 2, [1, None]), "column 'shown_item_ids', row 2: null value in list"),
    (IMP4, _set("item_id", 13, -3), "column 'item_id', row 13: ID -3 outside [0, 14) (identity table 'item_id')"),
    (USERS0, _set("city_id", 5, 4), "column 'city_id', row 5: ID 4 outside [0, 4)"),
    (ITEMS0, _set("shop_id", 4, 10**6), "column 'shop_id', row 4: ID 1000000 outside [0, 3)"),
    (IMP3, _set("history_item_ids", 9, [1, 14]), "column 'history_item_ids', row 9: ID 14 outside [0, 14)"),
    (SEARCHES0, _set("clicked_item_ids", 5, [-1]), "column 'clicked_item_ids', row 5: ID -1 outside [0, 14)"),
    (IMP4, _set("label", 11, float("nan")), "column 'label', row 11: value nan, expected 0.0 or 1.0"),
    (IMP4, _set("label", 12, 0.5), "column 'label', row 12: value 0.5, expected 0.0 or 1.0"),
    (IMP3, _set("day", 7, 9), "column 'day', row 7: day 9 outside manifest days [3, 4]"),
    (IMP3, _then(_cast("position", pa.float32()), _set("position", 8, float("nan"))), "column 'position', row 8: value nan, expected a finite number"),
    (IMP3, _then(_cast("position", pa.float64()), _set("position", 2, float("-inf"))), "column 'position', row 2: value -inf, expected a finite number"),
    (IMP4, _set("history_item_ids", 4, [3, 12]), "column 'history_item_ids', row 4: unknown item_id 12 (no row in"),
    (IMP3, _set("user_id", 14, 7), "column 'user_id', row 14: unknown user_id 7 (no row in users/)"),
    (SEARCHES0, _set("purchased_item_id", 3, 13), "column 'purchased_item_id', row 3: unknown item_id 13 (no"),
    (ITEMS1, _set("item_id", 1, 2), "column 'item_id', row 1: item_id 2 appears more than once"),
    (ITEMS1, _set("image", 5, b"\x89PNG broken"), "column 'image', row 5: image does not decode"),
    (ITEMS0, _set("image", 2, TRUNCATED_PNG), "column 'image', row 2: image does not decode"),
    (SEARCHES0, _set("query_image", 4, b"nope"), "column 'query_image', row 4: image does not decode"),
    (ITEMS1, _set("image", 4, _png(3, side=16)), "column 'image', row 4: image is 16x16 px, expected 8x8"),
    (SEARCHES0, _set("query_image", 5, _png(3, side=4)), "column 'query_image', row 5: image is 4x4 px, expected 8x8"),
    (ITEMS0, _set("title", 5, "  "), "column 'title', row 5: title is blank ('  ')"),
    (SEARCHES0, _set("query_text", 2, "\t"), "column 'query_text', row 2: query_text is blank ('\\t')"),
]


WORLD_REPORT = """\
  keys: user user_id, item item_id; label label; day day
  sparse: impressions user_id, item_id; users age_bucket, gender, city_id; items shop_id, brand_id, category_id, price_bucket
  history: history_item_ids (item IDs, table item_id; 0 longer than max_history_len 5, cut when read)
  dense: position (impressions, none), history_len (history, log1p)
  tables: user_id identity 8 rows (id_ranges); age_bucket identity 3 rows (id_ranges); gender identity 2 rows (id_ranges); city_id identity 4 rows (id_ranges); item_id identity 14 rows (id_ranges); shop_id identity 3 rows (id_ranges); brand_id identity 3 rows (id_ranges); category_id identity 4 rows (id_ranges); price_bucket identity 5 rows (id_ranges)
  content: title, image (8 px)
  search log: 6 sessions (SCL pre-training; queries: query_text, query_image)
  split: days 3..4; train 3..3 (20 impressions), test day 4 (20 impressions); new items: created that day (items: created_day)
  ignored columns: none
"""


def test_valid_dataset(dataset: Path) -> None:
    expected = {"items": N_ITEMS, "users": N_USERS, "impressions": 40, "searches": N_SEARCHES}
    report = validate_dataset(dataset)
    assert report.counts == expected and report.days == {3: 20, 4: 20}
    assert list(validate_dataset(dataset, workers=1).counts) == list(TABLES)
    assert report.ignored == {"users": (), "items": (), "impressions": (), "searches": ()}  # created_day: read
    assert report.created_day
    assert report.searches == "6 sessions (SCL pre-training; queries: query_text, query_image)"


def test_longer_histories_are_counted_not_refused(dataset: Path) -> None:
    _edit(dataset, IMP4, _set("history_item_ids", 5, [0] * 6))  # the reader keeps the last max_history_len
    assert validate_dataset(dataset).long_histories == 1


def test_valid_dataset_small_batches_and_progress(
    dataset: Path, small_batches: None, capsys: pytest.CaptureFixture
) -> None:
    assert validate_dataset(dataset, progress=True).counts["impressions"] == 40
    assert "validate" in capsys.readouterr().err  # the tqdm bar


@pytest.mark.parametrize(("rel", "edit", "message"), CASES, ids=[c[2].split(":")[0][:48] for c in CASES])
def test_fault_is_named(dataset: Path, small_batches: None, rel: str, edit: Edit, message: str) -> None:
    _edit(dataset, rel, edit)
    with pytest.raises(DatasetError) as e:
        validate_dataset(dataset)
    assert str(e.value).startswith(f"{rel}: {message}"), str(e.value)


def test_fault_in_a_large_batch_is_named(dataset: Path) -> None:
    _edit(dataset, IMP4, _set("label", 19, 2.0))
    with pytest.raises(DatasetError, match=rf"^{IMP4}: column 'label', row 19: value 2.0, expected 0.0 or 1.0$"):
        validate_dataset(dataset)


def test_equivalent_layouts_and_extra_columns_pass(dataset: Path) -> None:
    _edit(dataset, ITEMS0, _cast("title", pa.large_string()))
    _edit(dataset, ITEMS0, _cast("image", pa.large_binary()))
    _edit(dataset, IMP3, _cast("history_item_ids", pa.large_list(pa.field("element", pa.int64()))))
    _edit(dataset, IMP3, _cast("history_item_ids", pa.list_(pa.int32())))
    _edit(dataset, IMP4, _cast("item_id", pa.int32()))
    _edit(dataset, IMP4, _cast("label", pa.float64()))
    _edit(dataset, USERS0, lambda t: t.append_column("note", pa.array(["x"] * t.num_rows)))
    _edit(dataset, IMP4, lambda t: t.append_column("note", pa.array([None] * t.num_rows, pa.float32())))
    report = validate_dataset(dataset)
    assert report.counts["impressions"] == 40
    assert report.ignored["users"] == ("note",) and report.ignored["impressions"] == ("note",)


def _manifest(root: Path, change: Callable[[dict], None]) -> None:
    raw = json.loads((root / "manifest.json").read_text())
    change(raw)
    (root / "manifest.json").write_text(json.dumps(raw))


def test_count_mismatch(dataset: Path) -> None:
    _manifest(dataset, lambda raw: raw["counts"].update(impressions=41))
    with pytest.raises(DatasetError, match=r"^impressions/: 40 rows, manifest.json counts says 41$"):
        validate_dataset(dataset)


def test_manifest_faults(dataset: Path) -> None:
    _manifest(dataset, lambda raw: raw["id_ranges"].pop("city_id"))
    message = r"^manifest.json: id_ranges\['city_id'\] is None, expected an integer >= 1 \(the rows of identity table 'city_id', which declares no 'rows'\)$"
    with pytest.raises(DatasetError, match=message):
        validate_dataset(dataset)
    (dataset / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"^manifest.json: not valid JSON"):
        validate_dataset(dataset)
    (dataset / "manifest.json").unlink()
    with pytest.raises(DatasetError, match=r"^manifest.json: missing; every dataset needs a manifest.json$"):
        validate_dataset(dataset)
    with pytest.raises(DatasetError, match="not a directory"):
        validate_dataset(dataset / "nowhere")


def test_table_without_files(dataset: Path) -> None:
    (dataset / ITEMS0).unlink()
    (dataset / ITEMS1).unlink()
    with pytest.raises(DatasetError, match=r"^items/: no Parquet files$"):
        validate_dataset(dataset)
    shutil.rmtree(dataset / "users")  # features come from users/: it is needed
    message = r"^users/: no Parquet files \(features \['age_bucket', 'gender', 'city_id'\] come from users\)$"
    with pytest.raises(DatasetError, match=message):
        validate_dataset(dataset)


def test_file_that_is_not_parquet(dataset: Path) -> None:
    (dataset / USERS0).write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetError, match=rf"^{USERS0}: not a readable Parquet file"):
        validate_dataset(dataset)


def test_main(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(dataset), "--quiet"]) == 0
    assert capsys.readouterr().out == f"OK: {dataset}: items=12, users=6, impressions=40, searches=6\n" + WORLD_REPORT
    _edit(dataset, IMP3, _set("label", 3, 2.0))
    assert main([str(dataset), "--quiet"]) == 1
    assert capsys.readouterr().err == f"mmctr validate: {IMP3}: column 'label', row 3: value 2.0, expected 0.0 or 1.0\n"
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "dataset directory" in capsys.readouterr().out


def test_module_runs_as_a_program(dataset: Path) -> None:
    def run(root: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "recsys.data.validate", str(root)]
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)

    ok = run(dataset)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: "), ok.stderr
    _edit(dataset, SEARCHES0, _set("query_image", 1, b""))
    bad = run(dataset)
    assert bad.returncode == 1 and not bad.stdout
    assert f"{SEARCHES0}: column 'query_image', row 1: image missing (no bytes)" in bad.stderr


def test_generated_world_is_valid(tiny_world: Path, tiny_manifest: Manifest) -> None:
    assert validate_dataset(tiny_world).counts == tiny_manifest.counts


# -- memory grows with the rows, not with id_ranges ----------------------------

_PEAK = """
import json, resource, sys
from pathlib import Path
mode, root = sys.argv[1], Path(sys.argv[2])
if mode == "validate":
    from recsys.data.validate import validate_dataset
    rows = validate_dataset(root, workers=1).counts["impressions"]
else:
    from recsys.data.reader import ImpressionReader, ReaderConfig
    config = ReaderConfig(batch_size=1024, prefetch=0, table_sizes=json.loads(sys.argv[3]), out_of_range="hash")
    rows = sum(b.num_real for b in ImpressionReader(root, config))
print(json.dumps({"rows": rows, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _scale_ids(src: Path, dst: Path) -> int:
    """A copy of ``src`` with every user and item ID multiplied up to ~2**62 (manifest ranges to match)."""
    shutil.copytree(src, dst)
    manifest = Manifest.read(src)
    factor = 2**62 // max(manifest.id_ranges["user_id"], manifest.id_ranges["item_id"])
    for table, columns in ID_COLUMNS.items():
        scaled = [c for c, kind in columns.items() if kind in ("user_id", "item_id")]
        for path in table_files(dst, table):
            t = pq.read_table(path)
            for c in scaled:
                col = t.column(c).combine_chunks()
                if pa.types.is_list(col.type):
                    new = pa.ListArray.from_arrays(col.offsets, pc.multiply(col.values, factor))
                else:
                    new = pc.multiply(col, factor)
                t = t.set_column(t.schema.get_field_index(c), c, new.cast(t.schema.field(c).type))
            pq.write_table(t, path)
    ranges = dict(manifest.id_ranges, user_id=manifest.id_ranges["user_id"] * factor,
                  item_id=manifest.id_ranges["item_id"] * factor)
    dataclasses.replace(manifest, id_ranges=ranges).write(dst)
    return factor


def _peak(mode: str, root: Path, sizes: dict[str, int]) -> dict:
    out = subprocess.run([sys.executable, "-c", _PEAK, mode, str(root), json.dumps(sizes)], check=True,
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_memory_grows_with_rows_not_id_ranges(tiny_world: Path, tmp_path: Path) -> None:
    big = tmp_path / "big"
    factor = _scale_ids(tiny_world, big)
    assert max(Manifest.read(big).id_ranges[k] for k in ("user_id", "item_id")) > 2**61 and factor > 10**9
    impressions = sum(pq.read_metadata(f).num_rows for f in (tiny_world / "impressions").glob("*.parquet"))
    sizes = dict(Manifest.read(tiny_world).id_ranges)  # tables of the dense world's sizes; big IDs hashed
    for mode in ("validate", "reader"):
        dense, spread = _peak(mode, tiny_world, sizes), _peak(mode, big, sizes)
        assert dense["rows"] == spread["rows"] == impressions
        assert spread["peak_kib"] <= 1.5 * dense["peak_kib"], (mode, dense, spread)


def test_id_set_matches_a_python_set() -> None:
    rng = np.random.default_rng(0)
    ids, seen = validate._IdSet(), set()
    for _ in range(40):
        batch = np.setdiff1d(rng.integers(0, 2**62, int(rng.integers(0, 300))), np.fromiter(seen, np.int64))
        probe = np.concatenate([batch, rng.choice(np.fromiter(seen, np.int64), 5) if seen else batch[:0]])
        assert ids.contains(probe).tolist() == [int(v) in seen for v in probe]
        ids.add(np.unique(batch))
        seen |= set(batch.tolist())
        assert ids.contains(probe).all()
    assert sum(len(r) for r in ids.runs) == len(seen) and len(ids.runs) <= 64


# --- validate and the stages: one verdict, in the same words (recsys/data/content.py) ---


@pytest.fixture(scope="module")
def tiny_items(tiny_world: Path) -> "ItemContent":
    from pretrain.data import load_item_content

    return load_item_content(tiny_world)


def _world_with(world: Path, tmp_path: Path, table: str, column: str, value: object) -> tuple[Path, str, int, int]:
    """A copy of ``world`` with ``value`` at the middle row of its last ``table`` file: (copy, file, row, key)."""
    out = tmp_path / "w"
    shutil.copytree(world, out)
    f = table_files(out, table)[-1]
    t = pq.read_table(f)
    row = t.num_rows // 2
    pq.write_table(_set(column, row, value)(t), f, row_group_size=500)
    key = t["item_id" if table == "items" else "session_id"][row].as_py()
    return out, str(f.relative_to(out)), row, key


def _rule_message(rule: Callable[[], None]) -> str:
    from recsys.data.content import ContentError

    with pytest.raises(ContentError) as e:
        rule()
    return str(e.value)


def _stage(world: Path, table: str, items: "ItemContent") -> None:
    """What pre-training reads of ``table``: the item catalogue, or the search pairs."""
    from pretrain.data import load_item_content, load_search_pairs

    if table == "items":
        load_item_content(world)
    else:
        load_search_pairs(world, items)


@pytest.mark.parametrize(
    ("table", "column", "what"),
    [("items", "image", "oversized"), ("items", "title", "blank"), ("searches", "query_text", "blank"),
     ("searches", "query_image", "oversized"), ("items", "image", "undecodable")],
)  # fmt: skip
def test_validate_refuses_first_what_pretraining_refuses(
    tiny_world: Path, tiny_items: "ItemContent", tmp_path: Path, table: str, column: str, what: str
) -> None:
    from recsys.data.content import check_image, check_text, where

    size = Manifest.read(tiny_world).image_size
    value = {"oversized": _png(1, side=2 * size), "blank": "  ", "undecodable": b"\x89PNG broken"}[what]
    world, path, row, key = _world_with(tiny_world, tmp_path, table, column, value)
    rule = (lambda: check_image(value, size)) if isinstance(value, bytes) else (lambda: check_text(value, column))
    message = _rule_message(rule)
    with pytest.raises(DatasetError) as by_validate:
        validate_dataset(world, workers=2)
    assert str(by_validate.value) == f"{where(path, column, row)}: {message}"
    with pytest.raises(ValueError) as by_stage:  # the stage still refuses, in the same words
        _stage(world, table, tiny_items)
    noun = "item" if table == "items" else "session"
    assert str(by_stage.value) == f"{where(path, column, row)} ({noun} {key}): {message}"
    if (table, what) == ("items", "oversized"):  # `mmctr validate`: exit status 1 and the same line
        cmd = [sys.executable, "-m", "recsys.data.validate", "--quiet", str(world)]
        bad = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 1 and not bad.stdout
        assert bad.stderr.strip() == f"mmctr validate: {where(path, column, row)}: {message}"


def test_a_grayscale_image_passes_validate_as_pretraining_takes_it(tiny_world: Path, tmp_path: Path) -> None:
    from pretrain.data import load_item_content

    size = Manifest.read(tiny_world).image_size
    gray = _png(2, side=size, mode="L")
    world, _, _, key = _world_with(tiny_world, tmp_path, "items", "image", gray)
    assert validate_dataset(world, workers=2).counts["items"] == Manifest.read(world).counts["items"]
    items = load_item_content(world)
    row = int(items.rows(np.array([key]))[0])
    np.testing.assert_array_equal(items.images[row], np.asarray(Image.open(io.BytesIO(gray)).convert("RGB")))


# --- a dataset unlike the world: its own names, raw 64-bit IDs, titles only, no users/ or searches/ ---

MARKET_ITEMS = [-17, 3, 2**40 + 1, 2**62 + 5, 7 * 10**15, 9 * 10**17, 123_456_789, 2**63 - 2, 10**18, 42]
MARKET_DAYS = (10, 11, 12)
MARKET_PER_DAY = 15
MI0, MI1 = "items/part-0.parquet", "items/part-1.parquet"
MD10, MD11, MD12 = (f"impressions/ts-{d}.parquet" for d in MARKET_DAYS)
MARKET_MANIFEST = {  # what a person writes for a real log: a few lines and the spec
    "format_version": 2,
    "first_day": 10,
    "last_day": 12,
    "test_day": 12,
    "id_ranges": {"cat": 5},
    "max_history_len": 4,
    "features": {
        "user_key": "uid",
        "item_key": "iid",
        "label": "clk",
        "day": "ts_day",
        "history": "recent_iids",
        "history_side": ["cat"],
        "sparse": [
            {"name": "uid", "source": "impressions"},
            {"name": "iid", "source": "impressions"},
            {"name": "device", "source": "impressions"},
            {"name": "cat", "source": "items"},
            {"name": "seller", "source": "items"},
        ],
        "dense": [
            {"name": "price", "source": "items", "transform": "log1p"},
            {"name": "dwell", "source": "impressions", "transform": "standardize"},
            {"name": "n_recent", "source": "history", "transform": "log1p"},
        ],
        "tables": [
            {"name": "uid", "ids": "hash", "rows": 32},
            {"name": "iid", "ids": "managed", "rows": 64},
            {"name": "device", "rows": 4},
            {"name": "cat"},
            {"name": "seller", "ids": "managed", "rows": 16, "eviction": "distance_lfu", "eviction_interval": 10},
        ],
        "content": ["title"],
    },
}
MARKET_REPORT = """\
OK: market: items=10, impressions=45
  keys: user uid, item iid; label clk; day ts_day
  sparse: impressions uid, iid, device; items cat, seller
  history: recent_iids (item IDs, table iid; side features cat; 12 longer than max_history_len 4, cut when read)
  dense: price (items, log1p), dwell (impressions, standardize), n_recent (history, log1p)
  tables: uid hash 32 rows; iid managed 64 rows (lfu every 1 step); device identity 4 rows; cat identity 5 rows (id_ranges); seller managed 16 rows (distance_lfu every 10 steps)
  content: title
  search log: none (SCL unavailable; titles only: pre-training runs random towers, --method random)
  split: days 10..12; train 10..11 (30 impressions), test day 12 (15 impressions); new items: first shown that day
  ignored columns: items: brand_name; impressions: request_id
  users/: not read (no feature comes from users; an impression's user needs no row)"""


def _write_market(root: Path) -> None:
    rng = np.random.default_rng(1)
    n = len(MARKET_ITEMS)
    items = pa.table(
        {
            "iid": pa.array(MARKET_ITEMS, pa.int64()),
            "cat": pa.array(np.arange(n) % 5, pa.int32()),
            "seller": pa.array([10**12 + 3, -2, 5 * 10**17, 10**12 + 3, 2**62, -2, 7, 7, 5 * 10**17, 0], pa.int64()),
            "price": pa.array(rng.uniform(0, 200, n), pa.float64()),
            "title": [f"listing {i}" for i in range(n)],
            "brand_name": [f"brand {i % 3}" for i in range(n)],
        }
    )
    _write(items.slice(0, 6), root / MI0)
    _write(items.slice(6), root / MI1)
    for day, rel in zip(MARKET_DAYS, (MD10, MD11, MD12)):
        k = MARKET_PER_DAY
        history = [rng.choice(MARKET_ITEMS, i % 7).tolist() for i in range(k)]  # some longer than 4
        impressions = pa.table(
            {
                "request_id": [f"r{day}-{i}" for i in range(k)],
                "ts_day": pa.array(np.full(k, day), pa.int32()),
                "uid": pa.array(rng.integers(-(2**62), 2**62, k), pa.int64()),  # hashed: any int64
                "iid": pa.array(rng.choice(MARKET_ITEMS, k), pa.int64()),
                "clk": pa.array((rng.random(k) < 0.3).astype(np.float64)),
                "device": pa.array(rng.integers(0, 4, k), pa.int32()),
                "recent_iids": pa.array(history, pa.list_(pa.int64())),
                "dwell": pa.array(rng.exponential(3.0, k), pa.float32()),
            }
        )
        _write(impressions, root / rel)
    (root / "manifest.json").write_text(json.dumps(MARKET_MANIFEST, indent=1))


@pytest.fixture()
def market(tmp_path: Path) -> Path:
    root = tmp_path / "market"
    _write_market(root)
    return root


def test_a_dataset_unlike_the_world_validates(market: Path, capsys: pytest.CaptureFixture) -> None:
    report = validate_dataset(market)
    assert report.counts == {"items": 10, "impressions": 45} and "random towers" in report.searches
    assert validate.format_report(report, "market") == MARKET_REPORT
    _write(pa.table({"uid": [1, 1], "age": [None, 3]}), market / "users" / "part-0.parquet")
    assert validate_dataset(market).counts == report.counts  # no feature comes from users/: not read
    assert main([str(market), "--quiet"]) == 0
    assert capsys.readouterr().out == MARKET_REPORT.replace("market", str(market), 1) + "\n"


SENTINEL = 2**63 - 1
MARKET_CASES = [
    (MI0, _set("price", 2, float("nan")), "column 'price', row 2: value nan, expected a finite number"),
    (MD11, _set("dwell", 5, float("inf")), "column 'dwell', row 5: value inf, expected a finite number"),
    (MI0, _set("price", 1, None), "column 'price', row 1: null value"),
    (MI0, _drop("cat"), "missing column 'cat' (expected int32 or int64: features.sparse 'cat' (source items, a history_side feature))"),
    (MI1, _drop("seller"), "missing column 'seller' (expected int32 or int64: features.sparse 'seller' (source items))"),
    (MD10, _drop("recent_iids"), "missing column 'recent_iids' (expected a list of int32 or int64: features.history)"),
    (MD12, _drop("device"), "missing column 'device' (expected int32 or int64: features.sparse 'device' (source impressions))"),
    (MD12, _drop("dwell"), "missing column 'dwell' (expected a number (integer or float): features.dense 'dwell' (source impressions))"),
    (MI0, _drop("title"), "missing column 'title' (expected string: features.content 'title')"),
    (MD11, _drop("ts_day"), "missing column 'ts_day' (expected a signed integer: features.day)"),
    (MD12, _cast("dwell", pa.string()), "column 'dwell' has type string, expected a number (integer or float) (features.dense"),
    (MD10, _cast("clk", pa.string()), "column 'clk' has type string, expected an integer, float or bool (features.label)"),
    (MD11, _cast("ts_day", pa.date32()), "column 'ts_day' has type date32[day], expected a signed integer (features.day)"),
    (MD10, _set("device", 7, 4), "column 'device', row 7: ID 4 outside [0, 4) (identity table 'device')"),
    (MI1, _set("cat", 1, -1), "column 'cat', row 1: ID -1 outside [0, 5) (identity table 'cat')"),
    (MI0, _set("seller", 3, SENTINEL),
     f"column 'seller', row 3: ID {SENTINEL} is 2**63-1, the managed-collision sentinel (managed table 'seller' takes any other int64)"),
    (MD11, _set("uid", 9, SENTINEL), f"column 'uid', row 9: ID {SENTINEL} is 2**63-1, the managed-collision sentinel (hash table 'uid'"),
    (MD12, _set("recent_iids", 6, [3, 2**63 - 3]), f"column 'recent_iids', row 6: unknown iid {2**63 - 3} (no row in items/)"),
    (MD10, _set("iid", 2, 5), "column 'iid', row 2: unknown iid 5 (no row in items/)"),
    (MI1, _set("iid", 2, -17), "column 'iid', row 2: iid -17 appears more than once"),
    (MD11, _set("clk", 0, 0.5), "column 'clk', row 0: value 0.5, expected 0.0 or 1.0"),
    (MD12, _set("ts_day", 4, 13), "column 'ts_day', row 4: day 13 outside manifest days [10, 12]"),
    (MI1, _set("title", 0, " "), "column 'title', row 0: title is blank (' ')"),
]  # fmt: skip


@pytest.mark.parametrize(("rel", "edit", "message"), MARKET_CASES, ids=[c[2][:56] for c in MARKET_CASES])
def test_a_fault_of_the_unlike_dataset_is_named(market: Path, small_batches: None, rel: str, edit: Edit, message: str) -> None:
    _edit(market, rel, edit)
    with pytest.raises(DatasetError) as e:
        validate_dataset(market)
    assert str(e.value).startswith(f"{rel}: {message}"), str(e.value)


def _features(change: Callable[[dict], None]) -> Callable[[dict], None]:
    return lambda raw: change(raw["features"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_features(lambda f: f["sparse"][2].update(source="sessions")),
         "manifest.json: features.sparse[2].source is 'sessions'; expected one of ['impressions', 'users', 'items']"),
        (_features(lambda f: f["dense"][1].update(source="basket")),
         "manifest.json: features.dense[1].source is 'basket'; expected one of ['impressions', 'users', 'items', 'history']"),
        (lambda raw: raw["id_ranges"].pop("cat"),
         "manifest.json: id_ranges['cat'] is None, expected an integer >= 1 (the rows of identity table 'cat', which declares no 'rows')"),
        (lambda raw: raw.update(last_day=13, test_day=13),
         "impressions/: no impressions on test_day 13 (manifest.json); the test day must hold the impressions evaluated "
         "(days with impressions: [10, 11, 12])"),
        (lambda raw: raw.update(test_day=10),
         "impressions/: no impressions before test_day 10 (manifest.json); training needs at least one earlier day"),
        (lambda raw: raw.update(test_day=14), "manifest.json: test_day 14 outside the days [10, 12]"),
        (lambda raw: raw.update(test_day="12"), "manifest.json: test_day must be an integer, got '12'"),
        (lambda raw: raw.update(image_size=64.0), "manifest.json: image_size must be an integer, got 64.0"),
        (_features(lambda f: f["content"].append("image")),
         "manifest.json: image_size is None, expected an integer >= 1 (features.content has 'image')"),
    ],
    ids=["unknown sparse source", "unknown dense source", "identity table without rows", "test day empty",
         "no day before the test day", "test day outside the days", "test day a string", "image size a float",
         "images without image_size"],
)  # fmt: skip
def test_a_fault_of_the_unlike_manifest_is_named(market: Path, change: Callable[[dict], None], message: str) -> None:
    _manifest(market, change)
    with pytest.raises(DatasetError) as e:
        validate_dataset(market)
    assert str(e.value) == message


def test_the_split_reports_days_after_the_test_day(market: Path) -> None:
    _manifest(market, lambda raw: raw.update(test_day=11))
    report = validate_dataset(market)
    line = [x for x in validate.format_report(report, "m").splitlines() if "split:" in x][0]
    assert line == ("  split: days 10..12; train 10..10 (15 impressions), test day 11 (15 impressions), 15 after it; "
                    "new items: first shown that day")


def test_a_feature_from_users_makes_users_needed(market: Path) -> None:
    _manifest(market, _features(lambda f: f["dense"].append({"name": "tenure", "source": "users"})))
    with pytest.raises(DatasetError, match=r"^users/: no Parquet files \(features \['tenure'\] come from users\)$"):
        validate_dataset(market)
    uids = pc.unique(pa.concat_tables(pq.read_table(market / f) for f in (MD10, MD11, MD12))["uid"]).to_pylist()
    first = pq.read_table(market / MD10)["uid"][0].as_py()
    users = pa.table({"uid": pa.array(uids, pa.int64()), "tenure": pa.array(np.arange(len(uids)), pa.int32())})
    _write(users, market / "users" / "part-0.parquet")
    assert validate_dataset(market).counts == {"items": 10, "users": len(uids), "impressions": 45}
    _write(users.filter(pc.not_equal(users["uid"], first)), market / "users" / "part-0.parquet")
    with pytest.raises(DatasetError, match=rf"^{MD10}: column 'uid', row 0: unknown uid {first} \(no row in users/\)$"):
        validate_dataset(market)


# --- the old layout, and the search log as optional ---


def test_a_format_1_manifest_still_validates(dataset: Path) -> None:
    old = {  # the layout every dataset had before the spec: no features, no test_day
        "format_version": 1, "preset": "hand", "seed": 0, "first_day": DAYS[0], "last_day": DAYS[-1],
        "counts": {"items": N_ITEMS, "users": N_USERS, "impressions": 40, "searches": N_SEARCHES},
        "id_ranges": ID_RANGES, "max_history_len": MAX_HISTORY, "image_size": 8, "extra": {},
    }  # fmt: skip
    (dataset / "manifest.json").write_text(json.dumps(old))
    report = validate_dataset(dataset)
    assert report.manifest.spec == world_spec() and report.manifest.test_day == DAYS[-1]
    assert report.counts["searches"] == N_SEARCHES
    _manifest(dataset, lambda raw: raw["id_ranges"].pop("gender"))
    with pytest.raises(DatasetError, match=r"^manifest.json: id_ranges\['gender'\] is None"):
        validate_dataset(dataset)


def test_no_search_log_is_fine_and_reported(dataset: Path) -> None:
    _manifest(dataset, lambda raw: raw["counts"].pop("searches"))
    _edit(dataset, SEARCHES0, lambda t: t.slice(0, 0))  # an empty search log: as if absent
    assert validate_dataset(dataset).searches == validate.NO_SEARCHES
    shutil.rmtree(dataset / "searches")
    report = validate_dataset(dataset)
    assert report.searches == validate.NO_SEARCHES and "searches" not in report.counts
    _manifest(dataset, lambda raw: raw["counts"].update(searches=6))
    with pytest.raises(DatasetError, match=r"^searches/: 0 rows, manifest.json counts says 6$"):
        validate_dataset(dataset)


def test_the_search_log_is_checked_for_the_declared_content_only(dataset: Path) -> None:
    titles = world_spec(content=("title",)).to_dict()
    _manifest(dataset, lambda raw: raw.update(features=titles))
    _edit(dataset, ITEMS0, _drop("image"))
    _edit(dataset, SEARCHES0, _then(_drop("query_image"), _drop("shown_item_ids"), _drop("user_id")))
    report = validate_dataset(dataset)
    assert report.searches == "6 sessions (SCL pre-training; queries: query_text)"
    assert report.ignored["items"] == ("image",)  # ITEMS1's images: not declared, so ignored
    _edit(dataset, SEARCHES0, _set("purchased_item_id", 1, 99))
    with pytest.raises(DatasetError, match=rf"^{SEARCHES0}: column 'purchased_item_id', row 1: ID 99 outside \[0, 14\)"):
        validate_dataset(dataset)
    _manifest(dataset, lambda raw: raw["features"].update(content=[]))  # no content: the search log is not read
    report = validate_dataset(dataset)
    assert "searches" not in report.counts and report.searches.startswith("present, not read: no item content")


# --- dense values as the reader takes them: float32, through their transform ---

F32_OVER = "expected a finite number (float32 overflows to inf beyond 3.403e+38)"
LOG1P = "transform 'log1p_standardize' takes log1p"
_LOG1P_DWELL = _features(lambda f: f["dense"][1].update(transform="log1p_standardize"))


def _floor_to_int(column: str) -> Edit:
    return lambda t: t.set_column(t.schema.get_field_index(column), column, pc.cast(pc.floor(t[column]), pa.int64()))


@pytest.mark.parametrize(
    ("rel", "edit", "change", "message"),
    [
        (MI0, _set("price", 4, 1e39), None, f"column 'price', row 4: value 1e+39, {F32_OVER}"),  # finite in float64
        (MI1, _set("price", 2, -1e300), None, f"column 'price', row 2: value -1e+300, {F32_OVER}"),
        (MI1, _set("price", 3, -1.0), None, "column 'price', row 3: value -1.0, expected > -1 (transform 'log1p' takes log1p)"),
        (MI0, _set("price", 5, -7.5), None, "column 'price', row 5: value -7.5, expected > -1 (transform 'log1p' takes log1p)"),
        (MD11, _set("dwell", 7, -3.0), _LOG1P_DWELL, f"column 'dwell', row 7: value -3.0, expected > -1 ({LOG1P})"),
        (MD12, _then(_floor_to_int("dwell"), _set("dwell", 13, -1)), _LOG1P_DWELL,
         f"column 'dwell', row 13: value -1, expected > -1 ({LOG1P})"),  # integers too
    ],
    ids=["price 1e39", "price -1e300", "log1p -1", "log1p -7.5", "log1p_standardize -3", "log1p_standardize int -1"],
)  # fmt: skip
def test_dense_value_the_reader_refuses_is_refused_by_validate(
    market: Path, small_batches: None, rel: str, edit: Edit, change: Callable[[dict], None] | None, message: str
) -> None:
    if change is not None:
        _manifest(market, change)
    assert validate_dataset(market).counts  # valid before the edit
    _edit(market, rel, edit)
    with pytest.raises(DatasetError) as e:
        validate_dataset(market)
    assert str(e.value) == f"{rel}: {message}"


def test_dense_value_overflowing_float32_in_impressions_is_refused(dataset: Path, small_batches: None) -> None:
    _edit(dataset, IMP3, _then(_cast("position", pa.float64()), _set("position", 10, 5e38)))
    with pytest.raises(DatasetError) as e:
        validate_dataset(dataset)
    assert str(e.value) == f"{IMP3}: column 'position', row 10: value 5e+38, {F32_OVER}"


def test_a_standardised_dense_value_below_minus_one_passes(market: Path) -> None:
    """``standardize`` (no log) takes any finite value: -3.0 is fine there."""
    _edit(market, MD11, _set("dwell", 7, -3.0))
    assert validate_dataset(market).counts["impressions"] == 45


@pytest.mark.parametrize(
    ("rel", "edit", "change", "when"),
    [(MI0, _set("price", 4, 1e39), None, "built"), (MI1, _set("price", 1, -1.0), None, "built"),
     (MD11, _set("dwell", 7, -3.0), _LOG1P_DWELL, "read"), (MD10, _set("clk", 12, 2.0), None, "read"),
     (MD11, _then(_cast("clk", pa.int8()), _set("clk", 6, 2)), None, "read"),
     (MD12, _then(_cast("clk", pa.int32()), _set("clk", 3, -1)), None, "read")],
    ids=["price 1e39", "price -1", "dwell -3 log1p_standardize", "label 2", "int8 label 2", "int32 label -1"],
)  # fmt: skip
def test_validate_and_the_reader_refuse_the_same_value_in_the_same_words(
    market: Path, rel: str, edit: Edit, change: Callable[[dict], None] | None, when: str
) -> None:
    """What ``mmctr train`` would refuse (it does not run validate) validate refuses first, naming the same row."""
    from recsys.data.reader import ImpressionReader, ReaderConfig

    if change is not None:
        _manifest(market, change)
    _edit(market, rel, edit)
    with pytest.raises(DatasetError) as by_validate:
        validate_dataset(market)
    place, what = str(by_validate.value).split(": ", 2)[1:]  # "column 'c', row r", the fault
    with pytest.raises(ValueError) as by_reader:
        reader = ImpressionReader(market, ReaderConfig(batch_size=4, prefetch=0, dense_stats={"dwell": (0.0, 1.0)}))
        assert when == "read"
        list(reader)
    text = str(by_reader.value)
    assert text.startswith(str(market / rel)) and f": {place}" in text and text.endswith(f": {what}"), text


def test_created_day_is_read_not_ignored_and_must_be_an_integer_day(dataset: Path) -> None:
    # evaluation's new items are those whose items' created_day is the test day: a column of that name
    # that is no integer day (a date, a string) is refused, naming it, rather than silently changing them
    report = validate_dataset(dataset)
    assert report.created_day and "created_day" not in report.ignored["items"]
    _edit(dataset, ITEMS0, lambda t: t.set_column(t.schema.get_field_index("created_day"), "created_day",
                                                  pa.array([None] * t.num_rows, pa.date32())))
    with pytest.raises(DatasetError, match=rf"^{ITEMS0}: column 'created_day' is date32\[day\], expected an integer day"):
        validate_dataset(dataset)


# --- column types: validate and the reader (which `mmctr train` runs without validate) agree ---


@pytest.mark.parametrize(
    ("rel", "edit", "message"),
    [
        (MD11, _cast("ts_day", pa.date32()), "column 'ts_day' has type date32[day], expected a signed integer (features.day)"),
        (MD12, _cast("ts_day", pa.string()), "column 'ts_day' has type string, expected a signed integer (features.day)"),
        (MD12, _cast("clk", pa.string()), "column 'clk' has type string, expected an integer, float or bool (features.label)"),
        (MD10, _cast("device", pa.float64()), "column 'device' has type double, expected int32 or int64 (features.sparse 'device' (source impressions))"),
    ],
    ids=["date32 day", "string day", "string label", "float sparse ID"],
)  # fmt: skip
def test_validate_and_the_reader_refuse_a_column_type_in_the_same_words(
    market: Path, rel: str, edit: Edit, message: str
) -> None:
    """A Parquet DATE day (a log's usual ``ds``) is refused by both, naming file and column, never a traceback."""
    from recsys.data.reader import ImpressionReader, ReaderConfig

    _edit(market, rel, edit)
    with pytest.raises(DatasetError) as by_validate:
        validate_dataset(market)
    assert str(by_validate.value) == f"{rel}: {message}"
    with pytest.raises(ValueError) as by_reader:
        ImpressionReader(market, ReaderConfig(batch_size=4, prefetch=0, dense_stats={"dwell": (0.0, 1.0)}))
    assert str(by_reader.value) == f"{market / rel}: {message}"


@pytest.mark.parametrize("type_", [pa.int8(), pa.int32(), pa.int64(), pa.uint8(), pa.bool_(), pa.float32()], ids=str)
def test_a_label_of_any_integer_float_or_bool_type_holding_0_or_1_passes_validate_and_the_reader(
    market: Path, type_: pa.DataType
) -> None:
    """Real logs store clicks as int8, int32, bool...: validate accepts them as the reader trains on them."""
    from recsys.data.reader import ImpressionReader, ReaderConfig

    rels = (MD10, MD11, MD12)  # the impressions files, in the reader's (sorted) order
    want = [float(v) for rel in rels for v in pq.read_table(market / rel).column("clk").to_pylist()]
    assert set(want) == {0.0, 1.0}
    for rel in rels:
        _edit(market, rel, _cast("clk", type_))
        assert pq.read_schema(market / rel).field("clk").type == type_
    assert validate_dataset(market).counts["impressions"] == len(want) == 45
    reader = ImpressionReader(market, ReaderConfig(batch_size=4, prefetch=0, dense_stats={"dwell": (0.0, 1.0)}))
    got = [y for b in reader for y, w in zip(b.labels.tolist(), b.weights.tolist()) if w > 0]
    assert got == want
