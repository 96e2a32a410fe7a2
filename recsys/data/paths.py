"""Paths as a user gives them: a run's artefact named by the file or by the run folder holding it.

Every argument that names one file of a run (``encoder.pt``,
``item_vectors.parquet``, ``make.pt``, a checkpoint) takes either form, and
resolves it with :func:`artefact_path` before opening it.

Example::

    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> (run / "encoder.pt").touch()
    >>> artefact_path(run, "encoder.pt") == run / "encoder.pt" == artefact_path(run / "encoder.pt", "encoder.pt")
    True
    >>> artefact_path(run / "other.pt", "encoder.pt").name  # a file (or nothing) is taken as named
    'other.pt'
"""

from __future__ import annotations

from pathlib import Path


def artefact_path(path: Path, filename: str) -> Path:
    """The file a user meant by ``path``: ``path / filename`` for a folder, else ``path`` itself.

    Only resolves; whether the file exists is the caller's check, so that its
    ``FileNotFoundError`` can say what the file is and which command writes it.

    Args:
        path (Path): the artefact's file, or the run folder that holds it under ``filename``.
        filename (str): the artefact's name in a run folder, e.g. ``"encoder.pt"``.

    Returns:
        Path: the file to open (it may not exist).
    """
    path = Path(path)
    return path / filename if path.is_dir() else path
