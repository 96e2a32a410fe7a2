"""The day split of a dataset: which days training reads, which it is tested on, and MAKE stage 1's.

Days of a world (``Manifest.first_day`` .. ``last_day``), for a last training
day ``until`` (default: the day before the test day, ``Manifest.test_day``):

* the ID model trains on ``first_day .. until`` and is tested on ``until + 1``
  (none when ``until`` is the world's last day: a production model for tomorrow);
* MAKE's stage 1 fits on ``first_day .. until - 1`` and is validated on
  ``until``.

Torch-free: ``mmctr summary`` counts the same training days as ``mmctr train``.

Example::

    >>> from recsys.data.schema import Manifest
    >>> m = Manifest(format_version=1, preset="doc", seed=0, counts={}, id_ranges={},
    ...     first_day=30, last_day=43, max_history_len=5, image_size=8)
    >>> split = split_days(m)
    >>> (split.train.start, split.train.stop - 1), split.test, (split.make_fit.stop - 1), split.validation
    ((30, 42), 43, 41, 42)
    >>> split = split_days(m, until=40)
    >>> (split.train.stop - 1), split.test, split.validation, split_days(m, until=43).test is None
    (40, 41, 40, True)
"""

from __future__ import annotations

from dataclasses import dataclass

from recsys.data.schema import Manifest


@dataclass(frozen=True)
class DaySplit:
    """Which days each stage reads."""

    train: range  # the ID model's training days
    test: int | None  # the evaluation day; None when training reaches the world's last day
    make_fit: range  # MAKE stage 1's training days (empty with one training day: MAKE refuses)
    validation: int  # MAKE stage 1's early-stopping day


def split_days(manifest: Manifest, until: int | None = None) -> DaySplit:
    """The day split of a world for last training day ``until`` (module docstring).

    Args:
        manifest (Manifest): the world's manifest.
        until (int | None): the ID model's last training day; ``None`` = the
            day before the dataset's test day (``Manifest.test_day``, by default its last).
    """
    first, last = manifest.first_day, manifest.last_day
    if until is None:
        until = manifest.test_day - 1
    if not first <= until <= last:
        raise ValueError(f"last training day {until} must lie in [{first}, {last}] for this world (days {first}..{last})")
    return DaySplit(
        train=range(first, until + 1),
        test=until + 1 if until < last else None,
        make_fit=range(first, until),
        validation=until,
    )
