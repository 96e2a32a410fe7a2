"""The ``mmctr`` console script end to end: exit codes and messages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.schema import table_files


def _mmctr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True)


def test_validate_exit_codes(tiny_world: Path, tmp_path: Path) -> None:
    ok = _mmctr("validate", str(tiny_world), "--quiet")
    assert ok.returncode == 0 and ok.stdout.startswith("OK: "), ok.stderr
    world = tmp_path / "w"
    shutil.copytree(tiny_world, world)
    f = table_files(world, "impressions")[0]
    t = pq.read_table(f)
    labels = t["label"].to_pylist()
    labels[3] = 2.0
    t = t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels, pa.float32()))
    pq.write_table(t, f)
    bad = _mmctr("validate", str(world), "--quiet")
    assert bad.returncode == 1
    assert f"{f.relative_to(world)}: column 'label', row 3: value 2.0" in bad.stderr


def test_world_command_writes_a_valid_world(tmp_path: Path) -> None:
    out = _mmctr("world", "--preset", "tiny", "--seed", "3", "--out", str(tmp_path / "w"), "--quiet")
    assert out.returncode == 0, out.stderr
    assert "impressions" in out.stdout and (tmp_path / "w" / "manifest.json").is_file()
    assert _mmctr("validate", str(tmp_path / "w"), "--quiet").returncode == 0
