"""MovieLens-100k from RecBole's atomic files: the conversion against a plain Python reference, validation, reading, faults."""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.reader import ImpressionReader, ReaderConfig
from recsys.data.schema import Manifest, table_files
from recsys.data.validate import validate_dataset
from recsys.world.atomic import AtomicError
from recsys.world.ml100k import INTER, ITEM, MAX_HISTORY_LEN, USER, click_histories, convert_ml100k

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
USER_HEADER = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"
N_ITEMS = 70


def _ratings() -> list[tuple[int, int, float, float]]:
    """(user, item, stars, timestamp), in a shuffled file order."""
    rows = [  # user 1: ties in time (items 4 and 2 at t=200, 9, 3 and 5 at t=300), mixed labels
        (1, 4, 5, 200), (1, 2, 4, 200), (1, 1, 3, 100), (1, 9, 5, 300), (1, 3, 1, 300), (1, 5, 4, 300),
        (1, 6, 2, 400), (1, 7, 5, 500), (1, 8, 4, 600), (1, 10, 3, 700),
        (2, 3, 5, 50),  # user 2: one rating
        *[(3, i, 1 + i % 3, 1000 + i) for i in range(1, 8)],  # user 3: never clicks (1-3 stars)
        *[(5, i, 4 + i % 2, 7) for i in range(11, 17)],  # user 5: every rating at one timestamp
    ]
    rows += [(4, i, 5 if i % 7 else 2, 10 * i) for i in range(1, N_ITEMS + 1)]  # user 4: > 50 clicks (the cap)
    order = np.random.default_rng(3).permutation(len(rows))
    return [rows[i] for i in order]


def _write_source(root: Path, ratings: list[tuple[int, int, float, float]] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    ratings = _ratings() if ratings is None else ratings
    (root / INTER).write_text("\n".join([INTER_HEADER, *(f"{u}\t{i}\t{r:g}\t{t:g}" for u, i, r, t in ratings)]) + "\n")
    items = [f"{i}\tMovie number {i}\t{1920 + i}\tDrama Comedy" for i in range(1, N_ITEMS + 1)]
    items[6] = "7\tNo Genre Film\t1995\t"  # no genre: category 'unknown'
    items[7] = "8\tunkonwn\tunkonwn\tunknown"  # RecBole's movie 267
    items[8] = "9\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation Children's"
    (root / ITEM).write_text("\n".join([ITEM_HEADER, *items]) + "\n")
    users = ["1\t24\tM\ttechnician\t85711", "2\t53\tF\tother\t94043", "3\t17\tM\tstudent\t32067",
             "4\t60\tF\tretired\t15213", "5\t33\tF\tother\t30329", "6\t40\tM\twriter\t10003"]  # user 6 rates nothing
    (root / USER).write_text("\n".join([USER_HEADER, *users]) + "\n")
    return root


def _reference(ratings: list[tuple[int, int, float, float]], days: int, cap: int) -> dict[tuple[int, int], tuple]:
    """(user, item) -> (day, history, label) by the rules in words, one user at a time."""
    by_user: dict[int, list[tuple[int, int, float, float]]] = defaultdict(list)
    for row in ratings:
        by_user[row[0]].append(row)
    out = {}
    for user, rows in by_user.items():
        rows = sorted(rows, key=lambda r: (r[3], r[1]))  # timestamp, then item
        clicked: list[int] = []
        for k, (_, item, stars, _) in enumerate(rows):
            out[(user, item)] = (days * k // len(rows), clicked[-cap:], float(stars >= 4))
            if stars >= 4:
                clicked.append(item)
    return out


@pytest.fixture
def converted(tmp_path: Path) -> tuple[Path, Manifest]:
    source = _write_source(tmp_path / "src")
    return tmp_path / "world", convert_ml100k(tmp_path / "world", source=source, days=5)


def _impressions(world: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(f) for f in table_files(world, "impressions"))


def test_conversion_matches_the_plain_reference(converted: tuple[Path, Manifest]) -> None:
    world, m = converted
    ratings = _ratings()
    im = _impressions(world)
    assert im.num_rows == len(ratings) == m.counts["impressions"]  # nothing lost, nothing twice
    got = {(u, i): (d, h, lab) for u, i, d, h, lab in zip(*(im[c].to_pylist() for c in
           ("user_id", "item_id", "day", "history_item_ids", "label")))}  # fmt: skip
    assert got == _reference(ratings, days=5, cap=MAX_HISTORY_LEN)
    assert sorted(zip(*(im[c].to_pylist() for c in ("user_id", "item_id", "rating", "timestamp")))) == sorted(ratings)
    assert (m.first_day, m.last_day, m.test_day, m.max_history_len) == (0, 4, 4, 50)
    # Spot checks of the cases the fixture holds.
    assert got[(2, 3)] == (0, [], 1.0)  # a single rating: day 0, no history
    assert {got[(3, i)][1] == [] for i in range(1, 8)} == {True}  # no clicks, never a history
    assert [got[(1, i)][0] for i in (1, 2, 4, 3, 5, 9, 6, 7, 8, 10)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # ties by item
    assert got[(1, 9)][1] == [2, 4, 5]  # clicks strictly earlier in the user's order, newest last
    assert max(len(h) for _, h, _ in got.values()) == MAX_HISTORY_LEN  # user 4's > 50 clicks, cut
    assert im["day"].to_pylist() == sorted(im["day"].to_pylist())


def test_side_tables_and_vocabularies(converted: tuple[Path, Manifest]) -> None:
    world, m = converted
    items = pq.read_table(table_files(world, "items")[0]).to_pylist()
    users = pq.read_table(table_files(world, "users")[0]).to_pylist()
    assert len(items) == N_ITEMS and [u["user_id"] for u in users] == [1, 2, 3, 4, 5, 6]  # user 6 rated nothing
    vocab = m.extra["vocabularies"]
    by_id = {i["item_id"]: i for i in items}
    assert vocab["category"][by_id[7]["category"]] == "unknown" == vocab["category"][by_id[8]["category"]]
    assert vocab["category"][by_id[9]["category"]] == "Animation" and vocab["category"][by_id[1]["category"]] == "Drama"
    assert [by_id[i]["release_bucket"] for i in (1, 8, 9, 10, 20)] == [1, 0, 0, 2, 3]  # 1921, unknown, "V", 1930, 1940
    assert m.extra["unknown_release_year"] == [8, 9]
    assert [vocab["gender"][u["gender"]] for u in users] == ["M", "F", "M", "F", "F", "M"]
    assert [u["age_bucket"] for u in users] == [1, 5, 0, 6, 2, 3]  # MovieLens-1M's age groups
    assert m.id_ranges["user_id"] == 7 and m.id_ranges["item_id"] == N_ITEMS + 1


def test_written_world_validates_and_reads(converted: tuple[Path, Manifest]) -> None:
    world, m = converted
    report = validate_dataset(world, workers=1)
    assert report.counts["impressions"] == len(_ratings()) and set(report.days) <= set(range(5))
    assert report.ignored["impressions"] == ("rating", "timestamp")
    spec = m.features
    category = {i: c for i, c in zip(*(pq.read_table(table_files(world, "items")[0])[k].to_pylist()
                                       for k in ("item_id", "category")))}  # fmt: skip
    rows = 0
    for batch in ImpressionReader(world, ReaderConfig(batch_size=16, prefetch=0)):
        kjt = batch.sparse_features
        assert tuple(kjt.keys()) == spec.kjt_keys()
        hist = kjt["history_item_ids"].values().tolist()
        assert kjt["history_category"].values().tolist() == [category[i] for i in hist]
        rows += len(batch.labels)
    assert rows == len(_ratings())


def test_histories_keep_the_last_clicks() -> None:
    users, items = np.array([1] * 5), np.array([10, 11, 12, 13, 14])
    got = click_histories(users, items, np.ones(5, bool), np.arange(5), cap=2)
    assert got == [[], [10], [10, 11], [11, 12], [12, 13]]


def _bad_inter(line: str) -> list[str]:
    return [INTER_HEADER, "1\t1\t4\t100", line]


@pytest.mark.parametrize("file,lines,message", [
    (INTER, _bad_inter("1\t2\tfour\t101"), "ml-100k.inter: row 1 (line 3), column 'rating:float': 'four' is not a number"),
    (INTER, _bad_inter("1\t2\t4"), "ml-100k.inter: row 1 (line 3): 3 fields, the header has 4"),
    (INTER, _bad_inter("1\t999\t4\t101"), "ml-100k.inter: row 1 (line 3), column 'item_id:token': unknown item_id 999"),
    (INTER, _bad_inter("x\t2\t4\t101"), "ml-100k.inter: row 1 (line 3), column 'user_id:token': 'x' is not a whole number"),
    (INTER, _bad_inter("1\t2\t44\t101"), "column 'rating:float': 44, expected stars in [0.5, 5.0]"),
    (INTER, _bad_inter("1\t2\tnan\t101"), "column 'rating:float': 'nan' is not a finite number"),
    (INTER, ["user_id:token\titem_id:token\trating:float", "1\t1\t4"], "ml-100k.inter: header has no field ['timestamp']"),
    (ITEM, [ITEM_HEADER, "1\tA\t1995\tDrama", "2\t  \t1995\tDrama"],
     "ml-100k.item: row 1 (line 3), column 'movie_title:token_seq': title is blank"),
    (ITEM, [ITEM_HEADER, "1\tA\t1995\tDrama", "1\tB\t1995\tDrama"],
     "ml-100k.item: row 1 (line 3), column 'item_id:token': item_id 1 listed twice"),
    (USER, [USER_HEADER, "1\t24\t\tother\t1"], "ml-100k.user: row 0 (line 2), column 'gender:token': blank value"),
])  # fmt: skip
def test_malformed_rows_are_named(tmp_path: Path, file: str, lines: list[str], message: str) -> None:
    source = _write_source(tmp_path / "src")
    (source / file).write_text("\n".join(lines) + "\n")
    with pytest.raises(AtomicError) as e:
        convert_ml100k(tmp_path / "world", source=source)
    assert message in str(e.value)
    assert not (tmp_path / "world").exists()


def test_refusals_before_writing(tmp_path: Path) -> None:
    source = _write_source(tmp_path / "src", ratings=[(1, 1, 4, 1), (1, 2, 4, 2), (2, 1, 5, 3)])
    with pytest.raises(ValueError, match="no user has 5 ratings"):  # the test day would be empty
        convert_ml100k(tmp_path / "world", source=source, days=5)
    with pytest.raises(ValueError, match="days must be >= 2"):
        convert_ml100k(tmp_path / "world", source=source, days=1)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a dataset directory"):
        convert_ml100k(tmp_path / "notes", source=source, days=2)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_cli_writes_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recsys.cli import main

    source = _write_source(tmp_path / "src")
    assert main(["import-ml100k", "--out", str(tmp_path / "w"), "--source", str(source), "--days", "3"]) == 0
    out = capsys.readouterr().out
    assert f"{len(_ratings())} impressions" in out and "test day 2" in out
    (source / INTER).write_text(INTER_HEADER + "\n1\t1\t4\n")
    assert main(["import-ml100k", "--out", str(tmp_path / "w"), "--source", str(source)]) == 1
    assert "ml-100k.inter: row 0 (line 2): 3 fields, the header has 4" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="recbole not installed (`make real-data`)")
def test_the_real_ml100k(tmp_path: Path) -> None:
    """RecBole's ml-100k: every one of the 100,000 ratings written, each user's last 20 % on the test day."""
    m = convert_ml100k(tmp_path / "world")
    assert m.counts == {"users": 943, "items": 1682, "impressions": 100_000}
    im = _impressions(tmp_path / "world")
    test = im["day"].to_numpy() == 4
    users, n = np.unique(im["user_id"].to_numpy(), return_counts=True)
    _, n_test = np.unique(im["user_id"].to_numpy()[test], return_counts=True)
    assert len(users) == 943 and (n_test == n - (4 * n + 4) // 5).all()  # k >= 4n/5 -> day 4
