"""The lab panel in a real browser: JupyterLab and Voilà, headless Chromium driven by Playwright.

Each test opens ``panel.ipynb``, presses Train, checks that the loss, norm and memory charts render traces
whose point count grows, presses Stop and checks the status line, then trains a second run with another
scaling method so the screenshot (``test-artifacts/``) shows two runs overlaid.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

#: Per chart (loss, norms, process memory, per-layer RMS: axes x, x2, x6, x4 of the lab's one figure): the
#: points plotly computed for drawing (its calcdata, finite values only) and how many line paths it drew.
COUNT_POINTS = """() => {
    const gd = document.querySelector('.labkit-lab .js-plotly-plot');
    if (!gd || !gd.calcdata) return null;
    return [['x', 'xy'], ['x2', 'x2y2'], ['x6', 'x6y6'], ['x4', 'x4y4']].map(([axis, subplot]) => ({
        points: gd.calcdata.reduce((n, cd) => {
            const t = cd[0] && cd[0].trace;
            if (!t || t.xaxis !== axis || t.visible !== true) return n;
            return n + cd.filter(p => typeof p.y === 'number' && p.y === p.y).length;
        }, 0),
        paths: Array.from(gd.querySelectorAll('.subplot.' + subplot + ' .scatterlayer .trace path.js-line'))
                    .filter(el => (el.getAttribute('d') || '').length > 10).length,
    }));
}"""
ALL_CHARTS_HAVE_POINTS = f"() => {{ const c = ({COUNT_POINTS})(); return c && c.every(x => x.points > 0) ? c : null; }}"
#: The panel's notebook samples per-layer scales from step 1, so all four charts have points from the start.
#: The last step drawn by each run's train-loss line (the first trace of each run on the loss axis).
LAST_LOSS_STEPS = """() => {
    const gd = document.querySelector('.labkit-lab .js-plotly-plot');
    return gd.data.filter(t => (t.xaxis || 'x') === 'x' && t.mode === 'lines' && t.x && t.x.length)
                  .map(t => t.x[t.x.length - 1]);
}"""
STATUS = "() => (document.querySelector('.labkit-lab .labkit-status') || {}).textContent || ''"


def _wait_for(page, js: str, timeout: float, what: str, arg=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(js, arg) if arg is not None else page.evaluate(js)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; status line: {page.evaluate(STATUS)!r}")


def _status_contains(page, text: str, timeout: float) -> str:
    return _wait_for(page, "t => { const s = (document.querySelector('.labkit-lab .labkit-status') || {}).textContent"
                           " || ''; return s.includes(t) ? s : ''; }", timeout, f"status containing {text!r}", text)


def _button(page, name: str):
    return page.locator(".labkit-lab button", has_text=name).first


def _exercise_panel(page, artifacts: Path, name: str) -> dict[str, float]:
    """Train → charts grow → Stop → second run with seed L2 once → screenshot. Returns timings."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    _wait_for(page, "() => !!document.querySelector('.labkit-lab .js-plotly-plot .subplot.x3y3')", 90, "the charts")
    timings["charts_shown_s"] = time.monotonic() - t0
    train = _button(page, "Train")
    train.wait_for(state="visible", timeout=30_000)
    start = time.monotonic()
    train.click()
    _status_contains(page, "Training run #1", 20)
    first = _wait_for(page, ALL_CHARTS_HAVE_POINTS, 30, "points in the three charts")
    timings["first_points_s"] = time.monotonic() - start
    # The loss, norms and memory charts grow as the run goes on (the RMS chart shows one step: it does not).
    # Waited for, not slept: on a busy machine the first logged steps can take a few seconds to arrive.
    grown = (f"() => {{ const c = ({COUNT_POINTS})(); const f = {json.dumps(first)}; "
             "return c && [0, 1, 2].every(i => c[i].points > f[i].points && c[i].paths > 0) ? c : null; }")
    try:
        later = _wait_for(page, grown, 30, "the loss, norms and memory charts to grow")
    except AssertionError:
        now = page.evaluate(COUNT_POINTS)
        raise AssertionError(f"charts did not grow in 30 s: loss, norms, memory {first[:3]} -> {now[:3]}") from None
    stop_click = time.monotonic()
    _button(page, "Stop").click()
    _status_contains(page, "top", 20)  # "Stopping run #1 ..." (the kernel took the click) or already "stopped"
    timings["stop_to_ack_s"] = time.monotonic() - stop_click
    status = _status_contains(page, "stopped at step", 20)
    timings["stop_to_status_s"] = time.monotonic() - stop_click
    assert "records are kept" in status
    stopped_at = int(re.search(r"stopped at step ([\d,]+)", status).group(1).replace(",", ""))

    # A second run beside the first: seed L2 once, fewer steps, left to finish.
    page.locator(".widget-dropdown:has(label:text-is('scaling')) select").select_option(label="seed L2 once")
    steps = page.locator(".widget-text:has(label:text-is('steps')) input")
    steps.fill("150")
    steps.press("Enter")
    time.sleep(0.3)
    _button(page, "Train").click()
    status = _status_contains(page, "Run #2 seed-l2-once finished", 60)
    timings["ui_fraction"] = float(re.search(r"Drawing took ([\d.]+)%", status).group(1)) / 100
    time.sleep(0.5)  # the last redraw
    counts = page.evaluate(COUNT_POINTS)
    assert all(c["points"] > later[i]["points"] for i, c in enumerate(counts[:3])), (later, counts)
    assert counts[3]["points"] >= 2 * 3 * 10, counts  # RMS of 10 layers × 3 kinds, for each run
    # Every step of both runs reached the page: the last x of run #1's and run #2's train-loss lines.
    last_x = _wait_for(page, f"() => {{ const x = ({LAST_LOSS_STEPS})(); return x.length >= 2 && x[0] === {stopped_at}"
                             " && x[1] === 150 ? x : null; }", 10, "the last step of each run in the loss chart")
    assert last_x[:2] == [stopped_at, 150]
    page.screenshot(path=str(artifacts / f"{name}-two-runs.png"), full_page=True)
    timings["total_s"] = time.monotonic() - start
    return timings


def test_jupyterlab_panel(lab_server, browser_page, artifacts):
    page = browser_page
    page.goto(lab_server.url, wait_until="domcontentloaded", timeout=60_000)
    _wait_for(page, "() => !!(window.jupyterapp && window.jupyterapp.shell.currentWidget && window.jupyterapp.shell"
                    ".currentWidget.sessionContext && window.jupyterapp.shell.currentWidget.sessionContext.session"
                    " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel && window.jupyterapp"
                    ".shell.currentWidget.sessionContext.session.kernel.status === 'idle')", 60,
              "the notebook's kernel")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    try:
        timings = _exercise_panel(page, artifacts, "jupyterlab")
    except BaseException:
        page.screenshot(path=str(artifacts / "jupyterlab-failure.png"))
        print(lab_server.log_text())
        raise
    # A reload rebuilds every view from the kernel's widget state: the charts must come back whole.
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    time.sleep(1)
    reload = time.monotonic()
    page.reload(wait_until="domcontentloaded")
    counts = _wait_for(page, ALL_CHARTS_HAVE_POINTS, 60, "the charts after a reload")
    timings["reload_s"] = time.monotonic() - reload
    assert _wait_for(page, LAST_LOSS_STEPS, 10, "loss lines after a reload")[1] == 150, counts
    page.screenshot(path=str(artifacts / "jupyterlab-after-reload.png"))
    print("JupyterLab timings:", timings)


def test_voila_panel(voila_server, browser_page, artifacts):
    page = browser_page
    page.goto(voila_server.url, wait_until="domcontentloaded", timeout=90_000)
    try:
        timings = _exercise_panel(page, artifacts, "voila")
    except BaseException:
        page.screenshot(path=str(artifacts / "voila-failure.png"), full_page=True)
        print(voila_server.log_text())
        raise
    print("Voila timings:", timings)
