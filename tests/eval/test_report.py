"""report.json (strict JSON, schema) and report.html (self-contained; rendered by headless Chromium, plots visible)."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recsys.eval.report import REPORT_HTML, REPORT_JSON, SCHEMA

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# No network, no profile state, no GPU: a plain page render (the Makefile installs chromium for `make test`).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1")
WIDTH = 1200
SUBSETS = ["all", "head", "torso", "tail", "new_items"]


def test_report_json_schema(eval_report: tuple[dict, Path]) -> None:
    _, out = eval_report

    def no_nan(token: str) -> float:
        raise AssertionError(f"report.json holds {token}; nan must be written as null")

    r = json.loads((out / REPORT_JSON).read_text(), parse_constant=no_nan)
    assert r["schema"] == SCHEMA and r["day"] == r["test_day"] and r["day_in_training"] is False
    assert r["bootstrap"] == {"resamples": 200, "seed": 0, "confidence": 0.95, "unit": "user", "interval": "percentile"}
    assert list(r["subsets"]) == SUBSETS and r["subsets"]["all"] == r["impressions"]
    assert r["subsets"]["head"] + r["subsets"]["torso"] + r["subsets"]["tail"] == r["impressions"]
    assert set(r["truth"]) == set(SUBSETS) and r["truth"]["all"]["auc"] > 0.7
    for name, m in r["models"].items():
        assert set(m["metrics"]) == set(m["vs_baseline"]) == set(m["truth_gap"]) == set(SUBSETS), name
        for subset, v in m["vs_baseline"].items():
            assert v["gauc_diff_ci"][0] <= v["gauc_diff_ci"][1], (name, subset)
            assert m["truth_gap"][subset]["auc"] == pytest.approx(m["metrics"][subset]["auc"] - r["truth"][subset]["auc"])
        assert m["curve"] and {"step", "epoch", "loss"} <= set(m["curve"][0])
    base = r["models"][r["baseline"]]["vs_baseline"]["all"]
    assert base["gauc_diff"] == 0 and base["gauc_diff_ci"] == [0, 0]
    simtier = r["models"]["simtier"]["vs_baseline"]["all"]
    assert simtier["gauc_lift"] == pytest.approx(r["models"]["simtier"]["metrics"]["all"]["gauc"]
                                                 / r["models"]["id_only"]["metrics"]["all"]["gauc"] - 1)


class _Images(html.parser.HTMLParser):
    """The attributes of every <img> of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append({k: v or "" for k, v in attrs})


def _images(page: str) -> list[dict[str, str]]:
    parser = _Images()
    parser.feed(page)
    return parser.images


def test_report_html_is_self_contained(eval_report: tuple[dict, Path]) -> None:
    _, out = eval_report
    page = (out / REPORT_HTML).read_text()
    images = _images(page)
    assert len(images) == 5  # lift, buckets, truth, tiers, loss
    assert all(img["src"].startswith("data:image/png;base64,") for img in images)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|file:|//)""", page), "the report references outside files"
    assert "simtier" in page and "id_only" in page and "true p_click" in page


def _chromium(page: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, page.as_uri()],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (`make test` installs it with apt-get)")
def test_headless_chromium_renders_every_plot(eval_report: tuple[dict, Path], tmp_path: Path) -> None:
    _, out = eval_report
    page = out / REPORT_HTML
    # 1. The DOM after load: the page's script marks each image's natural width and page rectangle.
    dom = _chromium(page, f"--window-size={WIDTH},2000", "--dump-dom").stdout
    images = _images(dom)
    assert len(images) == 5 and re.search(r"5 of 5 plots loaded", dom), dom[-500:]
    originals = [Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))).convert("RGB")
                 for img in images]
    for img, original in zip(images, originals):
        assert int(img["data-natural-width"]) == original.width > 100, img["alt"]
    rects = [tuple(int(v) for v in img["data-rect"].split(",")) for img in images]  # (left, top, width, height)
    # 2. A screenshot tall enough for every plot: each plot's region shows that plot, not a blank area.
    height = max(top + h for _, top, _, h in rects) + 40
    shot = tmp_path / "report.png"
    _chromium(page, f"--window-size={WIDTH},{height}", f"--screenshot={shot}")
    screen = Image.open(shot).convert("RGB")
    assert screen.size == (WIDTH, height)
    for (left, top, w, h), original, img in zip(rects, originals, images):
        region = np.asarray(screen.crop((left, top, left + w, top + h)), dtype=np.float64)
        assert region.std() > 20 and (region.mean(axis=2) < 200).mean() > 0.01, f"{img['alt']}: blank region"
        want = np.asarray(original.resize((w, h)), dtype=np.float64)
        assert np.abs(region - want).mean() < 8, f"{img['alt']}: the screenshot region is not the plot"
    shutil.copy(shot, out / "report-screenshot.png")  # kept beside the report for a look


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (`make test` installs it with apt-get)")
def test_headless_check_sees_a_broken_image(eval_report: tuple[dict, Path], tmp_path: Path) -> None:
    """The load check is not vacuous: a corrupt PNG shows as natural width 0 and '4 of 5'."""
    _, out = eval_report
    page = (out / REPORT_HTML).read_text()
    broken = tmp_path / REPORT_HTML
    broken.write_text(re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,AAAA", page, count=1))
    dom = _chromium(broken, f"--window-size={WIDTH},2000", "--dump-dom").stdout
    assert [img["data-natural-width"] for img in _images(dom)][0] == "0"
    assert "4 of 5 plots loaded" in dom


def test_extra_sections_escape_their_cells_once() -> None:
    # a run named with markup characters shows as written: escaped once, read back by an HTML parser
    from recsys.eval.report import _section_html

    class Cells(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.text: list[str] = []

        def handle_data(self, data: str) -> None:
            self.text.append(data)

    page = _section_html({"title": "A & B", "header": ["run <x>"], "rows": [["r&d", None]], "note": "n & m"})
    parser = Cells()
    parser.feed(page)
    assert parser.text == ["A & B", "run <x>", "r&d", "–", "n & m"]


def test_a_report_that_fails_to_render_leaves_the_previous_one_whole(eval_report: tuple[dict, Path], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys.eval import report as report_module

    report, folder = eval_report
    out = tmp_path / "report"
    shutil.copytree(folder, out)
    before = {name: (out / name).read_bytes() for name in (REPORT_JSON, REPORT_HTML)}

    def broken(_: dict) -> str:  # a plot that cannot be drawn, or the process killed while drawing
        raise RuntimeError("render failed")

    monkeypatch.setattr(report_module, "render_html", broken)
    with pytest.raises(RuntimeError, match="render failed"):
        report_module.write_report({**report, "day": report["day"] + 1}, out)
    assert {name: (out / name).read_bytes() for name in before} == before  # both as they were: no mixed report
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    report_module.write_report({**report, "day": report["day"] + 1}, out)
    assert json.loads((out / REPORT_JSON).read_text())["day"] == report["day"] + 1
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # nothing half-written left beside it
