"""The README's format section and commands agree with the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
    from recsys.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        out = subprocess.run([sys.executable, "-m", "recsys.cli", name, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: mmctr " + name in out.stdout, name
        assert f"`mmctr {name}" in README.read_text(), f"README does not list mmctr {name}"
