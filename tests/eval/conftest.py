"""Fixtures of the evaluation tests: the two tiny runs (tests/conftest.py) evaluated once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.eval.evaluate import EvalJob, run_evaluate

RESAMPLES = 200


@pytest.fixture(scope="session")
def eval_report(tiny_world: Path, eval_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The report of both runs on the test day (one process) and its folder."""
    out = tmp_path_factory.mktemp("eval") / "report"
    report = run_evaluate(EvalJob(world=tiny_world, models=tuple(eval_runs.values()), out=out,
                                  resamples=RESAMPLES, quiet=True))
    assert report is not None
    return report, out
