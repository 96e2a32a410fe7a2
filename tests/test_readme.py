"""The README's format section and commands agree with the code."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.data.schema import TABLES

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_schema_tables_match_schema_py() -> None:
    text = README.read_text()
    for name, schema in TABLES.items():
        m = re.search(rf"\*\*`{name}/`\*\*\n\n\| column \| type \|\n\|---\|---\|\n((?:\|.*\|\n)+)", text)
        assert m, f"README has no table for {name}/"
        rows = [re.findall(r"`([^`]*)`", line) for line in m.group(1).strip().splitlines()]
        assert [(c, t) for c, t in rows] == [(f.name, str(f.type)) for f in schema], name


def test_readme_starts_with_the_two_commands() -> None:
    block = README.read_text().split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in block.strip().splitlines()] == [["make", "demo"], ["make", "test"]]


def test_every_subcommand_has_help() -> None:
    """Each subcommand's ``--help`` (in this process: the parser is what a shell's ``mmctr X --help`` runs) and README entry."""
    from recsys.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
            build_parser().parse_args([name, "--help"])
        assert e.value.code == 0 and "usage: mmctr " + name in out.getvalue(), name
        assert f"`mmctr {name}" in README.read_text(), f"README does not list mmctr {name}"
    out = subprocess.run([sys.executable, "-m", "recsys.cli", "--help"], capture_output=True, text=True)  # the entry point
    assert out.returncode == 0 and all(name in out.stdout for name in sub.choices), out.stderr


def _byol_example() -> str:
    """The Python block after ``<!-- byol-example -->`` in the README's "Bring your own log"."""
    m = re.search(r"<!-- byol-example -->\n```python\n(.*?)\n```\n", README.read_text(), re.S)
    assert m, "README has no <!-- byol-example --> python block"
    return m.group(1)


def test_bring_your_own_log_example_validates_and_reads(tmp_path: Path, monkeypatch) -> None:
    """The worked example writes a dataset that validates, holds every event and reads as its spec says."""
    import numpy as np

    from recsys.data.reader import ImpressionReader, ReaderConfig
    from recsys.data.validate import validate_dataset

    out = tmp_path / "byol-log"
    monkeypatch.setenv("BYOL_OUT", str(out))
    ns: dict[str, object] = {"__name__": "byol_example"}
    exec(compile(_byol_example(), "README.md:byol-example", "exec"), ns)

    report = validate_dataset(out, workers=1)
    m = report.manifest
    assert m.format_version == 2 and m.test_day == m.last_day and not (out / "searches").exists()
    # Events of the train and test days, counted from the in-memory log rather than the written one.
    ev_time = np.asarray(ns["ev_time"])
    ev_day = (ev_time - ev_time.min()) // 86_400
    assert report.counts["impressions"] == int((ev_day <= m.test_day).sum()) == len(ev_time)
    assert sorted(report.days) == list(range(m.first_day, m.test_day + 1))
    assert report.ignored["impressions"] == ("timestamp",)

    spec = m.features
    assert [t.ids for t in spec.tables] == ["managed", "managed", "identity", "identity"]
    (batch,) = list(ImpressionReader(out, ReaderConfig(batch_size=64, days=[m.test_day], prefetch=0)))[:1]
    kjt = batch.sparse_features
    assert tuple(kjt.keys()) == spec.kjt_keys() == ("user_id", "movie_id", "age", "genre", "liked", "history_genre")
    # Raw IDs reach the model as written (the managed tables remap them); side features follow the history.
    item_raw, genre = np.asarray(ns["item_raw"]), np.asarray(ns["genre"])
    liked = kjt["liked"].values().numpy()
    assert np.isin(kjt["movie_id"].values().numpy(), item_raw).all() and np.isin(liked, item_raw).all()
    genre_of = dict(zip(item_raw.tolist(), genre.tolist()))
    assert kjt["history_genre"].values().tolist() == [genre_of[i] for i in liked.tolist()]
    assert kjt["history_genre"].lengths().tolist() == kjt["liked"].lengths().tolist()
    np.testing.assert_allclose(batch.dense_features[:, 0].numpy(), np.log1p(kjt["liked"].lengths().numpy()), rtol=1e-6)


def test_bring_your_own_log_commands_name_the_example_output() -> None:
    text = README.read_text()
    assert 'os.environ.get("BYOL_OUT", "byol-log")' in _byol_example()
    for command in ("mmctr validate byol-log", "mmctr train --world byol-log", "mmctr pipeline --world byol-log"):
        assert command in text, command
