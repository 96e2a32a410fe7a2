"""The serving TorchX components: they validate, and the export component runs under ``local_cwd``.

(The embedder component runs against a real Triton server in ``tests/serving/test_embedder.py``.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from torchx.specs import AppDef
from torchx.specs.file_linter import validate

from serving import constants as k
from serving.export import EXPORT_MANIFEST, read_config
from torchx_components import serving

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = REPO / "torchx_components" / "serving.py"


@pytest.mark.parametrize("name", ["export", "embed_new", "serve", "export_ranker"])
def test_components_pass_the_torchx_linter(name: str) -> None:
    assert validate(str(COMPONENTS), name) == []
    args = {"export": {"encoder": "e", "out": "o"}, "embed_new": {"feed": "f", "store": "s"}, "serve": {"repository": "r"},
            "export_ranker": {"run": "r", "out": "o", "store": "s.sqlite"}}[name]
    app = getattr(serving, name)(**args)
    assert isinstance(app, AppDef) and app.roles[0].args[:2] == ["-m", "recsys.cli"]
    from recsys.cli import build_parser

    build_parser().parse_args(app.roles[0].args[2:])  # every flag the component passes, mmctr takes


@pytest.mark.timeout(240)
def test_export_component_runs_locally(tiny_encoder_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = ["torchx", "run", "-s", "local_cwd", "torchx_components/serving.py:export", "--encoder",
           str(tiny_encoder_file), "--out", str(out), "--max_batch_size", "16"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / EXPORT_MANIFEST).is_file()
    assert read_config(out / "production" / k.ENCODER_MODEL / "config.pbtxt").max_batch_size == 16
