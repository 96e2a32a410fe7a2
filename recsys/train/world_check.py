"""Whether a run may be scored or retrained on a world: its schema, and the rows of the days it trained on.

A ranking log grows a day at a time: ``last_day``, ``test_day``, the row
counts and the identity tables' ID ranges change in ``manifest.json`` as
each day lands. A run trained before then is still a run of that log. So a
run belongs to a world when

* the world's schema is the run's (``recsys.data.schema.schema_sha``: the
  manifest without its growing fields; the feature spec above all), and
* the days the run trained on still hold the impressions it trained on
  (``rows_in_days`` against the reader's row-group plan, ``recsys.data.row_groups``): a world
  rewritten under the same schema, or another log with the same columns,
  is refused.

Runs logged before ``world_schema_sha`` existed are held to the old rule:
the manifest's bytes unchanged (``manifest_sha``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys.data.row_groups import select_row_groups
from recsys.data.schema import MANIFEST, Manifest, manifest_sha, schema_sha, table_files
from recsys.train.run_folder import TrainLog


def check_run_world(log: TrainLog, world: Path, where: str) -> None:
    """Refuses a world the run of ``log`` does not belong to (module docstring).

    Args:
        log (TrainLog): the run's ``train_log.json``.
        world (Path): the dataset directory it is about to be scored or retrained on.
        where (str): the run's log file, for the messages (``"run a: r/train_log.json"``).

    Raises:
        ValueError: naming ``where`` and what differs: the schema's hash, a trained day outside the
            world's days, or the trained days' impressions (the run's count and the world's now).
    """
    path = Path(world) / MANIFEST
    if log.world_schema_sha is None:  # an older run: the manifest's bytes
        want = manifest_sha(world)
        if log.world_manifest_sha != want:
            raise ValueError(f"{where}: field 'world_manifest_sha' is {log.world_manifest_sha}, but {path} hashes to "
                             f"{want}: the run was trained on another world ({log.world})")
        return
    want = schema_sha(world)
    if log.world_schema_sha != want:
        raise ValueError(f"{where}: field 'world_schema_sha' is {log.world_schema_sha}, but the schema of {path} (the "
                         f"manifest but for its growing fields) hashes to {want}: the run was trained on a world of "
                         f"another schema ({log.world}); compare the two manifests' features, first_day and seed")
    if not log.days or log.rows_in_days is None:
        return  # nothing trained yet: nothing to compare
    manifest = Manifest.read(world)
    outside = [d for d in log.days if not manifest.first_day <= d <= manifest.last_day]
    if outside:
        raise ValueError(f"{where}: the run trained on day(s) {outside}, outside {path}'s days "
                         f"{manifest.first_day}..{manifest.last_day}: the run was trained on another world ({log.world})")
    days = np.unique(np.asarray(log.days, dtype=np.int64))  # one pass over the footers for every trained day
    now = sum(g.rows for g in select_row_groups(table_files(Path(world), "impressions"), manifest.features.day, days))
    if now != log.rows_in_days:
        raise ValueError(f"{where}: the run trained on {log.rows_in_days} impressions of days {log.days[0]}.."
                         f"{log.days[-1]} (field 'rows_in_days'), but {Path(world) / 'impressions'} now holds {now} on "
                         f"those days: the days it trained on changed, or it was trained on another world ({log.world})")
