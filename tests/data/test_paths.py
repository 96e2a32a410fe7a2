"""``artefact_path``: a run's artefact named by the file or by the run folder holding it."""

from __future__ import annotations

from pathlib import Path

from recsys.data.paths import artefact_path


def test_a_folder_names_its_file_and_a_file_names_itself(tmp_path: Path) -> None:
    (tmp_path / "make.pt").touch()
    assert artefact_path(tmp_path, "make.pt") == tmp_path / "make.pt"
    assert artefact_path(tmp_path / "make.pt", "make.pt") == tmp_path / "make.pt"
    assert artefact_path(str(tmp_path / "renamed.pt"), "make.pt") == tmp_path / "renamed.pt"  # taken as named


def test_nothing_is_checked_or_created(tmp_path: Path) -> None:
    assert artefact_path(tmp_path, "encoder.pt") == tmp_path / "encoder.pt"  # a folder without it
    assert artefact_path(tmp_path / "missing", "encoder.pt") == tmp_path / "missing"
    assert list(tmp_path.iterdir()) == []
