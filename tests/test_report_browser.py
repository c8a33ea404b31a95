"""Each report page in a real browser (headless Chromium): it renders to a PNG that is not blank, the browser
reports no error (scripts, resources, console), and the page's script works (the right/wrong filter and the
token colouring, opened from the address). Without Chromium the tests skip, unless VISION_OPD_REQUIRE_BROWSER=1
(set by .ci/run, which installs Debian's chromium), where they fail."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from PIL import Image

from vision_opd.report import build_report
from vision_opd.report.browser import find_chromium, render


@pytest.fixture(scope="module")
def chromium():
    exe = find_chromium()
    if exe is None:
        message = "no Chromium on PATH (apt-get install chromium, or set VISION_OPD_CHROMIUM)"
        if os.environ.get("VISION_OPD_REQUIRE_BROWSER") == "1":
            pytest.fail(message + "; VISION_OPD_REQUIRE_BROWSER=1 demands the browser test")
        pytest.skip(message)
    return exe


def assert_not_blank(png) -> None:
    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert img.shape[0] >= 1500 and img.shape[1] >= 1300
    assert img.std() > 20, f"the render is nearly uniform (std {img.std():.1f}): blank?"
    lower = img[img.shape[0] // 2:]
    background = np.bincount(lower.astype(int).ravel()).argmax()
    assert (np.abs(lower - background) > 30).mean() > 0.02, "the lower half of the render is empty"


@pytest.mark.parametrize("folder", ["report_run", "report_eval", "report_gap", "report_demo"])
def test_page_renders_without_errors(folder, chromium, request, tmp_path):
    page = build_report(request.getfixturevalue(folder), tmp_path / "page.html")
    shot = render(page, tmp_path / f"{folder}.png", chromium=chromium)
    assert shot.errors == [], shot.errors
    assert_not_blank(shot.png)
    assert "<main>" in shot.dom and not re.search(r"<html[^>]*data-browser-errors", shot.dom)


def _items(dom: str) -> list[tuple[str, bool]]:
    """(outcome, hidden) of every gallery item in a DOM dump."""
    return [(m.group(2), "hidden" in m.group(1) + m.group(3))
            for m in re.finditer(r'<div class="item"([^>]*) data-outcome="(\w+)"([^>]*)>', dom)]


@pytest.mark.parametrize("show", ["wrong", "right"])
def test_the_gallery_filter_runs_in_the_browser(show, chromium, report_eval, tmp_path):
    page = build_report(report_eval, tmp_path / "page.html")
    everything = _items(render(page, tmp_path / "all.png", chromium=chromium).dom)
    assert everything and not any(h for _, h in everything)
    shot = render(page, tmp_path / f"{show}.png", chromium=chromium, fragment=f"#show={show}")
    assert shot.errors == []
    items = _items(shot.dom)
    assert len(items) == len(everything) and {o for o, _ in items} >= {"right", "wrong"}
    assert all(hidden == (outcome != show) for outcome, hidden in items)
    shown = re.search(r'<span id="shown-items">(\d+)</span>', shot.dom)
    assert shown and int(shown.group(1)) == sum(o == show for o, _ in items)


def test_the_colour_toggle_runs_in_the_browser(chromium, report_run, tmp_path):
    page = build_report(report_run, tmp_path / "page.html")
    kl = render(page, tmp_path / "kl.png", chromium=chromium, height=3000)
    ratio = render(page, tmp_path / "ratio.png", chromium=chromium, height=3000, fragment="#colour=ratio")
    assert kl.errors == [] and ratio.errors == []
    assert '<body class="ratio">' in ratio.dom and '<body class="ratio">' not in kl.dom
    a, b = (np.asarray(Image.open(s.png).convert("RGB"), dtype=int) for s in (kl, ratio))
    assert (np.abs(a - b).sum(-1) > 0).mean() > 0.001, "the token colours must change on screen"


def test_the_error_check_can_fail(chromium, tmp_path):
    """The same render reports a script error, a console error and a resource from the network."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"></head><body><h1>x</h1>'
                    '<img src="http://example.invalid/a.png"><script>console.error("boom"); missing();</script></body></html>')
    errors = "\n".join(render(page, tmp_path / "broken.png", chromium=chromium, height=600).errors)
    assert "script error" in errors and "missing" in errors
    assert "console.error: boom" in errors and "resource failed: http://example.invalid/a.png" in errors


def test_hovering_a_token_shows_its_values(chromium, report_run, tmp_path):
    """A mouseover on a token fills the tooltip with the values samples.jsonl holds for it."""
    import json

    page = build_report(report_run, tmp_path / "page.html")
    hover = "document.querySelector('.tok').dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));"
    shot = render(page, tmp_path / "hover.png", chromium=chromium, height=800, script=hover)
    assert shot.errors == []
    tip = re.search(r'<div class="tip"(?![^>]*hidden)[^>]*>([^<]*)</div>', shot.dom)
    assert tip, "the tooltip is shown (no hidden attribute) after the mouseover"
    row = json.loads((report_run / "samples.jsonl").read_text().splitlines()[0])

    def shown(v: float, digits: int) -> str:  # as the page prints it: rounded, never "-0.000"
        return f"{round(v, digits) + 0.0:.{digits}f}"

    s, t = row["student_logprob"][0], row["teacher_logprob"][0]
    assert f"KL {shown(row['token_kl'][0], 4)}" in tip.group(1)
    assert f"log p_S {shown(s, 3)}  log p_T {shown(t, 3)}  log p_T - log p_S {shown(t - s, 3)}" in tip.group(1)
