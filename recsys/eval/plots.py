"""The evaluation report's plots, drawn with matplotlib from the ``report.json`` dictionary alone.

Each function takes the report (``recsys.eval.report``) and returns a
matplotlib ``Figure`` (the object API: no pyplot state, no display), or
``None`` when the report has nothing to draw for it. :func:`figures`
renders all of them to PNG, base64-encoded for ``data:`` URIs, so the HTML
report is one self-contained file.

Example::

    >>> report = {"baseline": "a", "subsets": ["all"], "models": {
    ...     "a": {"vs_baseline": {"all": {"gauc_lift": 0.0, "gauc_lift_ci": [0.0, 0.0]}}, "curve": [], "tiers": None},
    ...     "b": {"vs_baseline": {"all": {"gauc_lift": 0.02, "gauc_lift_ci": [0.01, 0.03]}}, "curve": [], "tiers": None}}}
    >>> [f.title for f in figures(report)], figures(report)[0].png_base64[:8]
    (['GAUC lift over the baseline'], 'iVBORw0K')
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
DPI = 100


@dataclass(frozen=True)
class Plot:
    """One rendered figure of the report."""

    key: str  # stable id, used as the HTML element id
    title: str  # heading above it
    caption: str  # one sentence under it
    png_base64: str  # the PNG, base64


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _lift_rows(report: dict, subset: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names of the non-baseline models, their GAUC lift (%) on ``subset`` and the interval's half-widths (2, K)."""
    names = [n for n in report["models"] if n != report["baseline"]]
    rows = [report["models"][n]["vs_baseline"][subset] for n in names]
    lift = np.array([np.nan if r["gauc_lift"] is None else 100 * r["gauc_lift"] for r in rows], dtype=float)
    ci = np.array([[np.nan if v is None else 100 * v for v in (r["gauc_lift_ci"] or [None, None])] for r in rows],
                  dtype=float).reshape(-1, 2)
    err = np.abs(np.stack([lift - ci[:, 0], ci[:, 1] - lift])) if len(names) else np.zeros((2, 0))
    return names, lift, np.nan_to_num(err)


def lift_figure(report: dict) -> Figure | None:
    """GAUC lift (%) of each model over the baseline, with its bootstrap interval."""
    names, lift, err = _lift_rows(report, "all")
    if not names:
        return None
    fig = Figure(figsize=(7, 0.6 + 0.5 * len(names)))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(lift), xerr=err, color=[COLORS[i % len(COLORS)] for i in range(len(names))], capsize=4)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel(f"GAUC lift over {report['baseline']} (%)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def bucket_figure(report: dict) -> Figure | None:
    """GAUC lift (%) per item bucket and on new items, one bar per model, with intervals."""
    subsets = [s for s in report["subsets"] if s != "all"]
    names = [n for n in report["models"] if n != report["baseline"]]
    if not names or not subsets:
        return None
    fig = Figure(figsize=(8, 3.6))
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    x = np.arange(len(subsets))
    per_subset = [_lift_rows(report, s) for s in subsets]
    lift = np.stack([rows[1] for rows in per_subset], axis=1)  # (K models, S subsets)
    err = np.stack([rows[2] for rows in per_subset], axis=2)  # (2, K, S)
    for k, name in enumerate(names):
        ax.bar(x + (k - (len(names) - 1) / 2) * width, np.nan_to_num(lift[k]), width, yerr=err[:, k], capsize=3,
               label=name, color=COLORS[k % len(COLORS)])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, subsets)
    ax.set_ylabel(f"GAUC lift over {report['baseline']} (%)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def tier_figure(report: dict) -> Figure | None:
    """Mean SimTier tier share of clicked vs non-clicked impressions, one panel per run with vectors."""
    runs = [(n, m["tiers"]) for n, m in report["models"].items() if m.get("tiers")]
    if not runs:
        return None
    fig = Figure(figsize=(7, 2.4 * len(runs)))
    axes = fig.subplots(len(runs), 1, squeeze=False)[:, 0]
    for ax, (name, tiers) in zip(axes, runs):
        for key, label, color in (("not_clicked", "not clicked", COLORS[0]), ("clicked", "clicked", COLORS[1])):
            share = np.array([np.nan if v is None else v for v in tiers[key]], dtype=float)
            T = len(share)
            centres = -1 + (np.arange(T) + 0.5) * 2 / T
            ax.step(centres, share, where="mid", label=f"{label} ({tiers['counted_' + key]:,})", color=color)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("mean share")
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("cosine similarity tier (target vs history item)")
    fig.tight_layout()
    return fig


def loss_figure(report: dict) -> Figure | None:
    """Training loss curves (mean over ranks every ``log_every`` steps) from each run's ``train_log.json``."""
    curves = [(n, m["curve"]) for n, m in report["models"].items() if m.get("curve")]
    if not curves:
        return None
    fig = Figure(figsize=(7, 3.4))
    ax = fig.add_subplot()
    for k, (name, curve) in enumerate(curves):
        ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], label=name, color=COLORS[k % len(COLORS)])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (BCE)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def truth_figure(report: dict) -> Figure | None:
    """AUC and GAUC of each model against those of the true click probability."""
    truth = report.get("truth")
    if not truth:
        return None
    names = list(report["models"])
    fig = Figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("auc", "gauc")):
        values = [np.nan if (v := report["models"][n]["metrics"]["all"][metric]) is None else v for n in names]
        ax.bar(np.arange(len(names)), values, color=[COLORS[i % len(COLORS)] for i in range(len(names))])
        ax.axhline(truth["all"][metric], color="black", linestyle="--", label=f"true p_click {truth['all'][metric]:.4f}")
        low = np.nanmin(values + [truth["all"][metric]])
        ax.set_ylim(max(0.0, low - 0.05), 1.0)
        ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric.upper(), fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


# key -> (title, caption, figure function), in report order
FIGURES = {
    "lift": ("GAUC lift over the baseline", "Bars: relative GAUC lift on all impressions; whiskers: 95% user-bootstrap interval.", lift_figure),
    "buckets": ("GAUC lift per item bucket", "Lift on head / torso / tail items (by training impressions) and on items created that day.", bucket_figure),
    "truth": ("Models against the true click probability", "Dashed: the metric of the generator's p_click, the best the labels allow.", truth_figure),
    "tiers": ("SimTier histograms: clicked vs not clicked", "Mean tier share of the day's impressions; clicked ones should lean to high similarity.", tier_figure),
    "loss": ("Training loss", "Loss curves from each run's train_log.json.", loss_figure),
}


def figures(report: dict) -> list[Plot]:
    """Every figure the report has data for, rendered to base64 PNG, in ``FIGURES`` order."""
    out = []
    for key, (title, caption, draw) in FIGURES.items():
        fig = draw(report)
        if fig is not None:
            out.append(Plot(key=key, title=title, caption=caption, png_base64=_png(fig)))
    return out
