"""``mmctr evaluate``: finished runs scored on one day and compared with a baseline, as JSON and HTML.

The job, on every rank (``torchrun``/TorchX) or in one process:

1. Checks the day lies in the world and holds impressions
   (``recsys.data.stats.check_day_has_impressions``, from the Parquet
   metadata), and every run (``runs.load_run``): finished checkpoint, same
   world, inputs present; reads the days each run's weights were trained on
   (:func:`trained_days`).
2. Scores every impression of the day with each run (``score.score_day``),
   all ranks together.
3. On rank 0: AUC, GAUC, NE, calibration of every run on all impressions,
   per item bucket and on new items (``metrics.evaluation_report``); GAUC
   differences to the baseline with user-bootstrap intervals per subset
   (``bootstrap``); the true click probability's metrics where the world
   has ``truth/`` (``truth``); SimTier histograms (``tiers``); then
   ``OUT/report.json`` and ``OUT/report.html`` (``report``).

In-sample days. ``day_in_training`` in ``report.json`` is true when any
evaluated run trained on the scored day, whatever the manifest's
``test_day`` (``mmctr train --train-until`` past it, or ``mmctr retrain
--day`` on it); ``models_trained_on_day`` names those runs, each model's
entry lists its ``trained_days``, and ``report.html`` adds a section (after
the plots; the in-sample warning at the top is ``report``'s) naming them,
with each run's days.

``OUT`` defaults to ``eval-day-D`` next to the first run folder (the
runs' parent folder).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from recsys.data.schema import Manifest, manifest_sha
from recsys.data.stats import check_day_has_impressions, item_index, item_positions, new_item_mask, train_item_counts
from recsys.distributed import DistContext, init_distributed
from recsys.eval.bootstrap import GaucComparison, compare_gauc, user_auc_table
from recsys.eval.report import SCHEMA, write_report
from recsys.eval.metrics import BUCKETS, evaluation_report, item_buckets
from recsys.eval.runs import RunSpec, choose_baseline, load_run, run_names
from recsys.eval.job import EvalJob
from recsys.eval.score import RunScores, ScoredDay, score_day
from recsys.eval.truth import truth_report
from recsys.train.run_folder import RunFolder

CONFIDENCE = 0.95  # bootstrap interval coverage


def check_day(manifest: Manifest, day: int | None, world: Path) -> int:
    """The day to score: ``day``, or the manifest's ``test_day``; refuses a day outside the world.

    Example::

        >>> m = Manifest(format_version=1, preset="doc", seed=0, counts={}, id_ranges={},
        ...     first_day=10, last_day=14, max_history_len=5, image_size=8)
        >>> check_day(m, None, Path("w")), check_day(m, 12, Path("w"))
        (14, 12)
        >>> check_day(replace(m, test_day=13), None, Path("w"))
        13
        >>> check_day(m, 15, Path("w"))
        Traceback (most recent call last):
            ...
        ValueError: --day 15 is outside the world w/manifest.json: its days are 10..14 (first_day..last_day)
    """
    if day is None:
        return manifest.test_day
    if not manifest.first_day <= day <= manifest.last_day:
        raise ValueError(f"--day {day} is outside the world {Path(world) / 'manifest.json'}: its days are "
                         f"{manifest.first_day}..{manifest.last_day} (first_day..last_day)")
    return day


def trained_days(run: Path) -> tuple[int, ...]:
    """The days behind a finished run's weights, sorted: what it trained on, its parents' days included.

    A run's ``lineage.json`` ``all_days`` (a retrain's hold its parent's days
    plus its own), else, for a run folder without a lineage, its
    ``train_log.json`` ``days``, else (a log without ``days``) every day of
    its ``metrics.json`` ``train_days`` (first, last).

    Args:
        run (Path): the run folder (or one of its JSON files).

    Returns:
        tuple[int, ...]: the days, ascending; empty when no file records any.

    Raises:
        FileNotFoundError: the folder has no ``train_log.json`` (nor a lineage).
        ValueError: a malformed ``lineage.json`` or ``train_log.json``, naming the file and field.
    """
    folder = RunFolder.at(run)
    if folder.lineage_file.is_file():
        return tuple(sorted(folder.read_lineage().all_days))
    days = tuple(sorted(folder.read_train_log().days))
    if not days and folder.metrics_file.is_file():  # a log older than its "days" field: the job's first..last day
        first, last = folder.read_metrics().train_days
        days = tuple(range(first, last + 1))
    return days


def run_evaluate(job: EvalJob) -> dict | None:
    """Runs the job on this process's rank; returns the report on rank 0, ``None`` on the others.

    Makes a one-rank process group when run plainly, and destroys a group it made.

    Raises:
        ValueError: no runs, ``resamples`` or ``batch_size`` below 1; a day outside the world
            (:func:`check_day`) or one without impressions (``check_day_has_impressions``), before
            any run is loaded or scored; a run refused (``runs.RunError``).
        FileNotFoundError: the world has no ``manifest.json``.
    """
    if job.resamples < 1 or job.batch_size < 1 or not job.models:
        raise ValueError(f"need at least one run, resamples >= 1 and batch_size >= 1; got {len(job.models)} run(s), "
                         f"{job.resamples}, {job.batch_size}")
    manifest = Manifest.read(job.world)
    day = check_day(manifest, job.day, job.world)
    check_day_has_impressions(Path(job.world), day, manifest, "evaluate")
    runs = [load_run(p, n, job.world) for p, n in zip(job.models, run_names(list(job.models)))]
    days = [trained_days(r.path) for r in runs]
    if job.store is not None:  # today's vectors: the runs' tables plus the store's new items
        runs = [replace(r, store=Path(job.store)) if r.vectors is not None else r for r in runs]
    baseline = choose_baseline(runs, job.baseline)
    created = not dist.is_initialized()
    ctx = init_distributed(always=True)
    try:
        scored = score_day(runs, job.world, day, ctx, job.batch_size, job.quiet)
        return _report(job, manifest, runs, days, baseline, scored, ctx) if ctx.is_main else None
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _report(job: EvalJob, manifest: Manifest, runs: list[RunSpec], days: list[tuple[int, ...]], baseline: int,
            scored: ScoredDay, ctx: DistContext) -> dict:
    day, world = scored.day, Path(job.world)
    in_sample = [run.name for run, trained in zip(runs, days) if day in trained]
    buckets = item_buckets(train_item_counts(world, range(manifest.first_day, day), manifest))
    new_items = new_item_mask(world, day, manifest)
    labels, users = torch.from_numpy(scored.labels), torch.from_numpy(scored.user_ids)
    index = item_index(world, manifest)
    positions = [item_positions(index, s.item_ids, f"{world} day {day}") for s in scored.runs]
    metrics = [evaluation_report(torch.from_numpy(s.predictions), labels, users, torch.from_numpy(at),
                                 buckets, new_items) for s, at in zip(scored.runs, positions)]
    base_items = positions[baseline]  # one subset split for the paired bootstrap (runs differ only if capped tables hash IDs)
    masks = {"all": np.ones(len(base_items), dtype=bool)}
    masks.update({name: buckets[base_items] == b for b, name in enumerate(BUCKETS)})
    masks["new_items"] = new_items[base_items]
    comparisons = {
        name: compare_gauc(
            user_auc_table([s.predictions[mask] for s in scored.runs], scored.labels[mask], scored.user_ids[mask]),
            baseline, job.resamples, job.seed, CONFIDENCE)
        for name, mask in masks.items()
    }
    truth = truth_report(world, day, buckets, new_items, index)
    models = {run.name: {**_model_entry(m, run, s, metrics[m], metrics[baseline], comparisons, truth),
                         "trained_days": list(trained)}
              for m, (run, s, trained) in enumerate(zip(runs, scored.runs, days))}
    report = {
        "schema": SCHEMA, "world": str(world.resolve()), "world_manifest_sha": manifest_sha(world),
        "day": day, "test_day": manifest.test_day, "day_in_training": bool(in_sample),
        "models_trained_on_day": in_sample,
        "impressions": len(scored.labels), "clicks": float(scored.labels.sum()),
        "users": len(np.unique(scored.user_ids)),
        "subsets": {name: int(mask.sum()) for name, mask in masks.items()},
        "baseline": runs[baseline].name,
        "bootstrap": {"resamples": job.resamples, "seed": job.seed, "confidence": CONFIDENCE,
                      "unit": "user", "interval": "percentile"},
        "truth": truth, "models": models, "world_size": ctx.world_size,
    }
    if in_sample:  # the HTML names them (report.py's warning says only that some run trained on the day)
        report["sections"] = [_in_sample_section(day, runs, days, in_sample)]
    json_path, html_path = write_report(report, job.out_dir(day))
    for name, m in models.items():  # the result lines, also with --quiet (which only hides progress bars)
        a, v = m["metrics"]["all"], m["vs_baseline"]["all"]
        lo, hi = v["gauc_lift_ci"]
        print(f"{name}: day {day} AUC {a['auc']:.4f} GAUC {a['gauc']:.4f} NE {a['ne']:.4f} "
              f"GAUC lift {100 * v['gauc_lift']:+.2f}% [{100 * lo:+.2f}%, {100 * hi:+.2f}%]")
    clicks = int(scored.labels.sum())
    if len(scored.labels) and clicks in (0, len(scored.labels)):  # the NaNs printed above, said why
        print(f"day {day} holds {len(scored.labels)} impressions, all {'clicks' if clicks else 'non-clicks'}: AUC and "
              "GAUC need both and are undefined (NaN); NE is undefined without both labels too")
    print(f"wrote {json_path} and {html_path}")
    return report


def _in_sample_section(day: int, runs: list[RunSpec], days: list[tuple[int, ...]], in_sample: list[str]) -> dict:
    """The report section (``report`` module docstring) naming the runs that trained on ``day``."""
    return {"title": f"In-sample on day {day}: trained on it by {', '.join(in_sample)}",
            "header": ["model", "days behind the weights", f"trained on day {day}"],
            "rows": [[run.name, _day_ranges(trained) or "unknown", "yes (in-sample)" if day in trained else "no"]
                     for run, trained in zip(runs, days)],
            "note": f"Numbers of {', '.join(in_sample)} on day {day} are in-sample: those runs trained on it "
                    "(lineage.json all_days, or train_log.json days). Compare held-out days only."}


def _day_ranges(days: tuple[int, ...]) -> str:
    """Sorted days as runs, e.g. ``(0, 1, 2, 5)`` -> ``"0..2, 5"``."""
    spans: list[list[int]] = []
    for d in days:
        if spans and d == spans[-1][1] + 1:
            spans[-1][1] = d
        else:
            spans.append([d, d])
    return ", ".join(str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in spans)


def _model_entry(m: int, run: RunSpec, scores: RunScores, own: dict, base: dict, comparisons: dict[str, GaucComparison],
                 truth: dict | None) -> dict:
    """One model's part of the report (``report`` module docstring): metrics, lifts, truth gap, tiers, curve."""
    vs = {name: {"gauc_diff": c.diff[m], "gauc_diff_ci": c.diff_ci[m], "gauc_lift": c.lift[m],
                 "gauc_lift_ci": c.lift_ci[m], "users": c.users,
                 "auc_diff": own[name]["auc"] - base[name]["auc"],
                 "auc_lift": own[name]["auc"] / base[name]["auc"] - 1}
          for name, c in comparisons.items()}
    tiers = None
    if scores.tiers is not None:
        sim_clicked, sim_not = scores.tiers.mean_similarity()
        tiers = {**asdict(scores.tiers), "n_tiers": len(scores.tiers.clicked),
                 "mean_similarity_clicked": sim_clicked, "mean_similarity_not_clicked": sim_not}
    gap = None if truth is None else {name: {k: own[name][k] - truth[name][k] for k in ("auc", "gauc")} for name in own}
    return {"run": str(run.path), "variant": run.variant, "checkpoint": str(run.checkpoint),
            "step": run.progress.step if run.progress else None, "metrics": own, "vs_baseline": vs,
            "truth_gap": gap, "tiers": tiers, "curve": list(run.curve)}
