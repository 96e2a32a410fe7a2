"""`mmctr evaluate` through its TorchX component on 2 processes: the same report as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.eval.report import REPORT_HTML, REPORT_JSON
from torchx_components.evaluate import evaluate

REPO = Path(__file__).resolve().parents[2]


def test_component_validates() -> None:
    from torchx.specs.file_linter import validate

    assert validate(str(REPO / "torchx_components" / "evaluate.py"), "evaluate") == []
    app = evaluate(world="w", models=["a", "b"], nproc=2)
    assert app.roles[0].args[-1].endswith("recsys.cli evaluate --world w --models a b --bootstrap 1000 --quiet")


def test_torchx_two_processes_match_one(tiny_world: Path, eval_runs: dict[str, Path], eval_report: tuple[dict, Path],
                                        tmp_path: Path) -> None:
    one, _ = eval_report
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [str(Path(sys.executable).parent / "torchx"), "run", "-s", "local_cwd", "torchx_components/evaluate.py:evaluate",
           "--world", str(tiny_world), "--models", ",".join(str(p) for p in eval_runs.values()),
           "--out", str(out), "--bootstrap", str(one["bootstrap"]["resamples"]), "--nproc", "2"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    two = json.loads((out / REPORT_JSON).read_text())
    assert (out / REPORT_HTML).is_file() and two["world_size"] == 2 and one["world_size"] == 1
    assert two["impressions"] == one["impressions"] and two["baseline"] == one["baseline"]
    for name, model in one["models"].items():
        for subset, values in model["metrics"].items():
            for key, value in values.items():
                assert two["models"][name]["metrics"][subset][key] == pytest.approx(value, abs=1e-6, nan_ok=True)
        for subset, v in model["vs_baseline"].items():  # same per-user AUCs, same draws: same intervals
            assert two["models"][name]["vs_baseline"][subset]["gauc_lift_ci"] == pytest.approx(list(v["gauc_lift_ci"]), abs=1e-6)
