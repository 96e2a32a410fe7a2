"""Lineage of a trained model: which model it came from, and what data and vectors made it.

Every run folder of ``mmctr train`` and ``mmctr retrain`` holds ``lineage.json``::

    version            # 1 for a model trained from scratch; parent's version + 1 for a retrain
    run                # this run folder
    parent             # the warm-start run folder, or null
    parent_version     # its version, or null
    variant            # the model variant
    days               # the days this run trained on
    all_days           # the days behind the weights: the parent's all_days plus days
    world              # the dataset directory
    world_manifest_sha # first 16 hex digits of the SHA-256 of its manifest.json
    vectors            # the item vectors loaded into the frozen table (path, method, hashes or store version)
    make               # where MAKE's stage-1 weights came from, or null
    created_at         # UTC, ISO 8601

Example::

    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> log = {"variant": "id_only", "world_manifest_sha": "ab", "vectors": None, "make_from": None}
    >>> write_lineage(run, "w", (41,), None, log)["version"]
    1
    >>> child = write_lineage(run / "next", "w", (42,), read_lineage(run), log)
    >>> child["version"], child["all_days"], child["parent"] == str(run)
    (2, [41, 42], True)
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from pathlib import Path

LINEAGE_FILE = "lineage.json"


def read_lineage(run: Path) -> dict:
    """The lineage of a run folder.

    Raises:
        FileNotFoundError: the folder holds no ``lineage.json`` (not a finished run).
    """
    file = Path(run) / LINEAGE_FILE
    if not file.exists():
        raise FileNotFoundError(f"{file}: no lineage; {run} is not a finished `mmctr train`/`retrain` run")
    return json.loads(file.read_text())


def write_lineage(
    out: Path, world: str | Path, days: Iterable[int], parent: dict | None, log: dict, extra: dict | None = None
) -> dict:
    """Writes ``out/lineage.json`` from the run's training log and its parent's lineage (plus ``extra``); returns it."""
    days = [int(d) for d in days]
    lineage = {
        "version": 1 if parent is None else int(parent["version"]) + 1,
        "run": str(out),
        "parent": None if parent is None else parent["run"],
        "parent_version": None if parent is None else int(parent["version"]),
        "variant": log["variant"],
        "days": days,
        "all_days": sorted(set(days) | set(parent["all_days"] if parent else [])),
        "world": str(world),
        "world_manifest_sha": log["world_manifest_sha"],
        "vectors": log["vectors"],
        "make": log["make_from"],
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    tmp = Path(out) / f".{LINEAGE_FILE}.tmp"
    tmp.write_text(json.dumps(lineage, indent=2))
    tmp.replace(Path(out) / LINEAGE_FILE)
    return lineage
