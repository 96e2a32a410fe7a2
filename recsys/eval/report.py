"""The evaluation report: ``report.json`` (its schema below) and a self-contained ``report.html``.

Notation: ``M`` models, ``T`` SimTier tiers; a **subset** is ``all``,
``head``, ``torso``, ``tail`` or ``new_items`` (``metrics.evaluation_report``).

``report.json`` (``nan`` written as ``null``)::

    schema          "mmctr-eval/1"
    world, world_manifest_sha, day, test_day, day_in_training (bool: any evaluated run trained on this day)
    models_trained_on_day [names of those runs]; each model also holds trained_days
    impressions, clicks, users               the scored day
    subsets         {subset: impressions}
    baseline        name of the baseline model
    bootstrap       {resamples, seed, confidence, unit: "user", interval: "percentile"}
    truth           {subset: metrics of the true p_click} or null (world without truth/)
    models          {name: {
        run, variant, checkpoint, step          where it came from
        metrics         {subset: auc, gauc, gauc_users, ne, logloss, ctr, pred_ctr, calibration, impressions, clicks}
        vs_baseline     {subset: gauc_diff, gauc_diff_ci [lo, hi], gauc_lift, gauc_lift_ci, auc_diff, auc_lift, users}
        truth_gap       {subset: {auc, gauc}}: the model's minus the truth's, or null
        tiers           {n_tiers, clicked [T], not_clicked [T], counted_clicked, counted_not_clicked,
                         mean_similarity_clicked, mean_similarity_not_clicked} or null (no vectors)
        curve           [{step, epoch, loss}] from train_log.json
    }}
    sections        optional [{title, header [str], rows [[cell]], note}]: tables that the
                    caller adds (``mmctr pipeline``: pre-training recall, serving, retrains)

``report.html`` embeds every plot (``recsys.eval.plots``) as a base64 PNG
``data:`` URI and its style inline: one file, no network. A short script
records, once the page has loaded, each image's ``naturalWidth`` and page
rectangle as ``data-`` attributes and "k of n plots loaded" in
``#image-status`` (what the headless-browser test reads).

Example::

    >>> sanitize({"a": float("nan"), "b": [np.float64(0.5), np.int64(3)], "c": np.array([1.0, np.nan])})
    {'a': None, 'b': [0.5, 3], 'c': [1.0, None]}
    >>> fmt_pct(0.01234), fmt_pct(None), fmt_ci([0.001, 0.02], pct=True)
    ('+1.23%', '–', '[+0.10%, +2.00%]')
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from recsys.eval.plots import figures

SCHEMA = "mmctr-eval/1"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


def sanitize(value: Any) -> Any:
    """A JSON-ready copy: numpy scalars and arrays to Python, ``nan``/``inf`` to ``None``."""
    if isinstance(value, dict):
        return {str(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    if isinstance(value, np.ndarray):
        return sanitize(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(report: dict, path: Path) -> None:
    """Writes the report as strict JSON (no ``NaN`` tokens)."""
    Path(path).write_text(json.dumps(sanitize(report), indent=2, allow_nan=False) + "\n")


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.2f}%"


def fmt_ci(ci: list | None, pct: bool = False) -> str:
    if not ci or ci[0] is None:
        return "–"
    show = fmt_pct if pct else (lambda v: f"{v:+.4f}")
    return f"[{show(ci[0])}, {show(ci[1])}]"


_STYLE = """
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.baseline td { background: #f2f2f2; } tr.truth td { font-style: italic; }
.warn { background: #fff3cd; border: 1px solid #e0c36c; padding: 6px 10px; }
figure { margin: 12px 0 24px 0; } figcaption { font-size: 12px; color: #555; }
img { max-width: 100%; display: block; }
.note { font-size: 12px; color: #555; }
"""

# Records each image's load state and page rectangle once the page has loaded (read by the browser test).
_IMAGE_CHECK = """
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img"), ok = 0;
  imgs.forEach(function (img) {
    var r = img.getBoundingClientRect();
    img.setAttribute("data-natural-width", String(img.naturalWidth));
    img.setAttribute("data-rect", [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]
      .map(Math.round).join(","));
    if (img.complete && img.naturalWidth > 0) { ok += 1; }
  });
  document.getElementById("image-status").textContent = ok + " of " + imgs.length + " plots loaded";
});
"""


def _row(cells: list[str], cls: str = "", header: bool = False) -> str:
    tag = "th" if header else "td"
    attr = f' class="{cls}"' if cls else ""
    return f"<tr{attr}>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def _models_table(report: dict) -> str:
    truth = report.get("truth")
    head = ["model", "variant", "AUC", "GAUC", "GAUC Δ", "95% CI", "GAUC lift", "95% CI", "AUC lift",
            "NE", "logloss", "pred CTR", "CTR", "calibration"]
    if truth:
        head += ["AUC gap to truth", "GAUC gap to truth"]
    rows = [_row(head, header=True)]
    for name, m in report["models"].items():
        a, v = m["metrics"]["all"], m["vs_baseline"]["all"]
        cells = [name, m["variant"], fmt(a["auc"]), fmt(a["gauc"]), fmt(v["gauc_diff"]), fmt_ci(v["gauc_diff_ci"]),
                 fmt_pct(v["gauc_lift"]), fmt_ci(v["gauc_lift_ci"], pct=True), fmt_pct(v["auc_lift"]),
                 fmt(a["ne"]), fmt(a["logloss"]), fmt(a["pred_ctr"]), fmt(a["ctr"]), fmt(a["calibration"], 3)]
        if truth:
            gap = (m.get("truth_gap") or {}).get("all", {})
            cells += [fmt(gap.get("auc")), fmt(gap.get("gauc"))]
        rows.append(_row(cells, "baseline" if name == report["baseline"] else ""))
    if truth:
        t = truth["all"]
        rows.append(_row(["true p_click", "(generator)", fmt(t["auc"]), fmt(t["gauc"])] + ["–"] * 5
                         + [fmt(t["ne"]), fmt(t["logloss"]), fmt(t["pred_ctr"]), fmt(t["ctr"]), fmt(t["calibration"], 3), "0", "0"],
                         "truth"))
    return "<table>" + "".join(rows) + "</table>"


def _subsets_table(report: dict) -> str:
    subsets = report["subsets"]
    rows = [_row(["model"] + [f"{s} ({int(subsets[s]):,} imp.)" for s in subsets], header=True)]
    for name, m in report["models"].items():
        cells = [name]
        for s in subsets:
            v = m["vs_baseline"][s]
            cells.append(f"{fmt(m['metrics'][s]['gauc'])}  {fmt_pct(v['gauc_lift'])} {fmt_ci(v['gauc_lift_ci'], pct=True)}")
        rows.append(_row(cells, "baseline" if name == report["baseline"] else ""))
    if report.get("truth"):
        rows.append(_row(["true p_click"] + [fmt(report["truth"][s]["gauc"]) for s in subsets], "truth"))
    return "<table>" + "".join(rows) + "</table>"


def _section_html(section: dict) -> str:
    """An extra section of the report: a title, a table of preformatted cells and a note."""
    rows = [_row([str(h) for h in section.get("header", [])], header=True)]  # _row escapes, once
    rows += [_row(["–" if c is None else str(c) for c in row]) for row in section.get("rows", [])]
    note = f"<p class='note'>{html.escape(section['note'])}</p>" if section.get("note") else ""
    return f"<h2>{html.escape(section['title'])}</h2><table>{''.join(rows)}</table>{note}"


def render_html(report: dict) -> str:
    """The self-contained HTML page of a (sanitized) report dictionary."""
    r = report
    b = r["bootstrap"]
    title = f"mmctr evaluation: day {r['day']}"
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    ctr = r["clicks"] / r["impressions"] if r["impressions"] else float("nan")
    parts.append(
        f"<p>World <code>{html.escape(str(r['world']))}</code> (manifest {html.escape(r['world_manifest_sha'])}), "
        f"day {r['day']} (test day {r['test_day']}): {int(r['impressions']):,} impressions, {int(r['clicks']):,} clicks "
        f"(CTR {ctr:.4f}), {int(r['users']):,} users. Baseline: <b>{html.escape(r['baseline'])}</b>. "
        f"GAUC intervals: {b['confidence']:.0%} percentile intervals over {b['resamples']:,} bootstrap resamples "
        f"of users (seed {b['seed']}).</p>")
    if r["day_in_training"]:
        names = ", ".join(html.escape(str(n)) for n in r.get("models_trained_on_day", [])) or "the runs"
        after = (f"Evaluate the test day ({r['test_day']}) for held-out results." if r["day"] != r["test_day"]
                 else "Evaluate a day none of them trained on for held-out results.")
        parts.append(f"<p class='warn'>Day {r['day']} is a training day of {names}: their numbers are "
                     f"in-sample. {after}</p>")
    parts += ["<h2>All impressions</h2>", _models_table(r),
              "<h2>GAUC per subset: value, lift over the baseline, 95% CI</h2>", _subsets_table(r)]
    for plot in figures(r):
        parts.append(f"<h2>{html.escape(plot.title)}</h2><figure id='fig-{plot.key}'>"
                     f"<img alt='{html.escape(plot.title)}' src='data:image/png;base64,{plot.png_base64}'>"
                     f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>")
    for section in r.get("sections") or []:
        parts.append(_section_html(section))
    parts.append(
        "<p class='note'>GAUC: impression-weighted mean of per-user AUCs over users with both a click and a "
        "non-click (ties ½). Buckets: items ranked by impressions on the days before this one; head = the first "
        "50% of those impressions, torso the next 30%, tail the rest and unseen items; new items = created this day. "
        "NE: logloss over the entropy of the observed CTR; calibration: predicted / observed CTR.</p>"
        "<p class='note' id='image-status'>plots not checked (scripts off)</p>"
        f"<script>{_IMAGE_CHECK}</script></body></html>")
    return "\n".join(parts)


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """Writes ``report.json`` and ``report.html`` into ``out`` (created); returns their paths.

    Both are rendered to hidden files first and then moved over the old ones
    (``os.replace``, the HTML first): a process killed while rendering leaves
    the previous report whole, and the two files disagree at most for the
    instant between the two renames, not for the seconds the HTML's plots take.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean = sanitize(report)
    json_tmp, html_tmp = out / f".{REPORT_JSON}.tmp", out / f".{REPORT_HTML}.tmp"
    try:
        write_json(clean, json_tmp)
        html_tmp.write_text(render_html(clean))
        os.replace(html_tmp, out / REPORT_HTML)
        os.replace(json_tmp, out / REPORT_JSON)
    finally:  # a failed render leaves no half-written file beside the previous report
        json_tmp.unlink(missing_ok=True)
        html_tmp.unlink(missing_ok=True)
    return out / REPORT_JSON, out / REPORT_HTML
