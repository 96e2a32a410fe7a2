"""The pipeline's last stage: its sections added to the evaluation report, the final table printed.

``summary.json`` holds what the table shows::

    preset, world (--world DIR, or null), test_day, report (path of report.html)
    vectors         how the item vectors were made, one line ("scl (fine-tuned from clip)", "clip (no search log)", ...)
    skipped         {stage: why it did not run}  (the plan's, recsys.pipeline.plan)
    variants        {name: {auc, gauc, gauc_lift, gauc_lift_ci, auc_lift, tail_lift, new_items_lift}}
    pretraining     {method: {image_recall@10, text_recall@10, purity@10}}  (SCL and its CLIP start)
    embedder        {items (created on the test day), with_vector, coverage, failed,
                     latency_p50_s, latency_p99_s (creation -> vector), served_vs_batch_max_abs}
    retrain         {run, version, parent, days, vectors}
    online          the retrained run served on Triton (``mmctr online-eval``'s report): {impressions, users,
                    requests, version, online/offline {auc, gauc, ...}, max_abs_diff, latency_p50_ms,
                    latency_p99_ms, new_items, new_items_served_vector}, or null
    stages          {name: seconds}  (each stage's own wall time; the training stages overlap)
    wall_s          the pipeline's wall time: the stages' intervals and Triton's starts merged (``wall_seconds``)
    training        how the training stages ran (``config.TrainingSlots``: nproc, parallel, threads, why)

Example::

    >>> print(format_table({"preset": "doc", "world": "/data/log", "test_day": 9, "report": "r.html",
    ...     "stages": {"validate": 2.0}, "wall_s": 2.0, "vectors": "none (no item content, no --vectors)",
    ...     "skipped": {"train_simtier": "no item vectors: no item content, no --vectors"},
    ...     "variants": {"id_only": {"auc": 0.7, "gauc": 0.69, "gauc_lift": 0.0, "gauc_lift_ci": None,
    ...     "auc_lift": 0.0, "tail_lift": 0.0, "new_items_lift": 0.0}}, "pretraining": {}, "embedder": None,
    ...     "retrain": None}))  # doctest: +NORMALIZE_WHITESPACE
    mmctr pipeline (doc) on /data/log: test day 9
    variant             AUC    GAUC  GAUC lift [95% CI]          AUC lift  tail lift  new-item lift
    id_only          0.7000  0.6900  +0.00% –                      +0.00%     +0.00%         +0.00%
    vectors: none (no item content, no --vectors)
    skipped train_simtier: no item vectors: no item content, no --vectors
    stages: 2 s of wall time (validate 2 s)
    report: r.html
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recsys.eval.report import REPORT_HTML, REPORT_JSON, fmt_ci, fmt_pct, write_report
from recsys.pipeline.config import Layout, PipelineConfig
from recsys.pipeline.plan import Plan, vectors_source
from recsys.train.make_stage import MAKE_LOG
from recsys.train.run_folder import LINEAGE_FILE, RunFolder


def _lift(model: dict, subset: str) -> float | None:
    return (model.get("vs_baseline") or {}).get(subset, {}).get("gauc_lift")


def served_vs_batch(layout: Layout, batch: Path) -> float:
    """The largest |served - batch-embedded| vector component over the items the store holds.

    Args:
        layout (Layout): the run folder (its vector store).
        batch (Path): the pre-training run whose encoder was served (its batch-embedded table).

    Raises:
        ValueError: the store holds items the table lacks, or none.
    """
    from recsys.data.vectors import load_vectors

    snap = load_vectors(layout.store)
    table = load_vectors(batch)
    ids, vectors = table.item_ids, table.vectors
    order = np.argsort(ids)
    pos = np.minimum(np.searchsorted(ids, snap.item_ids, sorter=order), len(ids) - 1)
    rows = order[pos]
    if not len(snap.item_ids) or not np.array_equal(ids[rows], snap.item_ids):
        raise ValueError(f"{layout.store}: holds items that {table.path} lacks (or none at all)")
    return float(np.abs(snap.vectors - vectors[rows]).max())


def embedder_numbers(layout: Layout, test_day: int, batch: Path) -> dict:
    """Coverage of the test day's new items and creation -> vector latency, from the store (all attempts)."""
    from recsys.data.stats import item_index, new_item_mask
    from serving.store import VectorStore

    new = item_index(layout.world)[new_item_mask(layout.world, test_day)]  # created (or first shown) on the test day
    with VectorStore(layout.store, readonly=True) as db:
        stats, covered = db.stats(), int(db.has_vector(new).sum())
    p50, p99 = np.percentile(stats.latency_s, [50, 99]) if len(stats.latency_s) else (float("nan"),) * 2
    return {"items": int(len(new)), "with_vector": covered, "coverage": covered / max(len(new), 1),
            "failed": stats.failures, "latency_p50_s": float(p50), "latency_p99_s": float(p99),
            "served_vs_batch_max_abs": served_vs_batch(layout, batch)}


def wall_seconds(stages: dict[str, dict], spans: list[dict] = ()) -> float:
    """The pipeline's wall time over its finished stages: their intervals merged, so stages run side by side count once.

    Args:
        stages (dict): ``pipeline.json``'s ``"stages"``; a done stage recorded
            without ``started_at`` (an older run's) adds its ``seconds``.
        spans (list[dict]): other timed work between stages (``"spans"``: Triton's start), merged in too.

    Example::

        >>> wall_seconds({"a": {"done": True, "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:00+00:00"},
        ...               "b": {"done": True, "started_at": "2026-01-01T00:00:30+00:00", "finished_at": "2026-01-01T00:02:00+00:00"},
        ...               "c": {"done": True, "seconds": 5.0}, "d": {"done": False, "started_at": "2026-01-01T00:03:00+00:00"}})
        125.0
        >>> wall_seconds({}, [{"what": "triton start", "started_at": "2026-01-01T00:00:00+00:00",
        ...                    "finished_at": "2026-01-01T00:00:30+00:00"}])
        30.0
    """
    from datetime import datetime

    timed, loose = [], 0.0
    for s in [*(s for s in stages.values() if s.get("done")), *spans]:
        if "started_at" in s and "finished_at" in s:
            timed.append((datetime.fromisoformat(s["started_at"]).timestamp(), datetime.fromisoformat(s["finished_at"]).timestamp()))
        else:
            loose += s.get("seconds") or 0.0
    total, end = 0.0, float("-inf")
    for start, stop in sorted(timed):
        total += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return total + loose


def make_stage1_numbers(layout: Layout, wall_s: float) -> dict | None:
    """MAKE stage 1 of the pipeline's CTR runs (``make.json`` of the first run that trained it), or ``None``.

    Args:
        wall_s (float): the pipeline's wall time so far (:func:`wall_seconds`).

    Returns:
        dict | None: epochs run, their training seconds, their share of the
        pipeline's wall time in [0, 1], the best epoch and the stop reason.
    """
    for variant in ("make", "simtier_make"):
        file = RunFolder(layout.ctr(variant)).make_stage1 / MAKE_LOG
        if file.is_file():
            log = json.loads(file.read_text())
            seconds = sum(e.get("seconds", 0.0) for e in log["epochs"])
            return {"run": variant, "epochs": len(log["epochs"]), "seconds": seconds,
                    "share": seconds / wall_s if wall_s > 0 else None, "best_epoch": log["best_epoch"],
                    "stopped": log["stopped"]}
    return None


def collect(cfg: PipelineConfig, layout: Layout, plan: Plan) -> dict:
    """The numbers of the final table from the stages' outputs."""
    report = json.loads((layout.report / REPORT_JSON).read_text())
    variants = {}
    for name, m in report["models"].items():
        a = m["metrics"]["all"]
        variants[name] = {"auc": a["auc"], "gauc": a["gauc"], "gauc_lift": _lift(m, "all"),
                          "gauc_lift_ci": (m.get("vs_baseline") or {}).get("all", {}).get("gauc_lift_ci"),
                          "auc_lift": (m.get("vs_baseline") or {}).get("all", {}).get("auc_lift"),
                          "tail_lift": _lift(m, "tail"), "new_items_lift": _lift(m, "new_items")}
    pre = json.loads(layout.pretrain_eval.read_text()) if layout.pretrain_eval.exists() else {}
    pretraining = {k: {c: v[c] for c in ("image_recall@10", "text_recall@10", "purity@10") if c in v} for k, v in pre.items()}
    served = plan.runs("embed") and layout.store.exists()
    embedder = embedder_numbers(layout, report["day"], vectors_source(plan, layout)) if served else None
    retrain = None
    lineages = sorted(layout.retrain.glob(f"*/{LINEAGE_FILE}")) if layout.retrain.exists() else []
    if lineages:
        lin = RunFolder.at(lineages[-1]).read_lineage()
        retrain = {"run": lin.run, "version": lin.version, "parent": lin.parent, "days": list(lin.all_days),
                   "trained_day": list(lin.days), "vectors": lin.vectors,
                   "new_item_ids": None if lin.retrain is None else lin.retrain.new_item_ids}
    online = json.loads(layout.online.read_text()) if layout.online.exists() else None
    state = json.loads(layout.state.read_text())
    stages = {k: v.get("seconds") for k, v in state["stages"].items() if v.get("done")}
    wall_s = wall_seconds(state["stages"], state.get("spans", []))
    return {"preset": cfg.world_preset, "world": None if layout.dataset is None else str(layout.dataset),
            "test_day": report["day"], "report": str(layout.report / REPORT_HTML), "vectors": plan.vectors,
            "skipped": plan.skipped(), "variants": variants, "pretraining": pretraining, "embedder": embedder,
            "retrain": retrain, "online": online, "stages": stages, "wall_s": wall_s, "training": state.get("training"),
            "make_stage1": make_stage1_numbers(layout, wall_s)}


def sections(summary: dict) -> list[dict]:
    """The pipeline's tables for the HTML report."""
    out = []
    if summary["pretraining"]:
        out.append({"title": "Pre-training: SCL (fine-tuned from the CLIP run) vs CLIP-style",
                    "header": ["method", "image recall@10", "text recall@10", "purity@10"],
                    "rows": [[k, *(f"{v.get(c, float('nan')):.4f}" for c in ("image_recall@10", "text_recall@10", "purity@10"))]
                             for k, v in summary["pretraining"].items()],
                    "note": "Held-out test-day searches: the purchased item retrieved among all items by the query image or text."})
    e = summary["embedder"]
    if e is not None:
        out.append({"title": "Serving: the test day's new items embedded on Triton over gRPC",
                    "header": ["new items", "with a vector", "coverage", "failed", "creation→vector p50", "p99",
                               "max |served − batch|"],
                    "rows": [[e["items"], e["with_vector"], f"{e['coverage']:.2%}", e["failed"], f"{e['latency_p50_s'] * 1e3:.0f} ms",
                              f"{e['latency_p99_s'] * 1e3:.0f} ms", f"{e['served_vs_batch_max_abs']:.2e}"]],
                    "note": "The evaluation reads these vectors from the store for the items created on the test day."})
    r = summary["retrain"]
    if r is not None:
        out.append({"title": "Production retrain (tomorrow's model)",
                    "header": ["run", "version", "parent", "trained on day", "days behind the weights", "vectors"],
                    "rows": [[r["run"], r["version"], r["parent"], r["trained_day"], f"{r['days'][0]}..{r['days'][-1]}",
                              f"{(r['vectors'] or {}).get('path')} + store v{(r['vectors'] or {}).get('store_version')}"]]})
    o = summary.get("online")
    if o is not None:
        out.append({"title": "Online ranking: the retrained model served on Triton",
                    "header": ["impressions", "users", "requests", "version", "online AUC", "offline AUC", "online GAUC",
                               "offline GAUC", "max |online − offline|", "latency p50", "p99", "new items with a served vector"],
                    "rows": [[o["impressions"], o["users"], o["requests"], o["version"], f"{o['online']['auc']:.4f}",
                              f"{o['offline']['auc']:.4f}", f"{o['online']['gauc']:.4f}", f"{o['offline']['gauc']:.4f}",
                              f"{o['max_abs_diff']:.1e}", f"{o['latency_p50_ms']:.1f} ms", f"{o['latency_p99_ms']:.1f} ms",
                              f"{o['new_items_served_vector']} of {o['new_items']}"]],
                    "note": "Every impression of the sampled test-day users, one request per user and history, ranked "
                            "over gRPC; offline: the same rows scored as `mmctr evaluate` scores them."})
    out.append({"title": "Pipeline stages", "header": ["stage", "seconds"],
                "rows": [[k, f"{v:.0f}"] for k, v in summary["stages"].items()]
                + [[k, f"skipped: {why}"] for k, why in summary.get("skipped", {}).items()],
                "note": f"Item vectors: {summary.get('vectors')}."})
    return out


def format_table(summary: dict) -> str:
    """The final table printed by ``mmctr pipeline``."""
    world = f" on {summary['world']}" if summary.get("world") else ""
    lines = [f"mmctr pipeline ({summary['preset']}){world}: test day {summary['test_day']}",
             f"{'variant':<14}{'AUC':>9}{'GAUC':>8}  {'GAUC lift [95% CI]':<26}{'AUC lift':>10}{'tail lift':>11}{'new-item lift':>15}"]
    for name, v in summary["variants"].items():
        lift = f"{fmt_pct(v['gauc_lift'])} {fmt_ci(v['gauc_lift_ci'], pct=True)}"
        lines.append(f"{name:<14}{v['auc']:>9.4f}{v['gauc']:>8.4f}  {lift:<26}{fmt_pct(v['auc_lift']):>10}"
                     f"{fmt_pct(v['tail_lift']):>11}{fmt_pct(v['new_items_lift']):>15}")
    if summary.get("vectors"):
        lines.append(f"vectors: {summary['vectors']}")
    for method, p in summary["pretraining"].items():
        lines.append(f"pre-training {method}: image recall@10 {p.get('image_recall@10', float('nan')):.4f}, "
                     f"text recall@10 {p.get('text_recall@10', float('nan')):.4f}, purity@10 {p.get('purity@10', float('nan')):.3f}")
    e = summary["embedder"]
    if e is not None:
        lines.append(f"embedder: {e['items']} new items, coverage {e['coverage']:.2%}, creation->vector p50 "
                     f"{e['latency_p50_s'] * 1e3:.0f} ms, p99 {e['latency_p99_s'] * 1e3:.0f} ms, "
                     f"served vs batch max |diff| {e['served_vs_batch_max_abs']:.1e}")
    r = summary["retrain"]
    if r is not None:
        lines.append(f"retrain: version {r['version']} of {r['parent']} trained on day {r['trained_day'][0]} -> {r['run']}")
    o = summary.get("online")
    if o is not None:
        lines.append(f"online: {o['impressions']} test-day impressions of {o['users']} users ranked on Triton "
                     f"(version {o['version']}): GAUC {o['online']['gauc']:.4f} online vs {o['offline']['gauc']:.4f} "
                     f"offline, max |diff| {o['max_abs_diff']:.1e}, p99 {o['latency_p99_ms']:.0f} ms; "
                     f"{o['new_items_served_vector']} new items scored with a served vector")
    m = summary.get("make_stage1")
    if m is not None:
        share = "" if m["share"] is None else f", {m['share']:.0%} of the stages' wall time"
        lines.append(f"MAKE stage 1: {m['epochs']} epoch(s), {m['seconds']:.0f} s of training{share}; stopped: {m['stopped']}")
    lines += [f"skipped {name}: {why}" for name, why in summary.get("skipped", {}).items()]
    wall = summary.get("wall_s", sum(v or 0 for v in summary["stages"].values()))
    lines.append(f"stages: {wall:.0f} s of wall time (" + ", ".join(f"{k} {v:.0f} s" for k, v in summary["stages"].items()) + ")")
    lines.append(f"report: {summary['report']}")
    return "\n".join(lines)


def merged_sections(existing: list[dict], ours: list[dict]) -> list[dict]:
    """The report's sections with the pipeline's added: evaluate's own kept, ours replaced by title (a rerun adds none twice).

    Example::

        >>> old = [{"title": "In-sample on day 9: trained on it by a"}, {"title": "Online ranking"}]
        >>> [s["title"] for s in merged_sections(old, [{"title": "Online ranking"}, {"title": "Production retrain"}])]
        ['In-sample on day 9: trained on it by a', 'Online ranking', 'Production retrain']
    """
    titles = {s["title"] for s in ours}
    return [s for s in existing if s["title"] not in titles] + ours


def finish_report(cfg: PipelineConfig, layout: Layout, plan: Plan) -> dict:
    """Adds the pipeline's sections to the report, writes ``summary.json`` and prints the table."""
    summary = collect(cfg, layout, plan)
    report = json.loads((layout.report / REPORT_JSON).read_text())
    report["sections"] = merged_sections(report.get("sections") or [], sections(summary))
    write_report(report, layout.report)
    layout.summary.write_text(json.dumps(summary, indent=2))
    print(format_table(summary), flush=True)
    return summary
